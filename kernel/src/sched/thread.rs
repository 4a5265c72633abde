//! Kernel threads.
//!
//! A thread's scheduling state (`Running`/`Ready`/`Blocked`/`Exited`, `on_cpu`, the saved stack
//! pointer) and its exit status are `sched_core`'s, whose header describes the protocol; this
//! type adds what the kernel runs: a name, a stack, the entry closure, an address space, a user
//! thread's user-side state, and the counters it keeps about itself.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sched_core::{ExitState, SchedEntity, Start, State, Task};

use crate::memory::Mm;
use crate::memory::stack::Stack;

/// What a thread that runs user code carries besides its kernel side: the register state the
/// CPU does not save on a kernel entry (FPU/SSE/AVX, the FS and GS bases). Implemented by the
/// process layer; the scheduler calls it at every switch away from and to the thread, with
/// interrupts off, on the CPU that ran or is about to run it.
pub trait UserContext: core::any::Any + Send + Sync {
    /// The CPU is switching away from the thread: keep what it must not lose.
    fn switch_out(&self);
    /// The CPU is about to run the thread: load what `switch_out` kept.
    fn switch_in(&self);
}

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
    /// A user thread's user-side state (`None` for threads that only run kernel code, including
    /// kernel threads working on a process's memory).
    pub(super) user: Option<Arc<dyn UserContext>>,
    /// The top of the thread's kernel stack (0 for threads on a boot stack).
    pub(super) stack_top: u64,
    /// Counters the thread keeps about itself, on a cache line of their own.
    stats: ThreadStats,
    _stack: Option<Stack>,
}

/// What a thread counts about itself: written only by the CPU running it (the thread itself, or
/// its CPU switching to or away from it), read by anyone. A cache line of its own, so that the
/// counting costs no cache-line transfer when other CPUs wake or queue the thread.
///
/// # Invariants
/// `running_since` is the [`now_ns`](crate::arch::apic::now_ns) time the thread was last
/// switched to while it runs (and `on_cpu` is set), 0 while it does not run; `run_ns` is the
/// time it ran up to its last switch away.
#[derive(Default)]
#[repr(align(64))]
struct ThreadStats {
    min_flt: AtomicU64,
    run_ns: AtomicU64,
    running_since: AtomicU64,
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
    /// The CPUs it may run on (a mask; see `SchedEntity::allowed`).
    pub allowed: u64,
    pub mm: Option<Arc<Mm>>,
    pub user: Option<Arc<dyn UserContext>>,
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
            allowed,
            mm,
            user,
        } = init;
        let stack_top = stack.as_ref().map_or(0, |s| s.top().as_u64());
        LIVE.fetch_add(1, Ordering::Relaxed);
        Arc::new(Thread {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            se: SchedEntity::new(start, allowed, idle),
            exit: ExitState::new(),
            entry: UnsafeCell::new(entry),
            wake_at: AtomicU64::new(0),
            mm,
            user,
            stack_top,
            stats: ThreadStats::default(),
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

    /// The user-side state of a user thread.
    pub fn user(&self) -> Option<&Arc<dyn UserContext>> {
        self.user.as_ref()
    }

    /// The top of the thread's kernel stack (where a user thread's saved user registers are).
    pub fn stack_top(&self) -> u64 {
        self.stack_top
    }

    /// The CPUs the thread may run on, as a mask (bit `n`: CPU `n`).
    pub fn allowed(&self) -> u64 {
        self.se.allowed()
    }

    /// Counts a page fault the thread took and that was resolved (Linux's `min_flt`). Called
    /// only by the thread itself, from its #PF path.
    pub fn count_fault(&self) {
        let c = &self.stats.min_flt;
        // Only this thread writes the counter, so a plain load and store (no locked
        // read-modify-write) cannot lose a count; others only read it.
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Page faults the thread took that were resolved so far.
    pub fn min_flt(&self) -> u64 {
        self.stats.min_flt.load(Ordering::Relaxed)
    }

    /// CPU time the thread has used, in ns: its time on a CPU up to its last switch away, plus
    /// the time since it was last switched to if it runs now (`now` is [`apic::now_ns`] time).
    ///
    /// [`apic::now_ns`]: crate::arch::apic::now_ns
    pub fn cpu_time_ns(&self, now: u64) -> u64 {
        let s = &self.stats;
        let done = s.run_ns.load(Ordering::Relaxed);
        let since = s.running_since.load(Ordering::Relaxed);
        if since == 0 {
            done
        } else {
            done + now.saturating_sub(since)
        }
    }

    /// The CPU running the thread switches to it at `now`.
    pub(super) fn account_switch_in(&self, now: u64) {
        // 0 means "not running": a switch at time 0 counts from 1 ns later.
        self.stats
            .running_since
            .store(now.max(1), Ordering::Relaxed);
    }

    /// The CPU running the thread switches away from it at `now`.
    pub(super) fn account_switch_out(&self, now: u64) {
        let s = &self.stats;
        let since = s.running_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let done = s.run_ns.load(Ordering::Relaxed);
            s.run_ns
                .store(done + now.saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Whether the thread waits (a snapshot: a waker may move it on at once).
    pub fn is_blocked(&self) -> bool {
        self.se.state() == State::Blocked
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

    /// The thread (to change its affinity, say).
    pub fn thread(&self) -> &Arc<Thread> {
        &self.thread
    }

    /// Gives up waiting for the thread (it runs on; its exit code is not wanted).
    pub fn detach(self) -> Arc<Thread> {
        self.thread
    }
}
