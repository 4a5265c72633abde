//! SMP and threads, run on 1, 2 and 8 CPUs: every CPU online, threads spread and counted
//! exactly, preemption, IPIs, TLB shootdowns that really invalidate, RCU grace periods with every
//! CPU busy, and locks under contention.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::arch::percpu::{PERCPU, cpu_id, online_count, preempt_disable, preempt_enable};
use kernel::arch::{apic, tlb};
use kernel::memory::{FRAMES, map_kernel_page, phys_to_virt, unmap_kernel_page};
use kernel::sched::{self, futex_wait, futex_wake, sleep_ns, spawn, spawn_on};
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags};

kernel::test_kernel!();

/// Spins until `cond` holds, failing the test after `secs` seconds.
fn wait_for(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let deadline = apic::now_ns() + secs * 1_000_000_000;
    while !cond() {
        assert!(apic::now_ns() < deadline, "timed out waiting for {what}");
        core::hint::spin_loop();
    }
}

#[test_case]
fn every_cpu_in_the_madt_is_online() {
    let boot = kernel::boot();
    let listed = boot.cpus.as_ref().expect("MADT").apic_ids.len();
    // The runner checks this line against the -smp it passed.
    kernel::serial_println!("smp: {} CPUs online", online_count());
    assert_eq!(
        online_count(),
        listed,
        "failed to start: {:?}",
        boot.smp.failed
    );
    for cpu in PERCPU.iter().take(listed) {
        assert!(cpu.online.load(Ordering::Acquire));
    }
}

#[test_case]
fn sixty_four_threads_count_exactly() {
    const THREADS: usize = 64;
    const ADDS: u64 = 5_000;
    let shared = Arc::new(AtomicU64::new(0));
    let cpus_used = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let shared = shared.clone();
            let cpus_used = cpus_used.clone();
            spawn(alloc::format!("adder/{i}"), move || {
                let mut mine = 0i64;
                for _ in 0..ADDS {
                    mine += 1;
                    shared.fetch_add(1, Ordering::Relaxed);
                    cpus_used.fetch_or(1 << cpu_id(), Ordering::Relaxed);
                }
                mine
            })
            .expect("spawn")
        })
        .collect();
    let per_thread: Vec<i64> = handles.into_iter().map(|h| h.join()).collect();
    assert!(per_thread.iter().all(|&n| n == ADDS as i64));
    assert_eq!(shared.load(Ordering::Relaxed), THREADS as u64 * ADDS);
    // Spreading: with several CPUs the threads did not all run on one (how many CPUs took part
    // depends on timing: idle CPUs steal, and halt when they find nothing).
    let used = cpus_used.load(Ordering::Relaxed).count_ones() as usize;
    assert!(
        used >= online_count().min(2),
        "threads ran on {used} of {} CPUs",
        online_count()
    );
}

#[test_case]
fn a_spinning_thread_does_not_starve_others() {
    static STOP: AtomicBool = AtomicBool::new(false);
    static STARTED: AtomicU64 = AtomicU64::new(0);
    // Twice as many never-yielding threads as CPUs: all of them, and this thread, only get to
    // run if the timer preempts.
    let hogs = 2 * online_count();
    let handles: Vec<_> = (0..hogs)
        .map(|_| {
            spawn("hog", || {
                STARTED.fetch_add(1, Ordering::SeqCst);
                while !STOP.load(Ordering::Relaxed) {
                    core::hint::spin_loop();
                }
                0
            })
            .expect("spawn")
        })
        .collect();
    wait_for("every hog to start", 20, || {
        STARTED.load(Ordering::SeqCst) == hogs as u64
    });
    STOP.store(true, Ordering::SeqCst);
    handles.into_iter().for_each(|h| assert_eq!(h.join(), 0));
}

