//! Stack growth: `expand_downwards` of a `VM_GROWSDOWN` VMA, reached from the fault path.
//!
//! A fault below a stack cannot grow it under the VMA read lock (or `mmap_lock` for read): growing
//! changes the VMA set. So the fault path, finding no VMA at the address but a stack above it,
//! drops its lock and calls [`AddressSpace::expand_stack`], which takes `mmap_lock` for write,
//! looks again (another fault may have grown the stack meanwhile, or a `munmap` removed it), and
//! replaces the stack VMA with a longer one. As in every change of the VMA set, the old VMA is
//! write-locked first (`vma_start_write`), which waits for the faults that hold its read lock
//! and makes later ones fall back to `mmap_lock`, and only then is the replacement stored and the
//! old one detached. The fault then retries under `mmap_lock` for read and finds the grown VMA.
//! Linux 6.5+ takes the same path (`lock_mm_and_find_vma` upgrading to the write lock).
//!
//! Growth follows Linux's `expand_downwards` and `acct_stack_growth`: the new start is the
//! faulting page; it must not come within [`STACK_GUARD_GAP`] of the accessible mapping below
//! (one without `VM_GROWSDOWN` and not `PROT_NONE`), and the stack must stay within
//! [`STACK_LIMIT`] (Linux's default `RLIMIT_STACK`). There is no limit on how far below the
//! stack the fault may land (Linux dropped its stack-pointer check in 4.20). `mmap` keeps the
//! guard gap below a stack free (`vm_start_gap`).

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{MMAP_MIN_ADDR, PAGE};
use crate::address_space::AddressSpace;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;
use crate::vma::Vma;

/// Linux's `stack_guard_gap`: 256 pages kept free below a stack.
pub const STACK_GUARD_GAP: u64 = 256 * PAGE;

/// The largest a stack may grow to: Linux's default `RLIMIT_STACK` (8 MiB).
pub const STACK_LIMIT: u64 = 8 << 20;

/// Why a stack could not grow down to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpandError {
    /// No `VM_GROWSDOWN` VMA lies above the address (or one contains it already).
    NotStack,
    /// The address is below [`MMAP_MIN_ADDR`].
    TooLow,
    /// The stack would come within [`STACK_GUARD_GAP`] of the mapping below.
    GuardGap,
    /// The stack would exceed [`STACK_LIMIT`].
    TooBig,
    /// No memory for the VMA tree.
    OutOfMemory,
}

/// Linux's `vm_start_gap`: where the free space below `vma` must end (its start, less the guard
/// gap for a stack).
pub(crate) fn vm_start_gap(vma: &Vma) -> u64 {
    if vma.grows_down() {
        vma.start()
            .saturating_sub(STACK_GUARD_GAP)
            .max(MMAP_MIN_ADDR)
    } else {
        vma.start()
    }
}

impl<P: Platform> AddressSpace<P> {
    /// Grows the stack above `addr` down to `addr`'s page (the fault path's slow path for a
    /// fault below a stack). `Ok` if the address is in a VMA afterwards (also when another fault
    /// grew the stack first).
    ///
    /// Locks: none on entry (takes and drops `mmap_lock` for write); none on exit.
    pub fn expand_stack(&self, addr: u64) -> Result<(), ExpandError> {
        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        let Some(next) = self
            .vmas_in(addr..crate::pgtable::USER_END)
            .into_iter()
            .next()
        else {
            return Err(ExpandError::NotStack);
        };
        if next.contains(addr) {
            return Ok(());
        }
        expand_downwards(self, &g, &next, addr)
    }
}

/// Linux's `expand_downwards`: replaces the stack `vma` by one that starts at `addr`'s page.
///
/// Locks: `mmap_lock` for write (`g`) on entry and exit; write-locks `vma` (and the VMA below
/// if the two merge) until `g` drops.
pub(crate) fn expand_downwards<P: Platform>(
    mm: &AddressSpace<P>,
    g: &MmapWriteGuard<'_, P>,
    vma: &Arc<Vma>,
    addr: u64,
) -> Result<(), ExpandError> {
    debug_assert!(g.holds(mm.mmap_lock()));
    if !vma.grows_down() || addr >= vma.start() {
        return Err(ExpandError::NotStack);
    }
    let start = addr & !(PAGE - 1);
    if start < MMAP_MIN_ADDR {
        return Err(ExpandError::TooLow);
    }
    let prev = mm
        .vmas_in(start.saturating_sub(STACK_GUARD_GAP)..start)
        .pop();
    if let Some(p) = &prev
        && !p.grows_down()
        && !p.prot().is_empty()
        && start - p.end() < STACK_GUARD_GAP
    {
        return Err(ExpandError::GuardGap);
    }
    if vma.end() - start > STACK_LIMIT {
        return Err(ExpandError::TooBig);
    }
    // A stack or PROT_NONE VMA below may be reached; one with the same attributes merges.
    let merge = prev.filter(|p| p.end() == start && p.attr() == vma.attr());
    let mut removed: Vec<&Arc<Vma>> = Vec::from([vma]);
    removed.extend(merge.as_ref());
    let new_start = merge.as_ref().map_or(start, |p| p.start());
    // Faults holding the old VMA's read lock finish first; later ones fall back to mmap_lock
    // until `g` drops. Only then does the VMA set change around them.
    for v in &removed {
        // Lock order: mmap_lock (write) > VMA write lock.
        v.start_write(g);
    }
    let grown = Vma::new_locked_attr(g, mm.id(), new_start..vma.end(), vma.attr());
    grown.lock().mark_attached(g);
    if mm
        .tree()
        .store_span(grown.range(), Vec::from([(grown.range(), grown.clone())]))
        .is_err()
    {
        grown.lock().mark_detached(g);
        return Err(ExpandError::OutOfMemory);
    }
    for v in removed {
        v.lock().mark_detached(g);
    }
    Ok(())
}
