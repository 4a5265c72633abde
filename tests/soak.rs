//! Soak: several processes fault on every CPU at once, each thread on tagged pages of its own
//! region that it keeps invalidating (madvise(MADV_DONTNEED), munmap + mmap, mprotect down and
//! back up), while a churn thread per process maps, protects, zaps and unmaps regions of its own
//! next to them. Every read is checked against the exact value the page must hold (the last tag
//! written, or zero after a zap or a fresh mapping): a lost write or a write through a stale TLB
//! entry shows up as a wrong value; frame poisoning (the `poison` feature) catches a stale write
//! into a frame freed to the pool. Heap and frames in use are checked against a bound every
//! second, and both must be back at their baselines at the end.
//!
//! Length: `SOAK_SECONDS` at build time (`make soak DURATION=minutes`); without it, until
//! [`BOUNDED_FAULTS`] faults (the `make test` run). Progress every minute, then one final line.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

mod common;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{ANON, PAGE, RW, free_frames, heap_used};
use kernel::arch::apic::now_ns;
use kernel::arch::percpu::online_count;
use kernel::memory::FRAMES;
use kernel::platform::{Mm, memory};
use kernel::process::Process;
use kernel::serial_println;
use mm::ops::MADV_DONTNEED;
use mm::stats::Event;
use mm::vma::Prot;

kernel::test_kernel!();

/// Processes, each with one faulting thread per CPU and one churn thread.
const PROCESSES: u64 = 3;
/// Pages of a faulting thread's region.
const REGION_PAGES: usize = 64;
/// A faulting thread reads (instead of writing) one page in this many each round.
const READ_EVERY: u64 = 8;
/// Pages of a churn thread's region.
const CHURN_PAGES: u64 = 16;
/// Faults the `make test` run goes on for.
const BOUNDED_FAULTS: u64 = 100_000;
/// Heap the run may use above its baseline (VMAs, tree nodes, and what waits for a grace
/// period: RCU must keep up).
const HEAP_SLACK: usize = 16 << 20;
/// Heap the run may leave behind: allocations that stay for good once made (vectors of the
/// scheduler, of the stack allocator and of RCU that grew to the run's peak).
const HEAP_KEPT: usize = 64 << 10;
/// Lost writes printed in full (the rest are only counted).
const REPORT_LOST: u64 = 8;

/// The last word of a page: the tag's complement goes there.
const LAST_WORD: u64 = PAGE - 8;

static STOP: AtomicBool = AtomicBool::new(false);

/// Operations: mmap, munmap, mprotect, madvise.
const OPS: usize = 4;
const OP_NAMES: [&str; OPS] = ["mmap", "munmap", "mprotect", "madvise"];

/// What the threads did.
struct Counts {
    /// Calls of each operation, and the nanoseconds spent in them.
    ops: [AtomicU64; OPS],
    op_ns: [AtomicU64; OPS],
    /// Words that did not hold what the thread wrote (or zero where it must read zero).
    lost: AtomicU64,
}

static COUNTS: Counts = Counts {
    ops: [const { AtomicU64::new(0) }; OPS],
    op_ns: [const { AtomicU64::new(0) }; OPS],
    lost: AtomicU64::new(0),
};

impl Counts {
    fn ops(&self) -> [u64; OPS] {
        core::array::from_fn(|i| self.ops[i].load(Ordering::Relaxed))
    }

    /// Mean microseconds per call of each operation.
    fn mean_us(&self) -> [u64; OPS] {
        core::array::from_fn(|i| {
            self.op_ns[i].load(Ordering::Relaxed)
                / 1000
                / self.ops[i].load(Ordering::Relaxed).max(1)
        })
    }

