//! Host tests: std threads bound to emulated CPUs.

extern crate std;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::Rcu;
use crate::platform::emulated::Emulated;
use crate::testutil::SetOnDrop;

const LIVE: u64 = 0x11fe_11fe_11fe_11fe;
const POISON: u64 = 0xdead_dead_dead_dead;

struct Obj {
    magic: AtomicU64,
    serial: u64,
}

/// Freed objects are poisoned and parked here instead of being freed, so a late reader reads
/// poison (and fails its check) rather than reused memory.
#[derive(Default)]
#[allow(clippy::vec_box)] // the objects must stay where readers saw them
struct Quarantine(Mutex<Vec<Box<Obj>>>);

struct ObjPtr(*mut Obj);
// SAFETY: the pointer is only turned back into a box by the one callback that owns it.
unsafe impl Send for ObjPtr {}

impl Quarantine {
    fn retire(&self, p: ObjPtr) {
        // SAFETY: `p` came from `Box::into_raw` and was unpublished before the grace period that
        // led here; nothing else frees it.
        let b = unsafe { Box::from_raw(p.0) };
        b.magic.store(POISON, Ordering::Relaxed);
        self.0.lock().unwrap().push(b);
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn domain(cpus: usize) -> (Arc<Emulated>, Arc<Rcu<Emulated>>) {
    let p = Arc::new(Emulated::new(1, cpus));
    p.bind_cpu(0);
    let rcu = Arc::new(Rcu::new(p.clone()));
    (p, rcu)
}

#[test]
fn read_sections_nest_and_do_not_block_an_idle_grace_period() {
    let (_p, rcu) = domain(4);
    {
        let g1 = rcu.read_lock();
        let g2 = rcu.read_lock();
        assert_eq!(g1.cpu(), 0);
        drop(g1);
        // Still nested: the word must not read as quiescent.
        assert!(!rcu.cpu_passed(0, rcu.gp_seq.load(Ordering::Relaxed) + 1));
        drop(g2);
    }
    // CPUs 1..3 never ran a reader: they must not stall the grace period.
    rcu.synchronize();
    rcu.synchronize();
}

#[test]
fn a_running_reader_holds_up_synchronize_until_it_leaves() {
    let (p, rcu) = domain(2);
    let entered = AtomicBool::new(false);
    let release = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    // Observations are asserted after the scope: a failed assertion inside it would leave the
    // reader spinning and `synchronize` waiting for it, and the test would hang.
    let (done_early, done_under_reader) = thread::scope(|s| {
        let reader = p.spawn_cpu(s, 1, || {
            let g = rcu.read_lock();
            entered.store(true, Ordering::Release);
            while !release.load(Ordering::Acquire) {
                thread::yield_now();
            }
            // The writer must still be waiting for us.
            let done_under_reader = done.load(Ordering::Acquire);
            drop(g);
            done_under_reader
        });
        let _release = SetOnDrop(&release);
        while !entered.load(Ordering::Acquire) && !reader.is_finished() {
            thread::yield_now();
        }
        s.spawn(|| {
            p.bind_cpu(0);
            rcu.synchronize();
            done.store(true, Ordering::Release);
        });
        thread::sleep(Duration::from_millis(30));
        let done_early = done.load(Ordering::Acquire);
        release.store(true, Ordering::Release);
        (done_early, reader.join())
    });
    let done_under_reader = done_under_reader.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(!done_early, "synchronize returned under a running reader");
    assert!(!done_under_reader, "grace period ended under a reader");
    assert!(done.load(Ordering::Acquire));
}

#[test]
fn call_rcu_waits_for_readers_and_runs_at_a_quiescent_state() {
    let (p, rcu) = domain(2);
    let ran = Arc::new(AtomicBool::new(false));
    let entered = AtomicBool::new(false);
    let release = AtomicBool::new(false);
    // Asserted after the scope, once the reader has left (see above).
    let (ran_under_reader, pending_under_reader) = thread::scope(|s| {
        let reader = p.spawn_cpu(s, 1, || {
            let _g = rcu.read_lock();
            entered.store(true, Ordering::Release);
            while !release.load(Ordering::Acquire) {
                thread::yield_now();
            }
        });
        let _release = SetOnDrop(&release);
        while !entered.load(Ordering::Acquire) && !reader.is_finished() {
            thread::yield_now();
        }
        let r = ran.clone();
        rcu.call_rcu(Box::new(move || r.store(true, Ordering::Release)));
        for _ in 0..100 {
            rcu.quiescent_state();
        }
        (ran.load(Ordering::Acquire), rcu.pending_callbacks())
    });
    assert!(!ran_under_reader, "callback ran under a reader");
    assert_eq!(pending_under_reader, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ran.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "callback never ran");
        rcu.quiescent_state();
        thread::yield_now();
    }
    assert_eq!(rcu.pending_callbacks(), 0);
}

/// Readers keep a reference across the writer's replace and deferred free, and check that what
/// they hold is never poisoned; both `call_rcu` and `synchronize` paths are exercised.
#[test]
fn readers_never_see_freed_objects() {
    const READERS: usize = 3;
    const REPLACES: u64 = 4_000;
    let (p, rcu) = domain(READERS + 1);
    let quarantine = Arc::new(Quarantine::default());
    let first = Box::into_raw(Box::new(Obj {
        magic: AtomicU64::new(LIVE),
        serial: 0,
    }));
    let slot = AtomicPtr::new(first);
    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    thread::scope(|s| {
        for cpu in 1..=READERS {
            let (rcu, slot, stop, reads) = (&rcu, &slot, &stop, &reads);
            p.spawn_cpu(s, cpu, move || {
                // A reader that fails stops the test instead of leaving the writer waiting.
                let _stop = SetOnDrop(stop);
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu.read_lock();
                    // SAFETY: under the guard, the published object is not freed.
                    let obj = unsafe { &*slot.load(Ordering::Acquire) };
                    assert_eq!(obj.magic.load(Ordering::Relaxed), LIVE);
                    assert!(obj.serial >= last, "went back in time");
                    last = obj.serial;
                    // Hold it across (very likely) a replace.
                    for _ in 0..50 {
                        core::hint::spin_loop();
                    }
                    thread::yield_now();
                    assert_eq!(
                        obj.magic.load(Ordering::Relaxed),
                        LIVE,
                        "reader saw freed memory"
                    );
                    drop(g);
                    reads.fetch_add(1, Ordering::Relaxed);
                    rcu.quiescent_state();
                }
            });
        }
        // Released however this thread leaves the scope, so that a failure fails the test
        // rather than leaving the readers spinning.
        let stop_readers = SetOnDrop(&stop);
        // Start only once readers run, so that the replaces overlap their sections.
        while reads.load(Ordering::Relaxed) == 0 && !stop.load(Ordering::Relaxed) {
            thread::yield_now();
        }
        for serial in 1..=REPLACES {
            let new = Box::into_raw(Box::new(Obj {
                magic: AtomicU64::new(LIVE),
                serial,
            }));
            let old = ObjPtr(slot.swap(new, Ordering::AcqRel));
            if serial % 8 == 0 {
                rcu.synchronize();
                quarantine.retire(old);
            } else {
                let q = quarantine.clone();
                rcu.call_rcu(Box::new(move || q.retire(old)));
            }
            rcu.quiescent_state();
        }
        drop(stop_readers);
    });
    rcu.barrier();
    assert_eq!(quarantine.len() as u64, REPLACES);
    assert!(reads.load(Ordering::Relaxed) > 0);
    // SAFETY: the last object is still published and all readers are gone.
    drop(unsafe { Box::from_raw(slot.load(Ordering::Relaxed)) });
}

