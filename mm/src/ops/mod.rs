//! Address-space operations: [`mmap`](crate::address_space::AddressSpace::mmap),
//! [`munmap`](crate::address_space::AddressSpace::munmap), [`mprotect`](crate::address_space::AddressSpace::mprotect),
//! [`madvise`](crate::address_space::AddressSpace::madvise).
//!
//! Every operation validates its arguments (an error, never a panic). `madvise` changes no VMA
//! and runs under read locks (see its module). The others take `mmap_lock` for write, and
//! rewrite the VMAs around the affected range with [`rewrite`]: it computes the new
//! layout (the edit applied, then adjacent VMAs of equal protection merged), write-locks every
//! VMA over the edited range and every VMA that changes (`vma_start_write`), replaces the
//! changed ones in the tree with their replacements (complete and write-locked from birth) in
//! one tree write, so running out of memory leaves everything as it was, and detaches the old
//! ones. Page-table changes of the edited range follow while everything is still locked, and
//! their flush token is flushed before the lock drops. Faults on the affected range meanwhile
//! fail the lockless path (VMA missing, detached or locked) and wait on `mmap_lock`.
//!
//! A VMA over the edited range is write-locked even when the layout keeps it as it is (a
//! `MAP_FIXED` mapping with the protection it already has over part of it): its pages still
//! change, and a fault under its read lock must not run while they do (`pgtable::zap`). The
//! outcome equals unmapping the range and mapping it anew: the same VMAs, the pages gone.

mod madvise;
mod mmap;
mod mprotect;
mod munmap;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

pub use madvise::{
    MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_NORMAL, MADV_RANDOM,
    MADV_SEQUENTIAL, MADV_WILLNEED, MadviseError,
};
pub use mmap::{MapFlags, MmapError};
pub use mprotect::MprotectError;
pub use munmap::MunmapError;

use crate::address_space::AddressSpace;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;
use crate::vma::{Prot, Vma};

/// The lowest address a mapping may start at (page 0 stays unmapped to catch null pointers).
pub const MMAP_MIN_ADDR: u64 = 0x1000;
const PAGE: u64 = 4096;

/// What is wrong with an address range argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Length zero.
    ZeroLength,
    /// Address not page-aligned.
    Unaligned,
    /// `addr + len` (rounded up to a page) overflows.
    Overflow,
    /// Not inside `[MMAP_MIN_ADDR, USER_END)`.
    OutOfRange,
}

/// `[addr, addr + len)` with `len` rounded up to pages, checked to lie in the user half.
pub(crate) fn user_range(addr: u64, len: u64) -> Result<Range<u64>, RangeError> {
    if len == 0 {
        return Err(RangeError::ZeroLength);
    }
    if !addr.is_multiple_of(PAGE) {
        return Err(RangeError::Unaligned);
    }
    let len = len.checked_add(PAGE - 1).ok_or(RangeError::Overflow)? & !(PAGE - 1);
    let end = addr.checked_add(len).ok_or(RangeError::Overflow)?;
    if addr < MMAP_MIN_ADDR || end > USER_END {
        return Err(RangeError::OutOfRange);
    }
    Ok(addr..end)
}

/// The tree could not allocate a node while VMAs were being replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TreeOutOfMemory;

/// Gives `edit` the protection `new` (`None`: unmapped), merging with neighbours of equal
/// protection, as described in the module header. Returns the VMAs that were replaced (already
/// write-locked and detached).
///
/// Locks: `mmap_lock` for write (`g`) on entry and exit; write-locks every VMA over `edit`
/// (the caller changes its pages next) and every VMA it replaces, until `g` drops.
pub(crate) fn rewrite<P: Platform>(
    mm: &AddressSpace<P>,
    g: &MmapWriteGuard<'_, P>,
    edit: Range<u64>,
    new: Option<Prot>,
) -> Result<Vec<Arc<Vma>>, TreeOutOfMemory> {
    debug_assert!(g.holds(mm.mmap_lock()));
    let window = edit.start.saturating_sub(PAGE)..edit.end.saturating_add(PAGE).min(USER_END);
    let old = mm.vmas_in(window);
    for v in old
        .iter()
        .filter(|v| v.start() < edit.end && v.end() > edit.start)
    {
        // Lock order: mmap_lock (write) > VMA write lock.
        v.start_write(g);
    }

    // The new layout of the area the old VMAs and the edit cover.
    let mut segs: Vec<(Range<u64>, Prot)> = Vec::with_capacity(old.len() + 2);
    for v in &old {
        if v.start() < edit.start {
            segs.push((v.start()..v.end().min(edit.start), v.prot()));
        }
        if v.end() > edit.end {
            segs.push((v.start().max(edit.end)..v.end(), v.prot()));
        }
    }
    if let Some(p) = new {
        segs.push((edit.clone(), p));
    }
    segs.sort_by_key(|(r, _)| r.start);
    let mut merged: Vec<(Range<u64>, Prot)> = Vec::with_capacity(segs.len());
    for (r, p) in segs {
        match merged.last_mut() {
            Some((last, lp)) if last.end == r.start && *lp == p => last.end = r.end,
            _ => merged.push((r, p)),
        }
    }

    // Keep VMAs the rewrite leaves exactly as they were; build the others.
    let mut removed: Vec<Arc<Vma>> = Vec::new();
    let mut kept = Vec::new();
    for v in old {
        if merged
            .iter()
            .any(|(r, p)| *r == v.range() && *p == v.prot())
        {
            kept.push(v.range());
        } else {
            removed.push(v);
        }
    }
    let added: Vec<Arc<Vma>> = merged
        .into_iter()
        .filter(|(r, _)| !kept.contains(r))
        .map(|(r, p)| Vma::new_locked(g, mm.id(), r, p))
        .collect();
    if removed.is_empty() && added.is_empty() {
        return Ok(removed);
    }
    // What changes is one run of addresses: the edit, the VMAs it replaces (whole) and their
    // replacements. No kept VMA overlaps it (a kept VMA that met the edit would contain it and
    // have its protection, and then nothing changes at all).
    let span = removed
        .iter()
        .chain(added.iter())
        .map(|v| v.range())
        .fold(edit.clone(), |a, r| a.start.min(r.start)..a.end.max(r.end));
    debug_assert!(
        kept.iter()
            .all(|k| k.end <= span.start || k.start >= span.end)
    );

    for v in &removed {
        // Lock order: mmap_lock (write) > VMA write lock.
        v.start_write(g);
    }
    for v in &added {
        // Complete and write-locked (stamped by `new_locked`) before the tree can show it.
        v.lock().mark_attached(g);
    }
    // One tree write: if it runs out of memory nothing changed, and the removed VMAs, still in
    // the tree and attached, are only write-locked until `g` drops. The tree drops its copies of
    // the removed VMAs after a grace period.
    let entries = added.into_iter().map(|v| (v.range(), v)).collect();
    if mm.tree().store_span(span, entries).is_err() {
        return Err(TreeOutOfMemory);
    }
    for v in &removed {
        v.lock().mark_detached(g);
    }
    Ok(removed)
}

#[cfg(all(test, not(loom)))]
mod madvise_tests;
#[cfg(all(test, not(loom)))]
mod tests;
