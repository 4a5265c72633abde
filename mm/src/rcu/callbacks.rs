//! The queue of deferred callbacks (Linux's segmented callback list, in three segments).
//!
//! `next` holds callbacks no grace period covers yet, `wait` those waiting for grace period
//! `wait_gp`, `done` those whose grace period is over. [`CallbackQueue::advance`] moves `wait`
//! to `done` once its grace period ends and starts one for `next`; it neither blocks, allocates
//! nor runs anything, so the timer interrupt may call it. Callbacks run only after they are
//! taken off the queue and its lock is released, in a context that may take its time.
//!
//! The lock is the crate's [`RawSpinLock`] of class `Leaf`: it disables preemption while held, so
//! a holder cannot be preempted in favour of a thread that spins on it with preemption disabled
//! (a maple writer's `call_rcu`), which would hang that CPU. Under it: moving vectors and
//! pushing onto `next`, nothing else. The timer interrupt only ever try-locks it. Under loom,
//! whose scheduler cannot get through a contended spin loop, a loom mutex stands in for it
//! (same acquire/release ordering): the models check the protocol around the lock.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::mem;

use super::Rcu;
use crate::platform::Platform;
use crate::primitive::{AtomicUsize, Ordering};
#[cfg(not(loom))]
use crate::sync::{LockClass, RawSpinGuard as QueueGuard, RawSpinLock as QueueLock};
#[cfg(loom)]
use loom_lock::{LockClass, QueueGuard, QueueLock};

/// Work to do after a grace period.
pub type RcuCallback = Box<dyn FnOnce() + Send>;

struct Lists {
    /// Queued, no grace period started for them yet.
    next: Vec<RcuCallback>,
    /// Waiting for grace period `wait_gp` to end.
    wait: Vec<RcuCallback>,
    wait_gp: u64,
    /// Their grace period is over: due to run.
    done: Vec<RcuCallback>,
}

/// # Invariants
/// `lists` is accessed only through a [`Locked`], which holds `lock`. Under the lock, `len` is
/// the total length of the three lists and `ready` the length of `done`; `running` counts the
/// batches taken off the lists (under the lock) and not yet finished.
pub(super) struct CallbackQueue {
    lock: QueueLock,
    len: AtomicUsize,
    ready: AtomicUsize,
    running: AtomicUsize,
    lists: UnsafeCell<Lists>,
}

// SAFETY: `lists` is only reached under the lock (see the invariant); callbacks are `Send`.
unsafe impl Sync for CallbackQueue {}
// SAFETY: as above; the lists own `Send` callbacks.
unsafe impl Send for CallbackQueue {}

/// The lists, with the queue's lock held.
struct Locked<'a> {
    queue: &'a CallbackQueue,
    _guard: QueueGuard<'a>,
}

/// A batch taken off the queue: counted in `running` until [`CallbackQueue::finish`].
pub(super) struct Batch(Vec<RcuCallback>);

impl CallbackQueue {
    pub(super) fn new() -> Self {
        CallbackQueue {
            lock: QueueLock::new(LockClass::Leaf),
            len: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            lists: UnsafeCell::new(Lists {
                next: Vec::new(),
                wait: Vec::new(),
                wait_gp: 0,
                done: Vec::new(),
            }),
        }
    }

