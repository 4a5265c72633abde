//! The scheduler: kernel threads on per-CPU run queues, preempted by the timer tick.
//!
//! Each CPU runs the head of its own queue (round robin: a preempted thread goes to the back);
//! a CPU whose queue is empty steals from the longest one, and idles (`hlt`) when every queue
//! is empty. `spawn` spreads new threads round-robin over the CPUs and kicks a remote target
//! with a reschedule IPI. The tick, a context switch and the idle loop let `mm`'s RCU advance
//! its grace periods ([`set_rcu_hook`]); callbacks run in a thread of their own.
//!
//! # Preemption
//! A CPU switches threads only when its `preempt_count` is zero (see `arch::percpu`); giving
//! up the CPU otherwise is a bug that panics ("scheduling while atomic"). A reason to
//! reschedule that arrives while the count is nonzero is not dropped but kept in the CPU's
//! `need_resched` flag (Linux's TIF_NEED_RESCHED): set by the tick, by a reschedule IPI, and by
//! a wake-up that queues a thread; honoured by `preempt_enable` when the count drops to zero
//! with interrupts on, and on the tick and reschedule IPI when the count is zero.
//!
//! # Wake-ups
//! [`wake`] queues the thread, among the CPUs its affinity allows, on the CPU it last ran on if
//! that one idles, else on any idle CPU, else on the CPU it last ran on (Linux's
//! `select_task_rq`, minus the load balancing), and asks that CPU to reschedule (Linux's `resched_curr`): its own CPU
//! through the flag, which `wake` honours before it returns; another CPU through the flag and
//! a reschedule IPI, which preempts whatever runs there (at once, or at its next
//! `preempt_enable`). Either way the woken thread runs without waiting for a tick, after the
//! threads already queued there (the preempted one goes to the back). A new thread does not
//! preempt its spawner (as on Linux), only a remote CPU.
//!
//! Everything here that touches run queues or `current` runs with interrupts off.

mod switch;
pub mod thread;
pub mod wait;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;
use x86_64::instructions::interrupts;

use crate::arch::apic;
use crate::arch::percpu::{MAX_CPUS, NoPreempt, PERCPU, PerCpu, cpu_id, preempt_count, this_cpu};
use crate::memory::stack::{Stack, StackError};
pub(crate) use thread::Entry;
pub use thread::{JoinHandle, Thread, UserContext};
use thread::{State, ThreadInit};
use x86_64::registers::control::Cr3;

use crate::platform::Mm;
pub use wait::{WaitQueue, block_current, futex_wait, futex_wake, sleep_ns};

/// Stack size of spawned threads.
pub const THREAD_STACK_SIZE: usize = 64 * 1024;

/// One CPU's scheduler state.
pub struct CpuSched {
    queue: Mutex<VecDeque<Arc<Thread>>>,
    /// The running thread and the one this CPU just switched away from; see [`Slots`].
    slots: Slots,
    /// Context switches done.
    pub switches: AtomicU64,
    /// Threads in `queue` (read by other CPUs choosing where to steal or place).
    queued: AtomicUsize,
    /// The CPU runs its idle thread (read by wakers choosing a CPU).
    running_idle: AtomicBool,
    /// The thread this CPU is switching away from must move to another CPU (its affinity
    /// changed); only the owning CPU touches it, with interrupts off.
    migrate_prev: AtomicBool,
}

/// # Invariants
/// Only the owning CPU touches these, with interrupts off.
struct Slots(UnsafeCell<SlotPair>);

/// (the running thread, the thread this CPU just switched away from)
type SlotPair = (Option<Arc<Thread>>, Option<Arc<Thread>>);

// SAFETY: see the invariant: there is no concurrent access.
unsafe impl Sync for Slots {}

impl CpuSched {
    /// An empty scheduler state (before the CPU is up).
    pub const fn new() -> Self {
        CpuSched {
            queue: Mutex::new(VecDeque::new()),
            slots: Slots(UnsafeCell::new((None, None))),
            switches: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            running_idle: AtomicBool::new(false),
            migrate_prev: AtomicBool::new(false),
        }
    }

