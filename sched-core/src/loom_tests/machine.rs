//! The machine of the loom models: each kernel thread (idle threads included) is a loom thread,
//! and a CPU is whichever of them runs on it. The stack switch hands the CPU over: the switching
//! thread writes its `rsp` cell (as `switch_stacks` does: the saved context is the thread's id),
//! wakes the thread whose context it switches to, and waits until some CPU switches back to it.
//! A CPU with nothing to do halts until a reschedule IPI (a flag the IPI sets: an interrupt left
//! pending), so a lost wake-up leaves every thread waiting: loom reports a
//! deadlock. Interrupts are never "on": a thread is preempted only where its model calls
//! `schedule`.

use std::boxed::Box;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool as StdBool, AtomicUsize as StdUsize, Ordering as StdOrdering};
use std::sync::{Arc as StdArc, Mutex as StdMutex};
use std::vec::Vec;

use loom::thread;

use crate::primitive::{Arc, AtomicBool, Ordering, UnsafeCell};
use crate::{
    ALL_CPUS, CpuSched, ExitState, IrqGuard, IrqsOff, Machine, SchedEntity, Start, Task,
    finish_switch, idle_may_halt, init_current, schedule,
};

/// A kernel thread of a model.
pub(super) struct MThread {
    id: usize,
    se: SchedEntity,
    exit: ExitState<MThread>,
    released: StdArc<Vec<StdUsize>>,
}

impl Task for MThread {
    fn sched(&self) -> &SchedEntity {
        &self.se
    }

    fn exit_state(&self) -> &ExitState<Self> {
        &self.exit
    }
}

impl Drop for MThread {
    /// Where the kernel frees the thread's stack: no CPU may still be on it.
    fn drop(&mut self) {
        assert!(
            self.se.is_idle() || !self.se.on_cpu(),
            "thread {} released while a CPU is on its stack",
            self.id
        );
        self.released[self.id].fetch_add(1, StdOrdering::Relaxed);
    }
}

/// Where a loom thread waits to be resumed (the switch to its context) or, for an idle thread,
/// for an interrupt: a flag and the thread's park/unpark, which (unlike loom's `Notify`) never
/// wakes spuriously. The flag's release/acquire is the handoff's happens-before, as the CPU's
/// program order is on a machine.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    /// Its waiter is parked in [`Model::pass`] (not a loom atomic: bookkeeping of the model).
    parked: StdBool,
}

struct Cpu {
    rq: CpuSched<MThread>,
    need_resched: AtomicBool,
    /// An interrupt is pending (its idle thread waits here to leave its halt).
    halt: Gate,
}

/// The machine: CPUs, idle threads, and what the switch needs to find each thread's loom thread.
pub(super) struct Model {
    cpus: Vec<Cpu>,
    idle: Vec<Arc<MThread>>,
    /// Per thread id: resumes its loom thread (the switch to its context).
    go: Vec<Gate>,
    /// Per thread id: the CPU it runs on now (written by the CPU that switches to it, before it
    /// resumes it).
    cpu_of: Vec<StdUsize>,
    /// Per thread id: it has exited, its context is never resumed.
    exited: Vec<StdBool>,
    /// Kernel threads that have not exited yet; the idle threads stop at 0.
    remaining: StdUsize,
    /// Per thread id: its loom thread, once it has started (to unpark it).
    loom_threads: StdMutex<Vec<Option<thread::Thread>>>,
}

impl Model {
    /// Opens `gate`, whose waiter is thread `waiter`.
    fn open(&self, gate: &Gate, waiter: usize) {
        // A swap, not a store: loom may order a plain store before a racing swap that it
        // executes later, which would lose the opening.
        gate.open.swap(true, Ordering::Release);
        if !gate.parked.load(StdOrdering::Relaxed) {
            // Not parked here (an unpark would wake it from a lock or a join): it sees the
            // flag before it parks.
            return;
        }
        let t = self.loom_threads.lock().expect("not poisoned")[waiter].clone();
        if let Some(t) = t {
            t.unpark();
        }
    }

    /// Waits (as the calling thread, `gate`'s waiter) until `gate` is open, and closes it.
    fn pass(&self, gate: &Gate) {
        while !gate.open.swap(false, Ordering::Acquire) {
            // No loom operation between the swap and the park: an opener runs before the
            // swap, or after the park and sees `parked`.
            gate.parked.store(true, StdOrdering::Relaxed);
            thread::park();
            gate.parked.store(false, StdOrdering::Relaxed);
        }
    }

    /// Registers the calling loom thread as thread `id`.
    fn register(&self, id: usize) {
        ME.with(|me| me.set(id));
        self.loom_threads.lock().expect("not poisoned")[id] = Some(thread::current());
    }
}