#[test_case]
fn ipis_reach_every_cpu() {
    use apic::vector::CALL;
    preempt_disable();
    let me = cpu_id();
    let others: Vec<usize> = (0..online_count()).filter(|&c| c != me).collect();
    let calls = |c: usize| PERCPU[c].ipi_calls.load(Ordering::SeqCst);
    // One at a time.
    for &c in &others {
        let before = calls(c);
        apic::send_ipi(PERCPU[c].apic_id.load(Ordering::Relaxed), CALL);
        wait_for("an IPI to one CPU", 5, || calls(c) > before);
    }
    // To a set: every other CPU of the others.
    let set: Vec<usize> = others.iter().copied().step_by(2).collect();
    let before: Vec<u64> = set.iter().map(|&c| calls(c)).collect();
    for &c in &set {
        apic::send_ipi(PERCPU[c].apic_id.load(Ordering::Relaxed), CALL);
    }
    for (i, &c) in set.iter().enumerate() {
        wait_for("an IPI to a set", 5, || calls(c) > before[i]);
    }
    // To all others at once.
    let before: Vec<u64> = others.iter().map(|&c| calls(c)).collect();
    let mine = calls(me);
    apic::send_ipi_all_but_self(CALL);
    for (i, &c) in others.iter().enumerate() {
        wait_for("a broadcast IPI", 5, || calls(c) > before[i]);
    }
    assert_eq!(calls(me), mine, "the broadcast excludes the sender");
    preempt_enable();
}

#[test_case]
fn a_shootdown_invalidates_every_cpus_translation() {
    const VA: u64 = 0xffff_d000_0000_0000;
    let page = Page::containing_address(VirtAddr::new(VA));
    let frames = [
        FRAMES.alloc().expect("frame"),
        FRAMES.alloc().expect("frame"),
    ];
    for (i, f) in frames.iter().enumerate() {
        // SAFETY: fresh frames, reached through the physical map.
        unsafe {
            phys_to_virt(f.start_address())
                .as_mut_ptr::<u64>()
                .write(i as u64 + 1)
        };
    }
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    // SAFETY: VA is in an otherwise unused slot of the upper half.
    unsafe { map_kernel_page(page, frames[0], flags) }.expect("map");
    static READY: AtomicU64 = AtomicU64::new(0);
    static REMAPPED: AtomicBool = AtomicBool::new(false);
    READY.store(0, Ordering::SeqCst);
    REMAPPED.store(false, Ordering::SeqCst);
    let n = online_count();
    let readers: Vec<_> = (0..n)
        .map(|cpu| {
            spawn_on(cpu, "tlb-reader", move || {
                let p = VA as *const u64;
                // SAFETY: VA is mapped for the whole test.
                let first = unsafe { p.read_volatile() };
                READY.fetch_add(1, Ordering::SeqCst);
                while !REMAPPED.load(Ordering::SeqCst) {
                    core::hint::spin_loop();
                }
                // SAFETY: as above.
                let second = unsafe { p.read_volatile() };
                (first * 10 + second) as i64
            })
            .expect("spawn")
        })
        .collect();
    wait_for("readers to cache the old translation", 20, || {
        READY.load(Ordering::SeqCst) == n as u64
    });
    // SAFETY: the readers only read VA, and it is remapped to a frame of the same kind.
    let old = unsafe { unmap_kernel_page(page) }.expect("mapped");
    // SAFETY: as above.
    unsafe { map_kernel_page(page, frames[1], flags) }.expect("remap");
    tlb::shootdown(u64::MAX, VirtAddr::new(VA), 1);
    REMAPPED.store(true, Ordering::SeqCst);
    for (cpu, r) in readers.into_iter().enumerate() {
        assert_eq!(r.join(), 12, "CPU {cpu} read through a stale translation");
    }
    // SAFETY: nothing uses VA any more.
    let last = unsafe { unmap_kernel_page(page) }.expect("mapped");
    tlb::shootdown(u64::MAX, VirtAddr::new(VA), 1);
    // SAFETY: both frames are unmapped everywhere.
    unsafe {
        FRAMES.free(old);
        FRAMES.free(last);
    }
}

