//! The long run of Linux 6.4's per-VMA lock race (bugzilla 217624) on 8 CPUs: threads of a
//! process keep filling their lines of one private buffer with a pattern and checking it back,
//! while another thread of the process forks its address space (`dup_mmap`) over and over.
//! Every page of the buffer is written by every writer (each owns every `n`-th 64-byte line),
//! so a write fault on a page `dup_mmap` just write-protected can run while another writer
//! still stores to that page through its old writable TLB entry: without the parent VMA write
//! lock the fault's copy misses that store, which the writer then finds gone.
//!
//! The forks are `mm`'s `dup_mmap` called from a kernel thread of the process, not user-program
//! forks (those cost tens of ms each under emulation; the differential test `fork_race` runs
//! the same shape from a user program, briefly). The second test also runs each child: threads
//! in the child's address space check what it inherited and then write their own lines while
//! the parent's writers go on, each side checking it sees only its own writes.
//!
//! Length: `FORK_STRESS_FORKS` at build time (forks of the first test; the second runs a
//! twentieth as many children); without it, [`DEFAULT_FORKS`] (the `make test` run).

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

use common::{ANON, PAGE, RW, free_frames};
use kernel::arch::apic::now_ns;
use kernel::arch::percpu::online_count;
use kernel::platform::{Mm, memory};
use kernel::process::Process;
use kernel::sched::JoinHandle;
use kernel::serial_println;

kernel::test_kernel!();

/// Forks of the first test without `FORK_STRESS_FORKS`.
const DEFAULT_FORKS: u64 = 300;
/// Writer threads (at most; one per CPU but 0).
const WRITERS: u64 = 3;
/// Pages of the buffer.
const PAGES: u64 = 4;
/// One word per line is written and checked.
const LINE: u64 = 64;
/// Child threads per child address space (second test; at most one per parent writer, whose
/// lines each takes over).
const CHILD_THREADS: u64 = 2;
/// Rounds each child thread writes and checks.
const CHILD_ROUNDS: u64 = 20;
/// Mismatches printed in full (the rest are only counted).
const REPORT: u64 = 8;

/// Bit 63 of a pattern: written in a child.
const CHILD: u64 = 1 << 63;

fn forks() -> u64 {
    option_env!("FORK_STRESS_FORKS").map_or(DEFAULT_FORKS, |s| {
        s.parse().expect("FORK_STRESS_FORKS: a number of forks")
    })
}

/// The pattern writer `t` of side `side` (0 or [`CHILD`]) stores in round `round`.
fn pattern(side: u64, t: u64, round: u64) -> u64 {
    side | (t << 48) | (round & 0xffff_ffff_ffff)
}

/// The word of line `i` of the buffer at `base`.
///
/// # Safety
/// `[base, base + PAGES * PAGE)` is mapped read-write in the calling thread's address space
/// for as long as the reference is used.
unsafe fn word(base: u64, i: u64) -> &'static AtomicU64 {
    // SAFETY: an aligned word of a mapping the caller guarantees; atomics make the
    // concurrent accesses of other threads (other lines of the same page) well-defined.
    unsafe { &*((base + i * LINE) as *const AtomicU64) }
}

/// Lines of writer `t` of `writers`.
fn lines(t: u64, writers: u64) -> impl Iterator<Item = u64> {
    (t..PAGES * PAGE / LINE).step_by(writers as usize)
}

/// Fills writer `t`'s lines with one pattern per round and checks them back, until `stop`.
/// Returns the mismatches (printing the first few) and counts rounds in `rounds`.
///
/// # Safety
/// As [`word`].
unsafe fn write_and_check(
    base: u64,
    side: u64,
    t: u64,
    writers: u64,
    until: impl Fn(u64) -> bool,
    rounds: &AtomicU64,
) -> u64 {
    let mut bad = 0;
    let mut round = 0;
    while !until(round) {
        round += 1;
        let want = pattern(side, t, round);
        for i in lines(t, writers) {
            // SAFETY: the caller's guarantee.
            unsafe { word(base, i) }.store(want, Ordering::Relaxed);
        }
        for i in lines(t, writers) {
            // SAFETY: as above.
            let got = unsafe { word(base, i) }.load(Ordering::Relaxed);
            if got != want {
                if bad < REPORT {
                    serial_println!(
                        "mismatch: side {} writer {t} line {i} (page {}): {got:#x}, wrote {want:#x}",
                        side >> 63,
                        i * LINE / PAGE
                    );
                }
                bad += 1;
            }
        }
    }
    rounds.fetch_add(round, Ordering::Relaxed);
    bad
}

/// The parent: a process with the buffer mapped, and a writer thread on every CPU but 0.
struct Parent {
    p: Arc<Process>,
    base: u64,
    writers: u64,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    threads: Vec<JoinHandle>,
}

