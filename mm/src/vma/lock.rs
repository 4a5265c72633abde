//! The per-VMA lock: `vm_refcnt` and `vm_lock_seq` (Linux 6.15+ refcount form).
//!
//! `vm_refcnt` is 0 when the VMA is detached (not in the tree), 1 when attached with no readers,
//! and 1 + n with n readers. A writer adds [`VMA_LOCK_OFFSET`] to it while it waits for readers
//! to drain; no reader can get in meanwhile, because readers increment only below
//! [`VMA_REF_LIMIT`].
//!
//! - [`VmaLock::start_read`] (`vma_start_read`): (1) lockless check `vm_lock_seq != mm_lock_seq`;
//!   (2) increment `vm_refcnt` if it is neither 0 (detached) nor writer-flagged, with acquire;
//!   (3) check the VMA belongs to this mm; (4) re-check the sequence against `mm_lock_seq` read
//!   with acquire. Failing (3) or (4) drops the reference again.
//! - [`VmaLock::start_write`] (`vma_start_write`, `mmap_lock` held for write): set the writer
//!   flag, wait until only the attach reference and the flag remain, stamp
//!   `vm_lock_seq = mm_lock_seq`, drop the flag. Readers arriving later pass (2) and fail (4).
//! - `vma_end_write_all` (dropping the `mmap_lock` write guard) bumps `mm_lock_seq`, which
//!   unlocks every stamped VMA at once.
//! - [`VmaLock::mark_detached`] (write-locked VMA, being removed from the tree): drop the attach
//!   reference; if transient readers (doomed to fail (4)) still hold references, wait them out.
//!   From then on (2) fails with [`StartReadError::Detached`] and the reader redoes its walk.

use crate::primitive::{AtomicU32, Ordering, spin_loop};
use crate::sync::{MmapLock, MmapWriteGuard, Park};

/// Added to `vm_refcnt` by a writer excluding readers.
pub(crate) const VMA_LOCK_OFFSET: u32 = 0x4000_0000;
/// Readers increment `vm_refcnt` only while it is below this.
pub(crate) const VMA_REF_LIMIT: u32 = VMA_LOCK_OFFSET - 1;
/// A never-valid stamp for VMAs that were never write-locked (odd, like a write period, but
/// `mm_lock_seq` reaches it only after 2^31 write holds, which then costs one needless fallback).
const NOT_LOCKED_SEQ: u32 = u32::MAX;
/// Spins before a writer parks waiting for readers.
const SPINS: u32 = if cfg!(loom) { 1 } else { 256 };

/// Why `vma_start_read` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartReadError {
    /// The VMA is write-locked (or a writer is draining readers): fall back to `mmap_lock`.
    Locked,
    /// The VMA was detached after the walk found it: redo the walk (`VMA_LOCK_MISS`).
    Detached,
    /// The VMA belongs to another address space: fall back.
    NotOurs,
}

/// The lock state of one VMA.
///
/// # Invariants
/// `vm_refcnt` is 0 iff the VMA is detached; otherwise it counts the attach reference, the
/// readers, and `VMA_LOCK_OFFSET` while a writer is excluding readers. A reader's reference is
/// taken only when `vm_refcnt` is in `1..VMA_REF_LIMIT`. `vm_lock_seq` is written only with the
/// owning `mmap_lock` held for write.
pub struct VmaLock {
    vm_refcnt: AtomicU32,
    vm_lock_seq: AtomicU32,
}

impl VmaLock {
    /// The lock of a new VMA: detached, and write-locked under `guard` so it is complete and
    /// locked before anyone can find it.
    pub fn new_locked<W: Park>(guard: &MmapWriteGuard<'_, W>) -> Self {
        VmaLock {
            vm_refcnt: AtomicU32::new(0),
            vm_lock_seq: AtomicU32::new(guard.mm_lock_seq()),
        }
    }

    /// The lock of a VMA built outside any write hold (tests, early boot): detached, unlocked.
    pub fn new_unlocked() -> Self {
        VmaLock {
            vm_refcnt: AtomicU32::new(0),
            vm_lock_seq: AtomicU32::new(NOT_LOCKED_SEQ),
        }
    }

    /// `vma_mark_attached`: called before the VMA is inserted into the tree.
    pub fn mark_attached<W: Park>(&self, guard: &MmapWriteGuard<'_, W>) {
        debug_assert!(guard.lock().is_write_locked());
        let prev = self.vm_refcnt.swap(1, Ordering::Release);
        debug_assert_eq!(prev, 0, "attaching an attached VMA");
    }

    /// `vma_start_read`. On `Ok`, the caller holds a read reference and must call
    /// [`end_read`](Self::end_read) exactly once. `owned_by_mm` checks the VMA belongs to `mm`.
    pub fn start_read<W: Park>(
        &self,
        mm: &MmapLock<W>,
        owned_by_mm: impl FnOnce() -> bool,
    ) -> Result<(), StartReadError> {
        // (1) A cheap early exit; a stale answer either way is corrected by (4).
        if self.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq_relaxed() {
            return Err(StartReadError::Locked);
        }
        // (2) Increment if attached and not writer-flagged. Acquire: the checks below and the
        // caller's reads of what the lock protects must not move before the reference.
        let mut cnt = self.vm_refcnt.load(Ordering::Relaxed);
        loop {
            if cnt == 0 {
                return Err(StartReadError::Detached);
            }
            if cnt >= VMA_REF_LIMIT {
                return Err(StartReadError::Locked);
            }
            match self.vm_refcnt.compare_exchange_weak(
                cnt,
                cnt + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cnt = now,
            }
        }
        // (3) Linux VMAs are type-stable memory that may be reused for another mm; ours are
        // kept alive by the tree, but the check costs one load and keeps the protocol whole.
        if !owned_by_mm() {
            self.end_read(mm);
            return Err(StartReadError::NotOurs);
        }
        // (4) Acquire on `mm_lock_seq` pairs with the release in `vma_end_write_all`: if we see
        // the write period ended, we see what was written in it. A stamp equal to the current
        // period means a writer locked the VMA between (1) and (2).
        if self.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq() {
            self.end_read(mm);
            return Err(StartReadError::Locked);
        }
        Ok(())
    }

