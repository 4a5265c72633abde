//! A fair reader-writer semaphore in the shape of Linux's `rw_semaphore`: one word for the fast
//! paths, a FIFO queue of sleepers for the slow paths, readers admitted in batches, and a lock
//! handoff that bounds every wait.
//!
//! ```text
//!  31 ........ 8   7..3   2         1         0
//!  readers holding  -      HANDOFF   WAITERS   WRITER_LOCKED
//! ```
//!
//! - Fast paths are one compare-and-swap: a reader enters when no writer holds and nobody waits
//!   (no `WAITERS`, no `HANDOFF`), a writer when the word is 0. A release is one atomic RMW; the
//!   one that frees the lock while `WAITERS` is set runs [`rwsem_wake`](RwSemaphore::rwsem_wake).
//! - Slow paths queue a waiter, which lives on the waiting thread's stack, at the tail of
//!   `wait_list`, under `wait_lock` (a leaf spinlock). `WAITERS` says the queue is not empty;
//!   `WAITERS` and `HANDOFF` change only under `wait_lock`. A new reader queues whenever anyone
//!   waits, so a stream of readers cannot starve a queued writer.
//! - `rwsem_mark_wake` gives the lock to the head of the queue when it can have it. Readers at the
//!   head: every queued reader (up to [`MAX_READERS_WAKEUP`]), skipping queued writers, is
//!   granted at once, the waker adding their reader counts to the word before waking them
//!   (Linux's phase-fair batch: a queued writer is overtaken once, by readers already queued). So
//!   a writer re-taking the lock in a loop cannot starve readers: its release admits every queued
//!   reader before it can ask again. A writer at the head is woken to take the lock itself; until
//!   it runs, a writer in its slow path may take the free lock first ("steal", as Linux's
//!   optimistic spinning does), which avoids a convoy behind a sleeping writer.
//! - Handoff: once the head has waited [`RWSEM_WAIT_TIMEOUT_NS`] (Linux's 4 ms), it is owed the
//!   lock. The first `rwsem_mark_wake` that sees this while the lock is held sets `HANDOFF`, which
//!   keeps stealers out; the first one that finds the lock free grants it to the head directly,
//!   writer or readers, before waking it. After the timeout, at most one more stealer gets in
//!   first: one arriving between a release and its `rwsem_mark_wake`, before `HANDOFF` is set.
//! - Waking: the waker marks waiters [`GRANTED`] (or the head writer [`TRY`]) under `wait_lock`,
//!   then bumps `wake_seq` and unparks everyone parked on it. A waiter reads `wake_seq` before
//!   its status and parks only on the value it read (futex semantics), so no wake-up is lost.
//!   Waiters park on the semaphore's word rather than their own because a granted waiter may
//!   return and free its stack frame as soon as it sees the grant, before the waker could wake
//!   it through a word in that frame.
//!
//! Optimistic spinning on a running owner (Linux's `rwsem_optimistic_spin`) is not done: a
//! waiter queues at once. Readers never steal.

#[allow(unsafe_code)]
mod wait_list;

#[cfg(all(test, not(loom)))]
mod tests;

use alloc::sync::Arc;

use super::{LockClass, Park, SpinLock};
use crate::primitive::{AtomicU32, Ordering};
use wait_list::{GRANTED, Kind, TRY, WAITING, WaitList, Waiter};

const WRITER_LOCKED: u32 = 1 << 0;
const WAITERS: u32 = 1 << 1;
const HANDOFF: u32 = 1 << 2;
const READER_SHIFT: u32 = 8;
const READER_BIAS: u32 = 1 << READER_SHIFT;
const READER_MASK: u32 = !(READER_BIAS - 1);
/// Any of these keeps a reader out of the fast path.
const READ_FAILED_MASK: u32 = WRITER_LOCKED | WAITERS | HANDOFF;

/// How long the head of the queue waits before it is owed the lock (Linux's
/// `RWSEM_WAIT_TIMEOUT`, 4 ms), in [`Park::clock_ns`] time.
pub const RWSEM_WAIT_TIMEOUT_NS: u64 = 4_000_000;