impl Parent {
    fn start(name: &str) -> Parent {
        let cpus = online_count();
        assert!(cpus >= 2, "needs 2 CPUs or more");
        let p = Process::new(name).expect("process");
        let base = p.mm().mmap(0, PAGES * PAGE, RW, ANON).expect("mmap");
        let writers = (cpus as u64 - 1).min(WRITERS);
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let threads = (0..writers)
            .map(|t| {
                let (stop, rounds) = (stop.clone(), rounds.clone());
                p.spawn_on(t as usize + 1, "writer", move || {
                    let until = |_| stop.load(Ordering::Relaxed);
                    // SAFETY: the buffer stays mapped in this process until the test drops it,
                    // after joining this thread.
                    unsafe { write_and_check(base, 0, t, writers, until, &rounds) as i64 }
                })
                .expect("spawn writer")
            })
            .collect();
        Parent {
            p,
            base,
            writers,
            stop,
            rounds,
            threads,
        }
    }

    /// Stops the writers; their mismatches in all.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let bad = self.threads.into_iter().map(|t| t.join() as u64).sum();
        (bad, self.rounds.load(Ordering::Relaxed))
    }
}

/// An empty address space that can run threads (the kernel half mapped).
fn empty_mm() -> Mm {
    Mm::with_kernel_half(memory(), &kernel::memory::kernel_half()).expect("address space")
}

#[test_case]
fn dup_mmap_beside_writers_loses_no_write() {
    let baseline = free_frames();
    let forks = forks();
    let parent = Parent::start("fork-stress");
    let mm = parent.p.mm().clone();
    let start = now_ns();
    let forker = parent
        .p
        .spawn_on(0, "forker", move || {
            for n in 1..=forks {
                let child = empty_mm();
                mm.dup_mmap(&child).expect("dup_mmap");
                drop(child);
                if n % 5000 == 0 {
                    serial_println!("fork stress: {n} forks");
                }
            }
            0
        })
        .expect("spawn forker");
    assert_eq!(forker.join(), 0);
    let ns = now_ns() - start;
    let writers = parent.writers;
    let (bad, rounds) = parent.stop();
    serial_println!(
        "fork stress: {forks} forks in {} ms ({} us each) beside {writers} writers \
         ({rounds} rounds): {bad} mismatches",
        ns / 1_000_000,
        ns / 1000 / forks.max(1)
    );
    assert_eq!(bad, 0, "writes lost across dup_mmap");
    assert_eq!(free_frames(), baseline, "frames leaked");
}

#[test_case]
fn parent_and_child_see_only_their_own_writes() {
    let baseline = free_frames();
    let children = (forks() / 20).max(1);
    let parent = Parent::start("fork-both");
    let (base, writers) = (parent.base, parent.writers);
    let mm = parent.p.mm().clone();
    let child_rounds = Arc::new(AtomicU64::new(0));
    let counted = child_rounds.clone();
    let start = now_ns();
    let forker = parent
        .p
        .spawn_on(0, "forker", move || {
            let mut bad = 0;
            for _ in 0..children {
                let child = empty_mm();
                mm.dup_mmap(&child).expect("dup_mmap");
                let child = Process::with_mm("fork-child", child);
                let threads: Vec<JoinHandle> = (0..CHILD_THREADS.min(writers))
                    .map(|t| {
                        let counted = counted.clone();
                        child
                            .spawn("child-writer", move || {
                                // SAFETY: the child's copy of the buffer stays mapped until
                                // the child is dropped, after this thread is joined.
                                unsafe { child_writer(base, t, writers, &counted) as i64 }
                            })
                            .expect("spawn child writer")
                    })
                    .collect();
                bad += threads.into_iter().map(|t| t.join()).sum::<i64>();
            }
            bad
        })
        .expect("spawn forker");
    let child_bad = forker.join() as u64;
    let ns = now_ns() - start;
    let (bad, rounds) = parent.stop();
    serial_println!(
        "fork both: {children} children in {} ms, parent {writers} writers ({rounds} rounds): \
         {bad} mismatches; child threads ({} rounds): {child_bad} mismatches",
        ns / 1_000_000,
        child_rounds.load(Ordering::Relaxed)
    );
    assert_eq!(
        bad, 0,
        "the parent saw a write it did not make, or lost one"
    );
    assert_eq!(
        child_bad, 0,
        "a child saw a write it did not make, or lost one"
    );
    assert_eq!(free_frames(), baseline, "frames leaked");
}

/// A child thread, standing in for parent writer `t` (of `writers`): its lines must hold what
/// that writer wrote before the fork (or 0), then it writes and checks its own rounds, sharing
/// each page with the other child threads and with the parent's writers across the fork.
///
/// # Safety
/// As [`word`].
unsafe fn child_writer(base: u64, t: u64, writers: u64, rounds: &AtomicU64) -> u64 {
    let mut bad = 0;
    for i in lines(t, writers) {
        // SAFETY: the caller's guarantee.
        let got = unsafe { word(base, i) }.load(Ordering::Relaxed);
        if got != 0 && got & (CHILD | 0x7fff << 48) != t << 48 {
            if bad < REPORT {
                serial_println!("child {t}: line {i} inherited {got:#x}, not parent writer {t}'s");
            }
            bad += 1;
        }
    }
    // SAFETY: the caller's guarantee.
    bad + unsafe {
        write_and_check(
            base,
            CHILD,
            t,
            writers,
            |round| round >= CHILD_ROUNDS,
            rounds,
        )
    }
}
