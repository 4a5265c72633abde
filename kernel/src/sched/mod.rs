//! The scheduler: kernel threads on per-CPU run queues, preempted by the timer tick.
//!
//! Each CPU runs the head of its own queue; a CPU whose queue is empty steals from the longest
//! one, and idles (`hlt`) when every queue is empty. `spawn` spreads new threads round-robin and
//! kicks an idle target CPU with a reschedule IPI. The timer preempts a thread only when its
//! CPU's `preempt_count` is zero. The tick, a context switch and the idle loop let `mm`'s RCU
//! advance its grace periods ([`set_rcu_hook`]); callbacks run in a thread of their own.
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
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;
use x86_64::instructions::interrupts;

use crate::arch::apic;
use crate::arch::percpu::{MAX_CPUS, PERCPU, PerCpu, this_cpu};
use crate::memory::stack::{Stack, StackError};
pub use thread::{JoinHandle, Thread};
use thread::{State, ThreadInit};
use x86_64::registers::control::Cr3;

use crate::platform::Mm;
pub use wait::{WaitQueue, futex_wait, futex_wake, sleep_ns};

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
        }
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

    /// The first thread that may move to another CPU: not pinned, and not a thread its CPU
    /// preempted and is still switching away from (only the popping CPU sets `on_cpu`, and this
    /// runs under the queue lock, so the check holds).
    fn steal(&self) -> Option<Arc<Thread>> {
        let mut q = self.queue.lock();
        let i = q.iter().position(|t| t.pinned.is_none() && !t.on_cpu.load(Ordering::Acquire))?;
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
        pinned: Some(cpu.id()),
        mm: None,
    });
    IDLE[cpu.id()].call_once(|| idle.clone());
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
        pinned: None,
        mm: None,
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
        pinned: Some(cpu.id()),
        mm: None,
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

/// Starts a thread running `f`; its return value is the exit code `join` gives.
pub fn spawn<F>(name: impl Into<String>, f: F) -> Result<JoinHandle, StackError>
where
    F: FnOnce() -> i64 + Send + 'static,
{
    start(name.into(), None, None, Box::new(f))
}

/// Starts a thread that runs only on `cpu` (which must be online).
pub fn spawn_on<F>(cpu: usize, name: impl Into<String>, f: F) -> Result<JoinHandle, StackError>
where
    F: FnOnce() -> i64 + Send + 'static,
{
    start(name.into(), Some(cpu), None, Box::new(f))
}

/// Starts a thread in address space `mm` (on `pinned` only, if given).
pub(crate) fn start(
    name: String,
    pinned: Option<usize>,
    mm: Option<Arc<Mm>>,
    f: Box<dyn FnOnce() -> i64 + Send>,
) -> Result<JoinHandle, StackError> {
    if let Some(cpu) = pinned {
        assert!(PERCPU[cpu].online.load(Ordering::Acquire), "CPU {cpu} is not online");
    }
    let online = crate::arch::percpu::online_count().max(1);
    let cpu = pinned.unwrap_or_else(|| NEXT_CPU.fetch_add(1, Ordering::Relaxed) % online);
    let stack = Stack::new(THREAD_STACK_SIZE)?;
    let top = stack.top().as_u64();
    let t = Thread::new(ThreadInit {
        name,
        stack: Some(stack),
        entry: Some(f),
        idle: false,
        running: false,
        cpu,
        pinned,
        mm,
    });
    // SAFETY: `top` is the aligned top of the thread's fresh stack.
    let rsp = unsafe { switch::initial_stack(top, thread_start) };
    // SAFETY: nobody runs the thread yet.
    unsafe { *t.rsp.get() = rsp };
    let handle = JoinHandle { thread: t.clone() };
    enqueue(cpu, t);
    Ok(handle)
}

/// Puts a `Ready` thread on `cpu`'s queue and kicks that CPU if it idles.
fn enqueue(cpu: usize, t: Arc<Thread>) {
    interrupts::without_interrupts(|| PERCPU[cpu].sched.push(t));
    if cpu != crate::arch::percpu::cpu_id() && PERCPU[cpu].online.load(Ordering::Acquire) {
        apic::send_ipi(PERCPU[cpu].apic_id.load(Ordering::Relaxed), apic::vector::RESCHEDULE);
    }
}

