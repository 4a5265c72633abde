//! `mmap`: creates an anonymous mapping, private or shared (`MAP_SHARED`: a new
//! [`SharedAnon`](crate::vma::SharedAnon) object, page 0 at the start of the mapping).
//!
//! Placement follows Linux's `get_unmapped_area`: a hint (rounded down to a page, then, unless
//! that is 0, raised to [`MMAP_MIN_ADDR`] when below it: `round_hint_to_min`) is used when the range is free and
//! ends at or below the `vm_start_gap` of the VMA above it; otherwise the highest free range
//! below `mmap_base` (then anywhere) that keeps [`STACK_GUARD_GAP`](super::STACK_GUARD_GAP) free below every stack. Fixed
//! mappings are placed where asked. `MAP_POPULATE` faults every page in after the mapping is
//! made, with no lock held (as Linux's `mm_populate`).

use core::ops::Range;

use super::rewrite::{Edit, rewrite_edit};
use super::stack::vm_start_gap;
use super::{MMAP_MIN_ADDR, PAGE, RangeError, TreeOutOfMemory, user_range};
use crate::address_space::AddressSpace;
use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
use crate::maple::GapDir;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::vma::{Prot, ShmLink, VmFlags};

bitflags::bitflags! {
    /// `MAP_*` flags. Anonymous mappings only, private or shared.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapFlags: u32 {
        /// `MAP_SHARED`: writes are seen by every mapping of the same pages (also across
        /// `fork`). Exactly one of `SHARED` and `PRIVATE`.
        const SHARED = 1 << 0;
        /// `MAP_PRIVATE`: copy-on-write across `fork`.
        const PRIVATE = 1 << 1;
        /// `MAP_FIXED`: exactly at `addr`, replacing whatever is mapped there.
        const FIXED = 1 << 4;
        /// `MAP_ANONYMOUS` (required).
        const ANONYMOUS = 1 << 5;
        /// `MAP_GROWSDOWN`: a stack that grows down on faults below it (`VM_GROWSDOWN`).
        const GROWSDOWN = 1 << 8;
        /// `MAP_NORESERVE`: accepted; nothing is reserved in advance anyway.
        const NORESERVE = 1 << 14;
        /// `MAP_POPULATE`: fault every page in before returning.
        const POPULATE = 1 << 15;
        /// `MAP_FIXED_NOREPLACE`: exactly at `addr`, failing if anything is mapped there.
        const FIXED_NOREPLACE = 1 << 20;
    }
}

/// Why `mmap` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmapError {
    /// The address or length is invalid.
    BadRange(RangeError),
    /// Unknown protection bits.
    BadProt,
    /// Unknown or unsupported flags (file mappings, both or neither of `SHARED` and
    /// `PRIVATE`, both FIXED kinds, a shared stack).
    BadFlags,
    /// `FIXED_NOREPLACE` and something is mapped there.
    AlreadyMapped,
    /// No free range of that length.
    NoSpace,
    /// No memory for the VMA tree, or (`MAP_POPULATE`) for the pages; nothing stays mapped.
    OutOfMemory,
}