    /// Idles: runs its idle thread and has nothing queued (a hint: it may change at once).
    fn is_idle(&self) -> bool {
        self.running_idle.load(Ordering::Relaxed) && self.queued.load(Ordering::Relaxed) == 0
    }

    /// # Safety
    /// Interrupts off, on the owning CPU, and no other reference from `slots` alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slots(&self) -> &mut SlotPair {
        // SAFETY: forwarded from the caller.
        unsafe { &mut *self.slots.0.get() }
    }

    fn push(&self, t: Arc<Thread>) {
        let mut q = self.queue.lock();
        q.push_back(t);
        self.queued.store(q.len(), Ordering::Relaxed);
    }

    /// The first thread that may move to CPU `thief`: allowed there, and not a thread its CPU
    /// preempted and is still switching away from (only the popping CPU sets `on_cpu`, and this
    /// runs under the queue lock, so the check holds).
    fn steal(&self, thief: usize) -> Option<Arc<Thread>> {
        let mut q = self.queue.lock();
        let i = q
            .iter()
            .position(|t| t.may_run_on(thief) && !t.on_cpu.load(Ordering::Acquire))?;
        let t = q.remove(i)?;
        self.queued.store(q.len(), Ordering::Relaxed);
        Some(t)
    }

    fn pop(&self) -> Option<Arc<Thread>> {
        let mut q = self.queue.lock();
        let t = q.pop_front()?;
        self.queued.store(q.len(), Ordering::Relaxed);
        Some(t)
    }
}

