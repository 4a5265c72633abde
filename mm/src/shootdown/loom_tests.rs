//! loom models of the shootdown protocol: CPUs are loom threads, an IPI is a per-CPU count the
//! CPU polls whenever it could take an interrupt (in its wait loop, and once its own work is
//! done, until everyone's is).

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use loom::thread;

use super::Shootdown;

const CPUS: usize = 3;

struct Machine {
    sd: Shootdown<CPUS>,
    /// IPIs sent to each CPU, counted: a CPU polls for a count it has not seen (it never writes
    /// the word itself, so a spinning poll is only loads and loom sees it wait).
    irq: [AtomicU64; CPUS],
    /// `flushed[target][initiator]`: the start address `target` last flushed for `initiator`.
    flushed: [[AtomicU64; CPUS]; CPUS],
    done: AtomicUsize,
}

impl Machine {
    fn new() -> Arc<Machine> {
        Arc::new(Machine {
            sd: Shootdown::new(),
            irq: core::array::from_fn(|_| AtomicU64::new(0)),
            flushed: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
            done: AtomicUsize::new(0),
        })
    }

    fn ipi(&self, cpu: usize) {
        self.irq[cpu].fetch_add(1, Ordering::Release);
    }

    /// Takes this CPU's pending IPI, if any (`seen`: the IPIs it has taken); returns how many
    /// requests the handler served.
    fn poll(&self, me: usize, seen: &mut u64) -> usize {
        let sent = self.irq[me].load(Ordering::Acquire);
        if sent == *seen {
            return 0;
        }
        *seen = sent;
        self.sd.handle(me, |start, pages| {
            let from = (start / 100 - 1) as usize;
            assert_eq!(pages, start % 100, "read a range half-rewritten");
            self.flushed[me][from].store(start, Ordering::Relaxed);
        })
    }

    /// CPU `me`: shoots down `targets` once per entry of `starts`, checking each time that
    /// every target flushed exactly that range; then serves the others until all are done.
    fn run(&self, me: usize, cpus: usize, targets: u64, starts: &[u64]) {
        let mut seen = 0;
        for &start in starts {
            self.sd.flush_others(
                me,
                targets,
                start,
                start % 100,
                |cpu| self.ipi(cpu),
                || {
                    self.poll(me, &mut seen);
                },
            );
            for t in (0..cpus).filter(|t| targets & (1 << t) != 0) {
                assert_eq!(
                    self.flushed[t][me].load(Ordering::Relaxed),
                    start,
                    "returned before CPU {t} flushed"
                );
            }
        }
        self.done.fetch_add(1, Ordering::Release);
        while self.done.load(Ordering::Acquire) < cpus {
            self.poll(me, &mut seen);
            thread::yield_now();
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.max_branches = 100_000;
    b.check(f);
}

/// Two CPUs shoot each other down at the same time, twice each (the second request reuses the
/// slot): neither waits for the other forever, and each sees its own range flushed.
#[test]
fn loom_shootdown_two_cpus_cross_fire() {
    model(|| {
        let m = Machine::new();
        let m1 = m.clone();
        let t = thread::spawn(move || m1.run(1, 2, 0b01, &[201, 202]));
        m.run(0, 2, 0b10, &[101, 102]);
        t.join().unwrap();
        let s = m.sd.stats();
        assert_eq!((s.shootdowns, s.served), (4, 4));
    });
}

/// Two initiators target the same CPU: the second may find the inbox already non-empty and
/// send no IPI; the target must still serve both (a lost notification leaves it spinning, and
/// loom reports the model as not making progress). The initiators only post (their wait is
/// the cross-fire model's business): three CPUs that all spin take loom hours.
#[test]
fn loom_shootdown_two_initiators_one_target() {
    model(|| {
        let m = Machine::new();
        let (m1, m2) = (m.clone(), m.clone());
        let a = thread::spawn(move || m1.sd.post(1, 0b001, 201, 1, |cpu| m1.ipi(cpu)));
        let b = thread::spawn(move || m2.sd.post(2, 0b001, 301, 1, |cpu| m2.ipi(cpu)));
        let (mut seen, mut served) = (0, 0);
        while served < 2 {
            served += m.poll(0, &mut seen);
            thread::yield_now();
        }
        let ipis = a.join().unwrap() + b.join().unwrap();
        assert!((1..=2).contains(&ipis));
        for (from, start) in [(1, 201), (2, 301)] {
            assert_eq!(m.sd.requests[from].unacked.load(Ordering::Acquire), 0);
            assert_eq!(m.flushed[0][from].load(Ordering::Relaxed), start);
        }
    });
}
