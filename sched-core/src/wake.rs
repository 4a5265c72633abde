//! Wake-ups: where a woken thread is queued, and how its CPU is told.

use crate::irq::IrqsOff;
use crate::primitive::{Arc, Ordering, spin_loop};
use crate::task::{State, Task};
use crate::{CpuSched, Machine};

/// Makes a blocked thread runnable again (no-op if it is not blocked).
///
/// A thread that has just blocked may still be on its CPU's stack (`on_cpu`): it is queued only
/// once that CPU is off it. So the only queued threads still `on_cpu` are ones their own CPU
/// just preempted, and that CPU finishes its switch without waiting for anyone: a CPU that pops
/// a thread never waits for a CPU that is itself waiting. (Without the wait, a CPU popping such
/// a thread would wait for the CPU switching away from it, which is safe as long as that CPU
/// does not pop a thread the first one is switching away from; only stale idle hints sending
/// two woken threads across at once could make that happen, which the wait rules out.)
///
/// The woken thread's CPU is asked to reschedule (see [`resched_cpu`]).
pub fn wake<M: Machine>(m: &M, t: Arc<M::Task>, irqs: &IrqsOff) {
    let se = t.sched();
    if se.cas_state(State::Blocked, State::Ready) {
        while se.on_cpu.load(Ordering::Acquire) {
            spin_loop();
        }
        let cpu = select_cpu(m, &t);
        m.cpu(cpu).push(t, irqs);
        resched_cpu(m, cpu, irqs);
    }
}

/// The CPU a woken thread is queued on (Linux's `select_task_rq`, minus the load balancing),
/// among the online CPUs its affinity allows: the CPU it last ran on if that one idles (its
/// caches may still hold the thread's data); else any idle CPU; else the CPU it last ran on,
/// where it preempts the running thread; else (its affinity changed) the first CPU it may
/// use. Idleness is a racy hint: two wakers may pick the same idle CPU, and the second thread
/// waits there for a turn or a stealer.
fn select_cpu<M: Machine>(m: &M, t: &M::Task) -> usize {
    let se = t.sched();
    let usable = |c: usize| se.may_run_on(c) && m.online(c);
    let prev = se.last_cpu.load(Ordering::Relaxed);
    let prev_ok = usable(prev);
    if prev_ok && m.cpu(prev).is_idle() {
        return prev;
    }
    let cpus = 0..m.nr_cpu_ids();
    if let Some(c) = cpus.clone().find(|&c| usable(c) && m.cpu(c).is_idle()) {
        return c;
    }
    if prev_ok {
        return prev;
    }
    // Some allowed CPU is online (masks are checked against the online CPUs when they are set,
    // and CPUs do not go offline); `prev`, which ran the thread, if that were ever not so.
    cpus.into_iter().find(|&c| usable(c)).unwrap_or(prev)
}

/// Asks `cpu` to reschedule soon (Linux's `resched_curr`): this CPU at its next preemption
/// point, another one through a reschedule IPI, sent only if its flag was clear (a set flag
/// means a reschedule is already on its way: the CPU clears the flag in `schedule` before it
/// looks at its queue).
pub fn resched_cpu<M: Machine>(m: &M, cpu: usize, irqs: &IrqsOff) {
    let flag = m.need_resched(cpu);
    if cpu == m.this_cpu_id(irqs) {
        flag.store(true, Ordering::Relaxed);
    } else if !flag.swap(true, Ordering::AcqRel) && m.online(cpu) {
        m.send_resched_ipi(cpu);
    }
}

/// Takes a thread that may run on CPU `me` from the longest queue of another CPU.
pub(crate) fn steal<M: Machine>(m: &M, me: usize) -> Option<Arc<M::Task>> {
    let victim: &CpuSched<M::Task> = (0..m.nr_cpu_ids())
        .filter(|&c| c != me && m.online(c))
        .map(|c| m.cpu(c))
        .max_by_key(|rq| rq.queued())?;
    if victim.queued() == 0 {
        return None;
    }
    victim.steal(me)
}
