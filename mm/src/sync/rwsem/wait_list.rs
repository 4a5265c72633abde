//! The FIFO queue of an [`RwSemaphore`](super::RwSemaphore): an intrusive singly linked list of
//! [`Waiter`]s that live on the waiting threads' stacks (Linux's `rwsem_waiter` on
//! `sem->wait_list`). Only the holder of the semaphore's `wait_lock` touches the list and the
//! links; a waiter's owner reads its `status` without the lock.
//!
//! A waiter lives in the frame of [`WaitList::queue`], which does not return before the waiter
//! has left the queue, so the list never points into a dead frame.
//!
//! A waiter leaves the queue only by being granted the lock: whoever grants it (a waker, or the
//! head writer itself) unlinks it and stores [`GRANTED`] as the very last access to the node,
//! since the owner may return and free the node as soon as it sees that.

use core::cell::Cell;
use core::ops::DerefMut;
use core::ptr::NonNull;

use crate::primitive::{AtomicU32, Ordering};

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Read,
    Write,
}

/// [`Waiter::status`]: queued, nothing to do but wait.
pub(super) const WAITING: u32 = 0;
/// The writer at the head was woken to take the free lock itself (it may find it stolen).
pub(super) const TRY: u32 = 1;
/// Unlinked by a waker that took the lock on the waiter's behalf: the waiter holds it.
pub(super) const GRANTED: u32 = 2;

/// One thread waiting in `down_read`/`down_write`.
///
/// # Invariants
/// `next` is only read or written under the owning semaphore's `wait_lock`.
pub(super) struct Waiter {
    pub(super) kind: Kind,
    /// `clock_ns` time from which the waiter is owed a handoff.
    pub(super) deadline: u64,
    /// [`WAITING`], [`TRY`] or [`GRANTED`]; set by wakers under `wait_lock`.
    pub(super) status: AtomicU32,
    next: Cell<Option<NonNull<Waiter>>>,
}

impl Waiter {
    fn new(kind: Kind, deadline: u64) -> Self {
        Waiter {
            kind,
            deadline,
            status: AtomicU32::new(WAITING),
            next: Cell::new(None),
        }
    }
}

/// The queue.
///
/// # Invariants
/// `head` links, through `next`, every queued waiter exactly once in arrival order, ending at
/// `tail`; both are `None` iff the queue is empty. A queued waiter is alive and does not move
/// until it is unlinked (its owner stays in the slow path until then). The list is only reached
/// under the semaphore's `wait_lock`.
pub(super) struct WaitList {
    head: Option<NonNull<Waiter>>,
    tail: Option<NonNull<Waiter>>,
}

// SAFETY: the list only points to waiters on other threads' stacks, and it lives in (and is only
// reached through) the `wait_lock` spinlock, whose acquire/release orders every access to the
// list and to the links.
unsafe impl Send for WaitList {}

