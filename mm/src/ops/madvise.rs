//! `madvise`: advice about how a range will be used.
//!
//! `MADV_DONTNEED` (and `MADV_FREE`, which has no lazier form here without reclaim) throws the
//! range's pages away: their PTEs are cleared, the TLBs of every CPU that ran the address space
//! are shot down, and only then are the frames freed; the VMAs stay, so the next access faults in
//! a zeroed page. The hints (`NORMAL`, `RANDOM`, `SEQUENTIAL`, `WILLNEED`, `HUGEPAGE`,
//! `NOHUGEPAGE`) are accepted and change nothing.
//!
//! # Locking (as Linux's `madvise_lock` for `MADV_DONTNEED`: the VMA lock first)
//! - `MADV_DONTNEED` takes the per-VMA read lock of the VMA containing the start
//!   ([`lock_vma_under_rcu`]) and, if the range ends inside that VMA, zaps it under that lock
//!   alone. Otherwise (no VMA there, VMA write-locked, or the range runs past its end) it takes
//!   `mmap_lock` for read and zaps the mapped part of each VMA in the range.
//! - Neither lock excludes faults: a fault in the range may refill a PTE right after it was
//!   cleared, mapping a zeroed page, which is a legal outcome of the race. PTE changes on both
//!   sides happen under the PTE table's split lock. A PTE table emptied here stays in place
//!   ([`PageTables::zap_pages`](crate::pgtable::PageTables::zap_pages) never unhooks): freeing
//!   page tables needs `mmap_lock` for write.
//! - Frames are freed by the [`ZapFlush`] after the shootdown, still under the read lock.
//! - The hints only check, under `mmap_lock` for read, that the range is mapped.
//!
//! # Errors (Linux's order and meaning)
//! Unknown advice, then an unaligned start or a wrapping range, are errors before anything is
//! done; a zero length then succeeds. A range with unmapped parts (including any part outside
//! the user half) gets [`MadviseError::NotMapped`] *after* the advice was applied to the mapped
//! parts, as Linux returns `ENOMEM` in that case.

use core::ops::Range;

use super::{MMAP_MIN_ADDR, PAGE, RangeError};
use crate::address_space::AddressSpace;
use crate::fault::lock_vma_under_rcu;
use crate::pgtable::{USER_END, ZapFlush};
use crate::platform::Platform;
use crate::stats::Event;

/// No special treatment (a hint).
pub const MADV_NORMAL: i32 = 0;
/// Expect random accesses (a hint).
pub const MADV_RANDOM: i32 = 1;
/// Expect sequential accesses (a hint).
pub const MADV_SEQUENTIAL: i32 = 2;
/// Will be needed soon (a hint).
pub const MADV_WILLNEED: i32 = 3;
/// Throw the pages away: the next access reads zeros.
pub const MADV_DONTNEED: i32 = 4;
/// The pages may be freed (here: at once, as `MADV_DONTNEED`).
pub const MADV_FREE: i32 = 8;
/// Worth backing with huge pages (a hint).
pub const MADV_HUGEPAGE: i32 = 14;
/// Not worth backing with huge pages (a hint).
pub const MADV_NOHUGEPAGE: i32 = 15;

/// Why `madvise` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadviseError {
    /// Unknown or unsupported advice (`EINVAL`); nothing was done.
    BadAdvice(i32),
    /// The start is not page-aligned, or the range wraps (`EINVAL`); nothing was done.
    BadRange(RangeError),
    /// Part of the range is not mapped (`ENOMEM`). The advice *was* applied to the mapped parts.
    NotMapped,
}

/// What an advice does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behavior {
    Hint,
    DontNeed,
}

fn behavior(advice: i32) -> Option<Behavior> {
    match advice {
        MADV_DONTNEED | MADV_FREE => Some(Behavior::DontNeed),
        MADV_NORMAL | MADV_RANDOM | MADV_SEQUENTIAL | MADV_WILLNEED | MADV_HUGEPAGE
        | MADV_NOHUGEPAGE => Some(Behavior::Hint),
        _ => None,
    }
}

