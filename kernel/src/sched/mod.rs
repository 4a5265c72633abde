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
//! # Affinity
//! Each thread has a CPU mask ([`set_affinity`], Linux's `sched_setaffinity`), respected by
//! `sched_core` wherever a thread is placed (its header, "Affinity") and here at spawn.
//!
//! # User threads
//! A thread with a [`UserContext`] runs user code: at every switch (`Machine::prepare_switch`)
//! its user-side registers are saved when its CPU leaves it and loaded when a CPU picks it, and
//! the CPU's kernel-entry stack (TSS `rsp0`, the `SYSCALL` stack word) is pointed at its kernel
//! stack. The context switch saves RFLAGS per thread (`switch.rs`): a kernel thread working on
//! a process's memory keeps user access (SMAP's AC flag) open across switches.
//!
//! # The protocol
//! Run queues, thread states, `on_cpu`, wake-ups, wait queues, stealing and exit are
//! `sched_core`'s (its header: the states, who writes what, the orderings, the lock order),
//! model-checked by loom on the same code. This module is its [`Machine`] on x86-64 (the CPU
//! id from GS, interrupts, the reschedule IPI, CR3 and the user-side registers, the stack
//! switch in `switch.rs`) and the kernel's side: spawning, affinity, preemption, the idle loop,
//! the tick, CPU-time accounting. What touches the run queues or
//! the current thread takes an [`IrqsOff`] proof: from an [`IrqGuard`], or assumed where
//! interrupts are known to be off (interrupt handlers, a thread's first instructions).

mod switch;
pub mod thread;
pub mod wait;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub use sched_core::ALL_CPUS;
use sched_core::{IrqGuard, IrqsOff, Machine, Start, State, cpu_bit};
use x86_64::instructions::interrupts;

use crate::arch::apic;
use crate::arch::percpu::{MAX_CPUS, NoPreempt, PERCPU, cpu_id, preempt_count, this_cpu};
use crate::memory::stack::{Stack, StackError};
pub(crate) use thread::Entry;
use thread::ThreadInit;
pub use thread::{JoinHandle, Thread, UserContext};
use x86_64::registers::control::Cr3;

use crate::memory::Mm;
pub use wait::{WaitQueue, block_current, futex_wait, futex_wake, sleep_ns};

/// Stack size of spawned threads.
pub const THREAD_STACK_SIZE: usize = 64 * 1024;

/// One CPU's scheduler state.
pub type CpuSched = sched_core::CpuSched<Thread>;

/// Every CPU's scheduler state, indexed by CPU number (the scheduler's own per-CPU data: `arch`'s
/// per-CPU area, below it, knows nothing of threads).
static CPUS: [CpuSched; MAX_CPUS] = [const { CpuSched::new() }; MAX_CPUS];

/// Context switches `cpu` has done.
pub fn switches(cpu: usize) -> u64 {
    CPUS[cpu].switches()
}

/// This machine, as the scheduler's protocol sees it.
pub(crate) struct Kernel;

pub(crate) static KERNEL: Kernel = Kernel;

// CPU masks are one word.
const _: () = assert!(MAX_CPUS <= 64);

// SAFETY: `cpu_id` is the CPU running the caller and cannot change while interrupts are off;
// each id has its own `PERCPU` entry, and only `sched_core` touches its `sched`; `switch_stacks`
// is the context switch of `switch.rs`, which saves the stack pointer before it loads the next.
unsafe impl Machine for Kernel {
    type Task = Thread;

    fn this_cpu_id(&self, _irqs: &IrqsOff) -> usize {
        cpu_id()
    }

    fn nr_cpu_ids(&self) -> usize {
        MAX_CPUS
    }

    fn online(&self, cpu: usize) -> bool {
        PERCPU[cpu].online.load(Ordering::Acquire)
    }

    fn cpu(&self, cpu: usize) -> &CpuSched {
        &CPUS[cpu]
    }

    fn need_resched(&self, cpu: usize) -> &AtomicBool {
        &PERCPU[cpu].need_resched
    }

    fn send_resched_ipi(&self, cpu: usize) {
        apic::send_ipi(
            PERCPU[cpu].apic_id.load(Ordering::Relaxed),
            apic::vector::RESCHEDULE,
        );
    }

    fn idle_thread(&self, cpu: usize) -> Arc<Thread> {
        IDLE[cpu].get().expect("idle thread registered").clone()
    }