impl WaitList {
    pub(super) const fn new() -> Self {
        WaitList {
            head: None,
            tail: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Whether exactly one waiter is queued.
    pub(super) fn is_singular(&self) -> bool {
        self.head.is_some() && self.head == self.tail
    }

    /// The oldest waiter.
    pub(super) fn front(&self) -> Option<&Waiter> {
        // SAFETY: a queued waiter is alive (invariant) and stays queued while the list is
        // borrowed, since only `&mut self` methods unlink.
        self.head.map(|p| unsafe { p.as_ref() })
    }

    /// Waiters queued (for tests).
    #[cfg(all(test, not(loom)))]
    pub(super) fn len(&self) -> usize {
        self.iter().count()
    }

    /// Queues a new waiter of `kind` last on `list` and runs `wait` with the list (still
    /// locked) and the waiter; `wait` returns once the waiter is [`GRANTED`], and so does this.
    pub(super) fn queue<G: DerefMut<Target = WaitList>>(
        mut list: G,
        kind: Kind,
        deadline: u64,
        wait: impl FnOnce(G, &Waiter),
    ) {
        let waiter = Waiter::new(kind, deadline);
        // We return only once the waiter is GRANTED, i.e. unlinked (checked below), and `Queued`
        // turns unwinding before that into an abort.
        // SAFETY: `waiter` lives in this frame, which does not end before it is unlinked.
        unsafe { list.push_back(&waiter) };
        let queued = Queued;
        wait(list, &waiter);
        // A failure panics with `queued` alive: an abort.
        assert_eq!(
            waiter.status.load(Ordering::Relaxed),
            GRANTED,
            "an rwsem wait returned with its waiter still queued"
        );
        core::mem::forget(queued);
    }

    /// Queues `w` last.
    ///
    /// # Safety
    /// `w` must stay alive and in place until it is unlinked (by [`grant_front`],
    /// [`grant_readers`]).
    ///
    /// [`grant_front`]: Self::grant_front
    /// [`grant_readers`]: Self::grant_readers
    unsafe fn push_back(&mut self, w: &Waiter) {
        w.next.set(None);
        let p = NonNull::from(w);
        match self.tail {
            // SAFETY: the tail is queued, hence alive (invariant).
            Some(t) => unsafe { t.as_ref() }.next.set(Some(p)),
            None => self.head = Some(p),
        }
        // INVARIANT: `w` is linked last, and the caller keeps it alive and in place.
        self.tail = Some(p);
    }

    /// How many readers a batch grant takes (every queued reader, up to `max`, in order, skipping
    /// writers), and whether that would leave the queue empty.
    pub(super) fn count_readers(&self, max: u32) -> (u32, bool) {
        let (mut readers, mut left) = (0, 0);
        for w in self.iter() {
            if w.kind == Kind::Read && readers < max {
                readers += 1;
            } else {
                left += 1;
            }
        }
        (readers, left == 0)
    }

    /// Unlinks the head and marks it [`GRANTED`]: its owner holds the lock from here on.
    pub(super) fn grant_front(&mut self) {
        if let Some(p) = self.head {
            self.unlink(None, p);
            Self::grant(p);
        }
    }

    /// Unlinks the first `n` readers (skipping writers, which keep their order) and marks them
    /// [`GRANTED`], oldest first. The caller has already taken the lock on their behalf.
    pub(super) fn grant_readers(&mut self, mut n: u32) {
        let mut prev = None;
        let mut cur = self.head;
        while n > 0
            && let Some(p) = cur
        {
            // SAFETY: `p` is queued, hence alive (invariant).
            let w = unsafe { p.as_ref() };
            cur = w.next.get();
            if w.kind == Kind::Read {
                self.unlink(prev, p);
                Self::grant(p);
                n -= 1;
            } else {
                prev = Some(p);
            }
        }
        debug_assert_eq!(n, 0, "fewer readers queued than granted");
    }

    /// Unlinks `p`, whose predecessor is `prev` (`None`: `p` is the head).
    fn unlink(&mut self, prev: Option<NonNull<Waiter>>, p: NonNull<Waiter>) {
        // SAFETY: `p` is queued, hence alive (invariant).
        let next = unsafe { p.as_ref() }.next.get();
        match prev {
            // SAFETY: `prev` is queued, hence alive (invariant).
            Some(q) => unsafe { q.as_ref() }.next.set(next),
            None => self.head = next,
        }
        if self.tail == Some(p) {
            self.tail = prev;
        }
        // INVARIANT: `p` is out of the chain, which still runs head to tail in order.
    }

    /// Hands the lock to the unlinked waiter `p`. This is the last access to `p`: its owner may
    /// free it as soon as it sees the store.
    fn grant(p: NonNull<Waiter>) {
        // SAFETY: `p` was queued until just now, so its owner is still waiting and it is alive;
        // nothing touches it after this store.
        unsafe { p.as_ref() }
            .status
            .store(GRANTED, Ordering::Release);
    }

    fn iter(&self) -> impl Iterator<Item = &Waiter> {
        core::iter::successors(self.front(), |w| {
            // SAFETY: the `next` of a queued waiter is queued, hence alive (invariant), and stays
            // so while the list is borrowed.
            w.next.get().map(|p| unsafe { p.as_ref() })
        })
    }
}

/// Alive while a waiter is queued. Unwinding out of the wait (a panicking `Park`) would leave
/// the queue pointing into a dead frame, so dropping this panics, which during unwinding aborts.
struct Queued;

impl Drop for Queued {
    fn drop(&mut self) {
        // Under loom, a blocked waiter unwinds only when loom tears down a failed model (a
        // deadlock), after which nothing touches the queue; aborting would hide the report.
        #[cfg(not(loom))]
        panic!("unwound out of an rwsem wait with the waiter still queued");
    }
}