impl<P: Platform> AddressSpace<P> {
    /// `mmap(addr, len, prot, flags)` for anonymous memory, private or shared. Without a FIXED flag `addr`
    /// is a hint (see the module header; `0` for none). Returns the start of the mapping.
    /// Frames are allocated at fault time, or before returning with `MAP_POPULATE` (if that
    /// runs out of memory, the new mapping is removed again). What it replaces is freed after
    /// an RCU grace period ([`Rcu::throttle`] bounds the backlog).
    ///
    /// Locks: takes `mmap_lock` for write; may block after releasing it. `MAP_POPULATE` then
    /// faults the pages in with no lock held.
    ///
    /// [`Rcu::throttle`]: crate::rcu::Rcu::throttle
    pub fn mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, MmapError> {
        if !Prot::all().contains(prot) {
            return Err(MmapError::BadProt);
        }
        if !MapFlags::all().contains(flags)
            || !flags.contains(MapFlags::ANONYMOUS)
            || flags.contains(MapFlags::PRIVATE) == flags.contains(MapFlags::SHARED)
            || flags.contains(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE)
            || flags.contains(MapFlags::SHARED | MapFlags::GROWSDOWN)
        {
            return Err(MmapError::BadFlags);
        }
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        // Validate the length alone first (a hint may be any address).
        let pages_len = user_range(MMAP_MIN_ADDR, len).map_err(MmapError::BadRange)?;
        let len = pages_len.end - pages_len.start;
        // `round_hint_to_min`: a hint in page 0 is no hint.
        let hint = addr & !(PAGE - 1);
        let requested = if fixed {
            Some(user_range(addr, len))
        } else if hint != 0 {
            Some(user_range(hint.max(MMAP_MIN_ADDR), len))
        } else {
            None
        };
        let vm_flags = if flags.contains(MapFlags::GROWSDOWN) {
            VmFlags::GROWSDOWN
        } else {
            VmFlags::empty()
        };

        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        let range: Range<u64> = match requested {
            Some(r) if fixed => {
                let r = r.map_err(MmapError::BadRange)?;
                if flags.contains(MapFlags::FIXED_NOREPLACE) && !self.vmas_in(r.clone()).is_empty()
                {
                    return Err(MmapError::AlreadyMapped);
                }
                r
            }
            Some(Ok(r)) if self.is_unmapped_area(&r) => r,
            _ => self.unmapped_area_topdown(len).ok_or(MmapError::NoSpace)?,
        };
        let shared = flags
            .contains(MapFlags::SHARED)
            .then(|| ShmLink::new(self.memory().new_shared_anon(), range.start, 0));
        rewrite_edit(self, &g, range.clone(), Edit::Map((prot, vm_flags, shared)))
            .map_err(|TreeOutOfMemory| MmapError::OutOfMemory)?;
        // MAP_FIXED over existing mappings: their pages go (a no-op on a free range). `rewrite`
        // write-locked every VMA over the range, kept ones included.
        debug_assert!(
            self.vmas_in(range.clone())
                .iter()
                .all(|v| v.lock().is_write_locked_by(&g))
        );
        let zap = self.page_tables().zap(&g, range.clone());
        zap.flush(self.memory(), self.cpus());
        drop(g);
        self.memory().rcu().throttle();
        if flags.contains(MapFlags::POPULATE) && !prot.is_empty() {
            self.populate(range.clone(), prot)?;
        }
        Ok(range.start)
    }

    /// Whether `r` is free and ends at or below the `vm_start_gap` of the next VMA above it.
    fn is_unmapped_area(&self, r: &Range<u64>) -> bool {
        let above = r.start..r.end.saturating_add(super::STACK_GUARD_GAP).min(USER_END);
        // Only the next VMA counts, as in Linux (one overlapping `r` has `vm_start_gap <= start
        // < r.end` too).
        self.vmas_in(above)
            .first()
            .is_none_or(|v| vm_start_gap(v) >= r.end)
    }

    /// Linux's `arch_get_unmapped_area_topdown`: the highest free range of `len` bytes below
    /// `mmap_base` that ends at or below the `vm_start_gap` of the VMA above it; failing that,
    /// the same search up to the top of the user half (Linux falls back to a bottom-up search).
    fn unmapped_area_topdown(&self, len: u64) -> Option<Range<u64>> {
        let base = self.mmap_base.load(core::sync::atomic::Ordering::Relaxed);
        self.unmapped_area_below(len, base)
            .or_else(|| self.unmapped_area_below(len, USER_END))
    }

    /// [`unmapped_area_topdown`](Self::unmapped_area_topdown) below `high`. Each retry lowers
    /// the ceiling, so it ends.
    fn unmapped_area_below(&self, len: u64, mut high: u64) -> Option<Range<u64>> {
        loop {
            let start = self
                .tree()
                .find_gap(len, PAGE, MMAP_MIN_ADDR, high, GapDir::TopDown)?;
            let r = start..start + len;
            let above = r.end..r.end.saturating_add(super::STACK_GUARD_GAP).min(USER_END);
            match self.vmas_in(above).first() {
                Some(v) if vm_start_gap(v) < r.end => high = vm_start_gap(v),
                _ => return Some(r),
            }
        }
    }

    /// `MAP_POPULATE` (Linux's `mm_populate`): faults every page of `range` in, for writing
    /// if `prot` allows it. A page unmapped meanwhile by another thread ends it early (as in
    /// Linux); running out of memory unmaps the range and fails.
    ///
    /// Locks: none on entry or exit (each fault takes what it needs).
    fn populate(&self, range: Range<u64>, prot: Prot) -> Result<(), MmapError> {
        let kind = if prot.contains(Prot::WRITE) {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        for page in range.clone().step_by(PAGE as usize) {
            match handle_mm_fault(self, page, Access::kernel(kind)) {
                FaultResult::Resolved => {}
                FaultResult::Segv { .. } => break,
                FaultResult::Oom => {
                    // A failed munmap leaves the pages to the address space's teardown; the
                    // caller learns of the failure either way.
                    let _ = self.munmap(range.start, range.end - range.start);
                    return Err(MmapError::OutOfMemory);
                }
            }
        }
        Ok(())
    }
}