    /// Callbacks queued (in any segment) and not yet taken off to run.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether some callbacks are due to run.
    pub(super) fn has_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) != 0
    }

    /// Queues `f` and advances. Returns the queue's length afterwards.
    pub(super) fn push<P: Platform>(&self, rcu: &Rcu<P>, f: RcuCallback) -> usize {
        let mut q = self.lock();
        q.lists().next.push(f);
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        q.advance(rcu);
        len
    }

    /// Without blocking, allocating or running callbacks: moves `wait` to `done` if its grace
    /// period is over, and starts one for `next` when nothing waits. Does nothing if someone
    /// else holds the lock (they advance too, or the next caller will).
    pub(super) fn advance<P: Platform>(&self, rcu: &Rcu<P>) {
        if self.len() == 0 {
            return;
        }
        if let Some(mut q) = self.try_lock() {
            q.advance(rcu);
        }
    }

    /// Advances, then takes the callbacks that are due, and advances again (starting a grace
    /// period for `next` once `wait` moved on). `None` when nothing is due.
    pub(super) fn take_ready<P: Platform>(&self, rcu: &Rcu<P>) -> Option<Batch> {
        if self.len() == 0 {
            return None;
        }
        let mut q = self.lock();
        q.advance(rcu);
        let done = mem::take(&mut q.lists().done);
        q.advance(rcu);
        q.taken(done)
    }

    /// Empties the queue, due or not (for `barrier`, `reclaim` and drop): `None` when it already
    /// was empty. The caller must let a grace period pass before running what it got, unless no
    /// reader can exist any more.
    pub(super) fn take_all(&self) -> Option<Batch> {
        let mut q = self.lock();
        let lists = q.lists();
        let mut all = mem::take(&mut lists.done);
        all.append(&mut lists.wait);
        all.append(&mut lists.next);
        q.taken(all)
    }

    /// Ends a batch's `running` count once every callback of it has run.
    pub(super) fn finish(&self, batch: Batch) {
        debug_assert!(batch.0.is_empty(), "finish() of a batch that did not run");
        // Release: the callbacks' effects come before a `barrier` that sees the batch done.
        self.running.fetch_sub(1, Ordering::Release);
    }

    /// Whether some thread is running a batch it took off the lists.
    pub(super) fn running(&self) -> bool {
        self.running.load(Ordering::Acquire) != 0
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            queue: self,
            _guard: self.lock.lock(),
        }
    }

    fn try_lock(&self) -> Option<Locked<'_>> {
        self.lock.try_lock().map(|g| Locked {
            queue: self,
            _guard: g,
        })
    }
}

impl Locked<'_> {
    fn lists(&mut self) -> &mut Lists {
        // SAFETY: we hold the lock (`_guard`), and `&mut self` makes this the only borrow.
        unsafe { &mut *self.queue.lists.get() }
    }

    fn advance<P: Platform>(&mut self, rcu: &Rcu<P>) {
        let lists = self.lists();
        // A finished `wait` joins `done` only when that needs no allocation; otherwise it stays
        // until the callbacks that are due have been taken (the grace period stays over).
        if !lists.wait.is_empty() && lists.done.is_empty() && rcu.gp_done(lists.wait_gp) {
            mem::swap(&mut lists.wait, &mut lists.done);
        }
        if lists.wait.is_empty() && !lists.next.is_empty() {
            mem::swap(&mut lists.wait, &mut lists.next);
            lists.wait_gp = rcu.start_gp();
        }
        let ready = lists.done.len();
        self.queue.ready.store(ready, Ordering::Relaxed);
    }

    /// Accounts for `batch` leaving the lists.
    fn taken(mut self, batch: Vec<RcuCallback>) -> Option<Batch> {
        if batch.is_empty() {
            return None;
        }
        let q = self.queue;
        q.len.fetch_sub(batch.len(), Ordering::Relaxed);
        let ready = self.lists().done.len();
        q.ready.store(ready, Ordering::Relaxed);
        // Counted under the lock: a `barrier` that finds the lists empty after this point also
        // finds the batch here and waits for it.
        q.running.fetch_add(1, Ordering::Relaxed);
        Some(Batch(batch))
    }
}

impl Batch {
    /// Callbacks in the batch.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Runs every callback (their grace period is over), leaving the batch empty for
    /// [`CallbackQueue::finish`].
    pub(super) fn run(&mut self) {
        for f in self.0.drain(..) {
            f();
        }
    }
}

#[cfg(loom)]
mod loom_lock {
    /// Unused under loom: there is no lock-order checking there.
    pub(super) enum LockClass {
        Leaf,
    }

    pub(super) struct QueueLock(loom::sync::Mutex<()>);

    pub(super) type QueueGuard<'a> = loom::sync::MutexGuard<'a, ()>;

    impl QueueLock {
        pub(super) fn new(_class: LockClass) -> Self {
            QueueLock(loom::sync::Mutex::new(()))
        }

        pub(super) fn lock(&self) -> QueueGuard<'_> {
            // Poisoned only after a panic, which has already failed the model.
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }

        pub(super) fn try_lock(&self) -> Option<QueueGuard<'_>> {
            self.0.try_lock().ok()
        }
    }
}
