//! The memory subsystem on real hardware (8 CPUs): the CPU's page faults go through
//! `handle_mm_fault` into real x86-64 page tables, while other threads of the same process
//! mmap, mprotect and munmap. Every thread checks its data; afterwards every frame is back.

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
use kernel::platform::memory;
use kernel::process::{EXIT_SEGV, Process};
use mm::memory::FaultPolicy;
use mm::stats::Event;
use mm::vma::Prot;

kernel::test_kernel!();

mod common;
use common::{ANON, PAGE, RW, free_frames};

fn assert_frames_back_to(baseline: u64) {
    let now = free_frames();
    assert_eq!(
        now, baseline,
        "frames leaked (or freed twice): {baseline} free before, {now} after"
    );
}

#[test_case]
fn first_touch_is_resolved_under_the_vma_lock() {
    let baseline = free_frames();
    let p = Process::new("touch").expect("process");
    let pages = 64;
    let base = p.mm().mmap(0, pages * PAGE, RW, ANON).expect("mmap");
    let before = memory().stats().snapshot();
    let t = p
        .spawn("toucher", move || {
            for i in 0..pages {
                // SAFETY: the range is mapped read-write in this thread's address space.
                unsafe { ((base + i * PAGE) as *mut u64).write_volatile(i) };
            }
            (0..pages)
                // SAFETY: as above.
                .map(|i| unsafe { ((base + i * PAGE) as *const u64).read_volatile() } as i64)
                .sum()
        })
        .expect("spawn");
    assert_eq!(t.join(), (0..pages as i64).sum::<i64>());
    let d = memory().stats().snapshot().since(&before);
    kernel::serial_println!("first touch: {d}");
    assert_eq!(d.get(Event::Fault), pages, "one fault per page");
    assert_eq!(
        d.get(Event::VmaLockSuccess),
        pages,
        "first touch never takes mmap_lock"
    );
    assert_eq!(d.get(Event::AnonFrameMapped), pages);
    drop(p);
    assert_frames_back_to(baseline);
}

#[test_case]
fn a_read_maps_the_zero_page_and_a_write_copies() {
    let p = Process::new("zero").expect("process");
    let base = p.mm().mmap(0, PAGE, RW, ANON).expect("mmap");
    let before = memory().stats().snapshot();
    let t = p
        .spawn("reader-writer", move || {
            let ptr = base as *mut u64;
            // SAFETY: mapped read-write.
            let first = unsafe { ptr.read_volatile() };
            // SAFETY: as above.
            unsafe { ptr.write_volatile(7) };
            // SAFETY: as above.
            first as i64 * 100 + unsafe { ptr.read_volatile() } as i64
        })
        .expect("spawn");
    assert_eq!(
        t.join(),
        7,
        "a fresh page reads as zero, then holds what was written"
    );
    let d = memory().stats().snapshot().since(&before);
    assert_eq!(d.get(Event::ZeroFrameMapped), 1);
    assert_eq!(d.get(Event::WpCopy), 1);
}

#[test_case]
fn a_bad_access_ends_only_the_faulting_thread() {
    let p = Process::new("segv").expect("process");
    let ro = p.mm().mmap(0, PAGE, Prot::READ, ANON).expect("mmap");
    let unmapped = p.spawn("wild", || {
        // SAFETY: deliberately touches an address no VMA covers; the fault ends this thread.
        unsafe { (0x1234_5000 as *mut u64).write_volatile(1) };
        0
    });
    assert_eq!(unmapped.expect("spawn").join(), EXIT_SEGV);
    let readonly = p.spawn("ro-writer", move || {
        // SAFETY: reading a read-only mapping is fine.
        let v = unsafe { (ro as *const u64).read_volatile() };
        assert_eq!(v, 0);
        // SAFETY: deliberately writes a read-only mapping; the fault ends this thread.
        unsafe { (ro as *mut u64).write_volatile(1) };
        0
    });
    assert_eq!(readonly.expect("spawn").join(), EXIT_SEGV);
    // The process lives on: another thread still works.
    let ok = p.spawn("survivor", move || {
        // SAFETY: reading a read-only mapping.
        unsafe { (ro as *const u64).read_volatile() as i64 }
    });
    assert_eq!(ok.expect("spawn").join(), 0);
}

/// Counts its drops.
struct DropCount(Arc<AtomicU64>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test_case]
fn a_thread_killed_by_a_fault_drops_what_it_captured() {
    let baseline = free_frames();
    let p = Process::new("killed").expect("process");
    let base = p.mm().mmap(0, 16 * PAGE, RW, ANON).expect("mmap");
    let drops = Arc::new(AtomicU64::new(0));
    let t = {
        // The thread holds the only other reference to its process: leaking it would keep the
        // address space, its page tables and the frames it faulted in.
        let (proc, counted) = (p.clone(), DropCount(drops.clone()));
        p.spawn("faults-then-dies", move || {
            let _ = (&proc, &counted);
            for i in 0..16 {
                // SAFETY: mapped read-write.
                unsafe { ((base + i * PAGE) as *mut u64).write_volatile(i) };
            }
            // SAFETY: deliberately touches an address no VMA covers; the fault ends this thread.
            unsafe { (0x1234_5000 as *mut u64).write_volatile(1) };
            0
        })
        .expect("spawn")
    };
    assert_eq!(t.join(), EXIT_SEGV);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the killed thread's captures were not dropped"
    );
    assert_eq!(
        Arc::strong_count(&p),
        1,
        "the killed thread still holds its process"
    );
    drop(p);
    assert_frames_back_to(baseline);
}