impl Default for CpuSched {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes the code running on this application processor its idle thread. Called once per AP
/// during bring-up, before [`idle_loop`].
pub fn init_cpu() {
    let cpu = this_cpu();
    let idle = Thread::new(ThreadInit {
        name: format!("idle/{}", cpu.id()),
        stack: None,
        entry: None,
        idle: true,
        running: true,
        cpu: cpu.id(),
        allowed: thread::cpu_bit(cpu.id()),
        mm: None,
        user: None,
    });
    IDLE[cpu.id()].call_once(|| idle.clone());
    cpu.sched.running_idle.store(true, Ordering::Relaxed);
    interrupts::without_interrupts(|| {
        // SAFETY: interrupts are off and we are on the owning CPU.
        unsafe { cpu.sched.slots().0 = Some(idle) };
    });
}

/// Makes the code running on the bootstrap CPU the thread `main`, and gives the BSP an idle
/// thread of its own to run when `main` blocks.
pub fn init_bsp() {
    let cpu = this_cpu();
    let main = Thread::new(ThreadInit {
        name: String::from("main"),
        stack: None,
        entry: None,
        idle: false,
        running: true,
        cpu: cpu.id(),
        allowed: ALL_CPUS,
        mm: None,
        user: None,
    });
    let stack = Stack::new(THREAD_STACK_SIZE).expect("stack for the BSP's idle thread");
    let top = stack.top().as_u64();
    let idle = Thread::new(ThreadInit {
        name: format!("idle/{}", cpu.id()),
        stack: Some(stack),
        entry: None,
        idle: true,
        running: false,
        cpu: cpu.id(),
        allowed: thread::cpu_bit(cpu.id()),
        mm: None,
        user: None,
    });
    // SAFETY: `top` is the aligned top of the idle thread's fresh stack.
    let rsp = unsafe { switch::initial_stack(top, idle_start) };
    // SAFETY: nobody runs the idle thread yet.
    unsafe { *idle.rsp.get() = rsp };
    IDLE[cpu.id()].call_once(|| idle);
    interrupts::without_interrupts(|| {
        // SAFETY: interrupts are off and we are on the owning CPU.
        unsafe { cpu.sched.slots().0 = Some(main) };
    });
}

extern "C" fn idle_start() -> ! {
    finish_switch();
    idle_loop()
}

/// The running thread.
pub fn current() -> Arc<Thread> {
    interrupts::without_interrupts(|| {
        // SAFETY: interrupts are off, on this CPU.
        unsafe { this_cpu().sched.slots().0.clone() }.expect("sched::init_cpu not run on this CPU")
    })
}

static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// Starts a thread running `f` (once); its return value is the exit code `join` gives.
///
/// The thread owns `f` and what it captured until it ends: `f` is called by reference, and
/// dropped when the thread exits, returns or is killed (a killed thread unwinds nothing, so
/// values it made on its own stack are not dropped; what it must release belongs in `f`).
pub fn spawn<F>(name: impl Into<String>, f: F) -> Result<JoinHandle, StackError>
where
    F: FnMut() -> i64 + Send + 'static,
{
    start(name.into(), ALL_CPUS, None, None, Box::new(f))
}

/// Starts a thread that runs only on `cpu` (which must be online); as [`spawn`].
pub fn spawn_on<F>(cpu: usize, name: impl Into<String>, f: F) -> Result<JoinHandle, StackError>
where
    F: FnMut() -> i64 + Send + 'static,
{
    start(name.into(), only_cpu(cpu), None, None, Box::new(f))
}

/// The mask of CPU `cpu` alone, which must be online.
pub(crate) fn only_cpu(cpu: usize) -> u64 {
    assert!(
        cpu < MAX_CPUS && PERCPU[cpu].online.load(Ordering::Acquire),
        "CPU {cpu} is not online"
    );
    thread::cpu_bit(cpu)
}

/// A CPU mask with every CPU in it.
pub const ALL_CPUS: u64 = u64::MAX;

/// The online CPUs, as a mask.
pub fn online_cpus() -> u64 {
    PERCPU
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .fold(0, |m, c| m | thread::cpu_bit(c.id()))
}

/// Starts a thread in address space `mm` that may run on the CPUs of `allowed` (a mask, which
/// must hold an online CPU); with `user`, a thread that will run user code (its entry enters
/// ring 3). New threads go round-robin over the CPUs they may use.
pub(crate) fn start(
    name: String,
    allowed: u64,
    mm: Option<Arc<Mm>>,
    user: Option<Arc<dyn UserContext>>,
    f: Entry,
) -> Result<JoinHandle, StackError> {
    let usable = allowed & online_cpus();
    assert!(usable != 0, "no online CPU in the mask {allowed:#x}");
    let n = NEXT_CPU.fetch_add(1, Ordering::Relaxed) % usable.count_ones() as usize;
    let cpu = nth_cpu(usable, n);
    let stack = Stack::new(THREAD_STACK_SIZE)?;
    let top = stack.top().as_u64();
    let t = Thread::new(ThreadInit {
        name,
        stack: Some(stack),
        entry: Some(f),
        idle: false,
        running: false,
        cpu,
        allowed,
        mm,
        user,
    });
    // SAFETY: `top` is the aligned top of the thread's fresh stack.
    let rsp = unsafe { switch::initial_stack(top, thread_start) };
    // SAFETY: nobody runs the thread yet.
    unsafe { *t.rsp.get() = rsp };
    let handle = JoinHandle { thread: t.clone() };
    let _np = NoPreempt::new();
    interrupts::without_interrupts(|| PERCPU[cpu].sched.push(t));
    if cpu != cpu_id() {
        resched_cpu(cpu);
    }
    Ok(handle)
}

/// Asks `cpu` to reschedule soon (Linux's `resched_curr`): this CPU at its next preemption
/// point, another one through a reschedule IPI, sent only if its flag was clear (a set flag
/// means a reschedule is already on its way: the CPU clears the flag in `schedule` before it
/// looks at its queue).
fn resched_cpu(cpu: usize) {
    let target = &PERCPU[cpu];
    if cpu == cpu_id() {
        target.need_resched.store(true, Ordering::Relaxed);
    } else if !target.need_resched.swap(true, Ordering::AcqRel)
        && target.online.load(Ordering::Acquire)
    {
        apic::send_ipi(
            target.apic_id.load(Ordering::Relaxed),
            apic::vector::RESCHEDULE,
        );
    }
}

/// Makes a blocked thread runnable again (no-op if it is not blocked).
///
/// A thread that has just blocked may still be on its CPU's stack (`on_cpu`): it is queued only
/// once that CPU is off it. Otherwise two CPUs each switching away from a blocking thread could
/// each pick up (steal) the other's, and each wait, interrupts off, for the other to finish
/// switching: a deadlock. This way the only queued threads still `on_cpu` are ones their own
/// CPU just preempted, and that CPU finishes its switch without waiting for anyone.
///
/// The woken thread's CPU reschedules promptly (see the module header): this CPU before
/// `wake` returns, if preemption is enabled; another one through a reschedule IPI.
pub fn wake(t: Arc<Thread>) {
    // Keeps "this CPU" stable until the thread is queued; dropping it is the preemption point.
    let _np = NoPreempt::new();
    if t.cas_state(State::Blocked, State::Ready) {
        while t.on_cpu.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        let cpu = select_cpu(&t);
        interrupts::without_interrupts(|| PERCPU[cpu].sched.push(t));
        resched_cpu(cpu);
    }
}

/// Makes a thread enter the kernel soon: wakes it if it is blocked, and if it runs on another
/// CPU, sends that CPU a reschedule IPI (its return to user mode then runs the pending work,
/// e.g. leaving a killed process). A thread that is just starting or stopping there may miss
/// the IPI; its next tick does the same.
pub fn kick(t: Arc<Thread>) {
    if t.on_cpu.load(Ordering::Acquire) {
        let cpu = t.last_cpu.load(Ordering::Relaxed);
        let _np = NoPreempt::new();
        if cpu != cpu_id() {
            resched_cpu(cpu);
        }
    }
    wake(t);
}

/// The CPU a woken thread is queued on, among those it may run on: the CPU it last ran on if
/// that one idles (its caches may still hold the thread's data); else any idle CPU; else the
/// CPU it last ran on, where it preempts the running thread; else (its affinity changed) the
/// first CPU it may use. Idleness is a racy hint: two wakers may pick the same idle CPU, and
/// the second thread waits there for a turn or a stealer.
fn select_cpu(t: &Thread) -> usize {
    let usable = t.allowed() & online_cpus();
    let prev = t.last_cpu.load(Ordering::Relaxed);
    let prev_ok = t.may_run_on(prev);
    if prev_ok && PERCPU[prev].sched.is_idle() {
        return prev;
    }
    if let Some(c) = PERCPU
        .iter()
        .find(|c| usable & thread::cpu_bit(c.id()) != 0 && c.sched.is_idle())
    {
        return c.id();
    }
    if prev_ok || usable == 0 {
        prev
    } else {
        nth_cpu(usable, 0)
    }
}

/// The CPU of the `n`th set bit of `mask` (which has more than `n` bits set).
fn nth_cpu(mut mask: u64, n: usize) -> usize {
    for _ in 0..n {
        mask &= mask - 1;
    }
    mask.trailing_zeros() as usize
}

/// Why [`set_affinity`] refused a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityError {
    /// The mask holds no online CPU.
    NoOnlineCpu,
    /// The thread is an idle thread, which stays on its CPU.
    Idle,
}