    fn irqs_disable(&self) -> bool {
        let were_enabled = interrupts::are_enabled();
        interrupts::disable();
        were_enabled
    }

    unsafe fn irqs_enable(&self) {
        interrupts::enable();
    }

    #[track_caller]
    fn schedule_debug(&self) {
        debug_assert!(!interrupts::are_enabled());
        let count = preempt_count();
        if count != 0 {
            scheduling_while_atomic(count, core::panic::Location::caller());
        }
    }

    fn prepare_switch(&self, cpu: usize, prev: &Thread, next: &Thread) {
        let now = apic::now_ns();
        prev.account_switch_out(now);
        next.account_switch_in(now);
        switch_address_space(cpu, prev, next);
        if let Some(u) = &prev.user {
            u.switch_out();
        }
        if let Some(u) = &next.user {
            // Where its entries from ring 3 land: interrupts through the TSS, `SYSCALL` through
            // the per-CPU word.
            crate::arch::gdt::set_rsp0(next.stack_top);
            PERCPU[cpu]
                .kernel_rsp
                .store(next.stack_top, Ordering::Relaxed);
            u.switch_in();
        }
    }

    unsafe fn switch_stacks(&self, save: &sched_core::primitive::UnsafeCell<u64>, next_rsp: u64) {
        // SAFETY: forwarded from the caller: interrupts are off, `next_rsp` is a saved context
        // nothing runs, and `save` outlives the switch.
        save.with_mut(|p| unsafe { switch::switch_stacks(p, next_rsp) });
    }

    fn after_switch(&self) {
        rcu_advance();
    }
}

/// Makes the code running on this application processor its idle thread. Called once per AP
/// during bring-up, before [`idle_loop`].
pub fn init_cpu() {
    let cpu = this_cpu().id();
    let idle = Thread::new(ThreadInit {
        name: format!("idle/{cpu}"),
        stack: None,
        entry: None,
        idle: true,
        start: Start::Running { cpu },
        allowed: cpu_bit(cpu),
        mm: None,
        user: None,
    });
    IDLE[cpu].call_once(|| idle.clone());
    let irqs = IrqGuard::new(&KERNEL);
    sched_core::init_current(&KERNEL, &irqs, idle);
}

/// Makes the code running on the bootstrap CPU the thread `main`, and gives the BSP an idle
/// thread of its own to run when `main` blocks.
pub fn init_bsp() {
    static INTERRUPTS: crate::arch::idt::SchedInterrupts = crate::arch::idt::SchedInterrupts {
        tick,
        reschedule: reschedule_ipi,
    };
    crate::arch::idt::set_sched_interrupts(&INTERRUPTS);
    crate::arch::percpu::set_preempt_schedule(preempt_schedule);
    let cpu = this_cpu().id();
    let main = Thread::new(ThreadInit {
        name: String::from("main"),
        stack: None,
        entry: None,
        idle: false,
        start: Start::Running { cpu },
        allowed: ALL_CPUS,
        mm: None,
        user: None,
    });
    let stack = Stack::new(THREAD_STACK_SIZE).expect("stack for the BSP's idle thread");
    // SAFETY: the top of the idle thread's fresh stack, aligned.
    let rsp = unsafe { switch::initial_stack(stack.top().as_u64(), idle_start) };
    let idle = Thread::new(ThreadInit {
        name: format!("idle/{cpu}"),
        stack: Some(stack),
        entry: None,
        idle: true,
        start: Start::Ready { cpu, rsp },
        allowed: cpu_bit(cpu),
        mm: None,
        user: None,
    });
    IDLE[cpu].call_once(|| idle);
    let irqs = IrqGuard::new(&KERNEL);
    sched_core::init_current(&KERNEL, &irqs, main);
}

extern "C" fn idle_start() -> ! {
    {
        // SAFETY: a thread starts from a context switch, which runs with interrupts off.
        let irqs = unsafe { IrqsOff::assume() };
        sched_core::finish_switch(&KERNEL, &irqs);
    }
    interrupts::enable();
    idle_loop()
}

/// The running thread.
pub fn current() -> Arc<Thread> {
    let irqs = IrqGuard::new(&KERNEL);
    sched_core::current(&KERNEL, &irqs)
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
    cpu_bit(cpu)
}

