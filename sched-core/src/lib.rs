//! The scheduler's handoff protocol: per-CPU run queues, the thread states and `on_cpu`,
//! wake-ups, wait queues, stealing, exit. The kernel's `sched` module runs it on x86-64; the
//! loom models (`make loom`) run the same code on loom threads, one per kernel thread, with the
//! stack switch modelled as a handoff between them. What is truly the machine's (which CPU is
//! this, interrupts on/off, IPIs, the stack switch, the address-space switch) comes through
//! [`Machine`].
//!
//! # States
//! `Running` (a CPU's current thread) -> `Ready` (in a run queue) when preempted or yielding,
//! -> `Blocked` when it waits (it puts itself on a wait list first, under the list's lock; or,
//! for a list kept outside this crate, marks itself `Blocked` before it becomes findable there,
//! see [`block`]), -> `Exited` when it ends. Only a waker moves `Blocked` -> `Ready` (a CAS,
//! so one waker wins), and whoever moves a thread to `Ready` queues it, so a thread is queued at
//! most once. The CPU that pops a thread makes it `Running`. Two moves back: a thread that
//! finds, before it switched away, that it need not block takes `Blocked` -> `Running` (a CAS
//! that loses to a waker), and `schedule` makes a running thread its affinity sends elsewhere
//! `Blocked` for the next thread on its CPU to wake (see "Affinity").
//!
//! # Who writes what
//! - `state`: the running thread itself (`Running` -> `Blocked`/`Exited`, release); its CPU in
//!   `schedule` (`Running` -> `Ready` or, leaving for its affinity, `Blocked` by CAS, `Ready` ->
//!   `Running` for the thread it picked); a waker (`Blocked` -> `Ready` by CAS, acq-rel).
//! - `on_cpu`: set (relaxed) by the CPU that is about to switch to the thread, after it saw it
//!   clear (acquire); cleared (release) in `finish_switch` by the thread that CPU switched to
//!   next, once the switch is over and the CPU is off the old stack. A waker waits for it to
//!   clear before it queues a thread; a stealer skips threads that have it set; `schedule`
//!   waits for it to clear before switching to a thread.
//! - `rsp`: written by the switch away from the thread, read by the switch to it; ordered by
//!   `on_cpu` (release in `finish_switch`, acquire where it was seen clear).
//! - The run queue and `queued`: under the queue lock. The slots (current thread, previous
//!   thread): only their CPU, with interrupts off ([`IrqsOff`]).
//! - `need_resched`: set by a waker (swap, acq-rel: the IPI is sent only by the one that set
//!   it), cleared by its CPU in `schedule` before it looks at its queue.
//!
//! - `allowed` (the CPU mask): [`SchedEntity::set_allowed`], relaxed; read wherever the thread
//!   is placed.
//!
//! # Affinity
//! A thread runs only on CPUs its mask allows: a new thread is queued on one (the kernel picks
//! it), a woken one on one `select_cpu` picks among them, a stealer takes only threads allowed
//! on its CPU. A running thread whose mask no longer allows its CPU is not requeued there when
//! it leaves it: `schedule` makes it `Blocked` instead, and the next thread on that CPU wakes
//! it (`finish_switch`, once the CPU is off its stack), which queues it on an allowed CPU. A
//! thread already queued when its mask changes may still be popped there once.
//!
//! # Preemption while switching
//! A preempted thread is queued by its own CPU while that CPU is still on its stack. A CPU that
//! pops it from its own queue is that CPU (the thread is its current one: no switch); stealers
//! skip it until `on_cpu` clears; a woken thread is queued only after. So no CPU in `schedule`
//! ever waits for a CPU that is waiting in turn.
//!
//! # Lock order
//! Every scheduler lock is taken with interrupts off and is a leaf except the wait-queue lock:
//! a wait-queue lock (its condition is checked under it: atomics only) > nothing. Run-queue
//! locks are never nested: `schedule` holds its own and a victim's one after the other, `wake`
//! one. Nothing blocks or waits for `on_cpu` under any of them.

#![no_std]

extern crate alloc;
#[cfg(loom)]
extern crate std;

mod irq;
#[cfg(all(test, loom))]
mod loom_tests;
pub mod primitive;
mod rq;
mod schedule;
mod task;
mod wait;
mod wake;

pub use irq::{IrqGuard, IrqsOff};
pub use rq::CpuSched;
pub use schedule::{
    current, exit, finish_switch, idle_may_halt, init_current, join, schedule, with_current,
};
pub use task::{ALL_CPUS, ExitState, SchedEntity, Start, State, Task, cpu_bit};
pub use wait::{WaitQueue, block};
use wake::steal;
pub use wake::{resched_cpu, wake};

use primitive::{Arc, AtomicBool, UnsafeCell};

/// What the protocol needs from the machine.
///
/// # Safety
/// - `this_cpu_id` is the id of the CPU running the caller, in `0..nr_cpu_ids()`; it is stable
///   while interrupts are off (until the caller switches away).
/// - `cpu(id)` is always the same state for the same id, and `this_cpu_id`'s is touched by
///   nothing else than this crate's functions called on that CPU.
/// - `switch_stacks` saves where to resume the running context in `save` before anything else
///   can run it, then resumes the context saved at `next_rsp`; it returns when something
///   switches back to the saved context, with interrupts off.
pub unsafe trait Machine: Sync {
    /// The kernel's thread type.
    type Task: Task;

    /// The CPU running the caller.
    fn this_cpu_id(&self, irqs: &IrqsOff) -> usize;
    /// One more than the highest CPU id.
    fn nr_cpu_ids(&self) -> usize;
    /// The CPU runs (wake-ups and stealing consider it).
    fn online(&self, cpu: usize) -> bool;
    /// The scheduler state of `cpu`.
    fn cpu(&self, cpu: usize) -> &CpuSched<Self::Task>;
    /// `cpu` should reschedule at its next preemption point.
    fn need_resched(&self, cpu: usize) -> &AtomicBool;
    /// Interrupts `cpu` so that it reschedules (or leaves its halt).
    fn send_resched_ipi(&self, cpu: usize);
    /// `cpu`'s idle thread, to switch to when nothing is ready.
    fn idle_thread(&self, cpu: usize) -> Arc<Self::Task>;

    /// Turns interrupts off on this CPU; whether they were on.
    fn irqs_disable(&self) -> bool;
    /// Turns interrupts on.
    ///
    /// # Safety
    /// No [`IrqsOff`] of this CPU is alive past this call.
    unsafe fn irqs_enable(&self);

    /// Checks at the start of [`schedule`] that the caller may give up the CPU (Linux's
    /// `schedule_debug`: e.g. not while preemption is disabled).
    fn schedule_debug(&self);
    /// On the switching CPU, just before the stack switch, once no other CPU is on `next`'s
    /// stack (`on_cpu` seen clear): e.g. load `next`'s address space, save `prev`'s and load
    /// `next`'s register state beyond the callee-saved registers.
    fn prepare_switch(&self, cpu: usize, prev: &Self::Task, next: &Self::Task);
    /// The stack switch (see the trait's safety section).
    ///
    /// # Safety
    /// Interrupts are off; `next_rsp` is a context saved by this function (or built for a new
    /// thread) whose stack is alive and that nothing runs; `save` stays valid until the context
    /// is resumed.
    unsafe fn switch_stacks(&self, save: &UnsafeCell<u64>, next_rsp: u64);
    /// On the thread just switched to, after the previous one was released (e.g. let RCU
    /// advance).
    fn after_switch(&self);
}