/// Readers entering and leaving sections back to back do not starve `synchronize`. Counted
/// against a generous deadline rather than as a rate: with more busy threads than host cores a
/// reader preempted by the host inside its section holds a grace period for a whole host
/// time slice, which a rate threshold (it was 10 in 300 ms) turns into a failure under load.
#[test]
fn grace_periods_complete_under_read_load() {
    const READERS: usize = 3;
    const GRACE_PERIODS: usize = 50;
    let (p, rcu) = domain(READERS + 1);
    let stop = AtomicBool::new(false);
    let mut gps = 0;
    thread::scope(|s| {
        for cpu in 1..=READERS {
            let (rcu, stop) = (&rcu, &stop);
            p.spawn_cpu(s, cpu, move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu.read_lock();
                    let inner = rcu.read_lock();
                    drop(inner);
                    drop(g);
                }
            });
        }
        let stop_readers = SetOnDrop(&stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gps < GRACE_PERIODS && Instant::now() < deadline {
            rcu.synchronize();
            gps += 1;
        }
        drop(stop_readers);
    });
    assert_eq!(gps, GRACE_PERIODS, "only {gps} grace periods in 10 s");
}

#[test]
fn dropping_the_domain_runs_pending_callbacks() {
    let (_p, rcu) = domain(1);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..5 {
        let r = ran.clone();
        rcu.call_rcu(Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }));
    }
    drop(rcu);
    assert_eq!(ran.load(Ordering::Relaxed), 5);
}

