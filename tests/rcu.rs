//! RCU callbacks on real CPUs, run on 1, 2 and 8 CPUs: a thread preempted while it queues a
//! callback cannot hang its CPU, callbacks run in thread context, and CPUs that never switch
//! threads still get their garbage freed with the heap and the backlog bounded.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kernel::arch::apic::now_ns;
use kernel::arch::percpu::{online_count, this_cpu};
use kernel::memory::heap;
use kernel::platform::rcu;
use kernel::process::Process;
use kernel::sched::{self, JoinHandle, sleep_ns};
use mm::ops::MapFlags;
use mm::rcu::BACKLOG_LIMIT;
use x86_64::instructions::interrupts;

kernel::test_kernel!();

mod common;
use common::{ANON, PAGE, RW, free_frames};

const FIXED: MapFlags = ANON.union(MapFlags::FIXED);
/// Where a churning thread maps: a 2 MiB slot of its own process, so every munmap empties the
/// slot's PTE table and frees it through `call_rcu` in `ZapFlush::flush`.
const SLOT: u64 = 0x4000_0000;
const SECOND: u64 = 1_000_000_000;

/// Maps `pages` pages at the slot, touches each, and unmaps them: `call_rcu` for the emptied
/// PTE table (preemptible, in `ZapFlush::flush`) and for the tree's old nodes (under the tree's
/// writer lock, preemption disabled).
fn churn_slot(p: &Process, pages: u64) {
    let mm = p.mm();
    let a = mm.mmap(SLOT, pages * PAGE, RW, FIXED).expect("mmap");
    for i in 0..pages {
        // SAFETY: just mapped read-write in this thread's address space.
        unsafe { ((a + i * PAGE) as *mut u64).write_volatile(i) };
    }
    mm.munmap(a, pages * PAGE).expect("munmap");
}

/// Watches `progress` (one counter per thread) until every thread is done, failing if one
/// makes no progress for `stall` nanoseconds: its CPU hangs.
fn watch(progress: &[AtomicU64], done: &AtomicUsize, stall: u64) {
    let mut last: Vec<(u64, u64)> = progress
        .iter()
        .map(|p| (p.load(Ordering::Relaxed), now_ns()))
        .collect();
    while done.load(Ordering::Acquire) < progress.len() {
        sleep_ns(50_000_000);
        let now = now_ns();
        for (i, p) in progress.iter().enumerate() {
            let v = p.load(Ordering::Relaxed);
            if v != last[i].0 || v == u64::MAX {
                last[i] = (v, now);
            }
            assert!(
                now - last[i].1 < stall,
                "thread {i} made no progress for {} ms: its CPU hangs",
                stall / 1_000_000
            );
        }
    }
}