#[test_case]
fn rcu_grace_periods_complete_with_every_cpu_busy() {
    static STOP: AtomicBool = AtomicBool::new(false);
    static SECTIONS: AtomicU64 = AtomicU64::new(0);
    STOP.store(false, Ordering::SeqCst);
    let rcu = kernel::platform::rcu();
    let busy: Vec<_> = (0..online_count())
        .map(|cpu| {
            spawn_on(cpu, "rcu-reader", move || {
                let rcu = kernel::platform::rcu();
                while !STOP.load(Ordering::Relaxed) {
                    let _g = rcu.read_lock();
                    SECTIONS.fetch_add(1, Ordering::Relaxed);
                }
                0
            })
            .expect("spawn")
        })
        .collect();
    wait_for("readers to start", 20, || {
        SECTIONS.load(Ordering::Relaxed) > 100
    });
    let freed = Arc::new(AtomicBool::new(false));
    let object = Box::new([0xa5u8; 64]);
    let flag = freed.clone();
    rcu.call_rcu(Box::new(move || {
        assert!(
            object.iter().all(|&b| b == 0xa5),
            "object changed before its grace period ended"
        );
        drop(object);
        flag.store(true, Ordering::SeqCst);
    }));
    for _ in 0..3 {
        rcu.synchronize();
    }
    // The tick notices the grace period's end and the callback thread runs the callback.
    wait_for("the deferred free", 20, || {
        sched::yield_now();
        freed.load(Ordering::SeqCst)
    });
    STOP.store(true, Ordering::SeqCst);
    busy.into_iter().for_each(|h| assert_eq!(h.join(), 0));
}

#[test_case]
fn a_spinlock_under_contention_loses_no_update() {
    struct Pair {
        a: u64,
        b: u64,
    }
    const THREADS: usize = 16;
    const ROUNDS: u64 = 2_000;
    let lock = Arc::new(spin::Mutex::new(Pair { a: 0, b: 0 }));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let lock = lock.clone();
            spawn("locker", move || {
                for _ in 0..ROUNDS {
                    let mut p = lock.lock();
                    assert_eq!(p.a, p.b, "two holders at once");
                    p.a += 1;
                    core::hint::spin_loop();
                    p.b += 1;
                }
                0
            })
            .expect("spawn")
        })
        .collect();
    handles.into_iter().for_each(|h| assert_eq!(h.join(), 0));
    let p = lock.lock();
    assert_eq!(
        (p.a, p.b),
        (THREADS as u64 * ROUNDS, THREADS as u64 * ROUNDS)
    );
}

#[test_case]
fn blocked_threads_are_woken_without_losing_a_wakeup() {
    // Two threads hand a token back and forth through futex words: every handoff blocks one of
    // them, so a lost wake-up hangs the test (and the runner's timeout fails it).
    static TURN: AtomicU32 = AtomicU32::new(0);
    const ROUNDS: u32 = 2_000;
    TURN.store(0, Ordering::SeqCst);
    let player = |me: u32| {
        move || {
            for _ in 0..ROUNDS {
                loop {
                    let t = TURN.load(Ordering::SeqCst);
                    if t % 2 == me {
                        break;
                    }
                    futex_wait(&TURN, t);
                }
                TURN.fetch_add(1, Ordering::SeqCst);
                futex_wake(&TURN, 1);
            }
            0
        }
    };
    let a = spawn("ping", player(0)).expect("spawn");
    let b = spawn("pong", player(1)).expect("spawn");
    assert_eq!(a.join() + b.join(), 0);
    assert_eq!(TURN.load(Ordering::SeqCst), 2 * ROUNDS);
}

#[test_case]
fn sleep_lasts_at_least_its_duration() {
    let t0 = apic::now_ns();
    sleep_ns(20_000_000);
    assert!(apic::now_ns() - t0 >= 20_000_000);
}

