//! CPU affinity, run on 1, 2 and 8 CPUs: a thread confined to some CPUs runs only there, from
//! the moment its own `set_affinity` returns, after a wake-up, and soon after another thread
//! changed it while it ran; two threads moving themselves across each other's CPUs at once do
//! not deadlock; masks without an online CPU are refused.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use kernel::arch::apic::now_ns;
use kernel::arch::percpu::{cpu_id, online_count};
use kernel::sched::{self, AffinityError, futex_wait, futex_wake, set_affinity, spawn};

kernel::test_kernel!();

/// Spins (preemptible) for `ms` milliseconds, calling `check` all along.
fn spin_for(ms: u64, mut check: impl FnMut()) {
    let end = now_ns() + ms * 1_000_000;
    while now_ns() < end {
        check();
        core::hint::spin_loop();
    }
}

#[test_case]
fn a_thread_that_confines_itself_runs_only_there() {
    let n = online_count();
    let t = spawn("confined", move || {
        let me = sched::current();
        for round in 0..3 {
            for cpu in 0..n {
                set_affinity(&me, 1 << cpu).expect("an online CPU");
                assert_eq!(
                    cpu_id(),
                    cpu,
                    "round {round}: still elsewhere after the call"
                );
                // Through ticks, yields and sleeps it stays there.
                spin_for(25, || assert_eq!(cpu_id(), cpu));
                for _ in 0..20 {
                    sched::yield_now();
                    assert_eq!(cpu_id(), cpu);
                }
                sched::sleep_ns(2_000_000);
                assert_eq!(cpu_id(), cpu, "woken elsewhere");
                assert_eq!(me.allowed(), 1 << cpu);
            }
        }
        // Back to every CPU.
        set_affinity(&me, sched::ALL_CPUS).expect("all CPUs");
        assert_eq!(me.allowed(), sched::online_cpus());
        0
    })
    .expect("spawn");
    assert_eq!(t.join(), 0);
}

#[test_case]
fn two_threads_moving_across_each_other_do_not_deadlock() {
    // Each moves itself to the CPU the other one is leaving, over and over: both CPUs switch
    // away from a thread that must go to the other at the same time.
    const ROUNDS: usize = 400;
    let n = online_count();
    let mover = |offset: usize| {
        move || {
            let me = sched::current();
            for i in 0..ROUNDS {
                let cpu = (i + offset) % n;
                set_affinity(&me, 1 << cpu).expect("an online CPU");
                assert_eq!(cpu_id(), cpu);
            }
            0
        }
    };
    let a = spawn("mover-a", mover(0)).expect("spawn");
    let b = spawn("mover-b", mover(1)).expect("spawn");
    assert_eq!(a.join(), 0);
    assert_eq!(b.join(), 0);
}

#[test_case]
fn another_threads_change_takes_effect_while_it_runs_and_blocks() {
    static STOP: AtomicBool = AtomicBool::new(false);
    static WHERE: AtomicUsize = AtomicUsize::new(usize::MAX);
    static WORD: AtomicU32 = AtomicU32::new(0);
    STOP.store(false, Ordering::SeqCst);
    WORD.store(0, Ordering::SeqCst);
    let n = online_count();
    let target = n - 1;
    let spinner = spawn("spinner", || {
        while !STOP.load(Ordering::SeqCst) {
            WHERE.store(cpu_id(), Ordering::SeqCst);
        }
        // Blocks; is moved while blocked; reports where it woke up.
        while WORD.load(Ordering::SeqCst) == 0 {
            futex_wait(&WORD, 0);
        }
        cpu_id() as i64
    })
    .expect("spawn");
    let t = spinner.thread().clone();
    set_affinity(&t, 1 << target).expect("an online CPU");
    // It moves at its CPU's next reschedule, asked for at once: well within a second.
    let deadline = now_ns() + 1_000_000_000;
    while WHERE.load(Ordering::SeqCst) != target {
        assert!(now_ns() < deadline, "the running thread never moved");
        sched::yield_now();
    }
    // And stays.
    WHERE.store(usize::MAX, Ordering::SeqCst);
    spin_for(50, || {
        let w = WHERE.load(Ordering::SeqCst);
        assert!(w == usize::MAX || w == target, "ran on CPU {w}");
    });
    STOP.store(true, Ordering::SeqCst);
    // Once it is blocked, move it to CPU 0 and wake it.
    let deadline = now_ns() + 1_000_000_000;
    while !t.is_blocked() {
        assert!(now_ns() < deadline, "the thread never blocked");
        sched::sleep_ns(1_000_000);
    }
    set_affinity(&t, 1).expect("CPU 0");
    WORD.store(1, Ordering::SeqCst);
    futex_wake(&WORD, 1);
    assert_eq!(spinner.join(), 0, "woken on the wrong CPU");
}

#[test_case]
fn masks_without_an_online_cpu_are_refused() {
    let me = sched::current();
    let before = me.allowed();
    assert_eq!(set_affinity(&me, 0), Err(AffinityError::NoOnlineCpu));
    if online_count() < 64 {
        assert_eq!(set_affinity(&me, 1 << 63), Err(AffinityError::NoOnlineCpu));
    }
    assert_eq!(me.allowed(), before, "a refused mask changes nothing");
}