/// Bug: the callback queue's lock was taken with preemption enabled. A thread preempted while
/// holding it (queuing from preemptible context: `ZapFlush::flush`, or any kernel code freeing
/// through `call_rcu`) and a thread of another address space on the same CPU that queues under
/// its tree's writer lock (preemption disabled) then spin forever on that CPU. Per CPU, all
/// pinned there: a thread queuing deferred frees without pause (so that ticks often land while
/// it holds the lock), a process unmapping touched pages (page tables queued from
/// `ZapFlush::flush`), and a process mapping and unmapping (tree nodes queued under the writer
/// lock).
#[test_case]
fn a_thread_preempted_while_queuing_a_callback_cannot_hang_its_cpu() {
    const RUN: u64 = 3 * SECOND;
    const KINDS: usize = 3;
    let cpus = online_count();
    let progress: Arc<Vec<AtomicU64>> =
        Arc::new((0..KINDS * cpus).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicUsize::new(0));
    let end = now_ns() + RUN;
    let mut handles: Vec<JoinHandle> = Vec::new();
    for cpu in 0..cpus {
        for kind in 0..KINDS {
            let (progress, done) = (progress.clone(), done.clone());
            let i = KINDS * cpu + kind;
            let p = Process::new("churn").expect("process");
            let proc = p.clone();
            let work = move || {
                while now_ns() < end {
                    match kind {
                        0 => {
                            for _ in 0..64 {
                                let object = Box::new([i as u64; 4]);
                                rcu().call_rcu(Box::new(move || drop(object)));
                                progress[i].fetch_add(1, Ordering::Relaxed);
                            }
                            rcu().throttle();
                        }
                        1 => churn_slot(&proc, 4),
                        _ => {
                            let mm = proc.mm();
                            let a = mm.mmap(0, 8 * PAGE, RW, ANON).expect("mmap");
                            mm.munmap(a, 8 * PAGE).expect("munmap");
                        }
                    }
                    progress[i].fetch_add(1, Ordering::Relaxed);
                }
                let n = progress[i].swap(u64::MAX, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Release);
                n as i64
            };
            handles.push(p.spawn_on(cpu, "churn", work).expect("spawn"));
        }
    }
    // A hang is for good; a CPU that is merely slow (8 virtual CPUs on a busy host, a spinlock
    // holder's virtual CPU descheduled by the host) still gets something done in this time.
    watch(&progress, &done, 20 * SECOND);
    let ops: Vec<i64> = handles.into_iter().map(|h| h.join()).collect();
    kernel::serial_println!(
        "rcu preempt: {cpus} CPUs, ops per thread (queuer, zapper, writer) {ops:?}"
    );
    assert!(ops.iter().all(|&n| n > 0), "every thread got to run");
}

/// Bug: callbacks ran inside the context switch, with interrupts off. They free frames through
/// the per-CPU cache locks and the heap, and must run where that may take its time.
#[test_case]
fn callbacks_run_with_interrupts_on_and_preemption_enabled() {
    const CALLBACKS: usize = 64;
    let ran = Arc::new(AtomicUsize::new(0));
    let atomic = Arc::new(AtomicUsize::new(0));
    for _ in 0..CALLBACKS {
        let (ran, atomic) = (ran.clone(), atomic.clone());
        rcu().call_rcu(Box::new(move || {
            let preempt = this_cpu().preempt_count.load(Ordering::Relaxed);
            if !interrupts::are_enabled() || preempt != 0 {
                atomic.fetch_add(1, Ordering::Relaxed);
            }
            ran.fetch_add(1, Ordering::Release);
        }));
    }
    // Leave them to the kernel (no barrier: that would run them here); sleeping switches.
    let deadline = now_ns() + 10 * SECOND;
    while ran.load(Ordering::Acquire) < CALLBACKS {
        assert!(
            now_ns() < deadline,
            "callbacks never ran: {} of {CALLBACKS}",
            ran.load(Ordering::Relaxed)
        );
        sleep_ns(10_000_000);
    }
    assert_eq!(
        atomic.load(Ordering::Relaxed),
        0,
        "callbacks ran with interrupts off or preemption disabled"
    );
}

/// Bug: callbacks ran only at a context switch or in idle. One thread pinned per CPU queues
/// callbacks once nothing else is runnable anywhere (`main` waits in `join`), then spins,
/// preemptible and outside any read section, until they have run: only the tick and the
/// callback thread it wakes can get them run.
#[test_case]
fn callbacks_run_while_every_cpu_spins_without_switching() {
    const PER_CPU: usize = 16;
    let cpus = online_count();
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<JoinHandle> = (0..cpus)
        .map(|cpu| {
            let ran = ran.clone();
            sched::spawn_on(cpu, "spinner", move || {
                // By then `main` sleeps in `join` and every CPU runs only its spinner.
                let start = now_ns();
                while now_ns() - start < 200_000_000 {
                    core::hint::spin_loop();
                }
                for _ in 0..PER_CPU {
                    let ran = ran.clone();
                    rcu().call_rcu(Box::new(move || {
                        ran.fetch_add(1, Ordering::Release);
                    }));
                }
                let deadline = now_ns() + 10 * SECOND;
                while ran.load(Ordering::Acquire) < cpus * PER_CPU {
                    if now_ns() > deadline {
                        return ran.load(Ordering::Acquire) as i64;
                    }
                    core::hint::spin_loop();
                }
                -1
            })
            .expect("spawn")
        })
        .collect();
    for h in handles {
        let r = h.join();
        assert_eq!(
            r,
            -1,
            "only {r} of {} callbacks ran in 10 s with every CPU busy",
            cpus * PER_CPU
        );
    }
}

