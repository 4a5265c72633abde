//! Picking the next thread and switching to it; the running thread; exit.

use crate::irq::IrqsOff;
use crate::primitive::{Arc, Ordering, spin_loop};
use crate::rq::CpuSched;
use crate::task::{State, Task};
use crate::{Machine, steal, wake};

/// The running thread.
///
/// # Panics
/// If [`init_current`] has not run on this CPU.
pub fn current<M: Machine>(m: &M, irqs: &IrqsOff) -> Arc<M::Task> {
    this_rq(m, irqs)
        .with_slots(irqs, |s| s.current.clone())
        .expect("sched::init_current not run on this CPU")
}

/// Runs `f` on the running thread without touching its reference count.
pub fn with_current<M: Machine, R>(m: &M, irqs: &IrqsOff, f: impl FnOnce(&M::Task) -> R) -> R {
    this_rq(m, irqs).with_slots(irqs, |s| {
        f(s.current
            .as_deref()
            .expect("sched::init_current not run on this CPU"))
    })
}

/// Makes `t` (built with `Start::Running` on this CPU) the thread this CPU runs. Once per CPU,
/// at bring-up.
pub fn init_current<M: Machine>(m: &M, irqs: &IrqsOff, t: Arc<M::Task>) {
    let rq = this_rq(m, irqs);
    rq.set_running_idle(t.sched().idle);
    rq.with_slots(irqs, |s| s.current = Some(t));
}

fn this_rq<'m, M: Machine>(m: &'m M, irqs: &IrqsOff) -> &'m CpuSched<M::Task> {
    m.cpu(m.this_cpu_id(irqs))
}

/// Picks the next thread for this CPU and switches to it (Linux's `__schedule`). The current
/// thread goes back to the queue if it is still `Running`; a `Blocked` or `Exited` one does
/// not. Returns on the current thread once something switches back to it.
///
/// A running thread whose affinity no longer allows this CPU is not queued here: it leaves as
/// if it blocked, and `finish_switch` wakes it onto an allowed CPU once this CPU is off its
/// stack. (Pushing it on another CPU's queue now, still `on_cpu`, would let that CPU pop it and
/// wait for this one's switch: two CPUs doing that to each other wait forever.)
pub fn schedule<M: Machine>(m: &M, irqs: &IrqsOff) {
    if switch_away(m, irqs) {
        finish_switch(m, irqs);
    }
}

/// The first half of [`schedule`]: true once this thread runs again after a switch, false if
/// it stayed on the CPU.
fn switch_away<M: Machine>(m: &M, irqs: &IrqsOff) -> bool {
    m.schedule_debug();
    let cpu_id = m.this_cpu_id(irqs);
    let rq = m.cpu(cpu_id);
    // Before looking at the queue: a waker that queues after this sees the flag clear and
    // kicks us again.
    m.need_resched(cpu_id).store(false, Ordering::Relaxed);
    let cur = current(m, irqs);
    let se = cur.sched();
    let mut migrates = false;
    if !se.idle && !se.may_run_on(cpu_id) {
        migrates = se.cas_state(State::Running, State::Blocked);
    } else if !se.idle && se.cas_state(State::Running, State::Ready) {
        rq.push(cur.clone(), irqs);
    }
    let next = match rq.pop().or_else(|| steal(m, cpu_id)) {
        Some(t) => t,
        None if se.idle || se.state() == State::Running => return false,
        // Nothing else to run: the idle thread, which is never queued.
        None => m.idle_thread(cpu_id),
    };
    if Arc::ptr_eq(&next, &cur) {
        se.set_state(State::Running);
        return false;
    }
    let nse = next.sched();
    // The CPU that last ran `next` may still be on its stack. (Stealers skip such threads and
    // wakers wait for them, so a popped thread is off its last CPU already unless it is our own
    // current one; this wait, with its acquire, keeps the `rsp` handoff right regardless.)
    while nse.on_cpu.load(Ordering::Acquire) {
        spin_loop();
    }
    // Relaxed: nobody else looks at `next` before it runs (it is in no queue), and its own
    // later stores (`set_blocked`, release) carry this one to its waker.
    nse.on_cpu.store(true, Ordering::Relaxed);
    nse.set_state(State::Running);
    nse.last_cpu.store(cpu_id, Ordering::Relaxed);
    rq.set_running_idle(nse.idle);
    m.prepare_switch(cpu_id, &cur, &next);
    // SAFETY: `on_cpu` was clear (acquire), so the CPU that saved `next`'s rsp is done with it
    // (`SchedEntity`'s invariant).
    let next_rsp = nse.rsp.with(|p| unsafe { *p });
    let save: *const crate::primitive::UnsafeCell<u64> = &se.rsp;
    rq.with_slots(irqs, |s| {
        s.prev = s.current.replace(next);
        s.prev_migrates = migrates;
    });
    rq.count_switch();
    // The slot keeps `cur` alive across the switch; our reference must not, as an exited
    // thread's frame is never resumed to drop it.
    drop(cur);
    // `slots.prev` keeps `cur` (and `save`, in it) alive until `next` runs `finish_switch`, after
    // the switch wrote it; `slots.current` keeps `next`'s stack alive.
    // SAFETY: `save` and `next_rsp` are valid by the above; interrupts are off.
    unsafe { m.switch_stacks(&*save, next_rsp) };
    true
}

/// Runs on the thread a CPU just switched to (at the end of [`schedule`], or first thing in a
/// new thread): releases the thread the CPU switched away from, and wakes it onto a CPU it may
/// run on if it left this one for its affinity. From here another CPU may run it or free it.
pub fn finish_switch<M: Machine>(m: &M, irqs: &IrqsOff) {
    let (prev, migrates) = this_rq(m, irqs).with_slots(irqs, |s| {
        (s.prev.take(), core::mem::take(&mut s.prev_migrates))
    });
    if let Some(prev) = prev {
        // Release: the switch's write of its rsp (and all it did on that stack) happens
        // before a CPU that sees the flag clear switches to it.
        prev.sched().on_cpu.store(false, Ordering::Release);
        if migrates {
            // Unless something woke it already (then that waker queues it on an allowed CPU).
            wake(m, prev.clone(), irqs);
        }
        // May free an exited thread's stack: this CPU is off it now.
        drop(prev);
    }
    m.after_switch();
}

/// Ends the calling thread with `code`: wakes its joiners and switches away for good. On a
/// machine this never returns (nothing resumes an exited thread); the loom models' switch
/// returns, to end their thread.
pub fn exit<M: Machine>(m: &M, irqs: &IrqsOff, code: i64) {
    let me = current(m, irqs);
    assert!(!me.sched().idle, "the idle thread cannot exit");
    me.sched().set_state(State::Exited);
    me.exit_state().set(code);
    me.exit_state().joiners.wake_all(m);
    drop(me);
    switch_away(m, irqs);
}

/// Blocks until `t` has exited; gives its exit code.
pub fn join<M: Machine>(m: &M, t: &M::Task) -> i64 {
    let exit = t.exit_state();
    exit.joiners.wait_while(m, || !exit.done());
    exit.code()
}

/// Whether this CPU's idle thread may halt until an interrupt: nothing queued and no
/// reschedule asked for (a waker that queues here after this check sends an interrupt, which
/// ends the halt).
pub fn idle_may_halt<M: Machine>(m: &M, irqs: &IrqsOff) -> bool {
    let cpu_id = m.this_cpu_id(irqs);
    m.cpu(cpu_id).queued() == 0 && !m.need_resched(cpu_id).load(Ordering::Relaxed)
}
