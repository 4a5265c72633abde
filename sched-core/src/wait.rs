//! Wait queues: a waiter checks its condition and queues itself under the queue's lock, with
//! interrupts off, and a waker changes the condition before it takes that lock, so a wake-up
//! between the check and the block cannot be lost.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::irq::{IrqGuard, IrqsOff};
use crate::primitive::{Arc, Mutex};
use crate::task::Task;
use crate::{Machine, current, schedule, wake};

/// Threads blocked until someone wakes them.
pub struct WaitQueue<T> {
    waiters: Mutex<VecDeque<Arc<T>>>,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> WaitQueue<T> {
    /// An empty queue.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        WaitQueue {
            waiters: Mutex::new(VecDeque::new()),
        }
    }

    /// An empty queue.
    #[cfg(loom)]
    pub fn new() -> Self {
        WaitQueue {
            waiters: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T: Task> WaitQueue<T> {
    /// Blocks the calling thread as long as `cond()` holds. `cond` is checked under the queue's
    /// lock, so it must not block or take this queue's lock. The caller may sleep (the kernel
    /// checks that before calling).
    pub fn wait_while<M: Machine<Task = T>>(&self, m: &M, cond: impl Fn() -> bool) {
        loop {
            let irqs = IrqGuard::new(m);
            if !self.prepare_to_wait(m, &irqs, &cond) {
                return;
            }
            schedule(m, &irqs);
        }
    }

    /// Under the lock: if `cond()` holds, marks the running thread `Blocked` and queues it
    /// (true: the caller then schedules); else leaves it running (false).
    fn prepare_to_wait<M: Machine<Task = T>>(
        &self,
        m: &M,
        irqs: &IrqsOff,
        cond: &impl Fn() -> bool,
    ) -> bool {
        let mut q = self.waiters.lock();
        if !cond() {
            return false;
        }
        let me = current(m, irqs);
        me.sched().set_blocked(irqs);
        q.push_back(me);
        true
    }

    /// Wakes up to `n` waiters. Returns how many were woken.
    pub fn wake_n<M: Machine<Task = T>>(&self, m: &M, n: usize) -> usize {
        let irqs = IrqGuard::new(m);
        let woken: Vec<Arc<T>> = {
            let mut q = self.waiters.lock();
            let k = n.min(q.len());
            q.drain(..k).collect()
        };
        let count = woken.len();
        for t in woken {
            wake(m, t, &irqs);
        }
        count
    }

    /// Wakes every waiter.
    pub fn wake_all<M: Machine<Task = T>>(&self, m: &M) -> usize {
        self.wake_n(m, usize::MAX)
    }
}

/// Blocks the running thread on a wait list kept elsewhere (a futex hash bucket, say) until a
/// waker calls [`wake`] on it: marks it `Blocked`, then calls `enqueue`, which must put it where
/// its waker finds it, under the lock that waker takes, and return true; or return false to not
/// block after all (the condition it checked under that lock no longer holds). Being `Blocked`
/// before it is findable is what makes a wake-up right after `enqueue` count. May return
/// spuriously (a wake-up meant for an earlier wait); callers re-check their condition. Returns
/// whether it blocked.
///
/// When `enqueue` says no, the thread takes its state back ([`SchedEntity::cancel_blocked`]);
/// if a stray wake-up won that race, the waker waits for this CPU to leave the thread's stack
/// and queues it, so the thread switches away and comes back through the run queue.
///
/// [`SchedEntity::cancel_blocked`]: crate::SchedEntity::cancel_blocked
pub fn block<M: Machine>(
    m: &M,
    irqs: &IrqsOff,
    enqueue: impl FnOnce(&Arc<M::Task>) -> bool,
) -> bool {
    let me = current(m, irqs);
    me.sched().set_blocked(irqs);
    let blocked = enqueue(&me);
    let switch = blocked || !me.sched().cancel_blocked(irqs);
    // Not held across the switch: an exited thread's frame is never resumed to drop it.
    drop(me);
    if switch {
        schedule(m, irqs);
    }
    blocked
}
