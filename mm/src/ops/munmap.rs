//! `munmap`: removes any sub-range of the mappings.

use core::ops::Range;

use super::{RangeError, TreeOutOfMemory, rewrite, user_range};
use crate::address_space::AddressSpace;
use crate::pgtable::ZapFlush;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;

/// Why `munmap` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MunmapError {
    /// The address or length is invalid.
    BadRange(RangeError),
    /// No memory for the VMA tree (splitting a VMA needs a node).
    OutOfMemory,
}

impl<P: Platform> AddressSpace<P> {
    /// `munmap(addr, len)`: unmaps every page of the range (holes are fine), splitting VMAs that
    /// stick out of it, then clears the PTEs, shoots down the TLBs of every CPU that ran this
    /// address space, and only then frees the frames. Emptied page tables, tree nodes and the
    /// old VMAs are freed after an RCU grace period; with too many such frees queued, the caller
    /// helps run them once the lock is dropped ([`Rcu::throttle`](crate::rcu::Rcu::throttle)).
    ///
    /// Locks: takes `mmap_lock` for write, detaches the VMAs, then downgrades it to read
    /// (`mmap_write_downgrade`, which runs `vma_end_write_all`) for the zap and the frees, so
    /// faults on other VMAs that wait for `mmap_lock` get in meanwhile; may block after
    /// releasing it.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), MunmapError> {
        let range = user_range(addr, len).map_err(MunmapError::BadRange)?;
        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        rewrite(self, &g, range.clone(), None)
            .map_err(|TreeOutOfMemory| MunmapError::OutOfMemory)?;
        unmap_downgraded(self, g, range, ZapFlush::empty());
        Ok(())
    }
}

/// The second half of an unmap (Linux's `do_vmi_align_munmap` with `unlock`): the VMAs of
/// `range` were detached under `g`; downgrades it to a read hold, clears the range's PTEs, and
/// flushes them together with `moved` (PTEs `mremap` moved out of `range`): one shootdown,
/// then the frames and the emptied tables are freed. Faults that waited for `mmap_lock` run
/// meanwhile; none can reach `range` (it has no VMA), and a PTE table is freed only if no VMA
/// meets its span, so none of them is using it. Returns with no lock held.
pub(super) fn unmap_downgraded<P: Platform>(
    mm: &AddressSpace<P>,
    g: MmapWriteGuard<'_, P>,
    range: Range<u64>,
    moved: ZapFlush,
) {
    #[cfg(test)]
    crate::pgtable::tests::unmap_step();
    let r = g.downgrade();
    debug_assert!(mm.vmas_in(range.clone()).is_empty());
    let mut zap = mm
        .page_tables()
        .zap_detached(&r, range, |span| mm.vmas_in(span).is_empty());
    zap.merge(moved);
    zap.flush(mm.memory(), mm.cpus());
    drop(r);
    mm.memory().rcu().throttle();
}
