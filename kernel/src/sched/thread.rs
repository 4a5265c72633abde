//! Kernel threads.
//!
//! A thread's scheduling state (`Running`/`Ready`/`Blocked`/`Exited`, `on_cpu`, the saved stack
//! pointer) and its exit status are `sched_core`'s, whose header describes the protocol; this
//! type adds what the kernel runs: a name, a stack, the entry closure, an address space.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sched_core::{ExitState, SchedEntity, Start, Task};

use crate::memory::stack::Stack;
use crate::platform::Mm;

/// What a thread runs: called once by reference, so that the thread owns the closure and its
/// captures until it ends (see [`spawn`](super::spawn)).
pub(crate) type Entry = Box<dyn FnMut() -> i64 + Send>;

/// A kernel thread.
///
/// # Invariants
/// `entry` is set at creation and touched afterwards only by the thread itself (called in
/// `thread_start`, taken and dropped in `exit`), or by `Drop` when it never ran.
pub struct Thread {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) se: SchedEntity,
    pub(super) exit: ExitState<Thread>,
    pub(super) entry: UnsafeCell<Option<Entry>>,
    /// Where a woken sleeper sees the deadline it waited for.
    pub(super) wake_at: AtomicU64,
    /// The address space the thread runs in; kernel threads have none and run on the kernel's
    /// page table.
    pub(super) mm: Option<Arc<Mm>>,
    _stack: Option<Stack>,
}

/// How a thread starts out.
pub(super) struct ThreadInit {
    pub name: String,
    pub stack: Option<Stack>,
    pub entry: Option<Entry>,
    /// An idle thread: runs only on its CPU, never queued.
    pub idle: bool,
    /// Running now (the code that becomes the thread), or ready to be switched to.
    pub start: Start,
    pub pinned: Option<usize>,
    pub mm: Option<Arc<Mm>>,
}

// SAFETY: `entry` is the only field that is not `Sync`, and only the thread itself uses it (see
// the type's invariants).
unsafe impl Sync for Thread {}
// SAFETY: as above; the closure is `Send`.
unsafe impl Send for Thread {}

impl Task for Thread {
    fn sched(&self) -> &SchedEntity {
        &self.se
    }

    fn exit_state(&self) -> &ExitState<Self> {
        &self.exit
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Threads that exist (not yet dropped), idle threads included.
pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Drop for Thread {
    fn drop(&mut self) {
        // A thread that never ran still owns its closure. Then the stack: whoever sees the
        // count drop also sees both on their way out.
        drop(self.entry.get_mut().take());
        drop(self._stack.take());
        LIVE.fetch_sub(1, Ordering::Release);
    }
}

impl Thread {
    pub(super) fn new(init: ThreadInit) -> Arc<Thread> {
        let ThreadInit {
            name,
            stack,
            entry,
            idle,
            start,
            pinned,
            mm,
        } = init;
        LIVE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Thread {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            se: SchedEntity::new(start, pinned, idle),
            exit: ExitState::new(),
            entry: UnsafeCell::new(entry),
            wake_at: AtomicU64::new(0),
            mm,
            _stack: stack,
        })
    }

    /// The thread's id (unique for the kernel's lifetime).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address space the thread runs in, if it is not a kernel thread.
    pub fn mm(&self) -> Option<&Arc<Mm>> {
        self.mm.as_ref()
    }
}

/// Waits for a thread to finish.
#[must_use = "a thread that is not joined runs on, and its exit code is lost"]
pub struct JoinHandle {
    pub(super) thread: Arc<Thread>,
}

impl JoinHandle {
    /// Blocks until the thread returns; gives its exit code.
    #[track_caller]
    pub fn join(self) -> i64 {
        super::assert_may_sleep();
        sched_core::join(&super::KERNEL, &self.thread)
    }

    /// The thread's id.
    pub fn id(&self) -> u64 {
        self.thread.id
    }
}