/// `barrier` waits for callbacks that another CPU has already taken off the queue and is still
/// running: `Memory::quiesce` relies on it to count free frames exactly.
#[test]
fn barrier_waits_for_callbacks_another_cpu_is_running() {
    let p = Arc::new(Emulated::new(1, 2));
    let rcu = Rcu::new(p.clone());
    let started = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    thread::scope(|s| {
        let (rcu, started2, done2) = (&rcu, started.clone(), done.clone());
        p.spawn_cpu(s, 1, move || {
            let started3 = started2.clone();
            rcu.call_rcu(Box::new(move || {
                started3.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
                done2.store(true, Ordering::SeqCst);
            }));
            // No reader anywhere: the grace period is over, so this runs the callback.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !started2.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the callback never ran");
                rcu.quiescent_state();
            }
        });
        p.bind_cpu(0);
        // Bounded like the loop above, so that neither thread waits for the other forever.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the callback never started");
            thread::yield_now();
        }
        rcu.barrier();
        assert!(
            done.load(Ordering::SeqCst),
            "barrier returned while a callback was still running"
        );
    });
}

/// One busy thread per CPU maps, touches and unmaps in its own address space and never passes
/// a quiescent state (no context switch, no callback thread, no tick): `throttle` at the end of
/// each operation must still keep the backlog, and the frames it holds, bounded.
#[test]
fn the_backlog_stays_bounded_with_busy_cpus_that_never_switch() {
    use crate::platform::mmu;
    use crate::testutil::{Env, PAGE, fixed};
    use crate::vma::Prot;

    const CPUS: usize = 4;
    const ROUNDS: usize = 2_000;
    const SLOT: u64 = 0x4000_0000;
    let env = Env::new(16, CPUS);
    let peak = AtomicUsize::new(0);
    let least_free = AtomicUsize::new(usize::MAX);
    thread::scope(|s| {
        for cpu in 0..CPUS {
            let (env, peak, least_free) = (&env, &peak, &least_free);
            env.p.spawn_cpu(s, cpu, move || {
                let mm = env.mm();
                let rcu = env.mem.rcu();
                for round in 0..ROUNDS {
                    mm.mmap(SLOT, 2 * PAGE, Prot::READ | Prot::WRITE, fixed())
                        .unwrap();
                    // A page table for the slot, emptied and queued by the munmap.
                    mmu::store(&mm, SLOT, round as u64, true).unwrap();
                    mm.munmap(SLOT, 2 * PAGE).unwrap();
                    peak.fetch_max(rcu.pending_callbacks(), Ordering::Relaxed);
                    least_free.fetch_min(env.p.free_frames(), Ordering::Relaxed);
                }
            });
        }
    });
    let peak = peak.load(Ordering::Relaxed);
    // Each operation queues at most a few callbacks before its own `throttle` runs.
    assert!(
        peak <= super::BACKLOG_LIMIT + 8 * CPUS,
        "backlog reached {peak} callbacks"
    );
    // Every round queues a page table: without reclamation they alone would be ROUNDS * CPUS.
    let held = env.p.total_frames() - least_free.load(Ordering::Relaxed);
    assert!(
        held < 2 * super::BACKLOG_LIMIT,
        "{held} frames in use at the worst"
    );
    env.assert_baseline();
}