#[test_case]
fn the_mmap_rwsem_excludes_writers_and_loses_no_update() {
    use core::cell::UnsafeCell;
    use kernel::platform::KernelPlatform;
    use mm::sync::RwSemaphore;

    /// Two counters a writer moves together; a reader must never see them apart.
    struct Guarded {
        sem: RwSemaphore<KernelPlatform>,
        pair: UnsafeCell<(u64, u64)>,
    }
    // SAFETY: `pair` is written only under `sem` held for write and read under it held for read.
    unsafe impl Sync for Guarded {}
    // SAFETY: as above; the semaphore is Send.
    unsafe impl Send for Guarded {}

    const WRITERS: usize = 4;
    const READERS: usize = 12;
    const ROUNDS: u64 = 500;
    let g = Arc::new(Guarded {
        sem: RwSemaphore::new(Arc::new(KernelPlatform)),
        pair: UnsafeCell::new((0, 0)),
    });
    let writers = (0..WRITERS).map(|_| {
        let g = g.clone();
        spawn("rwsem-writer", move || {
            for _ in 0..ROUNDS {
                g.sem.down_write();
                // SAFETY: write-locked.
                let p = unsafe { &mut *g.pair.get() };
                p.0 += 1;
                // Give a racing reader or writer time to show up inside.
                for _ in 0..50 {
                    core::hint::spin_loop();
                }
                p.1 += 1;
                g.sem.up_write();
            }
            0
        })
        .expect("spawn")
    });
    let writers: Vec<_> = writers.collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let g = g.clone();
            spawn("rwsem-reader", move || {
                let mut seen = 0i64;
                for _ in 0..ROUNDS {
                    g.sem.down_read();
                    // SAFETY: read-locked: no writer inside.
                    let (a, b) = unsafe { *g.pair.get() };
                    g.sem.up_read();
                    assert_eq!(a, b, "a reader saw a writer's half-done update");
                    seen = seen.max(a as i64);
                }
                seen
            })
            .expect("spawn")
        })
        .collect();
    for w in writers {
        assert_eq!(w.join(), 0);
    }
    for r in readers {
        assert!(r.join() <= (WRITERS as u64 * ROUNDS) as i64);
    }
    g.sem.down_read();
    // SAFETY: read-locked.
    let (a, b) = unsafe { *g.pair.get() };
    g.sem.up_read();
    assert_eq!((a, b), (WRITERS as u64 * ROUNDS, WRITERS as u64 * ROUNDS));
}

#[test_case]
fn preemption_is_recorded_as_disabled_by_the_real_caller() {
    use kernel::arch::percpu::{NoPreempt, PreemptOwner};
    use mm::sync::{LockClass, SpinLock};

    let owner = || PERCPU[cpu_id()].preempt_owner();
    let (line, ()) = (line!(), preempt_disable());
    match owner() {
        PreemptOwner::At(at) => assert_eq!((at.file(), at.line()), (file!(), line)),
        other => panic!("preempt_disable recorded {other:?}"),
    }
    // Nested: the owner stays the outermost caller.
    let np = NoPreempt::new();
    assert!(matches!(owner(), PreemptOwner::At(at) if at.line() == line));
    drop(np);
    preempt_enable();

    let (line, np) = (line!(), NoPreempt::new());
    assert!(
        matches!(owner(), PreemptOwner::At(at) if (at.file(), at.line()) == (file!(), line)),
        "NoPreempt::new recorded {:?}",
        owner()
    );
    drop(np);

    // `mm`'s spinlocks reach the kernel through a plain `fn()` hook: the owner is where the hook
    // was called from, as kernel code addresses (the report prints them for addr2line).
    let lock = SpinLock::new(LockClass::Leaf, 0u64);
    let guard = lock.lock();
    match owner() {
        PreemptOwner::Code(code) => {
            assert!(
                code[0] >= kernel::KERNEL_BASE,
                "not a kernel code address: {code:x?}"
            );
        }
        other => panic!("an mm spinlock recorded {other:?}"),
    }
    drop(guard);
}

/// The CPU of the last online CPU, and one other if there is one.
fn two_cpus() -> (usize, Option<usize>) {
    let n = online_count();
    (n - 1, (n > 1).then_some(0))
}

/// Rounds of the wake-up latency tests, and how many may see a tick between the wake-up and
/// the woken thread running: a tick can land in the few instructions between the two (it then
/// runs the woken thread itself). Without prompt wake-ups every round sees one.
const WAKE_ROUNDS: u64 = 20;
const WAKE_ROUNDS_WITH_A_TICK: u64 = 5;

