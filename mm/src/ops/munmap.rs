//! `munmap`: removes any sub-range of the mappings.

use super::{RangeError, TreeOutOfMemory, rewrite, user_range};
use crate::address_space::AddressSpace;
use crate::platform::Platform;

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
    /// Locks: takes `mmap_lock` for write; may block after releasing it.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), MunmapError> {
        let range = user_range(addr, len).map_err(MunmapError::BadRange)?;
        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        rewrite(self, &g, range.clone(), None)
            .map_err(|TreeOutOfMemory| MunmapError::OutOfMemory)?;
        let zap = self.page_tables().zap(&g, range);
        zap.flush(self.memory(), self.cpus());
        drop(g);
        self.memory().rcu().throttle();
        Ok(())
    }
}
