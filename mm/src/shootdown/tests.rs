extern crate std;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::vec::Vec;

use super::Shootdown;

/// One initiator waits for a target whose handler (run here from the wait loop, as the target
/// CPU would) serves it: one IPI, one request served.
#[test]
fn a_shootdown_waits_for_its_target_and_counts_one_ipi() {
    let sd: Shootdown<4> = Shootdown::new();
    let mut ipis = Vec::new();
    let mut flushed = Vec::new();
    let mut rounds = 0;
    sd.flush_others(
        0,
        0b100,
        0x5000,
        3,
        |cpu| ipis.push(cpu),
        || {
            rounds += 1;
            if rounds == 3 {
                sd.handle(2, |s, p| flushed.push((s, p)));
            }
        },
    );
    assert_eq!(ipis, [2]);
    assert_eq!(flushed, [(0x5000, 3)]);
    assert_eq!(sd.handle(2, |_, _| panic!("nothing left")), 0);
    let s = sd.stats();
    assert_eq!((s.shootdowns, s.ipis, s.served), (1, 1, 1));
}

/// A second initiator that finds the target's inbox already non-empty sends no IPI: the
/// handler the first IPI triggers serves both requests.
#[test]
fn a_request_to_a_cpu_with_pending_work_rides_on_the_ipi_already_sent() {
    let sd: Shootdown<4> = Shootdown::new();
    let ipis = AtomicUsize::new(0);
    let mut served = Vec::new();
    let mut second_done = false;
    sd.flush_others(
        0,
        0b1000,
        0x1000,
        1,
        |_| {
            ipis.fetch_add(1, Ordering::Relaxed);
        },
        || {
            if !second_done {
                // CPU 1 shoots CPU 3 down while CPU 0's request is still pending there.
                sd.flush_others(
                    1,
                    0b1000,
                    0x2000,
                    2,
                    |_| {
                        ipis.fetch_add(1, Ordering::Relaxed);
                    },
                    || {
                        sd.handle(3, |s, p| served.push((s, p)));
                    },
                );
                second_done = true;
            }
        },
    );
    served.sort();
    assert_eq!(served, [(0x1000, 1), (0x2000, 2)]);
    assert_eq!(ipis.load(Ordering::Relaxed), 1);
    let s = sd.stats();
    assert_eq!((s.shootdowns, s.ipis, s.served), (2, 1, 2));
}

/// Stress: every CPU (a thread) shoots random other CPUs down while answering the others'
/// requests; every request is served exactly once by each of its targets, with its own range.
#[test]
fn concurrent_shootdowns_from_every_cpu_are_all_served() {
    const CPUS: usize = 4;
    const ROUNDS: u64 = 2_000;
    let sd: Shootdown<CPUS> = Shootdown::new();
    let irq: [AtomicBool; CPUS] = core::array::from_fn(|_| AtomicBool::new(false));
    // served[target][initiator]: requests served, and the sum of their starts.
    let served: [[AtomicU64; CPUS]; CPUS] =
        core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0)));
    let sums: [[AtomicU64; CPUS]; CPUS] =
        core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0)));
    let done = AtomicUsize::new(0);
    let expected: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CPUS)
            .map(|me| {
                let (sd, irq, served, sums, done) = (&sd, &irq, &served, &sums, &done);
                s.spawn(move || {
                    let poll = || {
                        if irq[me].swap(false, Ordering::Acquire) {
                            sd.handle(me, |start, pages| {
                                let from = (start >> 32) as usize;
                                assert_eq!(pages, start & 0xff, "torn range");
                                served[me][from].fetch_add(1, Ordering::Relaxed);
                                sums[me][from].fetch_add(start, Ordering::Relaxed);
                            });
                        }
                    };
                    // Per target: requests sent and the sum of their starts.
                    let mut mine = std::vec![(0u64, 0u64); CPUS];
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ me as u64;
                    for round in 0..ROUNDS {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let targets = rng & ((1 << CPUS) - 1) & !(1 << me);
                        let start = ((me as u64) << 32) | (round << 8) | (round & 0xff);
                        sd.flush_others(
                            me,
                            targets,
                            start,
                            round & 0xff,
                            |cpu| irq[cpu].store(true, Ordering::Release),
                            || {
                                poll();
                                // Host threads outnumber cores: let the targets run.
                                std::thread::yield_now();
                            },
                        );
                        for (t, m) in mine.iter_mut().enumerate() {
                            if targets & (1 << t) != 0 {
                                m.0 += 1;
                                m.1 += start;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::AcqRel);
                    while done.load(Ordering::Acquire) < CPUS {
                        poll();
                        std::thread::yield_now();
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (from, per_target) in expected.iter().enumerate() {
        for (t, &(count, sum)) in per_target.iter().enumerate() {
            assert_eq!(
                served[t][from].load(Ordering::Relaxed),
                count,
                "CPU {t} from {from}"
            );
            assert_eq!(
                sums[t][from].load(Ordering::Relaxed),
                sum,
                "CPU {t} from {from}"
            );
        }
    }
    let s = sd.stats();
    let total: u64 = expected.iter().flatten().map(|&(c, _)| c).sum();
    assert_eq!(s.served, total);
    assert!(s.ipis <= total);
}