/// Makes a blocked thread runnable again (no-op if it is not blocked).
///
/// A thread that has just blocked may still be on its CPU's stack (`on_cpu`): it is queued only
/// once that CPU is off it. Otherwise two CPUs each switching away from a blocking thread could
/// each pick up (steal) the other's, and each wait, interrupts off, for the other to finish
/// switching: a deadlock. This way the only queued threads still `on_cpu` are ones their own
/// CPU just preempted, and that CPU finishes its switch without waiting for anyone.
pub fn wake(t: Arc<Thread>) {
    if t.cas_state(State::Blocked, State::Ready) {
        while t.on_cpu.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        let cpu = t.pinned.unwrap_or_else(|| t.last_cpu.load(Ordering::Relaxed));
        enqueue(cpu, t);
    }
}

/// Reports (once per boot, as a warning with the thread and where preemption was last raised)
/// a caller that gives up the CPU with preemption disabled: switching away then leaves this
/// CPU's count wrong. Known open bug: the mm_fault stress sometimes reaches the `mmap_lock`
/// fallback of a fault this way (see the session notes); a warning, not a panic, until found.
#[track_caller]
pub(crate) fn assert_may_sleep() {
    static WARNED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    let count = this_cpu().preempt_count.load(Ordering::Relaxed);
    if count != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        let who = with_current(|t| (t.id(), alloc::string::String::from(t.name())));
        let owner = this_cpu().preempt_owner.load(Ordering::Relaxed);
        // SAFETY: only `preempt_disable` stores here, and it stores `&'static Location`s.
        let owner = unsafe { owner.as_ref() };
        crate::warn!(
            "scheduling while atomic: thread {} ({}), preempt count {count}, last raised from 0 at {owner:?}, at {}",
            who.0,
            who.1,
            core::panic::Location::caller()
        );
    }
}

/// Threads that exist now (exited ones count until the last handle to them is gone).
pub fn live_threads() -> usize {
    thread::LIVE.load(Ordering::Acquire)
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
pub(crate) fn schedule() {
    debug_assert!(!interrupts::are_enabled());
    let cpu = this_cpu();
    // SAFETY: interrupts are off, on this CPU; the borrow ends before the switch.
    let cur = unsafe { cpu.sched.slots().0.clone() }.expect("sched::init_cpu not run on this CPU");
    if !cur.idle && cur.cas_state(State::Running, State::Ready) {
        cpu.sched.push(cur.clone());
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
    // The CPU that last ran `next` may still be on its stack.
    while next.on_cpu.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    next.on_cpu.store(true, Ordering::Relaxed);
    next.set_state(State::Running);
    next.last_cpu.store(cpu.id(), Ordering::Relaxed);
    switch_address_space(cpu.id(), &next);
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

/// Loads `next`'s page table if this CPU runs another one, and records that this CPU now
/// caches translations of `next`'s address space (its shootdowns must reach us).
fn switch_address_space(cpu: usize, next: &Thread) {
    let root = next.mm.as_ref().map_or_else(crate::memory::kernel_root, |mm| mm.page_tables().root());
    if let Some(mm) = &next.mm {
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
        // Dropping `prev` may free an exited thread's stack: we are off it now.
        drop(prev);
    }
    rcu_advance();
}

fn idle_thread(cpu: &PerCpu) -> Arc<Thread> {
    IDLE[cpu.id()].get().expect("idle thread registered").clone()
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
    victim.sched.steal()
}

extern "C" fn thread_start() -> ! {
    finish_switch();
    interrupts::enable();
    // No `Arc` of ourselves may live in this frame: `exit` never returns, so it would leak.
    let f = with_current(|t| t.entry.lock().take()).expect("thread started twice");
    let code = f();
    exit(code)
}

/// Ends the calling thread with `code`.
#[track_caller]
pub fn exit(code: i64) -> ! {
    assert_may_sleep();
    let me = current();
    assert!(!me.idle, "the idle thread cannot exit");
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
        if cpu.sched.queued.load(Ordering::Relaxed) == 0 {
            // Woken by the next tick (which retries stealing) or a reschedule IPI.
            interrupts::enable_and_hlt();
        } else {
            interrupts::enable();
        }
    }
}

/// The timer tick: wake sleepers, let RCU advance (it may wake its callback thread), and
/// preempt unless preemption is disabled.
pub(crate) fn tick() {
    let cpu = this_cpu();
    cpu.ticks.fetch_add(1, Ordering::Relaxed);
    wait::wake_sleepers(apic::now_ns());
    rcu_advance();
    if cpu.preempt_count.load(Ordering::Relaxed) == 0 {
        schedule();
    }
}

/// A reschedule IPI: another CPU queued work here.
pub(crate) fn reschedule_ipi() {
    if this_cpu().preempt_count.load(Ordering::Relaxed) == 0 {
        schedule();
    }
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