#[test_case]
fn a_thread_that_calls_exit_drops_what_it_captured() {
    let drops = Arc::new(AtomicU64::new(0));
    let counted = DropCount(drops.clone());
    let t = kernel::sched::spawn("exits", move || {
        let _ = &counted;
        kernel::sched::exit(5)
    })
    .expect("spawn");
    assert_eq!(t.join(), 5);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "captures of a thread that called exit were not dropped"
    );
}

/// One worker: maps its own region, faults it in with tagged writes, checks every page, also
/// writes its pages of a shared VMA, unmaps, and does it again.
fn worker(p: &Process, id: u64, workers: u64, shared: u64, shared_pages: u64, rounds: u64) -> i64 {
    const PAGES: u64 = 32;
    let mm = p.mm().clone();
    for round in 0..rounds {
        let base = match mm.mmap(0, PAGES * PAGE, RW, ANON) {
            Ok(a) => a,
            Err(e) => panic!("worker {id}: mmap failed: {e:?}"),
        };
        let tag = |page: u64| (id << 48) | (round << 24) | page;
        for i in 0..PAGES {
            // SAFETY: this worker's own fresh mapping.
            unsafe { ((base + i * PAGE + 8 * (id % 64)) as *mut u64).write_volatile(tag(i)) };
        }
        for i in (id..shared_pages).step_by(workers as usize) {
            // SAFETY: the shared VMA is mapped for the whole test; page i is this worker's.
            unsafe { ((shared + i * PAGE) as *mut u64).write_volatile(tag(i)) };
        }
        for i in 0..PAGES {
            // SAFETY: as above.
            let v = unsafe { ((base + i * PAGE + 8 * (id % 64)) as *const u64).read_volatile() };
            assert_eq!(
                v,
                tag(i),
                "worker {id} round {round}: lost write on page {i}"
            );
        }
        for i in (id..shared_pages).step_by(workers as usize) {
            // SAFETY: as above.
            let v = unsafe { ((shared + i * PAGE) as *const u64).read_volatile() };
            assert_eq!(
                v,
                tag(i),
                "worker {id} round {round}: lost write on shared page {i}"
            );
        }
        mm.munmap(base, PAGES * PAGE).expect("munmap");
    }
    0
}

#[test_case]
fn faults_on_every_cpu_race_mmap_munmap_and_mprotect_without_losing_a_write() {
    let baseline = free_frames();
    let p = Process::new("stress").expect("process");
    let workers = 2 * online_count() as u64;
    let shared_pages = 8 * workers;
    let shared = p.mm().mmap(0, shared_pages * PAGE, RW, ANON).expect("mmap");
    let before = memory().stats().snapshot();
    let stop = Arc::new(AtomicBool::new(false));
    // A churner changes the address space under the workers' feet: new VMAs, splits by
    // mprotect (with PTE downgrades and shootdowns), unmaps.
    let churner = {
        let stop = stop.clone();
        let mm = p.mm().clone();
        p.spawn("churner", move || {
            let mut ops = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let a = mm.mmap(0, 16 * PAGE, RW, ANON).expect("churn mmap");
                // SAFETY: just mapped read-write.
                unsafe { (a as *mut u64).write_volatile(1) };
                mm.mprotect(a + 4 * PAGE, 4 * PAGE, Prot::READ)
                    .expect("churn mprotect");
                mm.munmap(a, 16 * PAGE).expect("churn munmap");
                ops += 3;
            }
            ops
        })
        .expect("spawn")
    };
    let handles: Vec<_> = (0..workers)
        .map(|id| {
            let proc = p.clone();
            p.spawn("worker", move || {
                worker(&proc, id, workers, shared, shared_pages, 12)
            })
            .expect("spawn")
        })
        .collect();
    for h in handles {
        assert_eq!(h.join(), 0);
    }
    stop.store(true, Ordering::Relaxed);
    let churn_ops = churner.join();
    let d = memory().stats().snapshot().since(&before);
    kernel::serial_println!(
        "stress: {workers} workers on {} CPUs, {churn_ops} churn ops",
        online_count()
    );
    kernel::serial_println!("stress: {d}");
    assert!(churn_ops > 0);
    // How many faults fall back depends on timing (a worker's new mapping merges with a
    // neighbour's, which write-locks the neighbour's VMA); `first_touch_...` checks the
    // uncontended case exactly. Here: the fast path still carries the majority.
    assert!(
        d.get(Event::VmaLockSuccess) > d.get(Event::MmapLockFallback),
        "the per-VMA fast path should carry most faults"
    );
    p.mm().munmap(shared, shared_pages * PAGE).expect("munmap");
    drop(p);
    assert_frames_back_to(baseline);
}

#[test_case]
fn the_mmap_lock_policy_sends_every_fault_to_mmap_lock() {
    let p = Process::new("policy").expect("process");
    let pages = 16;
    let base = p.mm().mmap(0, pages * PAGE, RW, ANON).expect("mmap");
    memory().set_fault_policy(FaultPolicy::MmapLockOnly);
    let before = memory().stats().snapshot();
    let t = p
        .spawn("toucher", move || {
            for i in 0..pages {
                // SAFETY: mapped read-write.
                unsafe { ((base + i * PAGE) as *mut u64).write_volatile(i) };
            }
            0
        })
        .expect("spawn");
    assert_eq!(t.join(), 0);
    memory().set_fault_policy(FaultPolicy::PerVmaLock);
    let d = memory().stats().snapshot().since(&before);
    assert_eq!(d.get(Event::VmaLockSuccess), 0);
    assert_eq!(d.get(Event::MmapLockFallback), pages);
}
