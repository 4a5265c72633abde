//! Fault injection on the machine: mmap, munmap, mprotect, madvise(MADV_DONTNEED) and page
//! faults run while frame allocations and maple-node allocations fail at random
//! (`kernel::memory::inject`, seeded). Every operation must succeed or fail with its
//! out-of-memory error and change nothing; a fault must resolve or end its thread with
//! `EXIT_OOM`. After every step the tree and the page tables are checked and every page holds
//! exactly what the model says; at the end every frame and the heap are back.
//!
//! The seed is printed; `FAULT_INJECT_SEED=<n>` at build time replays a run (steps run one at a
//! time, and step `i` reseeds the generator with `seed + i`, so a step's failures do not depend
//! on how many allocations earlier steps made).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

mod common;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use common::{ANON, PAGE, RW, free_frames, heap_used};
use kernel::memory::inject::{self, Rate};
use kernel::platform::{Mm, memory};
use kernel::process::{EXIT_OOM, Process};
use kernel::serial_println;
use mm::frame::FrameKind;
use mm::ops::{MADV_DONTNEED, MmapError, MprotectError, MunmapError};
use mm::pgtable::Pte;
use mm::platform::{PageTableFlags, PhysFrame};
use mm::vma::Prot;

kernel::test_kernel!();

const STEPS: u64 = 300;
const DEFAULT_SEED: u64 = 0x5eed_0001;
/// Frame allocations that fail while injection is on.
const FRAME_RATE: Rate = Rate::one_in(6);
/// Maple-node allocations that fail while injection is on.
const HEAP_RATE: Rate = Rate::one_in(4);
/// Heap a run may leave behind: vectors that grew a little past the first run's peak.
const HEAP_KEPT: usize = 4096;

/// A small xorshift for choosing steps (the injection has its own generator).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The VMAs as (range, protection): what a failed operation must leave unchanged.
fn layout(mm: &Mm) -> Vec<(Range<u64>, Prot)> {
    mm.vmas().iter().map(|v| (v.range(), v.prot())).collect()
}

/// The protection at `addr`, if mapped.
fn prot_at(l: &[(Range<u64>, Prot)], addr: u64) -> Option<Prot> {
    l.iter().find(|(r, _)| r.contains(&addr)).map(|&(_, p)| p)
}

/// Runs `f` with injection on (the step's own seed), drained per-CPU frame caches first so that
/// a failed pool allocation reaches `mm`. Adds the failures injected to `total`.
fn injected<T>(seed: u64, total: &mut inject::InjectStats, f: impl FnOnce() -> T) -> T {
    memory().frames().drain_caches();
    inject::enable(seed, FRAME_RATE, HEAP_RATE);
    let r = f();
    inject::disable();
    let s = inject::stats();
    total.frames += s.frames;
    total.heap += s.heap;
    r
}

/// One access of a fault step: write `value`, or read and expect `value`.
#[derive(Clone, Copy)]
struct Access {
    addr: u64,
    write: bool,
    value: u64,
}

/// Walks the user half of `mm`'s page tables: every table is a page-table frame, every PTE that
/// holds a frame lies in a VMA, is writable only where the VMA is, and holds the zero frame or
/// a mapped anonymous frame.
fn check_page_tables(mm: &Mm) {
    let l = layout(mm);
    let frames = memory().frames();
    let platform = memory().platform();
    let mut tables = 0;
    let mut stack: Vec<(PhysFrame, u32, u64)> = Vec::from([(mm.page_tables().root(), 4, 0)]);
    while let Some((table, level, base)) = stack.pop() {
        tables += 1;
        let entries = mm::frame::mem::words(&**platform, table);
        let used = if level == 4 { 256 } else { 512 };
        for (i, e) in entries.iter().take(used).enumerate() {
            let e = Pte::from_bits(e.load(Ordering::Relaxed));
            let addr = base + ((i as u64) << (12 + 9 * (level - 1)));
            if level > 1 {
                if e.flags().contains(PageTableFlags::PRESENT) {
                    assert_eq!(
                        frames.meta(e.frame()).kind(),
                        FrameKind::PageTable,
                        "table at {addr:#x}"
                    );
                    stack.push((e.frame(), level - 1, addr));
                }
                continue;
            }
            if !e.holds_frame() {
                continue;
            }
            let prot = prot_at(&l, addr)
                .unwrap_or_else(|| panic!("PTE {e:?} at {addr:#x} outside every VMA"));
            if e.flags().contains(PageTableFlags::WRITABLE) {
                assert!(
                    prot.contains(Prot::WRITE),
                    "writable PTE at {addr:#x} in a {prot:?} VMA"
                );
            }
            let f = e.frame();
            if f != frames.zero_frame() {
                let m = frames.meta(f);
                assert!(
                    m.kind() == FrameKind::Anon && m.mapcount() >= 1,
                    "PTE at {addr:#x}: frame {:?}",
                    m.kind()
                );
            }
        }
    }
    assert_eq!(tables, mm.page_tables().count_tables());
}

