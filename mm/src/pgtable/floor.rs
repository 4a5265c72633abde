//! The benchmark's floor probe: the least a page fault can do on this machine.
//!
//! [`PageTables::floor_map_anon`] walks (allocating missing levels), takes a zeroed frame and
//! installs it with one compare-and-swap: no VMA lookup, no VMA lock, no PTE lock. It exists only
//! so the fault path's cost can be reported as a ratio to it; nothing else may use it, because
//! it is correct only under the layout the benchmark guarantees (see its `# Safety`).

use core::sync::atomic::Ordering;

use super::{PageTables, Pte, index};
use crate::fault::profile::{self, Stamp};
use crate::frame::{FrameAllocError, FrameKind};
use crate::platform::{PageTableFlags, Platform};

impl<P: Platform> PageTables<P> {
    /// Maps a fresh zeroed anonymous frame at `addr` with `flags` if its PTE is empty. Returns
    /// whether this call installed it (`false`: the PTE was already set; the frame went back).
    ///
    /// The frame is accounted as any anonymous mapping (one reference, mapcount 1), so
    /// `munmap` and `madvise` later zap and free it through the normal paths.
    ///
    /// # Safety
    /// No zap that may unhook the PTE table covering `addr` (an `munmap`/`mmap` over any part
    /// of its 2 MiB) runs concurrently: the PTE is written without the table's lock, so an
    /// unhook racing it could free the table with the new entry in it, and the frame that
    /// table becomes next would be written through. The benchmark guarantees it by giving each
    /// worker whole PTE tables and having only that worker unmap them, between its faults.
    pub unsafe fn floor_map_anon(
        &self,
        addr: u64,
        flags: PageTableFlags,
    ) -> Result<bool, FrameAllocError> {
        let pmd = self.pmd_alloc(addr)?;
        self.pte_alloc(pmd)?;
        // Acquire: the table's zeroed contents, published by the CAS that installed it.
        let table = self.table(Pte::from_bits(pmd.load(Ordering::Acquire)).frame());
        let slot = &table[index(addr, 1)];
        let platform = &**self.mem.platform();
        profile::stamp(platform, Stamp::Pgtable);
        let frames = self.mem.frames();
        let frame = frames.alloc_zeroed(FrameKind::Anon)?;
        profile::stamp(platform, Stamp::Frame);
        frames.meta(frame.frame()).map();
        // Release: the zeroed frame is visible to whoever sees the entry.
        let installed = slot
            .compare_exchange(
                0,
                Pte::new(frame.frame(), flags).bits(),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok();
        if installed {
            // The PTE holds the reference now.
            let _ = frame.into_raw();
        } else {
            frames.meta(frame.frame()).unmap();
        }
        profile::stamp(platform, Stamp::Pte);
        Ok(installed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
    use crate::pgtable::{Pte, pte_flags_for};
    use crate::platform::PageTableFlags;
    use crate::testutil::{Env, PAGE, PIC_BASE, fixed};
    use crate::vma::Prot;

    #[test]
    fn a_floor_mapping_is_unmapped_and_freed_like_a_faulted_one() {
        let env = Env::new(4, 1);
        {
            let mm = env.mm();
            let rw = Prot::READ | Prot::WRITE;
            mm.mmap(PIC_BASE, 4 * PAGE, rw, fixed()).unwrap();
            let flags = pte_flags_for(rw, true) | PageTableFlags::ACCESSED | PageTableFlags::DIRTY;
            let pt = mm.page_tables();
            // SAFETY: nothing else runs on this address space.
            assert_eq!(unsafe { pt.floor_map_anon(PIC_BASE, flags) }, Ok(true));
            // SAFETY: as above.
            assert_eq!(unsafe { pt.floor_map_anon(PIC_BASE, flags) }, Ok(false));
            let e = pt.lookup_pte(PIC_BASE);
            assert!(e.flags().contains(PageTableFlags::WRITABLE));
            assert_eq!(env.mem.frames().meta(e.frame()).mapcount(), 1);
            // The normal fault path sees a present, writable page: nothing to do.
            let write = Access::user(AccessKind::Write);
            assert_eq!(handle_mm_fault(&mm, PIC_BASE, write), FaultResult::Resolved);
            assert_eq!(pt.lookup_pte(PIC_BASE).frame(), e.frame());
            mm.munmap(PIC_BASE, 4 * PAGE).unwrap();
            assert_eq!(pt.lookup_pte(PIC_BASE), Pte::EMPTY);
        }
        env.assert_baseline();
    }
}
