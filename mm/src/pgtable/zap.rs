//! Removing and downgrading mappings: `zap_page_range`, `zap_pages` and `change_protection`.
//!
//! `zap` and `change_protection` run with `mmap_lock` held for write and every VMA covering the
//! range write-locked, so no fault can be installing PTEs in the range; faults on *other* VMAs
//! may share a PTE table and are serialized with us by its split lock. `zap_pages`
//! (`MADV_DONTNEED`) runs under a read lock only (the VMA's, or `mmap_lock`): faults in the range
//! run concurrently and may refill a PTE right after it is cleared, which is fine (they map a
//! zeroed page), but a PTE table is never unhooked there (see [`PageTables::zap_pages`]). All
//! return a `#[must_use]` token: the caller shoots down the TLBs of the CPUs that ran the address
//! space, and only then (for a zap) are the frames freed, because another CPU may still be
//! writing through a stale TLB entry until then.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::Ordering;

use super::{PTE_PROTNONE, PageTables, Pte, pmd_chunks};
use crate::memory::Memory;
use crate::platform::{CpuMask, PageTableFlags, PhysFrame, Platform, VirtAddr};
use crate::stats::Event;
use crate::sync::{MmapReadGuard, MmapWriteGuard, Park};
use crate::vma::{Prot, VmaReadGuard};

/// Frames unmapped by a zap, to be freed after the TLB shootdown.
#[must_use = "the TLBs must be shot down (ZapFlush::flush) before the frames can be freed"]
pub struct ZapFlush {
    range: Range<u64>,
    cleared: usize,
    frames: Vec<PhysFrame>,
    tables: Vec<PhysFrame>,
}

impl ZapFlush {
    /// A token for nothing.
    pub fn empty() -> Self {
        ZapFlush {
            range: 0..0,
            cleared: 0,
            frames: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Whether the TLBs must be shot down: PTEs were cleared, or PTE tables unhooked (other
    /// CPUs' paging-structure caches may still hold the PMD entry of a table with no PTE left,
    /// and would walk the freed page once it is reused).
    fn needs_shootdown(&self) -> bool {
        self.cleared > 0 || !self.tables.is_empty()
    }

    /// Adds the work of `other` to this token.
    pub fn merge(&mut self, mut other: ZapFlush) {
        if other.needs_shootdown() {
            self.range = if !self.needs_shootdown() {
                other.range.clone()
            } else {
                self.range.start.min(other.range.start)..self.range.end.max(other.range.end)
            };
        }
        self.cleared += other.cleared;
        self.frames.append(&mut other.frames);
        self.tables.append(&mut other.tables);
    }

    /// The token of `count` PTEs moved away from `range` (by `mremap`): they must be shot down
    /// before the range's PTE tables are freed or the range is mapped again.
    pub(crate) fn moved(range: Range<u64>, count: usize) -> Self {
        ZapFlush {
            range,
            cleared: count,
            ..ZapFlush::empty()
        }
    }

    /// PTEs cleared.
    pub fn cleared(&self) -> usize {
        self.cleared
    }

    /// Shoots down `cpus`, then drops the frames' references, and frees the emptied page-table
    /// pages after an RCU grace period.
    pub fn flush<P: Platform>(self, mem: &Arc<Memory<P>>, cpus: CpuMask) {
        if self.needs_shootdown() {
            let pages = ((self.range.end - self.range.start) / 4096) as usize;
            mem.platform()
                .shootdown(cpus, VirtAddr::new(self.range.start), pages);
        }
        for f in self.frames {
            mem.frames().put(f);
        }
        if !self.tables.is_empty() {
            let tables = self.tables;
            let m = mem.clone();
            mem.rcu().call_rcu(Box::new(move || {
                for t in tables {
                    m.count(Event::PgtableFree);
                    m.frames().put(t);
                }
            }));
        }
    }
}

/// A permission change that may have to be shot down.
#[must_use = "a permission downgrade must be shot down (ProtectFlush::flush)"]
pub struct ProtectFlush {
    range: Range<u64>,
    downgraded: bool,
}

impl ProtectFlush {
    /// Whether some PTE lost a permission (and a shootdown is needed).
    pub fn needs_shootdown(&self) -> bool {
        self.downgraded
    }

    /// Shoots down `cpus` if a permission was removed.
    pub fn flush<P: Platform>(self, platform: &P, cpus: CpuMask) {
        if self.downgraded {
            let pages = ((self.range.end - self.range.start) / 4096) as usize;
            platform.shootdown(cpus, VirtAddr::new(self.range.start), pages);
        }
    }
}

/// The PTE flags a present page of a VMA with `prot` gets; `writable` says whether this page
/// may be mapped writable now (an exclusively owned anonymous page that already was).
pub fn pte_flags_for(prot: Prot, writable: bool) -> PageTableFlags {
    let mut f = PageTableFlags::PRESENT | PageTableFlags::USER_ACCESSIBLE;
    if writable && prot.contains(Prot::WRITE) {
        f |= PageTableFlags::WRITABLE;
    }
    if !prot.contains(Prot::EXEC) {
        f |= PageTableFlags::NO_EXECUTE;
    }
    f
}

mod sealed {
    pub trait Sealed {}
}

/// A lock under which [`PageTables::zap_pages`] may clear the PTEs of a range: the read lock of
/// the one VMA that contains it ([`VmaReadGuard`]), or `mmap_lock` held for read
/// ([`MmapReadGuard`]). Neither excludes faults in the range.
pub trait ZapPagesLock: sealed::Sealed {
    /// Whether the lock covers `range` (for debug assertions).
    fn covers(&self, range: &Range<u64>) -> bool;
}

impl<W: Park> sealed::Sealed for VmaReadGuard<'_, W> {}
impl<W: Park> ZapPagesLock for VmaReadGuard<'_, W> {
    fn covers(&self, range: &Range<u64>) -> bool {
        self.vma().start() <= range.start && range.end <= self.vma().end()
    }
}

impl<W: Park> sealed::Sealed for MmapReadGuard<'_, W> {}
impl<W: Park> ZapPagesLock for MmapReadGuard<'_, W> {
    fn covers(&self, _range: &Range<u64>) -> bool {
        true
    }
}

impl<P: Platform> PageTables<P> {
    /// `zap_page_range`: clears every PTE in `range` (page-aligned), unhooking PTE tables that
    /// become empty. Needs `mmap_lock` for write (`_proof`) and the VMAs covering `range`
    /// write-locked.
    pub fn zap(&self, _proof: &MmapWriteGuard<'_, P>, range: Range<u64>) -> ZapFlush {
        self.zap_pte_range(range, |_| true)
    }