/// What the steps saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    oom: u64,
    fault_steps: u64,
    threads_oom: u64,
}

#[test_case]
fn every_operation_fails_cleanly_or_succeeds_under_injected_allocation_failures() {
    let seed: u64 = option_env!("FAULT_INJECT_SEED")
        .map_or(DEFAULT_SEED, |s| s.parse().expect("FAULT_INJECT_SEED"));
    serial_println!("fault_inject: seed {seed} (replay: FAULT_INJECT_SEED={seed})");
    // A first run grows what stays grown (the scheduler's and stack allocator's vectors, RCU
    // callback queues) before the baselines are taken.
    run_steps(!seed);
    let frames_before = free_frames();
    let heap_before = heap_used();
    let (t, injected_total) = run_steps(seed);
    serial_println!(
        "fault_inject: {STEPS} steps: {} ok, {} out of memory, {} fault steps ({} threads ended by OOM); {} frame and {} maple-node allocations failed",
        t.ok,
        t.oom,
        t.fault_steps,
        t.threads_oom,
        injected_total.frames,
        injected_total.heap
    );
    assert!(
        injected_total.frames > 0 && injected_total.heap > 0,
        "injection never hit"
    );
    assert!(t.oom > 0, "no operation saw an out-of-memory error");
    assert!(t.threads_oom > 0, "no fault ran out of memory");
    let frames_after = free_frames();
    assert_eq!(
        frames_after, frames_before,
        "frames leaked (or freed twice)"
    );
    let heap_after = heap_used();
    serial_println!(
        "fault_inject: heap {} bytes above its baseline",
        heap_after as i64 - heap_before as i64
    );
    assert!(
        heap_after <= heap_before + HEAP_KEPT,
        "heap leaked: {heap_before} bytes before, {heap_after} after"
    );
}

/// Runs [`STEPS`] random steps with injection in a new process, checking each, then reads every
/// page back and drops the process.
fn run_steps(seed: u64) -> (Tally, inject::InjectStats) {
    let p = Process::new("inject").expect("process");
    let mm = p.mm().clone();
    let mut rng = Rng(seed | 1);
    // Word 0 of every page written so far (absent: the page reads zero).
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut injected_total = inject::InjectStats::default();
    let mut t = Tally::default();
    for step in 0..STEPS {
        let s = seed.wrapping_add(step);
        let before = layout(&mm);
        // A range in or around a VMA, or a fresh one when there is none.
        let pick = |rng: &mut Rng| -> Option<Range<u64>> {
            let (r, _) = before.get(rng.below(before.len() as u64) as usize)?;
            let pages = (r.end - r.start) / PAGE;
            let first = rng.below(pages);
            let len = 1 + rng.below(pages - first);
            Some(r.start + first * PAGE..r.start + (first + len) * PAGE)
        };
        match rng.below(10) {
            0..=1 => {
                let len = (1 + rng.below(8)) * PAGE;
                let prot = if rng.below(3) == 0 { Prot::READ } else { RW };
                match injected(s, &mut injected_total, || mm.mmap(0, len, prot, ANON)) {
                    Ok(a) => {
                        t.ok += 1;
                        assert!(
                            (a..a + len)
                                .step_by(PAGE as usize)
                                .all(|x| prot_at(&layout(&mm), x) == Some(prot))
                        );
                        assert!(
                            model.range(a..a + len).next().is_none(),
                            "fresh mapping over live data"
                        );
                    }
                    Err(MmapError::OutOfMemory) => {
                        t.oom += 1;
                        assert_eq!(layout(&mm), before, "a failed mmap changed the mappings");
                    }
                    Err(e) => panic!("step {step}: mmap: {e:?}"),
                }
            }
            2 => {
                let Some(r) = pick(&mut rng) else { continue };
                match injected(s, &mut injected_total, || {
                    mm.munmap(r.start, r.end - r.start)
                }) {
                    Ok(()) => {
                        t.ok += 1;
                        assert!(
                            r.clone()
                                .step_by(PAGE as usize)
                                .all(|x| prot_at(&layout(&mm), x).is_none())
                        );
                        let gone: Vec<u64> = model.range(r).map(|(&k, _)| k).collect();
                        for k in gone {
                            model.remove(&k);
                        }
                    }
                    Err(MunmapError::OutOfMemory) => {
                        t.oom += 1;
                        assert_eq!(layout(&mm), before, "a failed munmap changed the mappings");
                    }
                    Err(e) => panic!("step {step}: munmap: {e:?}"),
                }
            }
            3..=4 => {
                let Some(r) = pick(&mut rng) else { continue };
                let prot = [Prot::READ, RW, Prot::empty()][rng.below(3) as usize];
                match injected(s, &mut injected_total, || {
                    mm.mprotect(r.start, r.end - r.start, prot)
                }) {
                    Ok(()) => {
                        t.ok += 1;
                        assert!(
                            r.step_by(PAGE as usize)
                                .all(|x| prot_at(&layout(&mm), x) == Some(prot))
                        );
                    }
                    Err(MprotectError::OutOfMemory) => {
                        t.oom += 1;
                        assert_eq!(
                            layout(&mm),
                            before,
                            "a failed mprotect changed the mappings"
                        );
                    }
                    Err(e) => panic!("step {step}: mprotect: {e:?}"),
                }
            }
            5 => {
                let Some(r) = pick(&mut rng) else { continue };
                injected(s, &mut injected_total, || {
                    mm.madvise(r.start, r.end - r.start, MADV_DONTNEED)
                })
                .unwrap_or_else(|e| panic!("step {step}: madvise: {e:?}"));
                t.ok += 1;
                assert_eq!(layout(&mm), before);
                let gone: Vec<u64> = model.range(r).map(|(&k, _)| k).collect();
                for k in gone {
                    model.remove(&k);
                }
            }
            _ => {
                // What each page holds once the accesses before it have run.
                let mut now: BTreeMap<u64, u64> = BTreeMap::new();
                let accesses: Vec<Access> = (0..1 + rng.below(24))
                    .filter_map(|k| {
                        let r = pick(&mut rng)?;
                        let prot = prot_at(&before, r.start)?;
                        if !prot.contains(Prot::READ) {
                            return None;
                        }
                        let write = prot.contains(Prot::WRITE) && rng.below(3) != 0;
                        let value = if write {
                            now.insert(r.start, (s << 16) | k | 1 << 63);
                            (s << 16) | k | 1 << 63
                        } else {
                            now.get(&r.start)
                                .or(model.get(&r.start))
                                .copied()
                                .unwrap_or(0)
                        };
                        Some(Access {
                            addr: r.start,
                            write,
                            value,
                        })
                    })
                    .collect();
                memory().frames().drain_caches();
                let (code, done) = run_accesses(&p, &accesses, Some(s));
                let s = inject::stats();
                injected_total.frames += s.frames;
                injected_total.heap += s.heap;
                t.fault_steps += 1;
                match code {
                    0 => assert_eq!(done, accesses.len()),
                    EXIT_OOM => t.threads_oom += 1,
                    c => panic!("step {step}: the faulting thread ended with {c}"),
                }
                // The writes that ran, in order.
                for a in accesses.iter().take(done).filter(|a| a.write) {
                    model.insert(a.addr, a.value);
                }
            }
        }
        mm.validate()
            .unwrap_or_else(|e| panic!("step {step}: {e:?}"));
        check_page_tables(&mm);
    }
    // Every page holds what the model says, read with injection off.
    let all: Vec<Access> = layout(&mm)
        .iter()
        .filter(|(_, prot)| prot.contains(Prot::READ))
        .flat_map(|(r, _)| r.clone().step_by(PAGE as usize))
        .map(|addr| Access {
            addr,
            write: false,
            value: model.get(&addr).copied().unwrap_or(0),
        })
        .collect();
    assert_eq!(run_accesses(&p, &all, None).0, 0, "final read-back");
    drop(mm);
    drop(p);
    (t, injected_total)
}

