//! Spinlocks for short sections that never sleep.
//!
//! [`RawSpinLock`] guards data that does not live in the lock (the split PTE lock guards a
//! page-table page in physical memory); [`SpinLock<T>`] owns its data. Both are test-and-test-
//! and-set locks: waiters spin on a plain load so the line is not bounced while the lock is held.
//!
//! A holder must not be preempted (a waiter on the same CPU that cannot be preempted itself, say
//! inside an RCU read section, would spin forever): on a machine with preemption the platform
//! says how to disable it ([`Platform::spinlock_preemption`], installed by `Memory::new`), and
//! every lock disables preemption from before it is taken until after it is released, as Linux's
//! `spin_lock` does.
//!
//! [`Platform::spinlock_preemption`]: crate::platform::Platform::spinlock_preemption
//!
//! Lock order: each lock has a [`LockClass`]; in debug builds with `std` (host tests) taking a
//! lock while holding one of the same or a later class panics, which catches an inversion the
//! first time the path runs instead of the first time it deadlocks.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use core::sync::atomic::AtomicPtr;

use crate::platform::SpinlockPreemption;

use crate::primitive::{AtomicBool, Ordering, spin_loop};

/// The machine's preemption switch, as its platform gave it; null where threads are not
/// preempted behind the lock's back (host tests: each "CPU" is a thread).
static PREEMPTION: AtomicPtr<SpinlockPreemption> = AtomicPtr::new(core::ptr::null_mut());

/// Makes every spinlock of `mm` disable preemption while held, the first time a machine gives a
/// switch (`Memory::new`, before any lock of that machine is taken).
#[cfg(not(loom))]
pub(crate) fn install_preemption(p: Option<&'static SpinlockPreemption>) {
    if let Some(p) = p {
        let p = p as *const SpinlockPreemption as *mut SpinlockPreemption;
        let _ = PREEMPTION.compare_exchange(
            core::ptr::null_mut(),
            p,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Loom models run without preemption.
#[cfg(loom)]
pub(crate) fn install_preemption(_: Option<&'static SpinlockPreemption>) {}

fn preemption() -> Option<&'static SpinlockPreemption> {
    // SAFETY: only `install_preemption` stores here: null or a `&'static SpinlockPreemption`.
    unsafe { PREEMPTION.load(Ordering::Acquire).as_ref() }
}

fn preempt_disable() {
    if let Some(p) = preemption() {
        (p.disable)();
    }
}

fn preempt_enable() {
    if let Some(p) = preemption() {
        (p.enable)();
    }
}

/// Where a spinlock sits in the lock order (`LOCKING.md`); lower classes are taken first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LockClass {
    /// A maple tree's writer lock (taken under `mmap_lock` for write, before any PTE lock).
    MapleWriter = 0,
    /// The split PTE lock of a page-table page.
    Pte = 1,
    /// A second PTE lock, taken by `mremap` (which holds `mmap_lock` for write) on the
    /// destination table while it holds the source table's (`spin_lock_nested`).
    PteNested = 2,
    /// A per-CPU frame cache.
    FrameCache = 3,
    /// Leaf locks that nest inside everything and take nothing.
    Leaf = 4,
}

/// Number of [`LockClass`]es.
#[cfg(all(debug_assertions, any(test, feature = "std"), not(loom)))]
const CLASSES: usize = LockClass::Leaf as usize + 1;

#[cfg(all(debug_assertions, any(test, feature = "std"), not(loom)))]
mod order {
    use super::{CLASSES, LockClass};
    use core::cell::Cell;

    std::thread_local! {
        static HELD: Cell<[u8; CLASSES]> = const { Cell::new([0; CLASSES]) };
    }

    pub(super) fn acquire(class: LockClass) {
        HELD.with(|h| {
            let mut held = h.get();
            if let Some(worse) = (class as usize..held.len()).find(|&c| held[c] != 0) {
                panic!("lock order: taking a {class:?} lock while holding class #{worse}");
            }
            held[class as usize] += 1;
            h.set(held);
        });
    }

    pub(super) fn release(class: LockClass) {
        HELD.with(|h| {
            let mut held = h.get();
            held[class as usize] -= 1;
            h.set(held);
        });
    }
}

#[cfg(not(all(debug_assertions, any(test, feature = "std"), not(loom))))]
mod order {
    use super::LockClass;

    pub(super) fn acquire(_class: LockClass) {}

    pub(super) fn release(_class: LockClass) {}
}

/// A spinlock that owns no data.
pub struct RawSpinLock {
    locked: AtomicBool,
    class: LockClass,
}

impl RawSpinLock {
    /// An unlocked lock of `class`.
    #[cfg(not(loom))]
    pub const fn new(class: LockClass) -> Self {
        RawSpinLock {
            locked: AtomicBool::new(false),
            class,
        }
    }

    /// An unlocked lock of `class`.
    #[cfg(loom)]
    pub fn new(class: LockClass) -> Self {
        RawSpinLock {
            locked: AtomicBool::new(false),
            class,
        }
    }

    /// Spins until the lock is ours.
    pub fn lock(&self) -> RawSpinGuard<'_> {
        self.lock_as(self.class)
    }

    /// `spin_lock_nested`: takes a [`LockClass::Pte`] lock while holding another one, as the
    /// order's [`LockClass::PteNested`]. Only for a caller that excludes every other holder of
    /// two PTE locks of the same tables (see `LOCKING.md`): the class check cannot tell two
    /// locks of one class apart.
    pub fn lock_nested(&self) -> RawSpinGuard<'_> {
        debug_assert_eq!(self.class, LockClass::Pte, "only PTE locks nest");
        self.lock_as(LockClass::PteNested)
    }

    fn lock_as(&self, class: LockClass) -> RawSpinGuard<'_> {
        preempt_disable();
        order::acquire(class);
        loop {
            if self.try_acquire() {
                return RawSpinGuard {
                    lock: self,
                    class,
                    _not_send: PhantomData,
                };
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<RawSpinGuard<'_>> {
        preempt_disable();
        if !self.try_acquire() {
            preempt_enable();
            return None;
        }
        order::acquire(self.class);
        Some(RawSpinGuard {
            lock: self,
            class: self.class,
            _not_send: PhantomData,
        })
    }

    /// One attempt to take the lock. Acquire: the section sees what the previous holder wrote
    /// before its release. A compare-exchange rather than a swap: the same `lock cmpxchg` cost,
    /// and loom 0.7 models a swap that finds the lock held as if it could overwrite the holder's
    /// later release, which makes every contended model fail.
    fn try_acquire(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether someone holds the lock (for assertions).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// Proof that a [`RawSpinLock`] is held; unlocks on drop.
#[must_use = "dropping the guard releases the lock at once"]
pub struct RawSpinGuard<'a> {
    lock: &'a RawSpinLock,
    /// The class it was taken as (its own, or `PteNested`).
    class: LockClass,
    _not_send: PhantomData<*const ()>,
}

impl RawSpinGuard<'_> {
    /// Whether this guard holds `lock`.
    pub fn holds(&self, lock: &RawSpinLock) -> bool {
        core::ptr::eq(self.lock, lock)
    }
}

impl Drop for RawSpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        order::release(self.class);
        preempt_enable();
    }
}

