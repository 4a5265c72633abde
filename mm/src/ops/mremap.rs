//! `mremap`: resizes a mapping, moving it (and its pages, without copying them) if allowed.
//!
//! With `mmap_lock` held for write, the old range must lie in one VMA. Then:
//! - **shrink**: the tail is unmapped as `munmap` does (detached under the write lock, zapped
//!   after `mmap_write_downgrade`);
//! - **grow in place** when the old range ends its VMA and the space after it is free: the VMA
//!   is replaced by a longer one (`rewrite`), no PTE changes;
//! - **move** (`MREMAP_MAYMOVE`, `MREMAP_FIXED`, `MREMAP_DONTUNMAP`): the destination's page
//!   tables are allocated first (running out of memory then changes nothing), a VMA is
//!   inserted there (complete and write-locked), every VMA over the old range is write-locked
//!   (`vma_start_write`, which drains faults under its read lock), the PTEs move
//!   ([`PageTables::move_ptes`](crate::pgtable::PageTables::move_ptes): both PTE locks, the
//!   source's first), and the old range is unmapped as by `munmap`: the downgrade, then one
//!   shootdown covering the moved PTEs before the old tables are freed.
//!
//! Faults on either range while this runs find the VMA write-locked, missing or detached, fall
//! back to `mmap_lock` and wait; they then see the finished result: the pages at their new
//! address, nothing at the old one.
//!
//! # Errors (Linux's checks, in Linux's order)
//! Bad flags, an unaligned old address, a new length of zero, and for a given new address
//! (`FIXED`, `DONTUNMAP`) an unaligned one, no `MAYMOVE`, a resize with `DONTUNMAP`, an overlap
//! with the old range or a range outside the user half are [`MremapError`]s before any lock.
//! Then: no VMA at the old address or an old range that runs past it, `EFAULT`; an old length
//! of zero (duplicating a shared mapping; private ones cannot be), `EINVAL`; no room to grow in
//! place without `MAYMOVE`, or nowhere to move, `ENOMEM`.
//!
//! If, after the PTEs moved, the tree cannot allocate the node that removing the old range
//! needs, the old range stays mapped with no pages (Linux's move_vma does the same).

use core::ops::Range;

use super::munmap::unmap_downgraded;
use super::rewrite::{Attr, Edit, rewrite_edit};
use super::{MMAP_MIN_ADDR, PAGE, RangeError, TreeOutOfMemory, rewrite, user_range};
use crate::address_space::AddressSpace;
use crate::maple::GapDir;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;

bitflags::bitflags! {
    /// `MREMAP_*` flags.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MremapFlags: u32 {
        /// `MREMAP_MAYMOVE`: the mapping may move if it cannot grow in place.
        const MAYMOVE = 1;
        /// `MREMAP_FIXED`: move to exactly `new_addr`, replacing what is mapped there.
        const FIXED = 2;
        /// `MREMAP_DONTUNMAP`: move, but leave the old range mapped (with no pages).
        const DONTUNMAP = 4;
    }
}

/// Why `mremap` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MremapError {
    /// Unknown flags, `FIXED` or `DONTUNMAP` without `MAYMOVE`, or `DONTUNMAP` with a resize
    /// (`EINVAL`).
    BadFlags,
    /// An unaligned address, a new length of zero (or overflowing), or a new range outside the
    /// user half (`EINVAL`).
    BadRange(RangeError),
    /// The new range overlaps the old one (`EINVAL`).
    Overlap,
    /// An old length of zero, which duplicates a shared mapping; this one is private (`EINVAL`).
    NotShared,
    /// The old range is not inside one mapping (`EFAULT`).
    NotMapped,
    /// It cannot grow in place and may not move, or there is no free range to move to
    /// (`ENOMEM`).
    NoSpace,
    /// No memory for page tables or the VMA tree (`ENOMEM`); nothing changed, except that a
    /// `FIXED` destination may have been unmapped.
    OutOfMemory,
}

impl From<TreeOutOfMemory> for MremapError {
    fn from(_: TreeOutOfMemory) -> Self {
        MremapError::OutOfMemory
    }
}

