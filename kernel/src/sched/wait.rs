//! Blocking: wait queues, futex-style waiting on a word, and sleeping until a deadline.
//!
//! A waiter checks its condition and enqueues itself under the queue's lock with interrupts
//! off, and a waker changes the condition before taking that lock, so a wake-up between the
//! check and the block cannot be lost (`sched_core::WaitQueue`).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use sched_core::{IrqGuard, IrqsOff};
use spin::Mutex;

use super::thread::Thread;
use super::{KERNEL, NoPreempt, current};

/// Threads blocked until someone wakes them.
pub struct WaitQueue(sched_core::WaitQueue<Thread>);

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        WaitQueue(sched_core::WaitQueue::new())
    }

    /// Blocks the calling thread as long as `cond()` holds. `cond` is checked under the queue's
    /// lock (interrupts off), so it must not block or take this queue's lock.
    #[track_caller]
    pub fn wait_while(&self, cond: impl Fn() -> bool) {
        super::assert_may_sleep();
        self.0.wait_while(&KERNEL, cond);
    }

    /// Wakes up to `n` waiters. Returns how many were woken. A woken thread queued on this CPU
    /// preempts the caller when this returns (if preemption is enabled).
    pub fn wake_n(&self, n: usize) -> usize {
        // Keeps "this CPU" stable until the threads are queued; dropping it is the preemption
        // point.
        let _np = NoPreempt::new();
        self.0.wake_n(&KERNEL, n)
    }

    /// Wakes every waiter.
    pub fn wake_all(&self) -> usize {
        self.wake_n(usize::MAX)
    }
}

/// Futex buckets: a waiter on a word sleeps in the bucket its address hashes to.
const BUCKETS: usize = 64;
static FUTEX: [WaitQueue; BUCKETS] = [const { WaitQueue::new() }; BUCKETS];

fn bucket(word: &AtomicU32) -> &'static WaitQueue {
    let addr = word as *const AtomicU32 as usize;
    &FUTEX[(addr >> 2).wrapping_mul(0x9e37_79b9) % BUCKETS]
}

/// Blocks while `*word == expected` (returns at once otherwise; may return spuriously, when
/// another word in the same bucket is woken).
#[track_caller]
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    bucket(word).wait_while(|| word.load(Ordering::SeqCst) == expected);
}

/// Wakes threads blocked on `word`. Every waiter of the bucket wakes and re-checks its own word,
/// so `count` is an upper bound for this word only when the bucket is not shared.
pub fn futex_wake(word: &AtomicU32, _count: usize) {
    bucket(word).wake_all();
}

/// Threads sleeping until their `wake_at` deadline.
static SLEEPERS: Mutex<Vec<Arc<Thread>>> = Mutex::new(Vec::new());

/// Blocks the calling thread for at least `ns` nanoseconds (to the next timer tick after).
#[track_caller]
pub fn sleep_ns(ns: u64) {
    super::assert_may_sleep();
    let deadline = crate::arch::apic::now_ns() + ns;
    let me = current();
    me.wake_at.store(deadline, Ordering::Relaxed);
    while crate::arch::apic::now_ns() < deadline {
        let irqs = IrqGuard::new(&KERNEL);
        {
            let mut s = SLEEPERS.lock();
            me.se.set_blocked(&irqs);
            s.push(me.clone());
        }
        sched_core::schedule(&KERNEL, &irqs);
    }
}

/// Wakes sleepers whose deadline passed. Called from the timer interrupt.
pub(super) fn wake_sleepers(now: u64, irqs: &IrqsOff) {
    let due: Vec<Arc<Thread>> = match SLEEPERS.try_lock() {
        Some(mut s) if !s.is_empty() => {
            let (due, rest): (Vec<_>, Vec<_>) = s
                .drain(..)
                .partition(|t| t.wake_at.load(Ordering::Relaxed) <= now);
            *s = rest;
            due
        }
        _ => return,
    };
    for t in due {
        sched_core::wake(&KERNEL, t, irqs);
    }
}

/// Blocks the calling thread until a waker calls [`wake`](super::wake) on it or, with a `deadline`
/// (`apic::now_ns` time), until that passes; may also return spuriously. For waits whose queue
/// lives elsewhere (user futexes): `enqueue` runs with interrupts off and must put the thread
/// where its waker finds it, under the lock that waker takes, and return `false` to not block
/// after all (the condition it checked under that lock no longer holds). The thread is marked
/// blocked before `enqueue` runs, so a waker that finds it there afterwards cannot lose it
/// (`sched_core::block`, which also handles a stray wake-up racing an `enqueue` that says no).
#[track_caller]
pub fn block_current(deadline: Option<u64>, enqueue: impl FnOnce(&Arc<Thread>) -> bool) {
    super::assert_may_sleep();
    let irqs = IrqGuard::new(&KERNEL);
    let blocked = sched_core::block(&KERNEL, &irqs, |me| {
        if !enqueue(me) {
            return false;
        }
        if let Some(deadline) = deadline {
            me.wake_at.store(deadline, Ordering::Relaxed);
            SLEEPERS.lock().push(me.clone());
        }
        true
    });
    if blocked && deadline.is_some() {
        // Woken before the deadline: leave the sleepers, so its wake-up does not hit a later
        // wait (one already taken out by the tick may still arrive: waits re-check).
        let me = current();
        SLEEPERS.lock().retain(|t| !Arc::ptr_eq(t, &me));
    }
}