/// The most readers one wake-up admits (Linux's `MAX_READERS_WAKEUP`).
const MAX_READERS_WAKEUP: u32 = 256;

/// A reader-writer semaphore: readers share, writers are exclusive, waiters are served in order
/// with readers batched, and a long wait ends in a handoff.
///
/// # Invariants
/// `state` is encoded as in the module header. `WRITER_LOCKED` set implies no readers hold.
/// `WAITERS` is set iff `wait_list` is not empty; `HANDOFF` only while `WAITERS` is; both bits
/// change only under `wait_lock`. The reader count includes readers granted by a waker that have
/// not yet run.
pub struct RwSemaphore<W: Park> {
    state: AtomicU32,
    wait_lock: SpinLock<WaitList>,
    /// Bumped after each grant or wake of waiters; every waiter parks on it.
    wake_seq: AtomicU32,
    park: Arc<W>,
    #[cfg(all(test, not(loom)))]
    acquired: tests::Acquisitions,
}

impl<W: Park> RwSemaphore<W> {
    /// An unlocked semaphore that blocks through `park`.
    pub fn new(park: Arc<W>) -> Self {
        RwSemaphore {
            state: AtomicU32::new(0),
            wait_lock: SpinLock::new(LockClass::Leaf, WaitList::new()),
            wake_seq: AtomicU32::new(0),
            park,
            #[cfg(all(test, not(loom)))]
            acquired: tests::Acquisitions::default(),
        }
    }

    /// Acquires for reading, waiting while a writer holds the lock or anyone is queued.
    pub fn down_read(&self) {
        if !self.try_down_read() {
            self.down_slowpath(Kind::Read);
        }
    }

    /// Acquires for reading if that needs no waiting (no writer holds, nobody is queued).
    pub fn try_down_read(&self) -> bool {
        let ok = self.try_acquire(Kind::Read, READ_FAILED_MASK);
        if ok {
            self.note_acquired(Kind::Read);
        }
        ok
    }