/// Bug: callbacks ran only at a context switch or in idle, so with one busy thread per CPU
/// doing mmap/munmap (and nothing else runnable) retired page tables, tree nodes and VMAs were
/// never freed until the heap ran out. Each thread churns its own address space; the one on
/// CPU 0 samples the heap and the callback backlog.
#[test_case]
fn busy_cpus_that_never_switch_still_free_their_rcu_garbage() {
    /// At least this long, and at least `ROUNDS` rounds in all: each queues two callbacks or
    /// more (tree nodes and VMAs, the page table), so garbage nobody freed would pass the
    /// backlog bound four times over, and the heap bound twice (about 260 bytes each).
    const RUN: u64 = 2 * SECOND;
    const ROUNDS: u64 = 4 * BACKLOG_LIMIT as u64;
    /// Heap growth allowed while the threads run: twice what a backlog at its bound holds.
    const HEAP_BOUND: usize = 1 << 20;
    let baseline = free_frames();
    let (heap_before, _) = heap::usage();
    let cpus = online_count();
    let total = Arc::new(AtomicU64::new(0));
    let peak_heap = Arc::new(AtomicUsize::new(heap_before));
    let peak_backlog = Arc::new(AtomicUsize::new(0));
    let end = now_ns() + RUN;
    let handles: Vec<JoinHandle> = (0..cpus)
        .map(|cpu| {
            let p = Process::new("busy").expect("process");
            let (proc, total, peak_heap, peak_backlog) = (
                p.clone(),
                total.clone(),
                peak_heap.clone(),
                peak_backlog.clone(),
            );
            p.spawn_on(cpu, "busy", move || {
                let mut rounds = 0u64;
                while now_ns() < end || total.load(Ordering::Relaxed) < ROUNDS {
                    churn_slot(&proc, 1);
                    rounds += 1;
                    total.fetch_add(1, Ordering::Relaxed);
                    if cpu == 0 && rounds.is_multiple_of(8) {
                        peak_heap.fetch_max(heap::usage().0, Ordering::Relaxed);
                        peak_backlog.fetch_max(rcu().pending_callbacks(), Ordering::Relaxed);
                    }
                }
                rounds as i64
            })
            .expect("spawn")
        })
        .collect();
    let rounds: Vec<i64> = handles.into_iter().map(|h| h.join()).collect();
    let growth = peak_heap.load(Ordering::Relaxed) - heap_before;
    let backlog = peak_backlog.load(Ordering::Relaxed);
    kernel::serial_println!(
        "rcu busy: {cpus} CPUs, rounds {rounds:?}, peak heap growth {} KiB, peak backlog {backlog}",
        growth >> 10
    );
    assert!(
        backlog <= 2 * BACKLOG_LIMIT,
        "callback backlog reached {backlog}"
    );
    assert!(
        growth <= HEAP_BOUND,
        "heap grew by {} KiB while the CPUs were busy",
        growth >> 10
    );
    let now = free_frames();
    let (heap_after, _) = heap::usage();
    assert_eq!(
        now, baseline,
        "frames leaked: {baseline} free before, {now} after"
    );
    assert!(
        heap_after <= heap_before + (64 << 10),
        "heap not given back: {heap_before} bytes used before, {heap_after} after"
    );
}
