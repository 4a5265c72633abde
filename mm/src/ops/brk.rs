//! `brk`: the program break, with Linux's semantics (`mm/mmap.c`, `SYSCALL_DEFINE1(brk)`).
//!
//! The heap is `[start_brk, brk)`; its pages are `[start_brk, PAGE_ALIGN(brk))`, read-write,
//! merged with an adjacent VMA of the same protection like any other mapping. Moving the break
//! within a page only records it. Growing maps the new pages if they, and one more page (plus
//! the guard gap below a stack), are free; shrinking unmaps the pages above the new break and
//! frees their frames after the shootdown. A request it cannot satisfy (below `start_brk`, out
//! of the user half, into another mapping, out of memory) leaves everything as it was and
//! returns the old break, which makes `brk(0)` the way to ask for the current one.
//!
//! Locks: `mmap_lock` for write over the whole call, as in Linux; `start_brk`/`brk` are written
//! only under it.

use core::sync::atomic::Ordering;

use super::rewrite::{Edit, rewrite_edit};
use super::stack::{STACK_GUARD_GAP, vm_start_gap};
use super::{PAGE, TreeOutOfMemory};
use crate::address_space::AddressSpace;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;
use crate::vma::{Prot, VmFlags};

fn page_align(x: u64) -> Option<u64> {
    Some(x.checked_add(PAGE - 1)? & !(PAGE - 1))
}

impl<P: Platform> AddressSpace<P> {
    /// Starts an empty heap at `start` (exec does this after loading the image, with the end
    /// of its last segment). Nothing is mapped until the break moves.
    ///
    /// Locks: takes `mmap_lock` for write.
    pub fn set_brk_start(&self, start: u64) {
        // Lock order: mmap_lock (write), outermost.
        let _g = self.mmap_write_lock();
        self.start_brk.store(start, Ordering::Relaxed);
        self.brk.store(start, Ordering::Relaxed);
    }

    /// `brk(want)`: moves the program break to `want` and returns the new break, or returns the
    /// old one unchanged when it cannot (see the module header).
    ///
    /// Locks: takes `mmap_lock` for write; may block after releasing it.
    pub fn brk(&self, want: u64) -> u64 {
        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        let orig = self.brk.load(Ordering::Relaxed);
        let moved = self.move_brk(&g, orig, want);
        drop(g);
        self.memory().rcu().throttle();
        if moved { want } else { orig }
    }

    /// Moves the break from `orig` to `want`; whether it did.
    ///
    /// Locks: `mmap_lock` for write (`g`) on entry and exit.
    fn move_brk(&self, g: &MmapWriteGuard<'_, P>, orig: u64, want: u64) -> bool {
        if want < self.start_brk.load(Ordering::Relaxed) || want > USER_END {
            return false;
        }
        let (Some(new_end), Some(old_end)) = (page_align(want), page_align(orig)) else {
            return false;
        };
        if new_end < old_end {
            // Shrinking is always allowed, if there is a heap to shrink.
            if self.vmas_in(new_end..old_end).is_empty() {
                return false;
            }
            let Ok(_) = rewrite_edit(self, g, new_end..old_end, Edit::Unmap) else {
                return false;
            };
            let zap = self.page_tables().zap(g, new_end..old_end);
            zap.flush(self.memory(), self.cpus());
        } else if new_end > old_end {
            // The new pages and one page above them (more below a stack) must be free.
            let probe = old_end..new_end.saturating_add(PAGE + STACK_GUARD_GAP).min(USER_END);
            if let Some(next) = self.vmas_in(probe).first()
                && new_end + PAGE > vm_start_gap(next)
            {
                return false;
            }
            let heap = (Prot::READ | Prot::WRITE, VmFlags::empty(), None);
            if let Err(TreeOutOfMemory) = rewrite_edit(self, g, old_end..new_end, Edit::Map(heap)) {
                return false;
            }
        }
        self.brk.store(want, Ordering::Relaxed);
        true
    }
}