    /// `vma_end_read`: drops a reader's reference and wakes a writer waiting for the last one.
    /// Touches only `mm` after the decrement, since the VMA may be freed as soon as it is done.
    pub fn end_read<W: Park>(&self, mm: &MmapLock<W>) {
        let now = self.vm_refcnt.fetch_sub(1, Ordering::Release) - 1;
        if now & VMA_LOCK_OFFSET != 0 && now <= VMA_LOCK_OFFSET + 1 {
            // Release: a writer that sees the new ticket also sees the decrement above.
            mm.vma_writer_wait().fetch_add(1, Ordering::Release);
            mm.park().unpark_all(mm.vma_writer_wait());
        }
    }

    /// `vma_start_write`: excludes readers until `guard` is dropped. Idempotent within one
    /// write hold. A detached VMA is only stamped (no reader can reach it).
    ///
    /// A stamp equal to this period does not prove the VMA was locked in it: `mm_lock_seq`
    /// wraps, and a VMA left alone for 2^31 write holds carries a stamp that matches again while
    /// readers that entered in an earlier period are still inside. So readers are always
    /// drained through `vm_refcnt` (one uncontended CAS when there are none); the stamp alone
    /// only ever makes readers fail, which is the harmless direction.
    pub fn start_write<W: Park>(&self, guard: &MmapWriteGuard<'_, W>) {
        debug_assert!(guard.lock().is_write_locked());
        let seq = guard.mm_lock_seq();
        let entered = self.enter_locked(guard.lock(), false);
        // Published to readers by the release in `exit_locked`: a reader whose increment comes
        // after it sees this stamp and fails check (4).
        self.vm_lock_seq.store(seq, Ordering::Relaxed);
        if entered {
            let detached = self.exit_locked();
            debug_assert!(!detached);
        }
    }

    /// `vma_mark_detached`: the VMA has been (or is being) removed from the tree and is
    /// write-locked under `guard`. Returns once no reader holds a reference.
    pub fn mark_detached<W: Park>(&self, guard: &MmapWriteGuard<'_, W>) {
        debug_assert!(
            self.is_write_locked_by(guard),
            "detaching a VMA not write-locked"
        );
        if self.vm_refcnt.fetch_sub(1, Ordering::Release) == 1 {
            return;
        }
        // Transient readers got a reference between checks (1) and (4) and will drop it.
        if self.enter_locked(guard.lock(), true) {
            let detached = self.exit_locked();
            debug_assert!(detached);
        }
    }

    /// Whether the VMA is write-locked under `guard`.
    pub fn is_write_locked_by<W: Park>(&self, guard: &MmapWriteGuard<'_, W>) -> bool {
        self.vm_lock_seq.load(Ordering::Relaxed) == guard.mm_lock_seq()
    }

    /// Whether the VMA is in a tree (for assertions).
    pub fn is_attached(&self) -> bool {
        self.vm_refcnt.load(Ordering::Relaxed) != 0
    }

    /// Read references currently held (for assertions and tests).
    pub fn readers(&self) -> u32 {
        let cnt = self.vm_refcnt.load(Ordering::Relaxed) & !VMA_LOCK_OFFSET;
        cnt.saturating_sub(1)
    }

    /// Sets the writer flag unless detached, then waits until only `1` (attach reference; or
    /// `0` when detaching) plus the flag remains. Returns whether the flag was set.
    fn enter_locked<W: Park>(&self, mm: &MmapLock<W>, detaching: bool) -> bool {
        let mut cnt = self.vm_refcnt.load(Ordering::Relaxed);
        loop {
            if cnt == 0 {
                return false;
            }
            match self.vm_refcnt.compare_exchange_weak(
                cnt,
                cnt + VMA_LOCK_OFFSET,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cnt = now,
            }
        }
        let target = if detaching {
            VMA_LOCK_OFFSET
        } else {
            VMA_LOCK_OFFSET + 1
        };
        let mut spins = 0;
        loop {
            // Ticket first, count second: a reader decrements first and bumps the ticket
            // second, so either we see its decrement or our park sees a changed ticket.
            let ticket = mm.vma_writer_wait().load(Ordering::Acquire);
            if self.vm_refcnt.load(Ordering::Acquire) == target {
                return true;
            }
            if spins < SPINS {
                spins += 1;
                spin_loop();
            } else {
                mm.park().park(mm.vma_writer_wait(), ticket);
            }
        }
    }

    /// Drops the writer flag; returns whether that left the VMA detached.
    fn exit_locked(&self) -> bool {
        self.vm_refcnt.fetch_sub(VMA_LOCK_OFFSET, Ordering::Release) == VMA_LOCK_OFFSET
    }
}
