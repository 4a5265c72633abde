//! Seeded fault injection: random sequences of mmap/munmap/mprotect/madvise and faults (through
//! the emulated MMU) during which frame allocations (data frames and page tables, from the
//! emulated pool) and maple-node allocations fail at random. Every operation must either
//! succeed or fail with its out-of-memory error, never panic; a failed operation must leave the
//! VMAs (the very same `Vma` objects) and every PTE exactly as they were; after every step the
//! tree and the page tables must agree with a model in which failed operations changed nothing
//! (`prop::check`); at the end every frame and every tree node must be back.
//!
//! Each case is one seed: it picks the operations, the failure probability and every failure.
//! A failing case prints its seed; `MM_INJECT_SEED=<seed>` replays just that case.
//!
//! Only allocations `mm` handles are injected: frames and maple nodes. Heap allocations of
//! `Vec`, `Box` and `Arc` (a new `Vma`, the tree writer's work lists, the `ZapFlush` frame lists,
//! `call_rcu` closures) abort the program when the host heap is out, as in any Rust program.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::prop::{CPUS, Model, WINDOW, addr, check, window_page};
use crate::address_space::AddressSpace;
use crate::fault::FaultResult;
use crate::maple::FailNodeAllocs;
use crate::ops::{MADV_DONTNEED, MadviseError, MmapError, MprotectError, MunmapError};
use crate::pgtable::Pte;
use crate::platform::emulated::{Emulated, FailRandomly};
use crate::platform::mmu;
use crate::testutil::{Env, PAGE, anon, fixed, prot_of};
use crate::vma::Prot;

const CASES: u64 = 48;
const LONG_CASES: u64 = 2_000;
const OPS: usize = 40;
/// Single-page VMAs of alternating protection mapped (without failures) before a case starts,
/// so that the tree has several levels and a write needs several nodes: a failure can then hit
/// a write that already made some.
const SETUP_VMAS: u64 = 48;

#[derive(Clone, Copy, Debug)]
enum Op {
    Mmap {
        page: u64,
        n: u64,
        prot: char,
        fixed: bool,
    },
    Munmap {
        page: u64,
        n: u64,
    },
    Mprotect {
        page: u64,
        n: u64,
        prot: char,
    },
    DontNeed {
        page: u64,
        n: u64,
    },
    Read {
        page: u64,
    },
    Write {
        page: u64,
        byte: u8,
    },
}

/// The SplitMix64 sequence of a seed, for the operations (the failures use [`FailRandomly`]).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_op(rng: &mut Rng) -> Op {
    // As in `prop`: around the 2 MiB boundary at page 512, so tables fill, empty and go.
    let page = match rng.below(3) {
        0 => rng.below(WINDOW),
        1 => 500 + rng.below(24),
        _ => 508 + rng.below(8),
    };
    let prot = ['n', 'r', 'w', 'x'][rng.below(4) as usize];
    match rng.below(8) {
        0 => Op::Mmap {
            page,
            n: 1 + rng.below(8),
            prot,
            fixed: rng.below(2) == 0,
        },
        1 => Op::Munmap {
            page,
            n: 1 + rng.below(12),
        },
        2 => Op::Mprotect {
            page,
            n: 1 + rng.below(8),
            prot,
        },
        3 => Op::DontNeed {
            page,
            n: 1 + rng.below(8),
        },
        4 | 5 => Op::Read { page },
        _ => Op::Write {
            page,
            byte: 1 + rng.below(255) as u8,
        },
    }
}

/// Whether the operation ran out of memory (and so must have changed nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    OutOfMemory,
}