/// Grace periods advanced only by a "tick" thread and callbacks run only by the callback
/// thread: no one else calls `quiescent_state`, `throttle` or `barrier` until the end. Every
/// retired object is freed, and never while a reader still holds it.
#[test]
fn the_callback_thread_runs_callbacks_the_tick_finds_due() {
    const READERS: usize = 2;
    const REPLACES: u64 = 2_000;
    // CPU 0 writes, then readers, the tick, the callback thread.
    let (tick_cpu, thread_cpu) = (READERS + 1, READERS + 2);
    let (p, rcu) = domain(READERS + 3);
    let quarantine = Arc::new(Quarantine::default());
    let first = Box::into_raw(Box::new(Obj {
        magic: AtomicU64::new(LIVE),
        serial: 0,
    }));
    let slot = AtomicPtr::new(first);
    let stop_readers = AtomicBool::new(false);
    let stop_tick = AtomicBool::new(false);
    let stop_thread = AtomicBool::new(false);
    thread::scope(|s| {
        for cpu in 1..=READERS {
            let (rcu, slot, stop) = (&rcu, &slot, &stop_readers);
            p.spawn_cpu(s, cpu, move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu.read_lock();
                    // SAFETY: under the guard, the published object is not freed.
                    let obj = unsafe { &*slot.load(Ordering::Acquire) };
                    thread::yield_now();
                    assert_eq!(
                        obj.magic.load(Ordering::Relaxed),
                        LIVE,
                        "reader saw freed memory"
                    );
                    drop(g);
                }
            });
        }
        let (r, stop) = (&rcu, &stop_tick);
        p.spawn_cpu(s, tick_cpu, move || {
            while !stop.load(Ordering::Relaxed) {
                r.advance();
                thread::sleep(Duration::from_micros(200));
            }
        });
        let (r, stop) = (&rcu, &stop_thread);
        p.spawn_cpu(s, thread_cpu, move || {
            r.callback_thread(|| stop.load(Ordering::Acquire))
        });
        for serial in 1..=REPLACES {
            let new = Box::into_raw(Box::new(Obj {
                magic: AtomicU64::new(LIVE),
                serial,
            }));
            let old = ObjPtr(slot.swap(new, Ordering::AcqRel));
            let q = quarantine.clone();
            rcu.call_rcu(Box::new(move || q.retire(old)));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while (quarantine.len() as u64) < REPLACES {
            assert!(
                Instant::now() < deadline,
                "only {} of {REPLACES} callbacks ran",
                quarantine.len()
            );
            thread::sleep(Duration::from_millis(1));
        }
        stop_readers.store(true, Ordering::Relaxed);
        stop_tick.store(true, Ordering::Relaxed);
        stop_thread.store(true, Ordering::Release);
        rcu.wake_callback_thread();
    });
    assert_eq!(rcu.pending_callbacks(), 0);
    // SAFETY: the last object is still published and all readers are gone.
    drop(unsafe { Box::from_raw(slot.load(Ordering::Relaxed)) });
}