loom::thread_local! {
    /// The id of the thread this loom thread is.
    static ME: Cell<usize> = Cell::new(usize::MAX);
}

fn me() -> usize {
    ME.with(Cell::get)
}

// SAFETY: `this_cpu_id` is the CPU the switch handed this thread (its own `cpu_of` entry,
// written before it was resumed); `switch_stacks` writes `save`, then resumes `next_rsp`'s
// thread and returns only when this one is resumed (or never runs again).
unsafe impl Machine for Model {
    type Task = MThread;

    fn this_cpu_id(&self, _irqs: &IrqsOff) -> usize {
        self.cpu_of[me()].load(StdOrdering::Relaxed)
    }

    fn nr_cpu_ids(&self) -> usize {
        self.cpus.len()
    }

    fn online(&self, _cpu: usize) -> bool {
        true
    }

    fn cpu(&self, cpu: usize) -> &CpuSched<MThread> {
        &self.cpus[cpu].rq
    }

    fn need_resched(&self, cpu: usize) -> &AtomicBool {
        &self.cpus[cpu].need_resched
    }

    fn send_resched_ipi(&self, cpu: usize) {
        self.open(&self.cpus[cpu].halt, cpu);
    }

    fn idle_thread(&self, cpu: usize) -> Arc<MThread> {
        self.idle[cpu].clone()
    }

    fn irqs_disable(&self) -> bool {
        false
    }

    unsafe fn irqs_enable(&self) {
        unreachable!("interrupts are never on in the models");
    }

    fn schedule_debug(&self) {}

    fn prepare_switch(&self, cpu: usize, _prev: &MThread, next: &MThread) {
        assert!(
            next.se.may_run_on(cpu),
            "thread {} switched to on CPU {cpu}, outside its affinity mask {:#x}",
            next.id,
            next.se.allowed()
        );
    }

    unsafe fn switch_stacks(&self, save: &UnsafeCell<u64>, next_rsp: u64) {
        let me = me();
        let cpu = self.cpu_of[me].load(StdOrdering::Relaxed);
        // SAFETY: what `switch_stacks` does with `save`; loom checks it against every other
        // access of the cell.
        save.with_mut(|p| unsafe { *p = me as u64 });
        let next = next_rsp as usize;
        assert!(
            !self.exited[next].load(StdOrdering::Relaxed),
            "thread {next} switched to after it exited"
        );
        self.cpu_of[next].store(cpu, StdOrdering::Relaxed);
        self.open(&self.go[next], next);
        if self.exited[me].load(StdOrdering::Relaxed) {
            return;
        }
        self.pass(&self.go[me]);
    }

    fn after_switch(&self) {}
}

/// Where a model's kernel thread starts.
#[derive(Clone, Copy)]
pub(super) enum Place {
    /// The CPU's current thread (instead of its idle thread).
    Running(usize),
    /// In the CPU's run queue.
    Queued(usize),
}

/// A kernel thread's code: gets the machine, returns its exit code.
pub(super) type Body = Box<dyn FnOnce(&Model) -> i64 + Send>;

/// Runs one execution of a model: `ncpus` CPUs, a kernel thread per entry of `places`, whose
/// code `bodies` makes from the threads (to join them). Returns after every thread has exited
/// and been released; panics (a loom failure) on a deadlock, a lost wake-up, a race on an
/// `rsp`, a thread released twice or while a CPU was on it, or a thread switched to on a CPU
/// its affinity mask excludes.
pub(super) fn run(
    ncpus: usize,
    places: &[Place],
    bodies: impl FnOnce(&[Arc<MThread>]) -> Vec<Body>,
) {
    let masks: Vec<u64> = places.iter().map(|_| ALL_CPUS).collect();
    run_masked(ncpus, places, &masks, bodies);
}