/// Confines `t` to the online CPUs of `mask` (Linux's `sched_setaffinity`; CPUs that are not
/// online are dropped from the mask, as Linux drops them).
///
/// The calling thread is on an allowed CPU when this returns. Another thread moves at its next
/// pass through the scheduler: at once if it is blocked (its wake-up queues it on an allowed
/// CPU), at its CPU's next reschedule if it runs (asked for here by a reschedule IPI); a thread
/// already waiting in a queue of a CPU it left may run there for one more time slice.
pub fn set_affinity(t: &Arc<Thread>, mask: u64) -> Result<(), AffinityError> {
    if t.idle {
        return Err(AffinityError::Idle);
    }
    let usable = mask & online_cpus();
    if usable == 0 {
        return Err(AffinityError::NoOnlineCpu);
    }
    t.allowed.store(usable, Ordering::Relaxed);
    if with_current(|me| core::ptr::eq(me, &**t)) {
        // `schedule` moves a thread that may not stay on its CPU (`migrate_prev`); a tick may
        // do it first, so this re-checks wherever it runs.
        while !t.may_run_on(cpu_id()) {
            yield_now();
        }
    } else if t.state() == State::Running {
        let cpu = t.last_cpu.load(Ordering::Relaxed);
        if !t.may_run_on(cpu) {
            resched_cpu(cpu);
        }
    }
    Ok(())
}

