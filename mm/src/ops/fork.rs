//! `dup_mmap`: the address-space half of `fork`.
//!
//! The child gets a copy of every VMA (same range and protection) and page tables of its own,
//! built fresh; private anonymous pages are shared copy-on-write. The protocol, in Linux's
//! order (and with Linux's 6.4 fix, "fork: lock VMAs of the parent process when forking"):
//!
//! 1. `mmap_lock` of the parent for write, then the child's (new, so uncontended).
//! 2. For each parent VMA, in address order: `vma_start_write` *before* its page tables are
//!    read. Faults on the parent under a VMA read lock would otherwise run while the copy is
//!    under way: a `wp_page_copy` on a PTE already write-protected here copies the frame while
//!    another thread of the parent still writes to it through a writable TLB entry that is only
//!    shot down at step 4, and that write lands in the frame the child keeps: lost to the parent.
//! 3. Under each parent PTE lock: every frame-holding PTE is write-protected in the parent
//!    (compare-and-swap: the MMU may set A/D meanwhile) and the frame's reference and map counts
//!    are raised for the child's PTE (the zero frame is shared as it is, uncounted). The child's
//!    PTEs are set afterwards under the child's PTE lock: the two PTE locks are never held
//!    together.
//! 4. One shootdown of the write-protected span to the CPUs that ran the parent, then both
//!    `mmap_lock`s drop (and with them every VMA write lock).
//!
//! A shared VMA (`MAP_SHARED`) is copied with its object and no PTEs: the child faults the
//! object's pages in, and a write on either side goes to the one shared page.
//!
//! After that a write on either side faults into `do_wp_page`, which reuses a frame mapped once
//! and owned by nobody else, and copies one still shared (`fault::anon`).
//!
//! Out of memory (a page table of the child, a tree node) fails the fork with
//! [`ForkError::OutOfMemory`]; the caller drops the child, which gives back every reference it
//! took. The parent's VMAs, contents and frame counts are then as before; PTEs already
//! write-protected stay so (the next write reuses the frame in place, as in Linux).

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::Ordering;

use crate::address_space::AddressSpace;
use crate::frame::FrameRef;
use crate::maple::InsertError;
use crate::pgtable::{PMD_SIZE, Pte, USER_END, pmd_chunks};
use crate::platform::{PageTableFlags, Platform, VirtAddr};
use crate::sync::MmapWriteGuard;
use crate::vma::Vma;

/// Why `dup_mmap` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkError {
    /// No memory for the child's page tables or VMA tree (or for its address space).
    OutOfMemory,
    /// The address space given as the child is not empty.
    ChildNotEmpty,
}