/// `PAGE_ALIGN(len)`, or `None` if it overflows.
fn page_align(len: u64) -> Option<u64> {
    Some(len.checked_add(PAGE - 1)? & !(PAGE - 1))
}

impl<P: Platform> AddressSpace<P> {
    /// `mremap(old_addr, old_len, new_len, flags, new_addr)` with Linux's semantics for private
    /// anonymous memory (see the module header). Returns the mapping's (new) address.
    ///
    /// Locks: takes `mmap_lock` for write (downgraded to read for an unmap part); none held on
    /// exit; may block after releasing it.
    pub fn mremap(
        &self,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, MremapError> {
        let flags = MremapFlags::from_bits(flags).ok_or(MremapError::BadFlags)?;
        if !old_addr.is_multiple_of(PAGE) {
            return Err(MremapError::BadRange(RangeError::Unaligned));
        }
        let new_len = match page_align(new_len) {
            Some(0) => return Err(MremapError::BadRange(RangeError::ZeroLength)),
            Some(l) => l,
            None => return Err(MremapError::BadRange(RangeError::Overflow)),
        };
        let to_new_addr = flags.intersects(MremapFlags::FIXED | MremapFlags::DONTUNMAP);
        if to_new_addr {
            check_new_addr(flags, old_addr, old_len, new_addr, new_len)?;
        }
        // An old length that overflows when aligned is 0, as in Linux.
        let old_len = page_align(old_len).unwrap_or(0);

        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        let vma = self
            .find_vma_locked(old_addr)
            .ok_or(MremapError::NotMapped)?;
        if old_len == 0 {
            return Err(MremapError::NotShared);
        }
        if old_len > vma.end() - old_addr {
            return Err(MremapError::NotMapped);
        }
        let old = old_addr..old_addr + old_len;
        if to_new_addr {
            return self.mremap_to(g, old, vma.attr(), new_len, flags, new_addr);
        }
        if new_len <= old_len {
            if new_len < old_len {
                let tail = old_addr + new_len..old.end;
                rewrite(self, &g, tail.clone(), None)?;
                unmap_downgraded(self, g, tail, crate::pgtable::ZapFlush::empty());
            }
            return Ok(old_addr);
        }
        let grown = old.end..old_addr.saturating_add(new_len);
        if old.end == vma.end() && grown.end <= USER_END && self.vmas_in(grown.clone()).is_empty() {
            // `vma_expand`: a longer VMA replaces it (merged with an equal neighbour after).
            rewrite_edit(self, &g, grown, Edit::Map(vma.attr()))?;
            return Ok(old_addr);
        }
        if !flags.contains(MremapFlags::MAYMOVE) {
            return Err(MremapError::NoSpace);
        }
        let start = self
            .tree()
            .find_gap(new_len, PAGE, MMAP_MIN_ADDR, USER_END, GapDir::TopDown)
            .ok_or(MremapError::NoSpace)?;
        self.move_vma(g, old, vma.attr(), start..start + new_len, true)
    }

    /// `mremap_to`: the move to a given address (`FIXED`: exactly there, replacing what is
    /// mapped; `DONTUNMAP` alone: a hint), after unmapping the part of the old range beyond the
    /// new length.
    ///
    /// Locks: `mmap_lock` for write (`g`) on entry; none on exit.
    fn mremap_to(
        &self,
        g: MmapWriteGuard<'_, P>,
        mut old: Range<u64>,
        attr: Attr,
        new_len: u64,
        flags: MremapFlags,
        new_addr: u64,
    ) -> Result<u64, MremapError> {
        let fixed = flags.contains(MremapFlags::FIXED);
        let unmap = |range: Range<u64>| -> Result<(), MremapError> {
            rewrite(self, &g, range.clone(), None)?;
            let zap = self.page_tables().zap(&g, range);
            zap.flush(self.memory(), self.cpus());
            Ok(())
        };
        if fixed {
            unmap(new_addr..new_addr + new_len)?;
        }
        if new_len < old.end - old.start {
            unmap(old.start + new_len..old.end)?;
            old.end = old.start + new_len;
        }
        let dest = if fixed {
            new_addr..new_addr + new_len
        } else {
            match user_range(new_addr, new_len) {
                Ok(hint) if self.vmas_in(hint.clone()).is_empty() => hint,
                _ => {
                    let start = self
                        .tree()
                        .find_gap(new_len, PAGE, MMAP_MIN_ADDR, USER_END, GapDir::TopDown)
                        .ok_or(MremapError::NoSpace)?;
                    start..start + new_len
                }
            }
        };
        let unmap_old = !flags.contains(MremapFlags::DONTUNMAP);
        self.move_vma(g, old, attr, dest, unmap_old)
    }

    /// `move_vma`: maps `dest` (free) with `attr` (the moved VMA's protection and flags), moves the PTEs of `old` (inside one VMA, no
    /// longer than `dest`) to its start, and unmaps `old` unless `unmap_old` is false.
    ///
    /// Locks: `mmap_lock` for write (`g`) on entry; none on exit.
    fn move_vma(
        &self,
        g: MmapWriteGuard<'_, P>,
        old: Range<u64>,
        attr: Attr,
        dest: Range<u64>,
        unmap_old: bool,
    ) -> Result<u64, MremapError> {
        debug_assert!(old.end - old.start <= dest.end - dest.start);
        debug_assert!(self.vmas_in(dest.clone()).is_empty());
        let pt = self.page_tables();
        // Tables first: after this nothing can fail until the PTEs have moved. On failure the
        // zap frees the tables this allocated (the range has no VMA, so it has no PTEs).
        let cleanup = |g: &MmapWriteGuard<'_, P>| {
            pt.zap(g, dest.clone()).flush(self.memory(), self.cpus());
        };
        if pt.alloc_range(dest.clone()).is_err() {
            cleanup(&g);
            return Err(MremapError::OutOfMemory);
        }
        // A shared mapping keeps its object; the page mapped at `old.start` is at `dest.start`.
        let (prot, flags, shared) = attr;
        let shared = shared.map(|l| l.moved(old.start, dest.start));
        if rewrite_edit(self, &g, dest.clone(), Edit::Map((prot, flags, shared))).is_err() {
            cleanup(&g);
            return Err(MremapError::OutOfMemory);
        }
        for v in self.vmas_in(old.clone()) {
            // Lock order: mmap_lock (write) > VMA write lock. Drains the faults running under
            // its read lock; later ones fall back to mmap_lock.
            v.start_write(&g);
        }
        debug_assert!(
            self.vmas_in(dest.clone())
                .iter()
                .all(|v| v.lock().is_write_locked_by(&g))
        );
        let moved = pt.move_ptes(&g, old.clone(), dest.start);
        if unmap_old && rewrite(self, &g, old.clone(), None).is_ok() {
            unmap_downgraded(self, g, old, moved);
        } else {
            // The old range stays mapped, without pages (DONTUNMAP, or no memory to remove it).
            moved.flush(self.memory(), self.cpus());
            drop(g);
            self.memory().rcu().throttle();
        }
        Ok(dest.start)
    }
}

/// The checks of a given new address (`FIXED`, `DONTUNMAP`), before any lock.
fn check_new_addr(
    flags: MremapFlags,
    old_addr: u64,
    old_len: u64,
    new_addr: u64,
    new_len: u64,
) -> Result<(), MremapError> {
    if !new_addr.is_multiple_of(PAGE) {
        return Err(MremapError::BadRange(RangeError::Unaligned));
    }
    if !flags.contains(MremapFlags::MAYMOVE) {
        return Err(MremapError::BadFlags);
    }
    if flags.contains(MremapFlags::DONTUNMAP) && page_align(old_len) != Some(new_len) {
        return Err(MremapError::BadFlags);
    }
    let old_end = old_addr.saturating_add(old_len);
    let new_end = new_addr.saturating_add(new_len);
    if old_end > new_addr && new_end > old_addr {
        return Err(MremapError::Overlap);
    }
    if new_len > USER_END || new_addr > USER_END - new_len {
        return Err(MremapError::BadRange(RangeError::OutOfRange));
    }
    if flags.contains(MremapFlags::FIXED) && new_addr < MMAP_MIN_ADDR {
        return Err(MremapError::BadRange(RangeError::OutOfRange));
    }
    Ok(())
}