/// The accesses the faulting thread makes, and how many it finished. Statics, not captured by
/// the thread: a thread ended by a fault never returns, so what it owned would never be freed.
static ACCESSES: spin::Mutex<Vec<Access>> = spin::Mutex::new(Vec::new());
static DONE: AtomicUsize = AtomicUsize::new(0);

/// Runs `accesses` in a thread of `p`, with injection on if `seed` is given; returns its exit
/// code and how many accesses completed. The thread is started with injection off (its stack
/// comes from the frame pool) and turns it on itself; a fault that finds no memory ends the
/// thread before it turns it off again, so this does.
fn run_accesses(p: &Process, accesses: &[Access], seed: Option<u64>) -> (i64, usize) {
    *ACCESSES.lock() = accesses.to_vec();
    DONE.store(0, Ordering::Relaxed);
    let h = p
        .spawn("accesses", move || {
            if let Some(seed) = seed {
                inject::enable(seed, FRAME_RATE, HEAP_RATE);
            }
            let mut k = 0;
            loop {
                // Copied out one at a time: the lock is never held across a fault.
                let next = ACCESSES.lock().get(k).copied();
                let Some(a) = next else { break };
                let ptr = a.addr as *mut u64;
                if a.write {
                    // SAFETY: the page lies in a writable VMA of this address space (checked
                    // by the caller with nothing else running in it).
                    unsafe { ptr.write_volatile(a.value) };
                } else {
                    // SAFETY: as above, readable.
                    let v = unsafe { ptr.read_volatile() };
                    if v != a.value {
                        serial_println!(
                            "fault_inject: page {:#x} holds {v:#x}, expected {:#x}",
                            a.addr,
                            a.value
                        );
                        return 1;
                    }
                }
                k += 1;
                DONE.store(k, Ordering::Release);
            }
            inject::disable();
            0
        })
        .expect("spawn");
    let code = h.join();
    inject::disable();
    ACCESSES.lock().clear();
    (code, DONE.load(Ordering::Acquire))
}