fn apply(mm: &AddressSpace<Emulated>, model: &mut Model, op: Op) -> Outcome {
    match op {
        Op::Mmap {
            page,
            n,
            prot,
            fixed: is_fixed,
        } => {
            let first = window_page(page);
            let flags = if is_fixed { fixed() } else { anon() };
            match mm.mmap(addr(first), n * PAGE, prot_of(prot), flags) {
                Ok(got) => {
                    if is_fixed || (first..first + n).all(|p| !model.contains_key(&p)) {
                        assert_eq!(got, addr(first), "a free hint was not used");
                    }
                    for p in got / PAGE..got / PAGE + n {
                        model.insert(p, (prot_of(prot), 0));
                    }
                    Outcome::Done
                }
                Err(MmapError::OutOfMemory) => Outcome::OutOfMemory,
                Err(e) => panic!("mmap failed with {e:?}"),
            }
        }
        Op::Munmap { page, n } => {
            let first = window_page(page);
            match mm.munmap(addr(first), n * PAGE) {
                Ok(()) => {
                    for p in first..first + n {
                        model.remove(&p);
                    }
                    Outcome::Done
                }
                Err(MunmapError::OutOfMemory) => Outcome::OutOfMemory,
                Err(e) => panic!("munmap failed with {e:?}"),
            }
        }
        Op::Mprotect { page, n, prot } => {
            let first = window_page(page);
            let r = mm.mprotect(addr(first), n * PAGE, prot_of(prot));
            if !(first..first + n).all(|p| model.contains_key(&p)) {
                assert_eq!(r, Err(MprotectError::NotMapped));
                return Outcome::Done;
            }
            match r {
                Ok(()) => {
                    for p in first..first + n {
                        if let Some(e) = model.get_mut(&p) {
                            e.0 = prot_of(prot);
                        }
                    }
                    Outcome::Done
                }
                Err(MprotectError::OutOfMemory) => Outcome::OutOfMemory,
                Err(e) => panic!("mprotect failed with {e:?}"),
            }
        }
        Op::DontNeed { page, n } => {
            // Allocates nothing, so it cannot run out of memory.
            let first = window_page(page);
            let r = mm.madvise(addr(first), n * PAGE, MADV_DONTNEED);
            let mut all_mapped = true;
            for p in first..first + n {
                match model.get_mut(&p) {
                    Some(e) => e.1 = 0,
                    None => all_mapped = false,
                }
            }
            let want = if all_mapped {
                Ok(())
            } else {
                Err(MadviseError::NotMapped)
            };
            assert_eq!(r, want);
            Outcome::Done
        }
        Op::Read { page } => {
            let p = window_page(page);
            let got = mmu::load(mm, addr(p) + 8, true);
            match model.get(&p) {
                Some(&(prot, byte)) if !prot.is_empty() => match got {
                    Ok(v) => {
                        assert_eq!(v, u64::from(byte));
                        Outcome::Done
                    }
                    Err(FaultResult::Oom) => Outcome::OutOfMemory,
                    Err(e) => panic!("read of page {p:#x} failed: {e:?}"),
                },
                _ => {
                    assert!(
                        matches!(got, Err(FaultResult::Segv { .. })),
                        "read of page {p:#x} should fault: {got:?}"
                    );
                    Outcome::Done
                }
            }
        }
        Op::Write { page, byte } => {
            let p = window_page(page);
            let got = mmu::store(mm, addr(p) + 8, u64::from(byte), true);
            match model.get_mut(&p) {
                Some((prot, b)) if prot.contains(Prot::WRITE) => match got {
                    Ok(()) => {
                        *b = byte;
                        Outcome::Done
                    }
                    Err(FaultResult::Oom) => Outcome::OutOfMemory,
                    Err(e) => panic!("write to page {p:#x} failed: {e:?}"),
                },
                _ => {
                    assert!(
                        matches!(got, Err(FaultResult::Segv { .. })),
                        "write to page {p:#x} should fault: {got:?}"
                    );
                    Outcome::Done
                }
            }
        }
    }
}

/// What a failed operation must leave untouched: the VMA objects (by identity) with their
/// ranges and protections, and every PTE the model knows of or the window holds.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    vmas: Vec<(usize, u64, u64, Prot)>,
    ptes: BTreeMap<u64, Pte>,
}

fn snapshot(mm: &AddressSpace<Emulated>, model: &Model) -> Snapshot {
    let vmas = mm
        .vmas()
        .iter()
        .map(|v| {
            (
                alloc::sync::Arc::as_ptr(v) as usize,
                v.start(),
                v.end(),
                v.prot(),
            )
        })
        .collect();
    let window = window_page(0)..window_page(WINDOW + 16);
    let ptes = window
        .chain(model.keys().copied())
        .map(|p| (p, mm.page_tables().lookup_pte(addr(p))))
        .collect();
    Snapshot { vmas, ptes }
}