/// As [`run`], with thread `i` allowed on the CPUs of `masks[i]` only.
pub(super) fn run_masked(
    ncpus: usize,
    places: &[Place],
    masks: &[u64],
    bodies: impl FnOnce(&[Arc<MThread>]) -> Vec<Body>,
) {
    assert_eq!(masks.len(), places.len());
    let nthreads = ncpus + places.len();
    let released: StdArc<Vec<StdUsize>> =
        StdArc::new((0..nthreads).map(|_| StdUsize::new(0)).collect());
    let running_on = |c: usize| {
        places
            .iter()
            .position(|p| matches!(p, Place::Running(x) if *x == c))
    };
    let new_thread = |id: usize, start: Start, allowed: u64, idle: bool| {
        Arc::new(MThread {
            id,
            se: SchedEntity::new(start, allowed, idle),
            exit: ExitState::new(),
            released: released.clone(),
        })
    };
    let idle: Vec<Arc<MThread>> = (0..ncpus)
        .map(|c| {
            let start = if running_on(c).is_some() {
                Start::Ready {
                    cpu: c,
                    rsp: c as u64,
                }
            } else {
                Start::Running { cpu: c }
            };
            new_thread(c, start, ALL_CPUS, true)
        })
        .collect();
    let threads: Vec<Arc<MThread>> = places
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = ncpus + i;
            let start = match *p {
                Place::Running(cpu) => Start::Running { cpu },
                Place::Queued(cpu) => Start::Ready {
                    cpu,
                    rsp: id as u64,
                },
            };
            new_thread(id, start, masks[i], false)
        })
        .collect();
    let cpu_of: Vec<StdUsize> = (0..nthreads)
        .map(|id| {
            let cpu = match id.checked_sub(ncpus).map(|i| places[i]) {
                None => id,
                Some(Place::Running(c) | Place::Queued(c)) => c,
            };
            StdUsize::new(cpu)
        })
        .collect();
    let m = StdArc::new(Model {
        cpus: (0..ncpus)
            .map(|_| Cpu {
                rq: CpuSched::new(),
                need_resched: AtomicBool::new(false),
                halt: Gate::default(),
            })
            .collect(),
        idle: idle.clone(),
        go: (0..nthreads).map(|_| Gate::default()).collect(),
        loom_threads: StdMutex::new((0..nthreads).map(|_| None).collect()),
        cpu_of,
        exited: (0..nthreads).map(|_| StdBool::new(false)).collect(),
        remaining: StdUsize::new(places.len()),
    });
    // Boot: each CPU's current thread, then the run queues.
    for (c, idle_thread) in idle.iter().enumerate() {
        let cur = running_on(c).map_or_else(|| idle_thread.clone(), |i| threads[i].clone());
        ME.with(|me| me.set(cur.id));
        // SAFETY: nothing runs yet; the boot code stands for each CPU in turn.
        let irqs = unsafe { IrqsOff::assume() };
        init_current(&*m, &irqs, cur);
    }
    for (t, p) in threads.iter().zip(places) {
        if let Place::Queued(c) = *p {
            // SAFETY: as above.
            let irqs = unsafe { IrqsOff::assume() };
            m.cpus[c].rq.push(t.clone(), &irqs);
        }
    }
    let mut bodies = bodies(&threads);
    assert_eq!(bodies.len(), threads.len());
    let mut handles = Vec::new();
    for (i, body) in bodies.drain(..).enumerate() {
        let m = m.clone();
        let id = ncpus + i;
        let running = matches!(places[i], Place::Running(_));
        handles.push(thread::spawn(move || {
            m.register(id);
            if !running {
                first_switch(&m, id);
            }
            let code = body(&m);
            exit(&m, id, code);
        }));
    }
    drop(threads);
    for c in (1..ncpus).rev() {
        let m = m.clone();
        let running = running_on(c).is_none();
        handles.push(thread::spawn(move || idle_thread(&m, c, running)));
    }
    idle_thread(&m, 0, running_on(0).is_none());
    for h in handles {
        h.join().expect("a model thread panicked");
    }
    drop(idle);
    drop(m);
    for (id, r) in released.iter().enumerate().skip(ncpus) {
        assert_eq!(r.load(StdOrdering::Relaxed), 1, "thread {id} released once");
    }
}

/// A thread's first instructions: wait to be switched to, then what `thread_start` does.
fn first_switch(m: &Model, id: usize) {
    m.pass(&m.go[id]);
    // SAFETY: a thread starts from a switch, which runs with interrupts off.
    let irqs = unsafe { IrqsOff::assume() };
    finish_switch(m, &irqs);
}

fn exit(m: &Model, id: usize, code: i64) {
    m.exited[id].store(true, StdOrdering::Relaxed);
    if m.remaining.fetch_sub(1, StdOrdering::Relaxed) == 1 {
        for (c, cpu) in m.cpus.iter().enumerate() {
            m.open(&cpu.halt, c);
        }
    }
    let irqs = IrqGuard::new(m);
    crate::exit(m, &irqs, code);
}

/// A CPU's idle thread: runs what is ready, halts when nothing is, until every kernel thread
/// has exited.
fn idle_thread(m: &Model, cpu: usize, running: bool) {
    m.register(cpu);
    if !running {
        first_switch(m, cpu);
    }
    loop {
        {
            let irqs = IrqGuard::new(m);
            schedule(m, &irqs);
        }
        if m.remaining.load(StdOrdering::Relaxed) == 0 {
            return;
        }
        let irqs = IrqGuard::new(m);
        if idle_may_halt(m, &irqs) {
            m.pass(&m.cpus[cpu].halt);
        }
    }
}
