//! `mmap_lock` and `mm_lock_seq`.
//!
//! `mm_lock_seq` is a sequence count: odd while `mmap_lock` is held for write, even otherwise.
//! `vma_start_write` stamps a VMA with the current (odd) value; the VMA is write-locked exactly
//! while `vma.vm_lock_seq == mm_lock_seq`. Dropping the write guard bumps the count to even
//! (`vma_end_write_all`), which unlocks every VMA stamped under that hold in one store. The count
//! may wrap; a stale stamp that matches again only sends a reader to the `mmap_lock` fallback,
//! because `vma_start_write` never takes a matching stamp as proof that it already drained the
//! VMA's readers.
//!
//! Every store of `mm_lock_seq` is a release and readers load it with acquire: a reader that
//! observes any value synchronises with every write period that ended before it (writers are
//! ordered among themselves by the rwsem), not only with the one whose end it saw.
//!
//! `vma_writer_wait` is the word a VMA writer parks on while readers drain; it lives here (in the
//! address space, as Linux's `mm->vma_writer_wait`) rather than in the VMA, so a reader that just
//! dropped its reference can wake the writer without touching the VMA, which may be freed.

use core::marker::PhantomData;

use alloc::sync::Arc;

use super::{Park, RwSemaphore};
use crate::primitive::{AtomicU32, Ordering};

/// An address space's `mmap_lock` with its `mm_lock_seq`.
///
/// # Invariants
/// `mm_lock_seq` is odd exactly while a [`MmapWriteGuard`] of this lock exists.
pub struct MmapLock<W: Park> {
    sem: RwSemaphore<W>,
    mm_lock_seq: AtomicU32,
    vma_writer_wait: AtomicU32,
    park: Arc<W>,
}

impl<W: Park> MmapLock<W> {
    /// An unlocked `mmap_lock`.
    pub fn new(park: Arc<W>) -> Self {
        MmapLock {
            sem: RwSemaphore::new(park.clone()),
            mm_lock_seq: AtomicU32::new(0),
            vma_writer_wait: AtomicU32::new(0),
            park,
        }
    }

    /// `mmap_read_lock`.
    pub fn read(&self) -> MmapReadGuard<'_, W> {
        self.sem.down_read();
        MmapReadGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// `mmap_read_trylock`.
    pub fn try_read(&self) -> Option<MmapReadGuard<'_, W>> {
        self.sem.try_down_read().then(|| MmapReadGuard {
            lock: self,
            _not_send: PhantomData,
        })
    }

    /// `mmap_write_lock`: also starts a new `mm_lock_seq` period (odd).
    pub fn write(&self) -> MmapWriteGuard<'_, W> {
        self.sem.down_write();
        let seq = self.mm_lock_seq.load(Ordering::Relaxed);
        debug_assert!(seq.is_multiple_of(2), "mm_lock_seq odd with mmap_lock free");
        // INVARIANT: odd from here until the guard drops.
        // Release, although the stamps made with this value are published by the refcount
        // release in `vma_start_write`: a reader acquiring `mm_lock_seq` (check (4) of
        // `vma_start_read`) may read *this* value, and must then see what every earlier write
        // period did to the VMAs it finds unlocked. We hold the rwsem, whose acquire ordered us
        // after the previous holder's whole period, so a release here carries all earlier
        // periods to such a reader; a relaxed store would synchronise with nothing, and the
        // reader would race the changes made before the previous `vma_end_write_all`. Every
        // store of `mm_lock_seq` is thus a release (a plain `mov` on x86).
        self.mm_lock_seq
            .store(seq.wrapping_add(1), Ordering::Release);
        MmapWriteGuard {
            lock: self,
            seq: seq.wrapping_add(1),
            _not_send: PhantomData,
        }
    }

    /// The current `mm_lock_seq`, with acquire ordering: pairs with the release store that wrote
    /// the value seen (`vma_end_write_all`, or the start of a write period), so a reader sees
    /// everything done in every write period that ended before it.
    pub fn mm_lock_seq(&self) -> u32 {
        self.mm_lock_seq.load(Ordering::Acquire)
    }

    /// The current `mm_lock_seq`, for the lockless early check whose result is re-validated.
    pub(crate) fn mm_lock_seq_relaxed(&self) -> u32 {
        self.mm_lock_seq.load(Ordering::Relaxed)
    }

    /// Whether the lock is held for writing by someone (for `debug_assert!`s).
    pub fn is_write_locked(&self) -> bool {
        self.sem.is_write_locked()
    }

    /// Whether the lock is held at all by someone (for `debug_assert!`s).
    pub fn is_locked(&self) -> bool {
        self.sem.is_locked()
    }

    /// Jumps `mm_lock_seq` to `seq` (even, lock free), standing in for 2^31 write holds so tests
    /// can reach a wrap of the counter.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn skip_write_periods_to(&self, seq: u32) {
        assert!(seq.is_multiple_of(2) && !self.is_locked());
        self.mm_lock_seq.store(seq, Ordering::Relaxed);
    }

    pub(crate) fn vma_writer_wait(&self) -> &AtomicU32 {
        &self.vma_writer_wait
    }

    pub(crate) fn park(&self) -> &W {
        &self.park
    }
}