    /// The zap of `munmap` after `mmap_write_downgrade` (Linux's `unmap_region` with
    /// `free_pgtables` bounded by the neighbouring VMAs): clears every PTE in `range`, whose
    /// VMAs the caller detached under the write lock it then downgraded to `_proof`. Faults on
    /// other VMAs run meanwhile, and one may share a PTE table with `range`, so an emptied table
    /// is unhooked only if `vma_free` says no VMA meets its 2 MiB span (nothing can map there
    /// while `mmap_lock` is held, and no fault can walk into it: a fault needs a VMA).
    pub fn zap_detached(
        &self,
        _proof: &MmapReadGuard<'_, P>,
        range: Range<u64>,
        vma_free: impl Fn(Range<u64>) -> bool,
    ) -> ZapFlush {
        self.zap_pte_range(range, vma_free)
    }

    /// `zap_page_range_single` for `MADV_DONTNEED`: clears every PTE in `range` (page-aligned)
    /// under its PTE lock, with only a read lock held (`lock`): faults may run in the range
    /// meanwhile and refill PTEs.
    ///
    /// PTE tables stay in place even when emptied, as Linux leaves them under a read lock (only
    /// `free_pgtables`, under `mmap_lock` write, frees them). Unhooking one here would pull it
    /// from under faults that hold the same kind of lock and are between `pte_alloc` and
    /// `pte_offset_map_lock` on it: they would have to retry, and the fault path's `mmap_lock`
    /// fallback relies on no table vanishing while it holds `mmap_lock` (only `zap`, under the
    /// write lock, unhooks). An emptied table is reused by the next fault in its range and freed
    /// by `munmap` or at teardown.
    pub fn zap_pages(&self, lock: &impl ZapPagesLock, range: Range<u64>) -> ZapFlush {
        debug_assert!(lock.covers(&range), "zap_pages outside the locked VMA");
        self.zap_pte_range(range, |_| false)
    }

    /// Clears the PTEs of `range`, collecting their frames; unhooks a table left empty if
    /// `may_unhook` allows it for the table's span (no fault can be using the table).
    fn zap_pte_range(
        &self,
        range: Range<u64>,
        may_unhook: impl Fn(Range<u64>) -> bool,
    ) -> ZapFlush {
        let frames = self.mem.frames();
        let mut out = ZapFlush {
            range: range.clone(),
            ..ZapFlush::empty()
        };
        for chunk in pmd_chunks(range) {
            #[cfg(test)]
            super::tests::unmap_step();
            // Lock order: mmap_lock (or the VMA lock) > PTE lock.
            let Some(pte) = self.pte_offset_map_lock(chunk.start) else {
                continue;
            };
            for addr in chunk.step_by(4096) {
                let e = pte.take(addr);
                if e.is_empty() {
                    continue;
                }
                out.cleared += 1;
                if e.holds_frame() {
                    let f = e.frame();
                    if f != frames.zero_frame() {
                        frames.meta(f).unmap();
                    }
                    out.frames.push(f);
                }
            }
            if pte.is_empty() && may_unhook(pte.base()..pte.base() + super::PMD_SIZE) {
                out.tables.push(pte.unhook());
            }
        }
        out
    }

