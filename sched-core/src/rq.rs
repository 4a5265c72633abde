//! One CPU's run queue and its current/previous thread slots.

use alloc::collections::VecDeque;

use crate::irq::IrqsOff;
use crate::primitive::{Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, UnsafeCell};
use crate::task::Task;

/// What only the CPU itself touches.
pub(crate) struct Slots<T> {
    /// The running thread.
    pub(crate) current: Option<Arc<T>>,
    /// The thread the CPU just switched away from, held until the next thread's
    /// `finish_switch` (its stack is in use until then).
    pub(crate) prev: Option<Arc<T>>,
    /// `prev` left because its affinity excludes this CPU: `finish_switch` wakes it onto an
    /// allowed one.
    pub(crate) prev_migrates: bool,
}

impl<T> Slots<T> {
    const fn new() -> Self {
        Slots {
            current: None,
            prev: None,
            prev_migrates: false,
        }
    }
}

/// One CPU's scheduler state.
///
/// # Invariants
/// `slots` is touched only by its CPU, with interrupts off, inside one `with_slots` call at a
/// time (nothing in those calls reaches `with_slots` again). `queued` is `queue`'s length as of
/// the last change (written under the queue lock).
pub struct CpuSched<T> {
    queue: Mutex<VecDeque<Arc<T>>>,
    /// The running thread, the one this CPU switched away from (see [`Slots`]).
    slots: UnsafeCell<Slots<T>>,
    /// Context switches done.
    switches: AtomicU64,
    /// Threads in `queue` (read by other CPUs choosing where to steal or place).
    queued: AtomicUsize,
    /// The CPU runs its idle thread (read by wakers choosing a CPU).
    running_idle: AtomicBool,
}

// SAFETY: the queue is a lock; `slots` is only used by its own CPU (the invariant); the rest is
// atomic. The threads themselves are `Send + Sync` (`Task`).
unsafe impl<T: Task> Sync for CpuSched<T> {}
// SAFETY: as above.
unsafe impl<T: Task> Send for CpuSched<T> {}

impl<T: Task> Default for CpuSched<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Task> CpuSched<T> {
    /// An empty scheduler state (before the CPU is up).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        CpuSched {
            queue: Mutex::new(VecDeque::new()),
            slots: UnsafeCell::new(Slots::new()),
            switches: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            running_idle: AtomicBool::new(false),
        }
    }

    /// An empty scheduler state (before the CPU is up).
    #[cfg(loom)]
    pub fn new() -> Self {
        CpuSched {
            queue: Mutex::new(VecDeque::new()),
            slots: UnsafeCell::new(Slots::new()),
            switches: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            running_idle: AtomicBool::new(false),
        }
    }

    /// Context switches done on this CPU.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Threads in the run queue (a snapshot).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Idles: runs its idle thread and has nothing queued (a hint: it may change at once).
    pub(crate) fn is_idle(&self) -> bool {
        self.running_idle.load(Ordering::Relaxed) && self.queued.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn set_running_idle(&self, idle: bool) {
        self.running_idle.store(idle, Ordering::Relaxed);
    }

    pub(crate) fn count_switch(&self) {
        self.switches.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` on the slots. Only the owning CPU calls this (callers reach a `CpuSched` of
    /// their own CPU through `Machine::this_cpu_id`, with interrupts off).
    pub(crate) fn with_slots<R>(&self, _irqs: &IrqsOff, f: impl FnOnce(&mut Slots<T>) -> R) -> R {
        // SAFETY: the owning CPU with interrupts off is the only user (invariant), and `f`
        // does not reach the slots again.
        self.slots.with_mut(|p| f(unsafe { &mut *p }))
    }

    /// Queues `t` at the back. `t` is `Ready` and in no other queue: a new thread, one its
    /// waker moved `Blocked` -> `Ready`, or this CPU's current thread being preempted.
    pub fn push(&self, t: Arc<T>, _irqs: &IrqsOff) {
        let mut q = self.queue.lock();
        q.push_back(t);
        self.queued.store(q.len(), Ordering::Relaxed);
    }

    pub(crate) fn pop(&self) -> Option<Arc<T>> {
        let mut q = self.queue.lock();
        let t = q.pop_front()?;
        self.queued.store(q.len(), Ordering::Relaxed);
        Some(t)
    }

    /// The first thread that may move to CPU `thief`: allowed there, and not a thread its CPU
    /// preempted and is still switching away from (a stealer would wait for that CPU; only the
    /// CPU that pops a thread sets `on_cpu`, and it pops under this lock, so the check holds).
    pub(crate) fn steal(&self, thief: usize) -> Option<Arc<T>> {
        let mut q = self.queue.lock();
        let i = q.iter().position(|t| {
            let se = t.sched();
            se.may_run_on(thief) && !se.on_cpu.load(Ordering::Acquire)
        })?;
        let t = q.remove(i)?;
        self.queued.store(q.len(), Ordering::Relaxed);
        Some(t)
    }
}