/// The online CPUs, as a mask.
pub fn online_cpus() -> u64 {
    PERCPU
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .fold(0, |m, c| m | cpu_bit(c.id()))
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
    // SAFETY: the top of the thread's fresh stack, aligned.
    let rsp = unsafe { switch::initial_stack(stack.top().as_u64(), thread_start) };
    let t = Thread::new(ThreadInit {
        name,
        stack: Some(stack),
        entry: Some(f),
        idle: false,
        start: Start::Ready { cpu, rsp },
        allowed,
        mm,
        user,
    });
    let handle = JoinHandle { thread: t.clone() };
    let _np = NoPreempt::new();
    let irqs = IrqGuard::new(&KERNEL);
    KERNEL.cpu(cpu).push(t, &irqs);
    // A new thread does not preempt its spawner, only a remote CPU.
    if cpu != KERNEL.this_cpu_id(&irqs) {
        sched_core::resched_cpu(&KERNEL, cpu, &irqs);
    }
    Ok(handle)
}

/// Makes a blocked thread runnable again (no-op if it is not blocked); see `sched_core::wake`.
/// The woken thread's CPU reschedules promptly (see the module header): this CPU before
/// `wake` returns, if preemption is enabled; another one through a reschedule IPI.
pub fn wake(t: Arc<Thread>) {
    // Keeps "this CPU" stable until the thread is queued; dropping it is the preemption point.
    let _np = NoPreempt::new();
    let irqs = IrqGuard::new(&KERNEL);
    sched_core::wake(&KERNEL, t, &irqs);
}

/// Makes a thread enter the kernel soon: wakes it if it is blocked, and if it runs on another
/// CPU, sends that CPU a reschedule IPI (its return to user mode then runs the pending work,
/// e.g. leaving a killed process). A thread that is just starting or stopping there may miss
/// the IPI; its next tick does the same.
pub fn kick(t: Arc<Thread>) {
    if t.se.on_cpu() {
        let cpu = t.se.last_cpu();
        let _np = NoPreempt::new();
        let irqs = IrqGuard::new(&KERNEL);
        if cpu != KERNEL.this_cpu_id(&irqs) {
            sched_core::resched_cpu(&KERNEL, cpu, &irqs);
        }
    }
    wake(t);
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
    if t.se.is_idle() {
        return Err(AffinityError::Idle);
    }
    let usable = mask & online_cpus();
    if usable == 0 {
        return Err(AffinityError::NoOnlineCpu);
    }
    t.se.set_allowed(usable);
    if with_current(|me| core::ptr::eq(me, &**t)) {
        // `schedule` moves a thread that may not stay on its CPU (`sched_core`'s header,
        // "Affinity"); a tick may do it first, so this re-checks wherever it runs.
        while !t.se.may_run_on(cpu_id()) {
            yield_now();
        }
    } else if t.se.state() == State::Running {
        let cpu = t.se.last_cpu();
        if !t.se.may_run_on(cpu) {
            let _np = NoPreempt::new();
            let irqs = IrqGuard::new(&KERNEL);
            sched_core::resched_cpu(&KERNEL, cpu, &irqs);
        }
    }
    Ok(())
}

/// Panics if the caller may not give up the CPU (preemption disabled: a spinlock or an RCU read
/// section held): switching away would leave the section open with the CPU's count wrong for
/// every thread that runs there next. Called by everything that blocks, to name the caller;
/// `schedule` checks the same as its last line of defence (`Machine::schedule_debug`).
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
    let irqs = IrqGuard::new(&KERNEL);
    schedule(&irqs);
}

/// Picks the next thread for this CPU and switches to it (`sched_core::schedule`). The current
/// thread goes back to the queue if it is still `Running`; a `Blocked` or `Exited` one does not.
#[track_caller]
pub(crate) fn schedule(irqs: &IrqsOff) {
    sched_core::schedule(&KERNEL, irqs);
}

/// Loads `next`'s page table if this CPU runs another one, and keeps each address space's CPU
/// mask (the targets of its shootdowns) to the CPUs that may cache its translations: this CPU
/// joins `next`'s mask before loading its root, and leaves the previous address space's mask
/// after loading another root, whose CR3 write flushed every translation of the previous one
/// (`AddressSpace::cpus` explains why a shootdown initiator then either sees this CPU in the
/// mask or finds nothing of that address space cached here). `prev` is the thread whose root is
/// loaded (every switch to a thread loads its root here).
fn switch_address_space(cpu: usize, prev: &Thread, next: &Thread) {
    let prev_mm = prev.mm.as_deref();
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
    let t: *const Thread = {
        let irqs = IrqGuard::new(&KERNEL);
        sched_core::with_current(&KERNEL, &irqs, |t| t as *const Thread)
    };
    // SAFETY: the running thread is alive as long as it runs, and it is the one running `f`:
    // even if it is preempted and moves, its `Arc` lives on in a run queue or a CPU's slot.
    f(unsafe { &*t })
}

