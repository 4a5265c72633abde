//! Stack growth on real hardware (8 CPUs): kernel threads of one process fault on a growing
//! `MAP_GROWSDOWN` region (each fault below it grows it under `mmap_lock` for write, racing the
//! others' faults on it under its VMA read lock) while other threads fault on the mappings
//! beside it and one thread keeps `madvise(MADV_DONTNEED)`ing those. Every thread checks its
//! data; afterwards every frame is back.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::arch::percpu::online_count;
use kernel::platform::memory;
use kernel::process::Process;
use mm::ops::{MADV_DONTNEED, MapFlags, STACK_GUARD_GAP};
use mm::stats::Event;

kernel::test_kernel!();

mod common;
use common::{ANON, PAGE, RW, free_frames};

/// Pages the stack grows by in each round.
const DEPTH: u64 = 64;
/// Pages of each neighbouring mapping.
const NEIGHBOUR: u64 = 16;
const ROUNDS: u64 = 6;

/// Where a round's mappings are, from low to high: the neighbour below (`low`, the guard gap and
/// four pages under the stack's deepest page), the stack (one page at `top - PAGE`, growing to
/// `top - DEPTH * PAGE`), the neighbour above (`high`, right at `top`).
#[derive(Clone, Copy)]
struct Layout {
    low: u64,
    top: u64,
    high: u64,
}

fn word(addr: u64) -> *mut u64 {
    addr as *mut u64
}

/// Grows the stack by touching it from the top down, each page at this thread's own word, then
/// checks every word: a stack page is never zapped, so each must hold exactly what was written.
fn grower(l: Layout, id: u64, round: u64) -> i64 {
    let tag = |i: u64| (round << 48) | (id << 32) | i;
    for i in 1..=DEPTH {
        // SAFETY: the page is in the stack or below it within its reach; the fault grows it.
        // This thread's word in it is used by no one else.
        unsafe { word(l.top - i * PAGE + 8 * id).write_volatile(tag(i)) };
    }
    for i in 1..=DEPTH {
        // SAFETY: as above; the stack now reaches the page.
        let v = unsafe { word(l.top - i * PAGE + 8 * id).read_volatile() };
        assert_eq!(
            v,
            tag(i),
            "grower {id} round {round}: stack page {i} lost a write"
        );
    }
    0
}

/// Writes and reads back its word in every page of both neighbours until `stop`: each read sees
/// the write, or zero after a racing `MADV_DONTNEED`, never anything else. Returns the zeros.
fn toucher(l: Layout, id: u64, round: u64, stop: &AtomicBool) -> i64 {
    let mut zeros = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) || n == 0 {
        n += 1;
        for base in [l.low, l.high] {
            for i in 0..NEIGHBOUR {
                let a = base + i * PAGE + 8 * id;
                let tag = (round << 48) | (id << 32) | (n << 8) | i;
                // SAFETY: the neighbours stay mapped read-write during the round; this
                // thread's word is its own.
                unsafe { word(a).write_volatile(tag) };
                // SAFETY: as above.
                let v = unsafe { word(a).read_volatile() };
                assert!(
                    v == tag || v == 0,
                    "toucher {id}: {a:#x} holds {v:#x}, wrote {tag:#x}"
                );
                zeros += i64::from(v == 0);
            }
        }
    }
    zeros
}

#[test_case]
fn faults_grow_a_stack_while_its_neighbours_are_zapped() {
    let baseline = free_frames();
    let p = Process::new("stack").expect("process");
    let mm = p.mm().clone();
    let cpus = online_count() as u64;
    let growers = cpus.max(2);
    let touchers = (cpus / 2).max(1);
    let before = memory().stats().snapshot();
    let mut zeros = 0;
    for round in 0..ROUNDS {
        // Reserve the whole area, then leave the stack's reach and its guard gap free.
        let low_len = NEIGHBOUR * PAGE;
        let reach = (DEPTH - 1) * PAGE;
        let gap = STACK_GUARD_GAP + 4 * PAGE;
        let total = low_len + gap + reach + PAGE + NEIGHBOUR * PAGE;
        let low = mm.mmap(0, total, RW, ANON).expect("mmap");
        let top = low + low_len + gap + reach + PAGE;
        let l = Layout {
            low,
            top,
            high: top,
        };
        mm.munmap(low + low_len, gap + reach).expect("munmap");
        let stack = MapFlags::FIXED | MapFlags::GROWSDOWN | ANON;
        mm.mmap(top - PAGE, PAGE, RW, stack).expect("stack");

        let stop = Arc::new(AtomicBool::new(false));
        let zapper = {
            let (stop, mm) = (stop.clone(), mm.clone());
            p.spawn("zapper", move || {
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    for base in [l.low, l.high] {
                        mm.madvise(base, NEIGHBOUR * PAGE, MADV_DONTNEED)
                            .expect("madvise");
                    }
                    n += 1;
                }
                n
            })
            .expect("spawn")
        };
        let touching: Vec<_> = (0..touchers)
            .map(|id| {
                let stop = stop.clone();
                p.spawn("toucher", move || toucher(l, id, round, &stop))
                    .expect("spawn")
            })
            .collect();
        let growing: Vec<_> = (0..growers)
            .map(|id| {
                p.spawn("grower", move || grower(l, id, round))
                    .expect("spawn")
            })
            .collect();
        for g in growing {
            assert_eq!(g.join(), 0, "a grower died (a segfault?)");
        }
        stop.store(true, Ordering::Relaxed);
        for t in touching {
            let z = t.join();
            assert!(z >= 0, "a toucher died (a segfault?)");
            zeros += z;
        }
        assert!(zapper.join() > 0);
        let vmas = mm.vmas_in(top - DEPTH * PAGE..top);
        assert_eq!(vmas.len(), 1, "round {round}: {vmas:?}");
        assert_eq!(vmas[0].range(), top - DEPTH * PAGE..top);
        assert!(vmas[0].grows_down());
        mm.munmap(low, total).expect("munmap");
    }
    let d = memory().stats().snapshot().since(&before);
    kernel::serial_println!(
        "stack growth: {growers} growers, {touchers} touchers on {cpus} CPUs, {zeros} zapped reads"
    );
    kernel::serial_println!("stack growth: {d}");
    assert_eq!(d.get(Event::Segv), 0);
    assert!(
        d.get(Event::MmapLockFallback) >= ROUNDS,
        "no fault took the growth path"
    );
    drop(mm);
    drop(p);
    assert_eq!(free_frames(), baseline, "frames leaked (or freed twice)");
}
