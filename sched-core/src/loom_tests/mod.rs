//! loom models of the handoff protocol (`RUSTFLAGS="--cfg loom" cargo test -p sched-core
//! --release --lib loom`). They run the crate's own `schedule`, `wake`, wait queues, stealing
//! and `exit` on the machine of [`machine`]: kernel threads as loom threads, the stack switch a
//! handoff between them that writes the switched-away thread's `rsp` cell. loom reports a
//! deadlock when a wake-up is lost (every CPU halts, a blocked thread is never resumed) or CPUs
//! wait for each other, and a data race when an `rsp` is read before its write is ordered
//! before the read (the `on_cpu` release/acquire); the machine checks that each thread is
//! released once, after no CPU is on its stack, never resumed after it exited, and never
//! switched to on a CPU its affinity mask excludes.

mod machine;

use std::boxed::Box;
use std::vec;

use loom::sync::atomic::AtomicBool;

use crate::primitive::{Arc, Ordering};
use crate::{IrqGuard, Machine, Task, WaitQueue, block, cpu_bit, join, schedule, wake};
use machine::{Body, MThread, Model, Place, run, run_masked};

fn body(f: impl FnOnce(&Model) -> i64 + Send + 'static) -> Body {
    Box::new(f)
}

fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.max_branches = 100_000;
    b.check(f);
}

/// A condition and the queue its waiters block on.
struct Event {
    set: AtomicBool,
    wq: WaitQueue<MThread>,
}

impl Event {
    fn new() -> Arc<Event> {
        Arc::new(Event {
            set: AtomicBool::new(false),
            wq: WaitQueue::new(),
        })
    }

    fn wait(&self, m: &Model) {
        self.wq.wait_while(m, || !self.set.load(Ordering::Acquire));
        assert!(self.set.load(Ordering::Acquire), "woken before the event");
    }

    /// The waker's side: the condition first, then the queue.
    fn signal(&self, m: &Model) {
        self.set.store(true, Ordering::Release);
        self.wq.wake_all(m);
    }
}

/// A thread blocks on CPU 0 while another, on CPU 1, sets its condition and wakes it: the
/// wake-up races the check, the enqueue and the switch away (the waker waits for CPU 0 to be off
/// the thread's stack before it queues it).
#[test]
fn loom_sched_wake_vs_block() {
    model(2, || {
        let ev = Event::new();
        run(2, &[Place::Running(0), Place::Running(1)], |_| {
            let (e1, e2) = (ev.clone(), ev.clone());
            vec![
                body(move |m: &Model| {
                    e1.wait(m);
                    1
                }),
                body(move |m: &Model| {
                    e2.signal(m);
                    2
                }),
            ]
        });
    });
}

/// Two CPUs each block a thread after waking the other's: each woken thread may be queued on
/// either CPU (the idle one), popped or stolen there while the CPU that ran it is still
/// switching away from it. No CPU may end up waiting for another that waits in turn, and no
/// wake-up may be lost.
#[test]
fn loom_sched_block_and_steal() {
    model(2, || {
        let (a, b) = (Event::new(), Event::new());
        run(2, &[Place::Running(0), Place::Running(1)], |_| {
            let (a1, b1, a2, b2) = (a.clone(), b.clone(), a.clone(), b.clone());
            vec![
                body(move |m: &Model| {
                    b1.signal(m);
                    a1.wait(m);
                    1
                }),
                body(move |m: &Model| {
                    a2.signal(m);
                    b2.wait(m);
                    2
                }),
            ]
        });
    });
}

/// CPU 0 preempts its thread (queued at the back, still `on_cpu`) for the one queued before
/// it, while the idle CPU 1 steals: whichever thread it takes, it switches to it only after
/// CPU 0 is off its stack, and reads the `rsp` CPU 0 saved.
#[test]
fn loom_sched_preempted_thread_stolen() {
    model(3, || {
        run(2, &[Place::Running(0), Place::Queued(0)], |_| {
            vec![
                body(|m: &Model| {
                    let irqs = IrqGuard::new(m);
                    schedule(m, &irqs);
                    1
                }),
                body(|_: &Model| 2),
            ]
        });
    });
}

/// A thread exits while another joins it: the joiner sees the exit code (whether it blocked or
/// found the thread done), and the thread is released once, after its CPU left its stack.
#[test]
fn loom_sched_exit_join() {
    model(3, || {
        run(2, &[Place::Running(0), Place::Running(1)], |threads| {
            let t = threads[0].clone();
            vec![
                body(|_: &Model| 42),
                body(move |m: &Model| {
                    assert_eq!(join(m, &t), 42, "the joiner sees the exit code");
                    drop(t);
                    0
                }),
            ]
        });
    });
}

/// CPU 0 preempts its thread while the idle CPU 1 steals from CPU 0's queue, which holds a
/// thread allowed on CPU 0 only: the stealer must skip it (and may take the preempted one,
/// once CPU 0 is off its stack).
#[test]
fn loom_sched_affinity_steal() {
    model(2, || {
        run_masked(
            2,
            &[Place::Running(0), Place::Queued(0)],
            &[cpu_bit(0) | cpu_bit(1), cpu_bit(0)],
            |_| {
                vec![
                    body(|m: &Model| {
                        let irqs = IrqGuard::new(m);
                        schedule(m, &irqs);
                        1
                    }),
                    body(|_: &Model| 2),
                ]
            },
        );
    });
}

/// A thread on CPU 0 confines itself to CPU 1 and reschedules (what the kernel's
/// `set_affinity` does): it must leave CPU 0 and resume on CPU 1, handed over by the next
/// thread on CPU 0 once that CPU is off its stack, while CPU 1's idle thread halts and
/// steals.
#[test]
fn loom_sched_affinity_migrate() {
    model(3, || {
        run(2, &[Place::Running(0)], |_| {
            vec![body(|m: &Model| {
                let irqs = IrqGuard::new(m);
                crate::with_current(m, &irqs, |t| t.sched().set_allowed(cpu_bit(1)));
                schedule(m, &irqs);
                assert_eq!(m.this_cpu_id(&irqs), 1, "the thread resumes on CPU 1");
                1
            })]
        });
    });
}

/// A thread on CPU 0 starts to block on a list kept elsewhere but finds it need not
/// (`enqueue` says no), while CPU 1 sends it a stray wake-up (one meant for an earlier wait):
/// whichever wins, the thread runs on exactly once, queued by the waker if the wake-up won.
#[test]
fn loom_sched_block_cancelled_vs_stray_wake() {
    model(3, || {
        run(2, &[Place::Running(0), Place::Running(1)], |threads| {
            let t = threads[0].clone();
            vec![
                body(|m: &Model| {
                    let irqs = IrqGuard::new(m);
                    assert!(!block(m, &irqs, |_| false), "enqueue said no");
                    1
                }),
                body(move |m: &Model| {
                    let irqs = IrqGuard::new(m);
                    wake(m, t, &irqs);
                    2
                }),
            ]
        });
    });
}
