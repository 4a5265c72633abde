//! `exit_mmap`: the memory of an address space whose last thread has exited.
//!
//! Linux frees a process's memory when its last thread exits (`exit_mm` -> `mmput` ->
//! `exit_mmap`), long before a parent reaps it: a zombie keeps only its task record. Here the
//! same: [`exit_mmap`](AddressSpace::exit_mmap) removes every VMA, clears every PTE and frees
//! the page-table pages below the root, leaving an empty address space whose root (still loaded
//! on the exiting CPU) goes with the last reference to it.

use crate::address_space::AddressSpace;
use crate::pgtable::ZapFlush;
use crate::platform::Platform;

use super::{TreeOutOfMemory, rewrite};

impl<P: Platform> AddressSpace<P> {
    /// `exit_mmap`: unmaps everything. Every VMA is write-locked, then removed from the tree;
    /// the PTEs of their ranges are cleared, the emptied PTE tables and then every upper-level
    /// table unhooked, the TLBs of every CPU that ran the address space shot down, and only
    /// then are the frames freed (frames shared with a fork's relative lose one mapping; tables
    /// go after an RCU grace period). The address space stays usable: it is simply empty.
    ///
    /// If the tree cannot allocate the node that removing the VMAs takes, the VMAs stay (with
    /// no page behind them; their tree memory goes when the address space is dropped); the
    /// frames and tables are freed all the same.
    ///
    /// Locks: takes `mmap_lock` for write; may block after releasing it.
    pub fn exit_mmap(&self) {
        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        let vmas = self.vmas();
        for v in &vmas {
            // Lock order: mmap_lock (write) > VMA write lock. Faults already under a VMA read
            // lock finish first; later ones find it locked and wait on mmap_lock.
            v.start_write(&g);
        }
        if let (Some(first), Some(last)) = (vmas.first(), vmas.last()) {
            // Out of tree memory keeps the VMAs (see above): nothing to undo.
            let _: Result<_, TreeOutOfMemory> = rewrite(self, &g, first.start()..last.end(), None);
        }
        let mut zap = ZapFlush::empty();
        for v in &vmas {
            zap.merge(self.page_tables().zap(&g, v.range()));
        }
        self.page_tables().free_user_tables(&g, &mut zap);
        zap.flush(self.memory(), self.cpus());
        drop(g);
        self.memory().rcu().throttle();
    }
}
