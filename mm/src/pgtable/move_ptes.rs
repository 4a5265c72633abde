//! `move_page_tables` for `mremap`: PTEs move to another range without copying data.
//!
//! The caller holds `mmap_lock` for write and has write-locked the VMAs over both ranges, so no
//! fault reads or changes a PTE of either range meanwhile (faults there wait on `mmap_lock`);
//! only the MMU and PTE-lock holders of other VMAs that share a table with them look at these
//! tables. Each piece that lies in one source and one destination table moves under both
//! tables' locks: the source's first, the destination's nested, as Linux's `move_ptes`. No
//! other thread ever holds two PTE locks of an address space (every other path takes one at a
//! time, and a second `mremap` waits for `mmap_lock`), so the pair cannot deadlock.
//!
//! An entry keeps its frame's reference and map count (it maps the same frame once, elsewhere);
//! the MMU cannot set Accessed/Dirty on an entry after it moved (its update is a compare-and-swap
//! on the value it walked). Other CPUs may still hold the source's translations: the returned
//! token must be flushed before the source's tables are freed or the source is mapped again.

use core::ops::Range;

use super::{PMD_SIZE, PageTables, ZapFlush, pmd_chunks};
use crate::frame::FrameAllocError;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;

impl<P: Platform> PageTables<P> {
    /// Allocates the page tables down to the PTE tables covering `range`, so that a following
    /// [`move_ptes`](Self::move_ptes) into it cannot fail. Tables this leaves empty are freed by
    /// a later zap of the range (or at teardown).
    pub fn alloc_range(&self, range: Range<u64>) -> Result<(), FrameAllocError> {
        for chunk in pmd_chunks(range) {
            let pmd = self.pmd_alloc(chunk.start)?;
            self.pte_alloc(pmd)?;
        }
        Ok(())
    }

    /// `move_ptes`: moves every PTE of `old` to the same offset from `new_start`. The
    /// destination must be free of PTEs, disjoint from `old`, and have its tables allocated
    /// ([`alloc_range`](Self::alloc_range)) under this same write hold `_proof`; the VMAs over
    /// both ranges must be write-locked.
    pub fn move_ptes(
        &self,
        _proof: &MmapWriteGuard<'_, P>,
        old: Range<u64>,
        new_start: u64,
    ) -> ZapFlush {
        debug_assert!(new_start >= old.end || new_start + (old.end - old.start) <= old.start);
        let next_table = |a: u64| (a | (PMD_SIZE - 1)) + 1;
        let mut moved = 0;
        let mut at = old.start;
        while at < old.end {
            let to = new_start + (at - old.start);
            let len = (next_table(at) - at)
                .min(next_table(to) - to)
                .min(old.end - at);
            // Lock order: mmap_lock (write) > the source's PTE lock > the destination's (nested).
            if let Some(src) = self.pte_offset_map_lock(at) {
                let nested;
                let dst = if src.base() == to & !(PMD_SIZE - 1) {
                    &src
                } else {
                    nested = self.pte_offset_map_lock_nested(to).expect(
                        "destination table allocated under this mmap_lock write hold, which \
                         alone may unhook it",
                    );
                    &nested
                };
                for off in (0..len).step_by(4096) {
                    let e = src.take(at + off);
                    if e.is_empty() {
                        continue;
                    }
                    debug_assert!(dst.get(to + off).is_empty(), "mremap onto a mapped PTE");
                    dst.set(to + off, e);
                    moved += 1;
                }
            }
            at += len;
        }
        ZapFlush::moved(old, moved)
    }
}