    fn reset(&self) {
        for c in self.ops.iter().chain(&self.op_ns).chain([&self.lost]) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Runs operation `op` (an index into [`OP_NAMES`]), counting it and its time.
fn timed<T>(op: usize, f: impl FnOnce() -> T) -> T {
    let t0 = now_ns();
    let r = f();
    COUNTS.ops[op].fetch_add(1, Ordering::Relaxed);
    COUNTS.op_ns[op].fetch_add(now_ns() - t0, Ordering::Relaxed);
    r
}

/// Where a tagged page lives and whose it is, for reports.
#[derive(Clone, Copy)]
struct Owner {
    process: u64,
    thread: u64,
    round: u64,
}

/// A tag no other page, thread, process or recent round writes; never 0.
fn tag(o: Owner, page: u64) -> u64 {
    (o.process << 56) | (o.thread << 44) | (page << 32) | (o.round & 0xffff_ffff) | 1 << 43
}

/// The two words of a page holding `tag` (0 stays 0 in both).
fn words_for(tag: u64) -> (u64, u64) {
    (tag, if tag == 0 { 0 } else { !tag })
}

/// Reads `page` (a user address of this thread's address space, mapped readable) and counts a
/// loss if it does not hold `expected`.
fn check(page: u64, expected: u64, o: Owner, what: &str) {
    // SAFETY: the caller's region is mapped readable and only it changes it.
    let found = unsafe {
        (
            (page as *const u64).read_volatile(),
            ((page + LAST_WORD) as *const u64).read_volatile(),
        )
    };
    if found != words_for(expected) {
        let n = COUNTS.lost.fetch_add(1, Ordering::Relaxed);
        if n < REPORT_LOST {
            serial_println!(
                "soak: LOST process {} thread {} round {} {what} page {page:#x}: found {:#x}/{:#x}, expected {:#x}/{:#x}",
                o.process,
                o.thread,
                o.round,
                found.0,
                found.1,
                words_for(expected).0,
                words_for(expected).1
            );
        }
    }
}

/// Writes `tag` to `page` (mapped writable).
fn write(page: u64, tag: u64) {
    let (first, last) = words_for(tag);
    // SAFETY: the caller's region is mapped writable and only it changes it.
    unsafe {
        (page as *mut u64).write_volatile(first);
        ((page + LAST_WORD) as *mut u64).write_volatile(last);
    }
}

fn map(mm: &Mm, pages: u64, who: &str) -> u64 {
    match timed(0, || mm.mmap(0, pages * PAGE, RW, ANON)) {
        Ok(a) => a,
        Err(e) => panic!("{who}: mmap failed: {e:?}"),
    }
}

/// A faulting thread's region: [`REGION_PAGES`] read-write pages between two `PROT_NONE` guard
/// pages, so that it never merges with a neighbour and changing it write-locks only its own
/// VMAs (faults elsewhere go on under their per-VMA locks). Returns the first read-write page.
fn map_region(mm: &Mm, who: &str) -> u64 {
    let a = map(mm, REGION_PAGES as u64 + 2, who);
    protect(mm, a, 1, Prot::empty(), who);
    protect(
        mm,
        a + (REGION_PAGES as u64 + 1) * PAGE,
        1,
        Prot::empty(),
        who,
    );
    a + PAGE
}

fn unmap_region(mm: &Mm, base: u64, who: &str) {
    unmap(mm, base - PAGE, REGION_PAGES as u64 + 2, who);
}

fn unmap(mm: &Mm, addr: u64, pages: u64, who: &str) {
    if let Err(e) = timed(1, || mm.munmap(addr, pages * PAGE)) {
        panic!("{who}: munmap failed: {e:?}");
    }
}

fn protect(mm: &Mm, addr: u64, pages: u64, prot: Prot, who: &str) {
    if let Err(e) = timed(2, || mm.mprotect(addr, pages * PAGE, prot)) {
        panic!("{who}: mprotect failed: {e:?}");
    }
}

fn zap(mm: &Mm, addr: u64, pages: u64, who: &str) {
    if let Err(e) = timed(3, || mm.madvise(addr, pages * PAGE, MADV_DONTNEED)) {
        panic!("{who}: madvise failed: {e:?}");
    }
}

/// A faulting thread. Each round invalidates all or part of its region (zap, unmap and map
/// again, or write-protect and unprotect), then goes over every page: one page in
/// [`READ_EVERY`] (a different set each round) is only read, and must hold its tag or, where it
/// was invalidated, zero (a stale translation to the old frame would show the old tag); the
/// others are written a new tag (write faults; a page mapped to the zero page is copied) and
/// read back. Reads before writes are kept few because each one leads to a copy-on-write with a
/// TLB shootdown, which costs much more than a fault under emulation.
fn faulter(mm: Arc<Mm>, process: u64, thread: u64) -> i64 {
    const HALF: usize = REGION_PAGES / 2;
    let who = "faulter";
    let mut base = map_region(&mm, who);
    // What word 0 of each page holds (0: never written or zapped).
    let mut held = [0u64; REGION_PAGES];
    let mut round = 0;
    while !STOP.load(Ordering::Relaxed) {
        let o = Owner {
            process,
            thread,
            round,
        };
        let page = |base: u64, i: usize| base + i as u64 * PAGE;
        match round % 8 {
            1 | 5 => {
                zap(&mm, page(base, HALF), HALF as u64, who);
                held[HALF..].fill(0);
            }
            3 => {
                unmap_region(&mm, base, who);
                base = map_region(&mm, who);
                held.fill(0);
            }
            7 => {
                // The lower half is read through read-only PTEs, then written after it is made
                // writable again (write faults on present pages).
                protect(&mm, base, HALF as u64, Prot::READ, who);
                for (i, &h) in held.iter().enumerate().take(HALF) {
                    check(page(base, i), h, o, "read-only");
                }
                protect(&mm, base, HALF as u64, RW, who);
            }
            _ => {
                zap(&mm, base, REGION_PAGES as u64, who);
                held.fill(0);
            }
        }
        for (i, h) in held.iter_mut().enumerate() {
            if (i as u64 + round).is_multiple_of(READ_EVERY) {
                check(page(base, i), *h, o, "read");
            } else {
                *h = tag(o, i as u64);
                write(page(base, i), *h);
            }
        }
        for (i, &h) in held.iter().enumerate() {
            check(page(base, i), h, o, "after write");
        }
        round += 1;
    }
    unmap_region(&mm, base, who);
    0
}

/// A churn thread: maps a region next to the others, writes it, splits it with mprotect, zaps
/// part of it, unmaps a piece, checks what is left, unmaps the rest.
fn churner(mm: Arc<Mm>, process: u64, thread: u64) -> i64 {
    let who = "churner";
    let mut round = 0;
    while !STOP.load(Ordering::Relaxed) {
        let o = Owner {
            process,
            thread,
            round,
        };
        let a = map(&mm, CHURN_PAGES, who);
        let page = |i: u64| a + i * PAGE;
        let mut held = [0u64; CHURN_PAGES as usize];
        for (i, h) in held.iter_mut().enumerate() {
            *h = tag(o, i as u64);
            write(page(i as u64), *h);
        }
        protect(&mm, page(4), 8, Prot::READ, who);
        zap(&mm, page(8), 4, who);
        held[8..12].fill(0);
        for (i, &h) in held.iter().enumerate() {
            check(page(i as u64), h, o, "churn");
        }
        protect(&mm, a, CHURN_PAGES, RW, who);
        unmap(&mm, page(12), 4, who);
        for (i, &h) in held.iter().enumerate().take(12) {
            check(page(i as u64), h, o, "churn after unmap");
        }
        unmap(&mm, a, 12, who);
        round += 1;
    }
    0
}

/// Upper bound of frames in use while the soak runs: every region fully faulted in, twice over
/// (page tables, frames waiting for a shootdown or a grace period), thread stacks, and `mm`'s
/// per-CPU caches full.
fn frame_bound(cpus: u64) -> u64 {
    let threads = PROCESSES * (cpus + 1);
    let data = PROCESSES * (cpus * REGION_PAGES as u64 + CHURN_PAGES);
    let stack_pages = (kernel::sched::THREAD_STACK_SIZE as u64).div_ceil(PAGE);
    2 * (data + threads * stack_pages) + cpus * mm::frame::CACHE_CAPACITY as u64 + 256
}

#[test_case]
fn soak() {
    let seconds: Option<u64> =
        option_env!("SOAK_SECONDS").map(|s| s.parse().expect("SOAK_SECONDS: seconds"));
    let cpus = online_count() as u64;
    // A first short round grows what stays grown (scheduler and stack-slot vectors, RCU queues)
    // before the baselines are taken.
    run(cpus, Some(1), None);
    let frames_before = free_frames();
    let heap_before = heap_used();
    COUNTS.reset();
    let poison_before = FRAMES.poison_checked();
    let report = run(cpus, seconds, Some((frames_before, heap_before)));
    let frames_after = free_frames();
    let heap_after = heap_used();
    let ops = COUNTS.ops();
    let lost = COUNTS.lost.load(Ordering::Relaxed);
    let frames_back = frames_after == frames_before;
    let heap_back = heap_after <= heap_before + HEAP_KEPT;
    serial_println!(
        "soak: peak {} frames in use (bound {}), peak heap {} KiB above baseline, heap {} bytes above baseline at the end",
        report.peak_frames,
        frame_bound(cpus),
        report.peak_heap >> 10,
        heap_after as i64 - heap_before as i64
    );
    let mean = COUNTS.mean_us();
    serial_println!(
        "soak: mean us per call: {} {} {} {} {} {} {} {}; {} shootdowns",
        OP_NAMES[0],
        mean[0],
        OP_NAMES[1],
        mean[1],
        OP_NAMES[2],
        mean[2],
        OP_NAMES[3],
        mean[3],
        kernel::arch::tlb::stats().shootdowns
    );
    serial_println!(
        "soak: {}, {} faults, {} ops ({} {} {} {} {} {} {} {}), {lost} lost, {} reused frames poison-checked, {}, {}",
        Duration(report.elapsed_ns),
        report.faults,
        ops.iter().sum::<u64>(),
        OP_NAMES[0],
        ops[0],
        OP_NAMES[1],
        ops[1],
        OP_NAMES[2],
        ops[2],
        OP_NAMES[3],
        ops[3],
        FRAMES.poison_checked() - poison_before,
        if frames_back {
            "frames back"
        } else {
            "FRAMES NOT BACK"
        },
        if heap_back {
            "heap back"
        } else {
            "HEAP NOT BACK"
        },
    );
    assert_eq!(lost, 0, "writes lost");
    assert!(
        frames_back,
        "frames leaked (or freed twice): {frames_before} free before, {frames_after} after"
    );
    assert!(
        heap_back,
        "heap leaked: {heap_before} bytes used before, {heap_after} after"
    );
    if seconds.is_none() {
        assert!(report.faults >= BOUNDED_FAULTS);
    }
}

struct Report {
    elapsed_ns: u64,
    faults: u64,
    peak_frames: u64,
    peak_heap: usize,
}

/// Runs the processes for `seconds`, or until [`BOUNDED_FAULTS`] faults; with baselines, checks
/// the bounds every second and prints progress every minute. Returns once every thread is
/// joined and every process dropped.
fn run(cpus: u64, seconds: Option<u64>, baselines: Option<(u64, usize)>) -> Report {
    STOP.store(false, Ordering::Relaxed);
    let faults_before = memory().stats().snapshot();
    let start = now_ns();
    let mut handles = Vec::new();
    let mut processes = Vec::new();
    for p in 0..PROCESSES {
        let proc = Process::new("soak").expect("process");
        for t in 0..cpus {
            let mm = proc.mm().clone();
            handles.push(
                proc.spawn("faulter", move || faulter(mm.clone(), p, t))
                    .expect("spawn"),
            );
        }
        let mm = proc.mm().clone();
        handles.push(
            proc.spawn("churner", move || churner(mm.clone(), p, cpus))
                .expect("spawn"),
        );
        processes.push(proc);
    }
    let mut report = Report {
        elapsed_ns: 0,
        faults: 0,
        peak_frames: 0,
        peak_heap: 0,
    };
    let mut next_progress = 60;
    loop {
        kernel::sched::sleep_ns(1_000_000_000);
        report.elapsed_ns = now_ns() - start;
        report.faults = memory()
            .stats()
            .snapshot()
            .since(&faults_before)
            .get(Event::Fault);
        let elapsed_s = report.elapsed_ns / 1_000_000_000;
        if let Some((frames_before, heap_before)) = baselines {
            let in_use = frames_before
                .saturating_sub(FRAMES.stats().1 + kernel::memory::kernel_table_frames());
            let heap = heap_used().saturating_sub(heap_before);
            report.peak_frames = report.peak_frames.max(in_use);
            report.peak_heap = report.peak_heap.max(heap);
            assert!(
                in_use <= frame_bound(cpus),
                "{in_use} frames in use after {elapsed_s}s, more than the bound {}",
                frame_bound(cpus)
            );
            assert!(
                heap <= HEAP_SLACK,
                "heap {heap} bytes above its baseline after {elapsed_s}s"
            );
            if elapsed_s >= next_progress {
                next_progress += 60;
                let ops = COUNTS.ops();
                serial_println!(
                    "soak: {}, {} faults, {} ops, {} lost, {in_use} frames and {} KiB heap in use",
                    Duration(report.elapsed_ns),
                    report.faults,
                    ops.iter().sum::<u64>(),
                    COUNTS.lost.load(Ordering::Relaxed),
                    heap >> 10
                );
            }
        }
        let done = match seconds {
            Some(s) => elapsed_s >= s,
            None => report.faults >= BOUNDED_FAULTS,
        };
        if done {
            break;
        }
    }
    STOP.store(true, Ordering::Relaxed);
    for h in handles {
        assert_eq!(h.join(), 0, "a soak thread died");
    }
    report.elapsed_ns = now_ns() - start;
    report.faults = memory()
        .stats()
        .snapshot()
        .since(&faults_before)
        .get(Event::Fault);
    drop(processes);
    report
}

/// `ns` as `1m30s` (or `42s`, or `850ms`).
pub struct Duration(pub u64);

impl core::fmt::Display for Duration {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.0 / 1_000_000_000;
        match s {
            0 => write!(f, "{}ms", self.0 / 1_000_000),
            1..60 => write!(f, "{s}s"),
            _ => write!(f, "{}m{}s", s / 60, s % 60),
        }
    }
}
