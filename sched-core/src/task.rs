//! What the scheduler keeps in each thread: its state, `on_cpu`, the saved stack pointer, and
//! its exit status.

use crate::irq::IrqsOff;
use crate::primitive::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering, UnsafeCell,
};
use crate::wait::WaitQueue;

/// A thread's scheduling state (see the crate header for the moves between them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// On a CPU (the CPU's current thread).
    Running = 0,
    /// In a run queue, or being switched to.
    Ready = 1,
    /// Waiting to be woken; in no run queue.
    Blocked = 2,
    /// Ended; never runs again.
    Exited = 3,
}

/// A thread as the scheduler sees it; the kernel's thread type embeds one.
pub trait Task: Send + Sync + Sized + 'static {
    /// The thread's scheduling fields.
    fn sched(&self) -> &SchedEntity;
    /// The thread's exit status and joiners.
    fn exit_state(&self) -> &ExitState<Self>;
}

/// How a thread starts out.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// The code calling this is becoming the thread: it runs on `cpu` now.
    Running { cpu: usize },
    /// A new thread for a run queue, first resumed at `rsp`; `cpu` is where it is queued.
    Ready { cpu: usize, rsp: u64 },
}

/// The scheduling fields of a thread (Linux's `sched_entity` and the `on_cpu`/`__state` of
/// `task_struct`).
///
/// # Invariants
/// `rsp` is written only by the CPU switching away from the thread and read only by the CPU
/// switching to it, after it saw `on_cpu` clear (acquire), which the first CPU released after
/// the write. A thread that was never run is written once, before anyone can reach it.
pub struct SchedEntity {
    state: AtomicU8,
    pub(crate) on_cpu: AtomicBool,
    pub(crate) rsp: UnsafeCell<u64>,
    /// The CPU it last ran on (a hint for where to queue it when woken).
    pub(crate) last_cpu: AtomicUsize,
    /// Idle threads run only on their own CPU and are never queued.
    pub(crate) idle: bool,
    /// The CPUs the thread may run on (bit `n`: CPU `n`; never empty). Changed only through
    /// [`set_allowed`](Self::set_allowed); every path that places the thread on a CPU (a new
    /// thread's first queue, wake-ups, the requeue after preemption, stealing) reads it there.
    allowed: AtomicU64,
}

/// The bit of `cpu` in a CPU mask.
pub const fn cpu_bit(cpu: usize) -> u64 {
    1 << cpu
}

/// A CPU mask with every CPU in it.
pub const ALL_CPUS: u64 = u64::MAX;

// SAFETY: `rsp` is the one field that is not `Sync`, and its accesses are ordered by `on_cpu`
// (the invariant).
unsafe impl Sync for SchedEntity {}
// SAFETY: as above.
unsafe impl Send for SchedEntity {}

impl SchedEntity {
    /// The fields of a thread that starts as `start` and may run on the CPUs of `allowed` (a
    /// mask, not empty); an `idle` thread may run only on its CPU, whatever `allowed` says.
    pub fn new(start: Start, allowed: u64, idle: bool) -> Self {
        let (running, cpu, rsp) = match start {
            Start::Running { cpu } => (true, cpu, 0),
            Start::Ready { cpu, rsp } => (false, cpu, rsp),
        };
        let allowed = if idle { cpu_bit(cpu) } else { allowed };
        debug_assert!(allowed != 0, "a thread that may run nowhere");
        SchedEntity {
            state: AtomicU8::new(if running {
                State::Running
            } else {
                State::Ready
            } as u8),
            on_cpu: AtomicBool::new(running),
            // INVARIANT: nobody can switch to the thread before it is built.
            rsp: UnsafeCell::new(rsp),
            last_cpu: AtomicUsize::new(cpu),
            idle,
            allowed: AtomicU64::new(allowed),
        }
    }

    /// The state now (a snapshot: another CPU may change it at once).
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Running,
            1 => State::Ready,
            2 => State::Blocked,
            _ => State::Exited,
        }
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn cas_state(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The running thread marks itself `Blocked`, under the lock of the list its waker will
    /// find it in; it then calls [`schedule`](crate::schedule), which does not queue it again.
    pub fn set_blocked(&self, _irqs: &IrqsOff) {
        self.set_state(State::Blocked);
    }

    /// The running thread takes back its [`set_blocked`](Self::set_blocked) before it
    /// switched away (it found, under its waker's lock, that it need not wait after all).
    /// False if a waker made it `Ready` first: that waker waits for this CPU to be off the
    /// thread's stack and then queues it, so the thread must call
    /// [`schedule`](crate::schedule), which does not queue it again, and resumes once the
    /// waker's queue runs it.
    pub fn cancel_blocked(&self, _irqs: &IrqsOff) -> bool {
        self.cas_state(State::Blocked, State::Running)
    }

    /// A CPU is on the thread's stack (running it, or switching away from it).
    pub fn on_cpu(&self) -> bool {
        self.on_cpu.load(Ordering::Acquire)
    }

    /// The CPU the thread runs on or last ran on (a snapshot).
    pub fn last_cpu(&self) -> usize {
        self.last_cpu.load(Ordering::Relaxed)
    }

    /// The thread is a CPU's idle thread.
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// The CPUs the thread may run on, as a mask.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Whether the thread may run on `cpu`.
    pub fn may_run_on(&self, cpu: usize) -> bool {
        self.allowed() & cpu_bit(cpu) != 0
    }

    /// Confines the thread to the CPUs of `mask` (not empty; an idle thread's cannot change).
    /// Takes effect at the thread's next placement: a running thread that may no longer stay
    /// on its CPU leaves it at its next [`schedule`](crate::schedule) (see there), a blocked
    /// one is queued on an allowed CPU when woken, a stealer skips a queued one; a thread
    /// already queued on a CPU it left may still run there once. Relaxed: the mask is a
    /// placement rule, not data handed over, and each placement reads it afresh.
    pub fn set_allowed(&self, mask: u64) {
        assert!(mask != 0, "a thread that may run nowhere");
        assert!(!self.idle, "an idle thread stays on its CPU");
        self.allowed.store(mask, Ordering::Relaxed);
    }
}

/// A thread's exit code, and the threads waiting for it to end.
pub struct ExitState<T> {
    code: AtomicI64,
    done: AtomicBool,
    pub(crate) joiners: WaitQueue<T>,
}

impl<T> Default for ExitState<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ExitState<T> {
    /// Not exited yet.
    pub fn new() -> Self {
        ExitState {
            code: AtomicI64::new(0),
            done: AtomicBool::new(false),
            joiners: WaitQueue::new(),
        }
    }

    /// The thread has exited: its code is readable (acquire: what it wrote before is visible).
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The exit code, once [`done`](Self::done).
    pub fn code(&self) -> i64 {
        self.code.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, code: i64) {
        self.code.store(code, Ordering::Relaxed);
        self.done.store(true, Ordering::Release);
    }
}
