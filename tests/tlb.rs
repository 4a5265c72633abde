//! TLB shootdown targeting and concurrency on real CPUs: an address space's shootdowns interrupt
//! only the CPUs that may cache its translations (a CPU leaves the mask once it has loaded
//! another root), and shootdowns started on every CPU at once all complete.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel::arch::percpu::online_count;
use kernel::arch::{apic, tlb};
use kernel::process::Process;
use kernel::sched;
use x86_64::VirtAddr;

kernel::test_kernel!();

mod common;
use common::{ANON, PAGE, RW};

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = apic::now_ns() + secs * 1_000_000_000;
    while !done() {
        assert!(apic::now_ns() < deadline, "timed out waiting for {what}");
        sched::sleep_ns(1_000_000);
    }
}

/// Exited threads released and their stacks reaped, so no stack shootdown runs meanwhile
/// (`running`: threads of the test still alive).
fn settle(running: usize) {
    let resident = sched::resident_threads() + running;
    wait_for("exited threads to be released", 10, || {
        sched::live_threads() <= resident
    });
    kernel::memory::stack::reap();
}

#[test_case]
fn a_cpu_that_left_an_address_space_is_not_shot_down() {
    if online_count() < 2 {
        return;
    }
    let p = Process::new("left").expect("process");
    let a = p.mm().mmap(0, 4 * PAGE, RW, ANON).expect("mmap");
    let t = p
        .spawn_on(1, "visitor", move || {
            // SAFETY: mapped read-write in this thread's address space.
            unsafe { (a as *mut u64).write_volatile(1) };
            0
        })
        .expect("spawn");
    assert_eq!(t.join(), 0);
    // The visitor ran on CPU 1; once CPU 1 switched to another root it leaves the mask.
    wait_for("CPU 1 to leave the mask", 10, || !p.mm().cpus().contains(1));
    settle(0);
    let before = tlb::stats();
    p.mm().munmap(a, 4 * PAGE).expect("munmap");
    let d = tlb::stats().since(&before);
    assert_eq!(
        (d.shootdowns, d.ipis),
        (0, 0),
        "no CPU runs the address space: no IPI"
    );
}

#[test_case]
fn a_munmap_interrupts_only_the_cpu_running_the_address_space() {
    if online_count() < 2 {
        return;
    }
    let p = Process::new("targeted").expect("process");
    let b = p.mm().mmap(0, 4 * PAGE, RW, ANON).expect("mmap");
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let cpu = online_count() - 1;
    let t = {
        let (stop, running) = (stop.clone(), running.clone());
        p.spawn_on(cpu, "resident", move || {
            // SAFETY: mapped read-write in this thread's address space, and unmapped by the
            // test only while this thread spins without touching it.
            unsafe { (b as *mut u64).write_volatile(1) };
            running.store(true, Ordering::Release);
            while !stop.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            0
        })
        .expect("spawn")
    };
    wait_for("the resident thread", 10, || {
        running.load(Ordering::Acquire)
    });
    settle(1);
    assert_eq!(
        p.mm().cpus().0,
        1 << cpu,
        "only the resident's CPU runs the address space"
    );
    // Unmap from CPU 0, a kernel thread (kernel root): the shootdown must reach CPU `cpu` only.
    let mm = p.mm().clone();
    let unmapper = sched::spawn_on(0, "unmapper", move || {
        let before = tlb::stats();
        mm.munmap(b, 4 * PAGE).expect("munmap");
        let d = tlb::stats().since(&before);
        (d.shootdowns * 100 + d.ipis * 10 + d.served) as i64
    })
    .expect("spawn");
    let d = unmapper.join();
    stop.store(true, Ordering::Release);
    assert_eq!(t.join(), 0);
    assert_eq!(
        d, 111,
        "one shootdown, one IPI, served once (shootdowns*100 + ipis*10 + served)"
    );
}

#[test_case]
fn shootdowns_from_every_cpu_at_once_all_complete() {
    const ROUNDS: u64 = 200;
    static GO: AtomicBool = AtomicBool::new(false);
    static READY: AtomicU64 = AtomicU64::new(0);
    GO.store(false, Ordering::SeqCst);
    READY.store(0, Ordering::SeqCst);
    let n = online_count();
    settle(0);
    let before = tlb::stats();
    let all: u64 = (1u64 << n) - 1;
    let handles: Vec<_> = (0..n)
        .map(|cpu| {
            sched::spawn_on(cpu, "shooter", move || {
                READY.fetch_add(1, Ordering::SeqCst);
                while !GO.load(Ordering::Acquire) {
                    core::hint::spin_loop();
                }
                for i in 0..ROUNDS {
                    // A kernel address nothing maps: flushing it is harmless.
                    tlb::shootdown(all, VirtAddr::new(0xffff_e000_0000_0000 + i * PAGE), 1);
                }
                0
            })
            .expect("spawn")
        })
        .collect();
    wait_for("every shooter", 20, || {
        READY.load(Ordering::SeqCst) == n as u64
    });
    GO.store(true, Ordering::Release);
    for h in handles {
        assert_eq!(h.join(), 0);
    }
    let d = tlb::stats().since(&before);
    let per_shootdown = n as u64 - 1;
    assert!(d.shootdowns >= n as u64 * ROUNDS, "{d:?}");
    // Each shootdown is served once by each of the other CPUs; a shootdown may find a target's
    // inbox busy and send no IPI.
    assert!(d.served >= n as u64 * ROUNDS * per_shootdown, "{d:?}");
    assert!(d.ipis <= d.served, "{d:?}");
    kernel::serial_println!("tlb: {n} CPUs x {ROUNDS} shootdowns: {d:?}");
}