/// Proof that `mmap_lock` is held for reading.
#[must_use = "dropping the guard releases mmap_lock at once"]
pub struct MmapReadGuard<'a, W: Park> {
    lock: &'a MmapLock<W>,
    _not_send: PhantomData<*const ()>,
}

impl<W: Park> MmapReadGuard<'_, W> {
    /// Whether this guard holds `lock`.
    pub fn holds(&self, lock: &MmapLock<W>) -> bool {
        core::ptr::eq(self.lock, lock)
    }
}

impl<W: Park> Drop for MmapReadGuard<'_, W> {
    fn drop(&mut self) {
        self.lock.sem.up_read();
    }
}

/// Proof that `mmap_lock` is held for writing. Dropping it runs `vma_end_write_all`, then
/// releases the lock.
#[must_use = "dropping the guard releases mmap_lock at once"]
pub struct MmapWriteGuard<'a, W: Park> {
    lock: &'a MmapLock<W>,
    seq: u32,
    _not_send: PhantomData<*const ()>,
}

impl<'a, W: Park> MmapWriteGuard<'a, W> {
    /// The `mm_lock_seq` of this write hold (odd), the stamp of write-locked VMAs.
    pub fn mm_lock_seq(&self) -> u32 {
        self.seq
    }

    /// Whether this guard holds `lock`.
    pub fn holds(&self, lock: &MmapLock<W>) -> bool {
        core::ptr::eq(self.lock, lock)
    }

    pub(crate) fn lock(&self) -> &MmapLock<W> {
        self.lock
    }

    /// `mmap_write_downgrade`: turns the write hold into a read hold without letting a writer
    /// in between. Runs `vma_end_write_all` first, so every VMA write-locked under this hold is
    /// unlocked when readers of `mmap_lock` (queued ones are granted here) get in: whatever
    /// the caller still does under the read lock must not need the VMAs locked (`munmap` zaps
    /// the range of VMAs it already detached).
    pub fn downgrade(self) -> MmapReadGuard<'a, W> {
        let lock = self.lock;
        self.vma_end_write_all();
        core::mem::forget(self);
        lock.sem.downgrade_write();
        MmapReadGuard {
            lock,
            _not_send: PhantomData,
        }
    }

    /// `vma_end_write_all`: ends the `mm_lock_seq` period, unlocking every VMA write-locked
    /// under this hold. Release ordering: a reader that sees the even value also sees the VMA
    /// and page-table changes made while the VMAs were locked.
    fn vma_end_write_all(&self) {
        self.lock
            .mm_lock_seq
            .store(self.seq.wrapping_add(1), Ordering::Release);
    }
}

impl<W: Park> Drop for MmapWriteGuard<'_, W> {
    fn drop(&mut self) {
        self.vma_end_write_all();
        self.lock.sem.up_write();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::platform::emulated::Emulated;

    #[test]
    fn write_hold_makes_the_sequence_odd_and_release_even() {
        let lock = MmapLock::new(Arc::new(Emulated::new(1, 1)));
        assert_eq!(lock.mm_lock_seq(), 0);
        let g = lock.write();
        assert_eq!(g.mm_lock_seq(), 1);
        assert_eq!(lock.mm_lock_seq(), 1);
        assert!(lock.try_read().is_none());
        drop(g);
        assert_eq!(lock.mm_lock_seq(), 2);
        let r = lock.read();
        assert!(r.holds(&lock));
        assert!(lock.try_read().is_some());
    }

    #[test]
    fn downgrade_ends_the_write_period_and_keeps_a_read_hold() {
        let lock = MmapLock::new(Arc::new(Emulated::new(1, 1)));
        let g = lock.write();
        let r = g.downgrade();
        assert!(r.holds(&lock));
        assert_eq!(lock.mm_lock_seq(), 2, "vma_end_write_all did not run");
        assert!(!lock.is_write_locked());
        assert!(lock.try_read().is_some(), "readers are not let in");
        drop(r);
        assert!(!lock.is_locked());
        drop(lock.write());
        assert_eq!(lock.mm_lock_seq(), 4);
    }
}
