//! Host tests of the rwsem. They park through [`TestPark`], which blocks until woken (no
//! timeout, so a lost wake-up hangs) under a watchdog that fails the test instead, has a clock
//! the test sets, and can hold back woken threads or stop a releaser between its release and its
//! wake-up, so the orders of events that matter are forced rather than hoped for.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as O};
use std::sync::{Arc, Mutex};
use std::thread;
use std::vec::Vec;

pub(super) use harness::Acquisitions;
use harness::{Sem, TestPark, sem, spawn_recorded, take_last_wait, wait_until, within};

use super::*;

#[test]
fn readers_share_writers_exclude() {
    let sem = sem(&TestPark::manual());
    sem.down_read();
    assert!(sem.try_down_read());
    assert!(!sem.try_down_write());
    sem.up_read();
    sem.up_read();
    assert!(sem.try_down_write());
    assert!(!sem.try_down_read());
    assert!(sem.is_write_locked());
    sem.up_write();
    assert!(!sem.is_locked());
    assert_eq!(sem.state.load(Ordering::Relaxed), 0);
}

#[test]
fn writers_are_served_in_arrival_order() {
    within(60, || {
        let park = TestPark::manual();
        let sem = sem(&park);
        let order = Arc::new(Mutex::new(Vec::new()));
        sem.down_write();
        let writers: Vec<_> = (1..=3)
            .map(|id| {
                let s = sem.clone();
                let t = spawn_recorded(&order, id, move |record| {
                    s.down_write();
                    record();
                    s.up_write();
                });
                wait_until(|| sem.queued() == id as usize);
                t
            })
            .collect();
        sem.up_write();
        for t in writers {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
        assert_eq!(sem.state.load(Ordering::Relaxed), 0);
    });
}

/// Readers queued behind a writer get in together when it releases, including one queued
/// behind another writer (the phase-fair batch); the queued writer gets in after them.
#[test]
fn a_writer_release_admits_every_queued_reader_at_once() {
    within(60, || {
        let park = TestPark::manual();
        let sem = sem(&park);
        let go = Arc::new(AtomicBool::new(false));
        let inside = Arc::new(AtomicUsize::new(0));
        sem.down_write();
        let reader = |sem: &Arc<Sem>| {
            let (s, go, inside) = (sem.clone(), go.clone(), inside.clone());
            thread::spawn(move || {
                s.down_read();
                inside.fetch_add(1, O::SeqCst);
                wait_until(|| go.load(O::SeqCst));
                inside.fetch_sub(1, O::SeqCst);
                s.up_read();
            })
        };
        let mut threads = Vec::new();
        for n in 1..=3 {
            threads.push(reader(&sem));
            wait_until(|| sem.queued() == n);
        }
        let (s, i) = (sem.clone(), inside.clone());
        let writer = thread::spawn(move || {
            s.down_write();
            assert_eq!(i.load(O::SeqCst), 0, "a writer got in with readers inside");
            s.up_write();
        });
        wait_until(|| sem.queued() == 4);
        threads.push(reader(&sem));
        wait_until(|| sem.queued() == 5);

        sem.up_write();
        // Granted on their behalf before any of them ran.
        assert_eq!(
            sem.readers(),
            4,
            "the queued readers were not admitted as one batch"
        );
        assert!(!sem.is_write_locked());
        assert_eq!(sem.queued(), 1, "the writer should still be queued");
        wait_until(|| inside.load(O::SeqCst) == 4);
        go.store(true, O::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        writer.join().unwrap();
        assert_eq!(sem.state.load(Ordering::Relaxed), 0);
    });
}

/// A reader arriving while a writer waits for the readers inside queues behind the writer.
#[test]
fn a_waiting_writer_keeps_new_readers_out() {
    within(60, || {
        let park = TestPark::manual();
        let sem = sem(&park);
        let order = Arc::new(Mutex::new(Vec::new()));
        sem.down_read();
        let s = sem.clone();
        let writer = spawn_recorded(&order, 1, move |record| {
            s.down_write();
            record();
            s.up_write();
        });
        wait_until(|| sem.queued() == 1);
        assert!(sem.has_waiters());
        assert!(!sem.try_down_read(), "a reader overtook a waiting writer");
        assert!(!sem.try_down_write(), "a writer overtook a waiting writer");
        let s = sem.clone();
        let reader = spawn_recorded(&order, 2, move |record| {
            s.down_read();
            record();
            s.up_read();
        });
        wait_until(|| sem.queued() == 2 || !order.lock().unwrap().is_empty());
        assert!(
            order.lock().unwrap().is_empty(),
            "someone got in past a held lock"
        );
        sem.up_read();
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(*order.lock().unwrap(), [1, 2]);
        assert_eq!(sem.state.load(Ordering::Relaxed), 0);
    });
}

/// Before the timeout a writer may steal the lock from a woken head writer that has not run
/// yet; once the head has waited out the timeout, the release hands the lock to it directly.
#[test]
fn a_stealing_writer_yields_to_the_head_after_the_timeout() {
    within(60, || {
        let park = TestPark::manual();
        let sem = sem(&park);
        let got_it = Arc::new(AtomicBool::new(false));
        sem.down_write();
        let (s, g) = (sem.clone(), got_it.clone());
        let head = thread::spawn(move || {
            s.down_write();
            g.store(true, O::SeqCst);
            s.up_write();
        });
        wait_until(|| park.parked() == 1);
        // The head is woken by each release below but does not get to run.
        park.set_frozen(true);
        for _ in 0..3 {
            sem.up_write();
            sem.down_write();
            assert_eq!(sem.queued(), 1, "the steal should leave the head queued");
        }
        park.advance(RWSEM_WAIT_TIMEOUT_NS);
        sem.up_write();
        assert!(
            sem.is_write_locked() && sem.queued() == 0,
            "the release did not hand the lock to the head that waited out the timeout"
        );
        assert!(!got_it.load(O::SeqCst));
        park.set_frozen(false);
        sem.down_write();
        assert!(got_it.load(O::SeqCst));
        sem.up_write();
        head.join().unwrap();
        assert_eq!(sem.state.load(Ordering::Relaxed), 0);
    });
}

/// The head (of `head_kind`) has waited out the timeout while the lock is held; a later waiter
/// notices and sets HANDOFF. A writer arriving between the holder's release and its wake-up
/// finds the lock free but must queue; the head gets the lock first.
fn handoff_keeps_a_stealer_out(head_kind: Kind) {
    let park = TestPark::manual();
    let sem = sem(&park);
    let order = Arc::new(Mutex::new(Vec::new()));
    let acquire = move |s: Arc<Sem>, kind: Kind| {
        move |record: &dyn Fn()| match kind {
            Kind::Read => {
                s.down_read();
                record();
                s.up_read();
            }
            Kind::Write => {
                s.down_write();
                record();
                s.up_write();
            }
        }
    };
    sem.down_write();
    let head = spawn_recorded(&order, 1, acquire(sem.clone(), head_kind));
    wait_until(|| park.parked() == 1);
    park.advance(RWSEM_WAIT_TIMEOUT_NS);
    let second_kind = match head_kind {
        Kind::Read => Kind::Write,
        Kind::Write => Kind::Read,
    };
    let second = spawn_recorded(&order, 2, acquire(sem.clone(), second_kind));
    wait_until(|| park.parked() == 2);
    assert!(
        sem.has_handoff(),
        "the timed-out head was not marked for handoff"
    );

    // Stop the release between dropping the lock and waking the queue.
    park.arm_clock_pause();
    let s = sem.clone();
    let releaser = thread::spawn(move || s.up_write());
    wait_until(|| park.clock_is_paused());
    assert!(!sem.is_locked() && sem.has_handoff());

    // Granted or not, the head does not run until the stealer has had its chance.
    park.set_frozen(true);
    let stealer = spawn_recorded(&order, 3, acquire(sem.clone(), Kind::Write));
    wait_until(|| park.parked() == 3 || order.lock().unwrap().contains(&3));
    assert!(
        !order.lock().unwrap().contains(&3),
        "a writer stole the lock reserved for the head by HANDOFF"
    );
    park.set_frozen(false);
    park.resume_clock();
    for t in [releaser, head, second, stealer] {
        t.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
    assert_eq!(sem.state.load(Ordering::Relaxed), 0);
}

#[test]
fn handoff_to_a_writer_keeps_a_stealer_out() {
    within(60, || handoff_keeps_a_stealer_out(Kind::Write));
}

#[test]
fn handoff_to_readers_keeps_a_stealer_out() {
    within(60, || handoff_keeps_a_stealer_out(Kind::Read));
}

#[test]
fn downgrade_admits_the_queued_readers() {
    within(60, || {
        let park = TestPark::manual();
        let sem = sem(&park);
        let data = Arc::new(AtomicU64::new(0));
        let go = Arc::new(AtomicBool::new(false));
        sem.down_write();
        data.store(7, O::Relaxed);
        let mut readers = Vec::new();
        let reader = |sem: &Arc<Sem>| {
            let (s, d, go) = (sem.clone(), data.clone(), go.clone());
            thread::spawn(move || {
                s.down_read();
                assert_eq!(d.load(O::Relaxed), 7);
                wait_until(|| go.load(O::SeqCst));
                s.up_read();
            })
        };
        readers.push(reader(&sem));
        wait_until(|| sem.queued() == 1);
        readers.push(reader(&sem));
        wait_until(|| sem.queued() == 2);
        let (s, d) = (sem.clone(), data.clone());
        let writer = thread::spawn(move || {
            s.down_write();
            d.store(8, O::Relaxed);
            s.up_write();
        });
        wait_until(|| sem.queued() == 3);

        sem.downgrade_write();
        assert!(!sem.is_write_locked());
        assert_eq!(
            sem.readers(),
            3,
            "downgrade did not admit the queued readers"
        );
        assert_eq!(sem.queued(), 1);
        assert!(
            !sem.try_down_read(),
            "a new reader overtook the queued writer"
        );
        go.store(true, O::SeqCst);
        for t in readers {
            t.join().unwrap();
        }
        assert_eq!(
            data.load(O::Relaxed),
            7,
            "the writer got in with a reader inside"
        );
        sem.up_read();
        writer.join().unwrap();
        assert_eq!(data.load(O::Relaxed), 8);
        assert_eq!(sem.state.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn downgrade_with_a_writer_at_the_head_admits_nobody() {
    within(60, || {
        let park = TestPark::manual();
        let sem = sem(&park);
        let order = Arc::new(Mutex::new(Vec::new()));
        sem.down_write();
        let s = sem.clone();
        let writer = spawn_recorded(&order, 1, move |record| {
            s.down_write();
            record();
            s.up_write();
        });
        wait_until(|| sem.queued() == 1);
        let s = sem.clone();
        let reader = spawn_recorded(&order, 2, move |record| {
            s.down_read();
            record();
            s.up_read();
        });
        wait_until(|| sem.queued() == 2);
        sem.downgrade_write();
        assert_eq!(sem.readers(), 1);
        assert_eq!(sem.queued(), 2);
        sem.up_read();
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(*order.lock().unwrap(), [1, 2]);
    });
}

/// A writer re-taking the lock in a tight loop while readers each need `ROUNDS` acquisitions:
/// every reader that has to queue gets in before the writer's next acquisition (and each
/// reader has to queue at least `ROUNDS / 10` times before it stops).
#[test]
fn a_writer_in_a_tight_loop_does_not_starve_readers() {
    const ROUNDS: usize = 300;
    within(120, || {
        let sem = sem(&TestPark::real_time());
        let done = Arc::new(AtomicUsize::new(0));
        let rounds = Arc::new(AtomicU64::new(0));
        let writing = Arc::new(AtomicBool::new(false));
        let (s, d, r, w) = (sem.clone(), done.clone(), rounds.clone(), writing.clone());
        let writer = thread::spawn(move || {
            while d.load(O::SeqCst) < 3 {
                s.down_write();
                w.store(true, O::SeqCst);
                r.fetch_add(1, O::SeqCst);
                w.store(false, O::SeqCst);
                s.up_write();
            }
        });
        wait_until(|| rounds.load(O::SeqCst) > 0);
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (s, d, w) = (sem.clone(), done.clone(), writing.clone());
                thread::spawn(move || {
                    // Until the reader has also had to queue often enough (the writer may
                    // be off the CPU for a while, letting readers straight in).
                    let (mut acquired, mut queued, mut worst) = (0, 0, 0);
                    while acquired < ROUNDS || queued < ROUNDS / 10 {
                        s.down_read();
                        assert!(!w.load(O::SeqCst), "a reader got in with the writer inside");
                        if let Some(o) = take_last_wait() {
                            queued += 1;
                            worst = worst.max(o.writes);
                        }
                        s.up_read();
                        acquired += 1;
                    }
                    d.fetch_add(1, O::SeqCst);
                    (queued, worst)
                })
            })
            .collect();
        for r in readers {
            let (_, worst) = r.join().unwrap();
            // One: the writer that held the lock (or was queued ahead) when the reader queued.
            assert!(
                worst <= 1,
                "a queued reader was overtaken by {worst} writer holds"
            );
        }
        writer.join().unwrap();
    });
}

/// Readers taking the lock back to back do not keep a writer out: once it queues, only the
/// readers already inside finish before it.
#[test]
fn a_stream_of_readers_does_not_starve_a_writer() {
    within(120, || {
        let sem = sem(&TestPark::real_time());
        let stop = Arc::new(AtomicBool::new(false));
        let inside = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (s, stop, inside, started) =
                    (sem.clone(), stop.clone(), inside.clone(), started.clone());
                thread::spawn(move || {
                    started.fetch_add(1, O::SeqCst);
                    while !stop.load(O::Relaxed) {
                        s.down_read();
                        inside.fetch_add(1, O::SeqCst);
                        for _ in 0..100 {
                            core::hint::spin_loop();
                        }
                        inside.fetch_sub(1, O::SeqCst);
                        s.up_read();
                    }
                })
            })
            .collect();
        wait_until(|| started.load(O::SeqCst) == 3);
        // 200 rounds, and on until the writer has had to queue 20 times (the readers may be off
        // the CPU for a while, letting the writer straight in).
        let (mut rounds, mut waited) = (0, 0);
        while rounds < 200 || waited < 20 {
            sem.down_write();
            assert_eq!(inside.load(O::SeqCst), 0, "a reader inside with a writer");
            if let Some(o) = take_last_wait() {
                waited += 1;
                // At most the three readers inside when the writer queued.
                assert!(
                    o.reads <= 3,
                    "{} readers got in past the queued writer",
                    o.reads
                );
            }
            sem.up_write();
            rounds += 1;
            // Let the readers back in between rounds.
            thread::yield_now();
        }
        stop.store(true, O::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// Mixed readers, writers and downgrades on real time (so handoffs happen): exclusion holds,
/// nothing is lost, everyone finishes.
#[test]
fn stress_rwsem_mixed_readers_writers_downgrades() {
    let iters = if cfg!(debug_assertions) {
        2_000
    } else {
        20_000
    };
    within(300, move || {
        let sem = sem(&TestPark::real_time());
        let writers_inside = Arc::new(AtomicUsize::new(0));
        let readers_inside = Arc::new(AtomicUsize::new(0));
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let (s, wi, ri, c) = (
                    sem.clone(),
                    writers_inside.clone(),
                    readers_inside.clone(),
                    counter.clone(),
                );
                thread::spawn(move || {
                    let mut writes = 0u64;
                    for i in 0..iters {
                        match (t + i) % 4 {
                            0 | 1 => {
                                s.down_read();
                                ri.fetch_add(1, O::SeqCst);
                                assert_eq!(wi.load(O::SeqCst), 0, "reader with a writer");
                                ri.fetch_sub(1, O::SeqCst);
                                s.up_read();
                            }
                            2 => {
                                s.down_write();
                                assert_eq!(wi.fetch_add(1, O::SeqCst), 0, "two writers");
                                assert_eq!(ri.load(O::SeqCst), 0, "writer with a reader");
                                // Not atomic as a whole: only exclusion keeps it exact.
                                c.store(c.load(O::Relaxed) + 1, O::Relaxed);
                                writes += 1;
                                wi.fetch_sub(1, O::SeqCst);
                                s.up_write();
                            }
                            _ => {
                                s.down_write();
                                assert_eq!(wi.fetch_add(1, O::SeqCst), 0, "two writers");
                                c.store(c.load(O::Relaxed) + 1, O::Relaxed);
                                writes += 1;
                                wi.fetch_sub(1, O::SeqCst);
                                s.downgrade_write();
                                ri.fetch_add(1, O::SeqCst);
                                assert_eq!(wi.load(O::SeqCst), 0, "downgraded with a writer");
                                ri.fetch_sub(1, O::SeqCst);
                                s.up_read();
                            }
                        }
                    }
                    writes
                })
            })
            .collect();
        let writes: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(counter.load(O::Relaxed), writes, "a write was lost");
        assert_eq!(sem.state.load(Ordering::Relaxed), 0);
        assert_eq!(sem.queued(), 0);
    });
}