/// Prints the seed of a case that panics, so it can be replayed.
struct ReportSeed(u64);

impl Drop for ReportSeed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::eprintln!(
                "fault injection failed: replay with MM_INJECT_SEED={}",
                self.0
            );
        }
    }
}

/// Totals over the cases, to show the injection reached every kind of operation.
#[derive(Default, Debug)]
struct Totals {
    ops: u64,
    failed_ops: u64,
    failed_faults: u64,
    failed_tree_ops: u64,
    frame_failures: u64,
    node_failures: u64,
}

fn run_case(seed: u64, totals: &mut Totals) {
    let _report = ReportSeed(seed);
    let mut rng = Rng(seed);
    // 1%, 5%, 20% or 50% of the allocations fail.
    let per_million = [10_000, 50_000, 200_000, 500_000][rng.below(4) as usize];
    let env = Env::new(8, CPUS);
    let nodes_before = FailNodeAllocs::injected();
    {
        let mm = env.mm();
        let mut model = Model::new();
        for i in 0..SETUP_VMAS {
            let op = Op::Mmap {
                page: WINDOW - SETUP_VMAS + i,
                n: 1,
                prot: if i % 2 == 0 { 'r' } else { 'w' },
                fixed: true,
            };
            assert_eq!(apply(&mm, &mut model, op), Outcome::Done);
        }
        for _ in 0..OPS {
            let op = random_op(&mut rng);
            let cpu = rng.below(CPUS as u64) as usize;
            // One thread, moved between CPUs only between steps (nothing held then).
            env.p.bind_cpu(cpu);
            let before = snapshot(&mm, &model);
            let old_model = model.clone();
            // Empty caches, so that the operation's frame allocations reach the pool.
            env.mem.frames().drain_caches();
            env.p
                .fail_allocs_randomly(Some(FailRandomly::new(rng.next(), per_million)));
            let nodes = FailNodeAllocs::new(FailRandomly::new(rng.next(), per_million));
            let outcome = apply(&mm, &mut model, op);
            drop(nodes);
            env.p.fail_allocs_randomly(None);

            totals.ops += 1;
            if outcome == Outcome::OutOfMemory {
                totals.failed_ops += 1;
                match op {
                    Op::Read { .. } | Op::Write { .. } => totals.failed_faults += 1,
                    _ => totals.failed_tree_ops += 1,
                }
                assert_eq!(model, old_model);
                assert_eq!(
                    snapshot(&mm, &model),
                    before,
                    "{op:?} ran out of memory but changed the VMAs or the PTEs"
                );
            }
            check(&env, &mm, &model);
            env.mem.rcu().quiescent_state();
        }
        env.p.bind_cpu(0);
        env.mem.quiesce();
        let tree = mm.tree();
        assert_eq!(
            tree.allocated_nodes(),
            tree.reachable_nodes().unwrap(),
            "maple nodes leaked"
        );
    }
    env.assert_baseline();
    totals.frame_failures += env.p.injected_failures();
    totals.node_failures += FailNodeAllocs::injected() - nodes_before;
}

#[test]
fn ops_and_faults_fail_cleanly_under_random_allocation_failures() {
    let seeds: Vec<u64> = match std::env::var("MM_INJECT_SEED") {
        Ok(s) => std::vec![s.trim().parse().expect("MM_INJECT_SEED: a u64")],
        Err(_) => {
            let cases = if std::env::var_os("MM_TEST_LONG").is_some() {
                LONG_CASES
            } else {
                CASES
            };
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            (0..cases).map(|i| base.wrapping_add(i)).collect()
        }
    };
    let mut totals = Totals::default();
    for &seed in &seeds {
        run_case(seed, &mut totals);
    }
    std::eprintln!("fault injection: {} cases, {totals:?}", seeds.len());
    if seeds.len() > 1 {
        // Not a coverage wish: with these probabilities and 40 steps a case, a run where no
        // fault or no tree operation ran out of memory means the injection is not reaching it.
        assert!(
            totals.failed_faults > 0 && totals.failed_tree_ops > 0,
            "{totals:?}"
        );
        assert!(
            totals.frame_failures > 0 && totals.node_failures > 0,
            "{totals:?}"
        );
    }
}