#[cfg(test)]
std::thread_local! {
    /// Test knob: `dup_mmap` on this thread skips `vma_start_write` on the parent's VMAs, to
    /// show what the race test finds without it.
    static SKIP_PARENT_VMA_LOCK: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Makes `dup_mmap` on the calling thread skip (or not) the parent VMA write locks.
#[cfg(test)]
pub(crate) fn skip_parent_vma_lock(skip: bool) {
    SKIP_PARENT_VMA_LOCK.with(|s| s.set(skip));
}

impl<P: Platform> AddressSpace<P> {
    /// `fork`'s memory: a new address space (no kernel half) that is a copy-on-write copy of
    /// this one, as [`dup_mmap`](Self::dup_mmap) makes it.
    pub fn fork(&self) -> Result<AddressSpace<P>, ForkError> {
        let child = AddressSpace::new(self.memory()).map_err(|_| ForkError::OutOfMemory)?;
        self.dup_mmap(&child)?;
        Ok(child)
    }

    /// `dup_mmap`: fills the empty address space `child` with a copy of every VMA of this one
    /// and shares their pages copy-on-write, in the order the module header gives.
    ///
    /// Locks: takes this address space's `mmap_lock` for write, then the child's, and
    /// write-locks every VMA of this one; all are released on return. May block.
    pub fn dup_mmap(&self, child: &AddressSpace<P>) -> Result<(), ForkError> {
        // Lock order: the parent's mmap_lock (write), then the child's, which nobody else can
        // reach yet (Linux's `mmap_write_lock_nested`).
        let g = self.mmap_write_lock();
        let cg = child.mmap_write_lock();
        if !child.vmas().is_empty() {
            return Err(ForkError::ChildNotEmpty);
        }
        // The program break and where mmap searches from are the parent's (Linux's `dup_mm`
        // copies the whole `mm_struct` first).
        for (from, to) in [
            (&self.start_brk, &child.start_brk),
            (&self.brk, &child.brk),
            (&self.mmap_base, &child.mmap_base),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let mut wp: Option<Range<u64>> = None;
        let result = self.dup_vmas(&g, child, &cg, &mut wp);
        // `flush_tlb_mm`: before the parent's lock drops, so a fault after it copies only a
        // frame no parent CPU can still write through an old writable entry. Also on failure:
        // some PTEs may have been write-protected.
        if let Some(r) = wp {
            let pages = ((r.end - r.start) / 4096) as usize;
            self.memory()
                .platform()
                .shootdown(self.cpus(), VirtAddr::new(r.start), pages);
        }
        drop(cg);
        drop(g);
        self.memory().rcu().throttle();
        result
    }

    /// Copies every VMA and its pages into `child`, widening `wp` by every PTE write-protected.
    fn dup_vmas(
        &self,
        g: &MmapWriteGuard<'_, P>,
        child: &AddressSpace<P>,
        cg: &MmapWriteGuard<'_, P>,
        wp: &mut Option<Range<u64>>,
    ) -> Result<(), ForkError> {
        for vma in self.vmas_in(0..USER_END) {
            #[cfg(test)]
            let lock = !SKIP_PARENT_VMA_LOCK.with(|s| s.get());
            #[cfg(not(test))]
            let lock = true;
            if lock {
                // Lock order: mmap_lock (write) > VMA write lock. Before any PTE is read: see
                // the module header.
                vma.start_write(g);
            }
            let copy = Vma::new_locked_attr(cg, child.id(), vma.range(), vma.attr());
            copy.lock().mark_attached(cg);
            if let Err(e) = child.tree().insert(copy.range(), copy) {
                let (InsertError::NoMemory(v)
                | InsertError::Overlap(v)
                | InsertError::InvalidRange(v)) = e;
                v.lock().mark_detached(cg);
                return Err(ForkError::OutOfMemory);
            }
            if vma.shared().is_some() {
                // The child maps the same object; its faults find the pages there (Linux leaves
                // shared mappings to fault too). Nothing to write-protect: writes are shared.
                continue;
            }
            for chunk in pmd_chunks(vma.range()) {
                self.copy_pte_range(child, chunk, wp)?;
            }
        }
        Ok(())
    }

    /// `copy_pte_range` for one PTE table's worth of `range` (inside one VMA, both `mmap_lock`s
    /// held for write, the parent VMA write-locked).
    fn copy_pte_range(
        &self,
        child: &AddressSpace<P>,
        chunk: Range<u64>,
        wp: &mut Option<Range<u64>>,
    ) -> Result<(), ForkError> {
        debug_assert!(chunk.end - chunk.start <= PMD_SIZE);
        let frames = self.memory().frames();
        let zero = frames.zero_frame();
        let mut shared: Vec<(u64, PageTableFlags, FrameRef<'_, P>)> = Vec::new();
        {
            // Lock order: mmap_lock (write) > PTE lock (the parent's; the child's is taken
            // after this one is dropped).
            let Some(pte) = self.page_tables().pte_offset_map_lock(chunk.start) else {
                return Ok(());
            };
            for addr in chunk.step_by(4096) {
                let mut old = pte.get(addr);
                if !old.holds_frame() {
                    continue;
                }
                while old.writable() {
                    let ro = old.with_flags(old.flags() - PageTableFlags::WRITABLE);
                    match pte.replace(addr, old, ro) {
                        Ok(_) => {
                            old = ro;
                            let page = addr..addr + 4096;
                            *wp = Some(match wp.take() {
                                Some(r) => r.start.min(page.start)..r.end.max(page.end),
                                None => page,
                            });
                        }
                        // The MMU set A/D meanwhile.
                        Err(now) => old = now,
                    }
                }
                // The child's PTE holds a reference of its own (the zero frame's is free);
                // `pte_mkold`: its first access sets Accessed.
                let flags = old.flags() - PageTableFlags::ACCESSED;
                shared.push((addr, flags, frames.get(old.frame())));
            }
        }
        let Some(&(first, ..)) = shared.first() else {
            return Ok(());
        };
        let cpt = child.page_tables();
        let cpte = loop {
            let pmd = cpt.pmd_alloc(first).map_err(|_| ForkError::OutOfMemory)?;
            cpt.pte_alloc(pmd).map_err(|_| ForkError::OutOfMemory)?;
            // Lock order: mmap_lock (write) > PTE lock (the child's). Only a zap under the
            // child's write lock could unhook the table meanwhile; we hold that lock.
            if let Some(g) = cpt.pte_offset_map_lock(first) {
                break g;
            }
        };
        for (addr, flags, frame) in shared {
            if frame.frame() != zero {
                frames.meta(frame.frame()).map();
            }
            cpte.set(addr, Pte::new(frame.into_raw(), flags));
        }
        Ok(())
    }
}