    /// `free_pgtables` for a whole address space (`exit_mmap`): unhooks every upper-level
    /// table (PDPT, PD) of the user half that maps nothing, bottom-up, into `out`, whose flush
    /// shoots them down and frees them after an RCU grace period. The root stays.
    ///
    /// Needs `mmap_lock` for write (`_proof`) and every VMA write-locked or gone: the walkers
    /// that keep a pointer into an upper table without RCU (`pmd_alloc` in the fault path)
    /// hold one of those locks, and lockless walkers (`pte_offset_map_lock`, `with_pte`) hold
    /// an RCU read section. PTE tables are not touched: `zap` unhooks those under their lock,
    /// so after the VMAs' ranges were zapped a PD still pointing to one is kept.
    pub fn free_user_tables(&self, _proof: &MmapWriteGuard<'_, P>, out: &mut ZapFlush) {
        let before = out.tables.len();
        self.unhook_empty_upper(self.root, 4, out);
        if out.tables.len() > before && out.range.is_empty() {
            // Stale paging-structure cache entries may point into the unhooked tables.
            out.range = 0..super::USER_END;
        }
    }

    /// Unhooks the empty tables below `table` (a level-`level` table, 4..=2); returns whether
    /// `table` maps nothing afterwards.
    fn unhook_empty_upper(&self, table: PhysFrame, level: u32, out: &mut ZapFlush) -> bool {
        let slots = self.table(table);
        let slots = if level == 4 {
            &slots[..super::USER_PML4_ENTRIES]
        } else {
            &slots[..]
        };
        let mut empty = true;
        for slot in slots {
            let e = Pte::from_bits(slot.load(Ordering::Acquire));
            if !e.present() {
                continue;
            }
            if level > 2 && self.unhook_empty_upper(e.frame(), level - 1, out) {
                slot.store(0, Ordering::Release);
                out.tables.push(e.frame());
            } else {
                empty = false;
            }
        }
        empty
    }

    /// `change_protection`: gives every PTE in `range` the permissions of `prot`, never adding
    /// write permission (a write fault then decides, in `do_wp_page`, whether the page can be
    /// reused). `PROT_NONE` keeps the frame in a non-present PTE. Needs `mmap_lock` for write and
    /// the VMAs covering `range` write-locked.
    pub fn change_protection(
        &self,
        _proof: &MmapWriteGuard<'_, P>,
        range: Range<u64>,
        prot: Prot,
    ) -> ProtectFlush {
        let mut out = ProtectFlush {
            range: range.clone(),
            downgraded: false,
        };
        let keep = PageTableFlags::ACCESSED | PageTableFlags::DIRTY;
        for chunk in pmd_chunks(range) {
            // Lock order: mmap_lock (write) > PTE lock.
            let Some(pte) = self.pte_offset_map_lock(chunk.start) else {
                continue;
            };
            for addr in chunk.step_by(4096) {
                let mut old = pte.get(addr);
                loop {
                    if !old.holds_frame() {
                        break;
                    }
                    let of = old.flags();
                    let nf = if prot.is_empty() {
                        PTE_PROTNONE
                    } else {
                        pte_flags_for(prot, of.contains(PageTableFlags::WRITABLE)) | (of & keep)
                    };
                    let new = Pte::new(old.frame(), nf);
                    if new == old {
                        break;
                    }
                    match pte.replace(addr, old, new) {
                        Ok(_) => {
                            let was_present = of.contains(PageTableFlags::PRESENT);
                            let lost = !nf.contains(PageTableFlags::PRESENT)
                                || (of.contains(PageTableFlags::WRITABLE)
                                    && !nf.contains(PageTableFlags::WRITABLE))
                                || (!of.contains(PageTableFlags::NO_EXECUTE)
                                    && nf.contains(PageTableFlags::NO_EXECUTE));
                            out.downgraded |= was_present && lost;
                            break;
                        }
                        // The MMU set A/D meanwhile: recompute from the fresh value.
                        Err(now) => old = now,
                    }
                }
            }
        }
        out
    }
}