#[test_case]
fn a_thread_woken_on_its_cpu_runs_before_the_next_tick() {
    // A waker and a sleeper pinned to one CPU: the waker keeps running after the wake-up, so
    // the sleeper gets the CPU only if the wake-up preempts the waker (or a tick does).
    static WORD: AtomicU32 = AtomicU32::new(0);
    static RAN_AT_TICK: AtomicU64 = AtomicU64::new(0);
    static RAN: AtomicU64 = AtomicU64::new(0);
    WORD.store(0, Ordering::SeqCst);
    RAN.store(0, Ordering::SeqCst);
    let (cpu, _) = two_cpus();
    let ticks = move || PERCPU[cpu].ticks.load(Ordering::SeqCst);
    let sleeper = spawn_on(cpu, "sleeper", move || {
        for round in 1..=WAKE_ROUNDS {
            while WORD.load(Ordering::SeqCst) < round as u32 {
                futex_wait(&WORD, round as u32 - 1);
            }
            RAN_AT_TICK.store(ticks(), Ordering::SeqCst);
            RAN.store(round, Ordering::SeqCst);
        }
        0
    })
    .expect("spawn");
    let waker = spawn_on(cpu, "waker", move || {
        let mut late = 0;
        for round in 1..=WAKE_ROUNDS {
            // Lets the sleeper block (it is the only other thread on this CPU).
            sleep_ns(2_000_000);
            let at = ticks();
            WORD.store(round as u32, Ordering::SeqCst);
            futex_wake(&WORD, 1);
            // Busy: only a preemption lets the sleeper run.
            wait_for("the woken thread to run", 5, || {
                RAN.load(Ordering::SeqCst) == round
            });
            late += (RAN_AT_TICK.load(Ordering::SeqCst) != at) as i64;
        }
        late
    })
    .expect("spawn");
    let late = waker.join();
    assert_eq!(sleeper.join(), 0);
    kernel::serial_println!("{late} of {WAKE_ROUNDS} woken threads saw a tick before they ran");
    assert!(
        late <= WAKE_ROUNDS_WITH_A_TICK as i64,
        "{late} of {WAKE_ROUNDS} woken threads waited for a tick"
    );
}

#[test_case]
fn a_wake_up_preempts_a_busy_cpu_when_it_enables_preemption() {
    // A thread on CPU `busy` disables preemption while a thread on another CPU wakes a sleeper
    // pinned to `busy`: the reschedule IPI finds preemption disabled, and must not be lost.
    static WORD: AtomicU32 = AtomicU32::new(0);
    static IN_SECTION: AtomicU64 = AtomicU64::new(0);
    static WOKEN: AtomicU64 = AtomicU64::new(0);
    static RAN_AT_TICK: AtomicU64 = AtomicU64::new(0);
    static RAN: AtomicU64 = AtomicU64::new(0);
    let (busy, Some(other)) = two_cpus() else {
        kernel::serial_println!("(one CPU: nothing to test)");
        return;
    };
    for a in [&IN_SECTION, &WOKEN, &RAN] {
        a.store(0, Ordering::SeqCst);
    }
    WORD.store(0, Ordering::SeqCst);
    let ticks = move || PERCPU[busy].ticks.load(Ordering::SeqCst);
    let sleeper = spawn_on(busy, "sleeper", move || {
        for round in 1..=WAKE_ROUNDS {
            while WORD.load(Ordering::SeqCst) < round as u32 {
                futex_wait(&WORD, round as u32 - 1);
            }
            RAN_AT_TICK.store(ticks(), Ordering::SeqCst);
            RAN.store(round, Ordering::SeqCst);
        }
        0
    })
    .expect("spawn");
    let section = spawn_on(busy, "section", move || {
        let mut late = 0;
        for round in 1..=WAKE_ROUNDS {
            // Lets the sleeper block (it is the only other thread on this CPU).
            sleep_ns(2_000_000);
            preempt_disable();
            IN_SECTION.store(round, Ordering::SeqCst);
            wait_for("the wake-up", 5, || WOKEN.load(Ordering::SeqCst) == round);
            let at = ticks();
            preempt_enable();
            wait_for("the woken thread to run", 5, || {
                RAN.load(Ordering::SeqCst) == round
            });
            late += (RAN_AT_TICK.load(Ordering::SeqCst) != at) as i64;
        }
        late
    })
    .expect("spawn");
    let waker = spawn_on(other, "waker", move || {
        for round in 1..=WAKE_ROUNDS {
            wait_for("the section", 5, || {
                IN_SECTION.load(Ordering::SeqCst) == round
            });
            WORD.store(round as u32, Ordering::SeqCst);
            futex_wake(&WORD, 1);
            WOKEN.store(round, Ordering::SeqCst);
        }
        0
    })
    .expect("spawn");
    assert_eq!(waker.join(), 0);
    let late = section.join();
    assert_eq!(sleeper.join(), 0);
    kernel::serial_println!("{late} of {WAKE_ROUNDS} woken threads saw a tick before they ran");
    assert!(
        late <= WAKE_ROUNDS_WITH_A_TICK as i64,
        "{late} of {WAKE_ROUNDS} woken threads waited for a tick"
    );
}