/// Each CPU's idle thread, to switch to when nothing is ready.
static IDLE: [spin::Once<Arc<Thread>>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

extern "C" fn thread_start() -> ! {
    {
        // SAFETY: a thread starts from a context switch, which runs with interrupts off.
        let irqs = unsafe { IrqsOff::assume() };
        sched_core::finish_switch(&KERNEL, &irqs);
    }
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
    assert!(!me.se.is_idle(), "the idle thread cannot exit");
    // SAFETY: we are the thread (`Thread`'s invariants). If `exit` runs inside the closure,
    // the frames that borrow it are abandoned for good: nothing unwinds into them.
    let entry = unsafe { (*me.entry.get()).take() };
    // Here, not where the last `Arc<Thread>` goes (possibly a scheduler path with interrupts
    // off): the captures may be the last owners of an address space, whose teardown may sleep.
    // Before the exit code is published, so that a joiner sees them dropped.
    drop(entry);
    // No `Arc` of ourselves may live in this frame: it is never resumed to drop it.
    drop(me);
    let irqs = IrqGuard::new(&KERNEL);
    sched_core::exit(&KERNEL, &irqs, code);
    unreachable!("an exited thread was scheduled again");
}

/// This CPU's idle loop: runs ready threads, halts when there are none. Entered with
/// interrupts on.
pub fn idle_loop() -> ! {
    loop {
        {
            let irqs = IrqGuard::new(&KERNEL);
            rcu_advance();
            // Runs our queue's head or a thread stolen from another CPU, if there is one;
            // returns here when this CPU has nothing to do again.
            schedule(&irqs);
        }
        // Free the stacks of exited threads here, where waiting for a shootdown costs nothing.
        crate::memory::stack::try_reap();
        let irqs = IrqGuard::new(&KERNEL);
        if sched_core::idle_may_halt(&KERNEL, &irqs) {
            // Woken by the next tick (which retries stealing) or a reschedule IPI (a waker
            // sends one when it finds our flag clear, which `schedule` made it above). The
            // halt turns interrupts on itself.
            core::mem::forget(irqs);
            interrupts::enable_and_hlt();
        }
    }
}

/// The timer tick: wake sleepers, let RCU advance (it may wake its callback thread), and
/// preempt, or if preemption is disabled have the thread rescheduled when it enables it.
pub(crate) fn tick() {
    // SAFETY: interrupt handlers run with interrupts off (interrupt gates).
    let irqs = unsafe { IrqsOff::assume() };
    let cpu = this_cpu();
    cpu.ticks.fetch_add(1, Ordering::Relaxed);
    wait::wake_sleepers(apic::now_ns(), &irqs);
    rcu_advance();
    preempt_from_interrupt(&irqs);
}

/// A reschedule IPI: another CPU queued work here (and set our `need_resched`).
pub(crate) fn reschedule_ipi() {
    // SAFETY: interrupt handlers run with interrupts off (interrupt gates).
    let irqs = unsafe { IrqsOff::assume() };
    preempt_from_interrupt(&irqs);
}

/// The end of an interrupt that asks for a reschedule: now, or at the interrupted thread's
/// `preempt_enable` to zero.
fn preempt_from_interrupt(irqs: &IrqsOff) {
    if preempt_count() == 0 {
        schedule(irqs);
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
    let irqs = IrqGuard::new(&KERNEL);
    // Re-checked with interrupts off: an interrupt may have rescheduled us meanwhile.
    if preempt_count() == 0 && this_cpu().need_resched.load(Ordering::Relaxed) {
        schedule(&irqs);
    }
}

/// The function that advances RCU grace periods (`mm`'s RCU, above the scheduler).
static RCU_HOOK: spin::Once<fn()> = spin::Once::new();

/// Installs the function that advances RCU grace periods, called with interrupts off from the
/// timer tick, at context switch and in the idle loop (it must not block or run callbacks).
/// Once: the first call's function holds.
pub fn set_rcu_hook(hook: fn()) {
    RCU_HOOK.call_once(|| hook);
}

fn rcu_advance() {
    if let Some(hook) = RCU_HOOK.get() {
        hook();
    }
}
