//! `mmap`: creates an anonymous private mapping.

use core::ops::Range;

use super::{MMAP_MIN_ADDR, RangeError, TreeOutOfMemory, rewrite, user_range};
use crate::address_space::AddressSpace;
use crate::maple::GapDir;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::vma::Prot;

bitflags::bitflags! {
    /// `MAP_*` flags. Only private anonymous mappings exist so far.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapFlags: u32 {
        /// `MAP_PRIVATE` (required).
        const PRIVATE = 1 << 1;
        /// `MAP_FIXED`: exactly at `addr`, replacing whatever is mapped there.
        const FIXED = 1 << 4;
        /// `MAP_ANONYMOUS` (required).
        const ANONYMOUS = 1 << 5;
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
    /// Unknown or unsupported flags (shared or file mappings, both FIXED kinds).
    BadFlags,
    /// `FIXED_NOREPLACE` and something is mapped there.
    AlreadyMapped,
    /// No free range of that length.
    NoSpace,
    /// No memory for the VMA tree.
    OutOfMemory,
}

impl<P: Platform> AddressSpace<P> {
    /// `mmap(addr, len, prot, flags)` for anonymous private memory. Without a FIXED flag `addr`
    /// is a hint (used if free, `0` for none); otherwise the highest free range is taken.
    /// Returns the start of the mapping. Frames are allocated at fault time. What it replaces is
    /// freed after an RCU grace period ([`Rcu::throttle`] bounds the backlog).
    ///
    /// Locks: takes `mmap_lock` for write; may block after releasing it.
    ///
    /// [`Rcu::throttle`]: crate::rcu::Rcu::throttle
    pub fn mmap(&self, addr: u64, len: u64, prot: Prot, flags: MapFlags) -> Result<u64, MmapError> {
        if !Prot::all().contains(prot) {
            return Err(MmapError::BadProt);
        }
        if !MapFlags::all().contains(flags)
            || !flags.contains(MapFlags::PRIVATE | MapFlags::ANONYMOUS)
            || flags.contains(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE)
        {
            return Err(MmapError::BadFlags);
        }
        let fixed = flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE);
        // Validate the length alone first (a hint may be any address).
        let pages_len = user_range(MMAP_MIN_ADDR, len).map_err(MmapError::BadRange)?;
        let len = pages_len.end - pages_len.start;
        let requested = if fixed || addr != 0 {
            Some(user_range(addr, len))
        } else {
            None
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
            Some(Ok(r)) if self.vmas_in(r.clone()).is_empty() => r,
            _ => {
                let start = self
                    .tree()
                    .find_gap(len, 4096, MMAP_MIN_ADDR, USER_END, GapDir::TopDown)
                    .ok_or(MmapError::NoSpace)?;
                start..start + len
            }
        };
        rewrite(self, &g, range.clone(), Some(prot))
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
        Ok(range.start)
    }
}
