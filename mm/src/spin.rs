//! A minimal test-and-test-and-set spinlock for short, non-blocking critical sections inside `mm`
//! (the maple tree's writer lock). It does not disable preemption: its users are called with the
//! address space's `mmap_lock` held for write, which already serializes them; this lock only
//! makes a missing caller lock a wait instead of a corruption.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use crate::primitive::{AtomicBool, Ordering, spin_loop};

/// # Invariants
/// `value` is accessed only through a [`SpinGuard`], and at most one guard exists at a time
/// (the one that set `locked`).
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, so `T: Send` suffices.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

#[must_use = "the lock is released when the guard is dropped"]
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // INVARIANT: we set `locked`; the guard clears it on drop.
                return SpinGuard { lock: self };
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard is the only one (type invariant), and `&self` forbids `&mut` aliases.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard is the only one (type invariant), and `&mut self` makes this unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