/// A spinlock owning a `T`.
///
/// # Invariants
/// `data` is only reached through a [`SpinGuard`], of which at most one exists at a time.
pub struct SpinLock<T> {
    raw: RawSpinLock,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `data` to one thread at a time, so sharing the lock only
// moves the `T` between threads.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as above; the lock owns its `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock of `class` around `data`.
    #[cfg(not(loom))]
    pub const fn new(class: LockClass, data: T) -> Self {
        SpinLock {
            raw: RawSpinLock::new(class),
            data: UnsafeCell::new(data),
        }
    }

    /// An unlocked lock of `class` around `data`.
    #[cfg(loom)]
    pub fn new(class: LockClass, data: T) -> Self {
        SpinLock {
            raw: RawSpinLock::new(class),
            data: UnsafeCell::new(data),
        }
    }

    /// Spins until the lock is ours.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        SpinGuard {
            _raw: self.raw.lock(),
            lock: self,
        }
    }
}

/// Proof that a [`SpinLock`] is held; derefs to the data.
#[must_use = "dropping the guard releases the lock at once"]
pub struct SpinGuard<'a, T> {
    _raw: RawSpinGuard<'a>,
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other reference to `data` exists (invariant).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only use of the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn spinlock_counts_under_contention() {
        let lock = SpinLock::new(LockClass::Leaf, 0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        *lock.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*lock.lock(), 40_000);
    }

    #[test]
    fn raw_lock_is_exclusive() {
        let lock = RawSpinLock::new(LockClass::Pte);
        let g = lock.lock();
        assert!(g.holds(&lock));
        assert!(lock.try_lock().is_none());
        drop(g);
        assert!(lock.try_lock().is_some());
    }

    #[cfg(debug_assertions)]
    #[test]
    fn lock_order_inversion_panics_in_debug() {
        let cache = RawSpinLock::new(LockClass::FrameCache);
        let pte = RawSpinLock::new(LockClass::Pte);
        let _c = cache.lock();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _p = pte.lock();
        }));
        assert!(r.is_err());
    }
}

/// loom model of the lock: each holder's section must be ordered after the previous holder's
/// (loom's `UnsafeCell` reports an access that is not), through the contended `lock` path, the
/// `try_lock` path and the release in the guard's drop.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    use super::{LockClass, RawSpinLock};

    struct Counter {
        lock: RawSpinLock,
        n: UnsafeCell<u32>,
    }

    // SAFETY: `n` is only accessed with `lock` held; loom checks that this orders the accesses.
    unsafe impl Sync for Counter {}

    fn bump(c: &Counter) {
        let _g = c.lock.lock();
        // SAFETY: the lock is held (what loom checks).
        c.n.with_mut(|p| unsafe { *p += 1 });
    }

    fn try_bump(c: &Counter) -> bool {
        let Some(_g) = c.lock.try_lock() else {
            return false;
        };
        // SAFETY: the lock is held (what loom checks).
        c.n.with_mut(|p| unsafe { *p += 1 });
        true
    }

    /// Two CPUs increment a counter, one under `lock`, which spins while the other holds the
    /// lock, and one under `try_lock`: no increment is lost and none overlaps another holder's.
    /// (A third CPU makes loom's exploration of the spin loop run past its branch limit.)
    #[test]
    fn loom_spinlock_orders_sections() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        // The waiters' spin loops are branches too.
        b.max_branches = 20_000;
        b.check(|| {
            let c = Arc::new(Counter {
                lock: RawSpinLock::new(LockClass::Leaf),
                n: UnsafeCell::new(0),
            });
            let c1 = c.clone();
            let t1 = thread::spawn(move || bump(&c1));
            let tried = u32::from(try_bump(&c));
            t1.join().unwrap();
            let _g = c.lock.lock();
            // SAFETY: the lock is held and the other threads are joined.
            let n = c.n.with(|p| unsafe { *p });
            assert_eq!(n, 1 + tried, "an increment was lost");
            assert!(c.lock.try_lock().is_none(), "try_lock took a held lock");
        });
    }
}