/// Panics if the caller may not give up the CPU (preemption disabled: a spinlock or an RCU read
/// section held): switching away would leave the section open with the CPU's count wrong for
/// every thread that runs there next. Called by everything that blocks, to name the caller;
/// `schedule` checks the same as its last line of defence.
#[track_caller]
pub(crate) fn assert_may_sleep() {
    let count = preempt_count();
    if count != 0 {
        scheduling_while_atomic(count, core::panic::Location::caller());
    }
}

#[cold]
#[inline(never)]
fn scheduling_while_atomic(count: u32, at: &core::panic::Location<'_>) -> ! {
    let owner = this_cpu().preempt_owner();
    with_current(|t| {
        panic!(
            "scheduling while atomic: thread {} ({}) gives up the CPU at {at} with preempt count {count}; \
             preemption was last disabled from zero at {owner}",
            t.id(),
            t.name()
        )
    })
}

/// Threads that exist now (exited ones count until the last handle to them is gone).
pub fn live_threads() -> usize {
    thread::LIVE.load(Ordering::Acquire)
}

/// Daemons started with [`spawn_daemon`].
static DAEMONS: AtomicUsize = AtomicUsize::new(0);

/// Starts a thread that runs for the kernel's lifetime (e.g. RCU's callback thread): counted in
/// [`resident_threads`], never joined.
pub fn spawn_daemon<F>(name: impl Into<String>, f: F) -> Result<(), StackError>
where
    F: FnMut() -> i64 + Send + 'static,
{
    let _never_joined = spawn(name, f)?;
    DAEMONS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Threads that live as long as the kernel: one idle thread per CPU, `main`, and the daemons.
/// Once every other thread has exited and been released, [`live_threads`] falls to this.
pub fn resident_threads() -> usize {
    crate::arch::percpu::online_count() + 1 + DAEMONS.load(Ordering::Relaxed)
}

/// Gives the CPU to another ready thread, if there is one.
#[track_caller]
pub fn yield_now() {
    assert_may_sleep();
    let were_enabled = interrupts::are_enabled();
    interrupts::disable();
    schedule();
    if were_enabled {
        interrupts::enable();
    }
}

/// Picks the next thread for this CPU and switches to it. Interrupts must be off. The current
/// thread goes back to the queue if it is still `Running`; a `Blocked` or `Exited` one does not.
#[track_caller]
pub(crate) fn schedule() {
    debug_assert!(!interrupts::are_enabled());
    let count = preempt_count();
    if count != 0 {
        scheduling_while_atomic(count, core::panic::Location::caller());
    }
    let cpu = this_cpu();
    // Before looking at the queue: a waker that queues after this sees the flag clear and
    // kicks us again.
    cpu.need_resched.store(false, Ordering::Relaxed);
    // SAFETY: interrupts are off, on this CPU; the borrow ends before the switch.
    let cur = unsafe { cpu.sched.slots().0.clone() }.expect("sched::init_cpu not run on this CPU");
    // A running thread whose affinity no longer allows this CPU is not queued here: it leaves
    // as if it blocked, and `finish_switch` wakes it onto an allowed CPU once this CPU is off
    // its stack (pushing it elsewhere now, still `on_cpu`, could deadlock two CPUs each
    // waiting for the other's switch to finish).
    let mut migrate = false;
    if !cur.idle {
        if cur.may_run_on(cpu.id()) {
            if cur.cas_state(State::Running, State::Ready) {
                cpu.sched.push(cur.clone());
            }
        } else {
            migrate = cur.cas_state(State::Running, State::Blocked);
        }
    }
    let next = match cpu.sched.pop().or_else(|| steal(cpu)) {
        Some(t) => t,
        None if cur.idle || cur.state() == State::Running => return,
        // Nothing else to run: the idle thread, which is never queued.
        None => idle_thread(cpu),
    };
    if Arc::ptr_eq(&next, &cur) {
        cur.set_state(State::Running);
        return;
    }
    cpu.sched.migrate_prev.store(migrate, Ordering::Relaxed);
    let now = apic::now_ns();
    cur.account_switch_out(now);
    next.account_switch_in(now);
    // The CPU that last ran `next` may still be on its stack.
    while next.on_cpu.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    next.on_cpu.store(true, Ordering::Relaxed);
    next.set_state(State::Running);
    next.last_cpu.store(cpu.id(), Ordering::Relaxed);
    cpu.sched.running_idle.store(next.idle, Ordering::Relaxed);
    switch_address_space(cpu.id(), &next);
    if let Some(u) = &cur.user {
        u.switch_out();
    }
    if let Some(u) = &next.user {
        // Where its entries from ring 3 land: interrupts through the TSS, `SYSCALL` through the
        // per-CPU word.
        crate::arch::gdt::set_rsp0(next.stack_top);
        cpu.kernel_rsp.store(next.stack_top, Ordering::Relaxed);
        u.switch_in();
    }
    let save = cur.rsp.get();
    // SAFETY: `on_cpu` was clear, so the CPU that saved `next`'s rsp is done with it.
    let next_rsp = unsafe { *next.rsp.get() };
    {
        // SAFETY: interrupts are off, on this CPU.
        let slots = unsafe { cpu.sched.slots() };
        slots.1 = slots.0.replace(next);
    }
    cpu.sched.switches.fetch_add(1, Ordering::Relaxed);
    // Keep the refcount of `cur` above zero across the switch through `slots.1`.
    drop(cur);
    // SAFETY: interrupts are off; `next_rsp` was saved by `switch_stacks` or built by
    // `initial_stack`, and its stack is alive (the thread is referenced by `slots.0`).
    unsafe { switch::switch_stacks(save, next_rsp) };
    finish_switch();
}

/// Loads `next`'s page table if this CPU runs another one, and keeps each address space's CPU
/// mask (the targets of its shootdowns) to the CPUs that may cache its translations: this CPU
/// joins `next`'s mask before loading its root, and leaves the previous address space's mask
/// after loading another root, whose CR3 write flushed every translation of the previous one
/// (`AddressSpace::cpus` explains why a shootdown initiator then either sees this CPU in the
/// mask or finds nothing of that address space cached here).
fn switch_address_space(cpu: usize, next: &Thread) {
    // The running thread is still `slots.0`: the thread whose root is loaded (every switch to a
    // thread loads its root here).
    // SAFETY: interrupts are off, on this CPU (`schedule`), which holds no borrow of the slots.
    let prev = unsafe { PERCPU[cpu].sched.slots() }.0.as_deref();
    let prev_mm = prev.and_then(|t| t.mm.as_deref());
    let next_mm = next.mm.as_deref();
    let root = next_mm.map_or_else(crate::memory::kernel_root, |mm| mm.page_tables().root());
    if let Some(mm) = next_mm {
        // Before CR3: from the write on, the CPU may cache translations of `mm`, so shootdowns
        // must already reach it (`AddressSpace::cpus` pairs with this locked RMW).
        mm.activate_on(cpu);
    }
    let (cur, flags) = Cr3::read();
    if cur != root {
        // SAFETY: `root` is the kernel's table or an address space's, whose kernel half is the
        // kernel's; the address space outlives the thread that keeps it loaded here.
        unsafe { Cr3::write(root, flags) };
    }
    if let Some(prev_mm) = prev_mm
        && !next_mm.is_some_and(|n| core::ptr::eq(n, prev_mm))
    {
        // After CR3: `root` is loaded and is not `prev_mm`'s, so this CPU caches nothing of
        // `prev_mm` any more (even if `prev` was not the thread whose root was loaded, clearing
        // the bit of an address space other than the loaded one is always right).
        prev_mm.deactivate_on(cpu);
    }
}

/// Runs `f` on the running thread without touching its reference count (no shared write).
pub fn with_current<R>(f: impl FnOnce(&Thread) -> R) -> R {
    let t: *const Thread = interrupts::without_interrupts(|| {
        // SAFETY: interrupts are off, on this CPU.
        let slot = unsafe { &this_cpu().sched.slots().0 };
        Arc::as_ptr(slot.as_ref().expect("sched::init_cpu not run on this CPU"))
    });
    // SAFETY: the running thread is alive as long as it runs, and it is the one running `f`:
    // even if it is preempted and moves, its `Arc` lives on in a run queue or a CPU's slot.
    f(unsafe { &*t })
}

/// Runs on the new thread right after a switch, on whatever CPU it now is: releases the thread
/// this CPU switched away from, and lets RCU advance.
fn finish_switch() {
    let cpu = this_cpu();
    // SAFETY: interrupts are off, on this CPU.
    let prev = unsafe { cpu.sched.slots().1.take() };
    if let Some(prev) = prev {
        prev.on_cpu.store(false, Ordering::Release);
        if cpu.sched.migrate_prev.swap(false, Ordering::Relaxed) {
            // Its affinity excludes this CPU (see `schedule`): a wake-up queues it on an
            // allowed one, unless something woke it already.
            wake(prev.clone());
        }
        // Dropping `prev` may free an exited thread's stack: we are off it now.
        drop(prev);
    }
    rcu_advance();
}

fn idle_thread(cpu: &PerCpu) -> Arc<Thread> {
    IDLE[cpu.id()]
        .get()
        .expect("idle thread registered")
        .clone()
}

/// Each CPU's idle thread, to switch to when nothing is ready.
static IDLE: [spin::Once<Arc<Thread>>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

/// Takes a thread from the longest other queue.
fn steal(me: &PerCpu) -> Option<Arc<Thread>> {
    let victim = PERCPU
        .iter()
        .filter(|c| c.id() != me.id() && c.online.load(Ordering::Relaxed))
        .max_by_key(|c| c.sched.queued.load(Ordering::Relaxed))?;
    if victim.sched.queued.load(Ordering::Relaxed) == 0 {
        return None;
    }
    victim.sched.steal(me.id())
}

extern "C" fn thread_start() -> ! {
    finish_switch();
    if with_current(|t| t.mm.is_some() && t.user.is_none()) {
        // A kernel thread working on a process's memory touches it directly, so it runs with
        // user access open (SMAP); `switch_stacks` keeps the flag across switches.
        crate::arch::uaccess::open_user_access_for_thread();
    }
    interrupts::enable();
    // No `Arc` of ourselves may live in this frame: `exit` never returns, so it would leak.
    let entry = with_current(|t| t.entry.get());
    // `exit` from inside `f` takes the slot, but never returns here, so this borrow is then dead.
    // SAFETY: only the thread itself touches its entry slot once it runs (`Thread`'s
    // invariants), and nothing else of this thread does while `f` runs.
    let f = unsafe { (*entry).as_mut() }.expect("thread started twice");
    let code = f();
    exit(code)
}

/// Ends the calling thread with `code`, dropping its entry closure (and what that captured)
/// first, also when called from inside it: a thread killed by a fault ends here.
#[track_caller]
pub fn exit(code: i64) -> ! {
    assert_may_sleep();
    let me = current();
    assert!(!me.idle, "the idle thread cannot exit");
    // SAFETY: we are the thread (`Thread`'s invariants). If `exit` runs inside the closure,
    // the frames that borrow it are abandoned for good: nothing unwinds into them.
    let entry = unsafe { (*me.entry.get()).take() };
    // Here, not where the last `Arc<Thread>` goes (possibly a scheduler path with interrupts
    // off): the captures may be the last owners of an address space, whose teardown may sleep.
    // Before `done`, so that a joiner sees them dropped.
    drop(entry);
    me.exit_code.store(code, Ordering::Release);
    interrupts::disable();
    me.set_state(State::Exited);
    me.done.store(true, Ordering::Release);
    me.joiners.wake_all();
    drop(me);
    schedule();
    unreachable!("an exited thread was scheduled again");
}

/// This CPU's idle loop: runs ready threads, halts when there are none.
pub fn idle_loop() -> ! {
    let cpu = this_cpu();
    loop {
        interrupts::disable();
        rcu_advance();
        // Runs our queue's head or a thread stolen from another CPU, if there is one; returns
        // here when this CPU has nothing to do again.
        schedule();
        interrupts::enable();
        // Free the stacks of exited threads here, where waiting for a shootdown costs nothing.
        crate::memory::stack::try_reap();
        interrupts::disable();
        if cpu.sched.queued.load(Ordering::Relaxed) == 0
            && !cpu.need_resched.load(Ordering::Relaxed)
        {
            // Woken by the next tick (which retries stealing) or a reschedule IPI (a waker
            // sends one when it finds our flag clear, which `schedule` made it above).
            interrupts::enable_and_hlt();
        } else {
            interrupts::enable();
        }
    }
}

/// The timer tick: wake sleepers, let RCU advance (it may wake its callback thread), and
/// preempt, or if preemption is disabled have the thread rescheduled when it enables it.
pub(crate) fn tick() {
    let cpu = this_cpu();
    cpu.ticks.fetch_add(1, Ordering::Relaxed);
    wait::wake_sleepers(apic::now_ns());
    rcu_advance();
    preempt_from_interrupt();
}

/// A reschedule IPI: another CPU queued work here (and set our `need_resched`).
pub(crate) fn reschedule_ipi() {
    preempt_from_interrupt();
}

/// The end of an interrupt that asks for a reschedule (interrupts off): now, or at the
/// interrupted thread's `preempt_enable` to zero.
fn preempt_from_interrupt() {
    if preempt_count() == 0 {
        schedule();
    } else {
        this_cpu().need_resched.store(true, Ordering::Relaxed);
    }
}

/// `preempt_enable` found the count zero and a reschedule pending: reschedule, if interrupts
/// are on (with them off, the caller may be anywhere, even inside `schedule`: the flag stays
/// set for the next preemption point or tick).
pub(crate) fn preempt_schedule() {
    if !interrupts::are_enabled() {
        return;
    }
    interrupts::disable();
    // Re-checked with interrupts off: an interrupt may have rescheduled us meanwhile.
    if preempt_count() == 0 && this_cpu().need_resched.load(Ordering::Relaxed) {
        schedule();
    }
    interrupts::enable();
}

static RCU_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs the function that advances RCU grace periods, called with interrupts off from the
/// timer tick, at context switch and in the idle loop (it must not block or run callbacks).
pub fn set_rcu_hook(hook: fn()) {
    RCU_HOOK.store(hook as *const () as usize, Ordering::Release);
}

fn rcu_advance() {
    let h = RCU_HOOK.load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `set_rcu_hook` stores non-zero values, and they are `fn()`s.
        let hook: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
        hook();
    }
}