    /// Takes the lock for `kind` unless one of `blockers` is set in the word: a reader adds
    /// itself to the count, a writer sets `WRITER_LOCKED`, each with a compare-and-swap retried
    /// while only other bits change. The one loop behind both fast paths and both slow-path
    /// steals.
    #[inline(always)]
    fn try_acquire(&self, kind: Kind, blockers: u32) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        while s & blockers == 0 {
            let new = match kind {
                Kind::Read => {
                    debug_assert!(
                        s & READER_MASK != READER_MASK,
                        "rwsem reader count overflow"
                    );
                    s + READER_BIAS
                }
                Kind::Write => s | WRITER_LOCKED,
            };
            match self
                .state
                .compare_exchange_weak(s, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(cur) => s = cur,
            }
        }
        false
    }

    /// Releases one read hold.
    pub fn up_read(&self) {
        let prev = self.state.fetch_sub(READER_BIAS, Ordering::Release);
        debug_assert!(prev & READER_MASK != 0, "up_read without down_read");
        // Only the last reader out can make the head grantable: a reader head waits only for a
        // writer, a writer head for the readers to drain.
        if prev & (READER_MASK | WAITERS) == READER_BIAS | WAITERS {
            self.rwsem_wake();
        }
    }

    /// Acquires for writing, waiting until the lock is free and the writer's turn has come.
    pub fn down_write(&self) {
        if !self.try_down_write() {
            self.down_slowpath(Kind::Write);
        }
    }

    /// Acquires for writing if the lock is free and nobody is queued.
    pub fn try_down_write(&self) -> bool {
        let ok = self
            .state
            .compare_exchange(0, WRITER_LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.note_acquired(Kind::Write);
        }
        ok
    }

    /// Releases the write hold.
    pub fn up_write(&self) {
        let prev = self.state.fetch_and(!WRITER_LOCKED, Ordering::Release);
        debug_assert!(prev & WRITER_LOCKED != 0, "up_write without down_write");
        if prev & WAITERS != 0 {
            self.rwsem_wake();
        }
    }

    /// Turns the write hold into a read hold without letting a writer in between, and admits
    /// the queued readers if a reader is at the head of the queue (the batch of
    /// `rwsem_mark_wake`; with a writer at the head, nobody).
    pub fn downgrade_write(&self) {
        // One RMW, as Linux's: WRITER_LOCKED is set, so subtracting it and adding a reader is
        // the same as adding `READER_BIAS - WRITER_LOCKED`.
        let prev = self
            .state
            .fetch_add(READER_BIAS - WRITER_LOCKED, Ordering::Release);
        debug_assert!(
            prev & WRITER_LOCKED != 0 && prev & READER_MASK == 0,
            "downgrade_write without down_write"
        );
        if prev & WAITERS != 0 {
            self.rwsem_wake();
        }
    }

    /// Whether some thread holds the lock for writing (for assertions).
    pub fn is_write_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WRITER_LOCKED != 0
    }

    /// Whether some thread holds the lock for reading or writing (for assertions).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & (WRITER_LOCKED | READER_MASK) != 0
    }

    /// Whether any thread is queued (for tests and models).
    #[cfg(test)]
    pub(crate) fn has_waiters(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WAITERS != 0
    }

    /// Whether the head of the queue is owed the lock and stealers are kept out (for tests and
    /// models).
    #[cfg(test)]
    pub(crate) fn has_handoff(&self) -> bool {
        self.state.load(Ordering::Relaxed) & HANDOFF != 0
    }

    /// The slow path of `down_read`/`down_write`: under `wait_lock`, takes the lock if this
    /// kind of locker may still steal it, or else queues and waits.
    #[cold]
    fn down_slowpath(&self, kind: Kind) {
        let now = self.park.clock_ns();
        let list = self.wait_lock.lock();
        let stolen = match kind {
            // Nobody queued, so WAITERS and HANDOFF are clear: only a writer keeps us out.
            Kind::Read => list.is_empty() && self.try_acquire(Kind::Read, WRITER_LOCKED),
            // Steal the free lock even though waiters are queued (the head writer has not run
            // yet), unless the head is owed a handoff.
            Kind::Write => self.try_acquire(Kind::Write, WRITER_LOCKED | READER_MASK | HANDOFF),
        };
        if stolen {
            drop(list);
            self.note_acquired(kind);
            return;
        }
        self.queue_and_wait(list, kind, now);
    }

    /// Queues a waiter of `kind` last and returns once it holds the lock.
    fn queue_and_wait(&self, list: super::SpinGuard<'_, WaitList>, kind: Kind, now: u64) {
        let deadline = now.saturating_add(RWSEM_WAIT_TIMEOUT_NS);
        WaitList::queue(list, kind, deadline, |list, waiter| {
            self.wait_queued(list, waiter, now)
        });
        self.note_acquired(kind);
    }

    /// Waits until `waiter`, just queued on `list`, is granted the lock.
    fn wait_queued(&self, mut list: super::SpinGuard<'_, WaitList>, waiter: &Waiter, now: u64) {
        // A holder that released before WAITERS became visible saw no waiters and will not wake
        // anyone, so look at the lock ourselves (both are RMWs of `state`: one sees the other).
        self.state.fetch_or(WAITERS, Ordering::Relaxed);
        // Fairness is counted from here: before WAITERS is visible, fast-path lockers cannot
        // know anyone waits (a thread preempted between the push and this RMW is not yet queued
        // as far as the lock word says).
        #[cfg(all(test, not(loom)))]
        let seen = self.acquired.snapshot();
        let wake = self.mark_wake(&mut list, now, Some(waiter));
        drop(list);
        if wake {
            self.wake_waiters();
        }
        self.wait_granted(waiter);
        #[cfg(all(test, not(loom)))]
        self.acquired.record_wait(waiter.kind, seen);
    }

    /// Parks until `waiter` is granted the lock; a writer woken at the head takes it itself.
    fn wait_granted(&self, waiter: &Waiter) {
        loop {
            // `wake_seq` before the status: a waker changes the status first, then `wake_seq`.
            let seq = self.wake_seq.load(Ordering::Acquire);
            match waiter.status.load(Ordering::Acquire) {
                GRANTED => return,
                TRY => {
                    let now = self.park.clock_ns();
                    let mut list = self.wait_lock.lock();
                    // A handoff may have granted the lock since we looked.
                    if waiter.status.load(Ordering::Relaxed) == TRY {
                        waiter.status.store(WAITING, Ordering::Relaxed);
                        let wake = self.mark_wake(&mut list, now, Some(waiter));
                        drop(list);
                        if wake {
                            self.wake_waiters();
                        }
                    }
                }
                _ => self.park.park(&self.wake_seq, seq),
            }
        }
    }

    /// `rwsem_wake`: a release found waiters.
    #[cold]
    fn rwsem_wake(&self) {
        let now = self.park.clock_ns();
        let wake = self.mark_wake(&mut self.wait_lock.lock(), now, None);
        if wake {
            self.wake_waiters();
        }
    }

    /// `rwsem_mark_wake`: gives the lock to the head of the queue if it can have it now, or
    /// reserves it with `HANDOFF` if the head is owed it. `awake` is a queued waiter that is
    /// running this (it needs no wake-up, and as the head writer it takes the lock at once
    /// rather than being told to try). Returns whether other waiters must be woken.
    fn mark_wake(&self, list: &mut WaitList, now: u64, awake: Option<&Waiter>) -> bool {
        let Some(head) = list.front() else {
            return false;
        };
        let kind = head.kind;
        let head_awake = awake.is_some_and(|w| core::ptr::eq(w, head));
        let timed_out = now >= head.deadline;
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let owed = timed_out || s & HANDOFF != 0;
            let busy = match kind {
                Kind::Read => WRITER_LOCKED,
                Kind::Write => WRITER_LOCKED | READER_MASK,
            };
            if s & busy != 0 {
                if !owed || s & HANDOFF != 0 {
                    return false;
                }
                // The holder's release hands over; nobody steals until then.
                match self.state.compare_exchange_weak(
                    s,
                    s | HANDOFF,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return false,
                    Err(cur) => {
                        s = cur;
                        continue;
                    }
                }
            }
            if kind == Kind::Write && !owed && !head_awake {
                head.status.store(TRY, Ordering::Release);
                return true;
            }
            let (new, readers) = match kind {
                Kind::Read => {
                    let (n, empties) = list.count_readers(MAX_READERS_WAKEUP);
                    debug_assert!(
                        (s >> READER_SHIFT) + n <= READER_MASK >> READER_SHIFT,
                        "rwsem reader count overflow"
                    );
                    let s = s + n * READER_BIAS;
                    (if empties { s & !WAITERS } else { s }, n)
                }
                Kind::Write => {
                    let s = s | WRITER_LOCKED;
                    (if list.is_singular() { s & !WAITERS } else { s }, 0)
                }
            };
            // Acquire: the grantee's critical section follows the previous holder's release
            // (passed on by the Release store of its status).
            match self.state.compare_exchange_weak(
                s,
                new & !HANDOFF,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return match kind {
                        Kind::Read => {
                            list.grant_readers(readers);
                            readers > 1 || !head_awake
                        }
                        Kind::Write => {
                            list.grant_front();
                            !head_awake
                        }
                    };
                }
                Err(cur) => s = cur,
            }
        }
    }

    /// Wakes the waiters told something by `mark_wake` (and, harmlessly, every other).
    fn wake_waiters(&self) {
        // Release: a waiter that reads the new value sees the statuses set before it.
        self.wake_seq.fetch_add(1, Ordering::Release);
        self.park.unpark_all(&self.wake_seq);
    }

    fn note_acquired(&self, _kind: Kind) {
        #[cfg(all(test, not(loom)))]
        self.acquired.note(_kind);
    }
}
