//! The queue of deferred callbacks, behind a small spinlock of its own (it is a leaf lock: no
//! other lock is taken under it, and callbacks run after it is released).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::mem;

use super::Rcu;
use crate::platform::Platform;
use crate::primitive::{AtomicBool, AtomicUsize, Ordering, spin_loop};

/// Work to do after a grace period.
pub type RcuCallback = Box<dyn FnOnce() + Send>;

struct Lists {
    /// Queued, no grace period started for them yet.
    next: Vec<RcuCallback>,
    /// Waiting for grace period `wait_gp` to end.
    wait: Vec<RcuCallback>,
    wait_gp: u64,
}

/// # Invariants
/// `lists` is accessed only while `locked` is true and held by the accessor; `len` is the total
/// length of both lists.
pub(super) struct CallbackQueue {
    locked: AtomicBool,
    len: AtomicUsize,
    /// Batches taken off the lists and not yet finished running.
    running: AtomicUsize,
    lists: UnsafeCell<Lists>,
}

// SAFETY: `lists` is only reached under the lock (see the invariant); callbacks are `Send`.
unsafe impl Sync for CallbackQueue {}
// SAFETY: as above; the lists own `Send` callbacks.
unsafe impl Send for CallbackQueue {}

struct Locked<'a> {
    queue: &'a CallbackQueue,
}

impl CallbackQueue {
    pub(super) fn new() -> Self {
        CallbackQueue {
            locked: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            lists: UnsafeCell::new(Lists {
                next: Vec::new(),
                wait: Vec::new(),
                wait_gp: 0,
            }),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(super) fn push(&self, f: RcuCallback) {
        let mut q = self.lock();
        q.lists().next.push(f);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Without blocking: moves a finished batch out of `wait`, starts a grace period for `next`
    /// when nothing waits, and (if `run`) runs the finished batch after unlocking. A finished
    /// batch that is not run here goes back to the front of the queue.
    pub(super) fn advance<P: Platform>(&self, rcu: &Rcu<P>, run_due: bool) {
        if self.len() == 0 {
            return;
        }
        let Some(mut q) = self.try_lock() else { return };
        let lists = q.lists();
        let mut due = Vec::new();
        if !lists.wait.is_empty() && rcu.gp_done(lists.wait_gp) {
            if !run_due {
                // Keep it until someone who may run callbacks comes by; the grace period is
                // over, so it stays over.
                return;
            }
            due = mem::take(&mut lists.wait);
        }
        if lists.wait.is_empty() && !lists.next.is_empty() {
            lists.wait = mem::take(&mut lists.next);
            lists.wait_gp = rcu.start_gp();
        }
        self.len.fetch_sub(due.len(), Ordering::Relaxed);
        if due.is_empty() {
            return;
        }
        // Counted under the lock: a `barrier` that finds the lists empty after this point also
        // finds the batch here and waits for it.
        self.running.fetch_add(1, Ordering::Relaxed);
        drop(q);
        run(due);
        // Release: the callbacks' effects come before a `barrier` that sees the batch done.
        self.running.fetch_sub(1, Ordering::Release);
    }

    /// Whether some CPU is running a batch it took off the lists.
    pub(super) fn running(&self) -> bool {
        self.running.load(Ordering::Acquire) != 0
    }

    /// Empties the queue (for `barrier` and drop): `None` when it already was.
    pub(super) fn take_all(&self) -> Option<Vec<RcuCallback>> {
        let mut q = self.lock();
        let lists = q.lists();
        let mut all = mem::take(&mut lists.wait);
        all.append(&mut lists.next);
        self.len.fetch_sub(all.len(), Ordering::Relaxed);
        if all.is_empty() { None } else { Some(all) }
    }

    fn lock(&self) -> Locked<'_> {
        loop {
            if let Some(l) = self.try_lock() {
                return l;
            }
            spin_loop();
        }
    }

    fn try_lock(&self) -> Option<Locked<'_>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Locked { queue: self })
    }
}

impl Locked<'_> {
    fn lists(&mut self) -> &mut Lists {
        // SAFETY: we hold the lock (we exist), and `&mut self` makes this the only borrow.
        unsafe { &mut *self.queue.lists.get() }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.queue.locked.store(false, Ordering::Release);
    }
}

/// Runs a batch of callbacks whose grace period is over.
pub(super) fn run(batch: Vec<RcuCallback>) {
    for f in batch {
        f();
    }
}