/// `[addr, addr + len)` with `len` rounded up to pages; `None` for an empty range. Unlike the
/// other operations' ranges it may lie outside the user half (that part is just not mapped).
fn madvise_range(addr: u64, len: u64) -> Result<Option<Range<u64>>, RangeError> {
    if !addr.is_multiple_of(PAGE) {
        return Err(RangeError::Unaligned);
    }
    let len = len.checked_add(PAGE - 1).ok_or(RangeError::Overflow)? & !(PAGE - 1);
    let end = addr.checked_add(len).ok_or(RangeError::Overflow)?;
    Ok((end > addr).then_some(addr..end))
}

impl<P: Platform> AddressSpace<P> {
    /// `madvise(addr, len, advice)` with Linux's advice numbers and semantics (see the module
    /// header): `MADV_DONTNEED`/`MADV_FREE` zap the range's pages, hints change nothing.
    ///
    /// Locks: none held on entry (it may take `mmap_lock`) and none on exit.
    pub fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), MadviseError> {
        let behavior = behavior(advice).ok_or(MadviseError::BadAdvice(advice))?;
        let Some(range) = madvise_range(addr, len).map_err(MadviseError::BadRange)? else {
            return Ok(());
        };
        match behavior {
            Behavior::DontNeed => self.madvise_dontneed(range),
            Behavior::Hint => {
                // Lock order: mmap_lock (read), outermost.
                let _g = self.mmap_read_lock();
                self.madvise_walk(range, |_| {})
            }
        }
    }

    /// Zaps `range` under the VMA read lock when one VMA holds all of it, else under
    /// `mmap_lock` for read.
    fn madvise_dontneed(&self, range: Range<u64>) -> Result<(), MadviseError> {
        let mem = self.memory();
        // A range that runs on past this VMA needs `mmap_lock` to keep the VMAs stable.
        if let Some(vma) = lock_vma_under_rcu(self, range.start)
            && range.end <= vma.vma().end()
        {
            // Lock order: VMA read lock > PTE lock (inside `zap_pages`).
            let zap = self.page_tables().zap_pages(&vma, range);
            zap.flush(mem, self.cpus());
            drop(vma);
            mem.count(Event::MadvDontneedVmaLock);
            return Ok(());
        }
        // Lock order: mmap_lock (read), outermost. A VMA read lock taken above was dropped at
        // the end of the `if`: waiting for mmap_lock under it could deadlock with a writer
        // that holds mmap_lock and waits for that VMA's readers to drain.
        let g = self.mmap_read_lock();
        let mut zap = ZapFlush::empty();
        let r = self.madvise_walk(range, |part| {
            zap.merge(self.page_tables().zap_pages(&g, part));
        });
        zap.flush(mem, self.cpus());
        drop(g);
        mem.count(Event::MadvDontneedMmapLock);
        r
    }

    /// Calls `apply` on the part of `range` inside each VMA, in address order (all of them, holes
    /// or not), and reports whether any of `range` was not mapped. Needs `mmap_lock` (the VMA set
    /// must not change).
    fn madvise_walk(
        &self,
        range: Range<u64>,
        mut apply: impl FnMut(Range<u64>),
    ) -> Result<(), MadviseError> {
        debug_assert!(self.mmap_lock().is_locked());
        let user = range.start.max(MMAP_MIN_ADDR)..range.end.min(USER_END);
        let mut covered = range.start;
        let mut hole = false;
        if user.start < user.end {
            for v in self.vmas_in(user) {
                let part = v.start().max(range.start)..v.end().min(range.end);
                hole |= part.start > covered;
                covered = part.end;
                apply(part);
            }
        }
        if hole || covered < range.end {
            return Err(MadviseError::NotMapped);
        }
        Ok(())
    }
}
