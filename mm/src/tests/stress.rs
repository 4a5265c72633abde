//! Threads as CPUs: three fault their own regions, write and re-check tagged values and move
//! half of them away with mremap now and then, while a fourth churns mmap/mprotect/munmap in
//! between (sharing page-table pages with them) and a
//! fifth reads the churned ranges and the faulters' words from its own TLB, so every munmap and
//! downgrade has another CPU's stale translations to shoot down. Every thread re-reads its data;
//! afterwards every frame is back. Prints the counters and checks that the per-VMA fast path
//! took the common case.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::address_space::AddressSpace;
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::stats::Event;
use crate::testutil::{Env, PAGE, anon, fixed};
use crate::vma::Prot;

const FAULTERS: usize = 3;
const PAGES: u64 = 48;
/// Each faulter's region; the churner works in the gaps between them (same PTE tables).
const REGION: u64 = 0x4000_0000;
const STRIDE: u64 = 128 * PAGE;
const RUN: Duration = Duration::from_secs(3);

fn region(t: usize) -> u64 {
    REGION + t as u64 * STRIDE
}

fn faulter(mm: &AddressSpace<Emulated>, t: usize, stop: &AtomicBool) -> u64 {
    let rw = Prot::READ | Prot::WRITE;
    let base = region(t);
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // A fresh mapping each round, so every round faults every page again.
        mm.mmap(base, PAGES * PAGE, rw, fixed()).unwrap();
        let tag = |p: u64| ((t as u64) << 48) | (round << 16) | p;
        for p in 0..PAGES {
            mmu::store(mm, base + p * PAGE + 8 * (p % 64), tag(p), true).unwrap();
        }
        for p in 0..PAGES {
            let got = mmu::load(mm, base + p * PAGE + 8 * (p % 64), true).unwrap();
            assert_eq!(got, tag(p), "thread {t} lost its data at page {p}");
        }
        // Half the rounds also flip the protection and check data survives and the downgrade
        // reached this CPU's TLB.
        if round % 2 == 1 {
            mm.mprotect(base, PAGES / 2 * PAGE, Prot::READ).unwrap();
            assert!(
                mmu::store(mm, base + 8 * 64, 0, true).is_err(),
                "thread {t} wrote a page it made read-only"
            );
            for p in 0..PAGES {
                let got = mmu::load(mm, base + p * PAGE + 8 * (p % 64), true).unwrap();
                assert_eq!(got, tag(p));
            }
        }
        // Every third round the second (writable) half moves away with mremap, its pages with
        // it, while the others fault next door and the prober reads the range it leaves.
        if round.is_multiple_of(3) {
            let half = PAGES / 2 * PAGE;
            let may_move = crate::ops::MremapFlags::MAYMOVE.bits();
            let to = mm.mremap(base + half, half, half, may_move, 0).unwrap();
            for p in PAGES / 2..PAGES {
                let at = to + (p - PAGES / 2) * PAGE + 8 * (p % 64);
                assert_eq!(
                    mmu::load(mm, at, true),
                    Ok(tag(p)),
                    "thread {t}: page {p} moved"
                );
            }
            mm.munmap(to, half).unwrap();
        }
        mm.munmap(base, PAGES * PAGE).unwrap();
        mm.memory().rcu().quiescent_state();
        round += 1;
    }
    round
}

fn churner(mm: &AddressSpace<Emulated>, stop: &AtomicBool) -> u64 {
    let mut ops = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // In the gap after some faulter's region, never touching it.
        let t = (seed % FAULTERS as u64) as usize;
        let at = region(t) + (PAGES + 8 + seed % 32) * PAGE;
        let n = 1 + (seed >> 8) % 16;
        let prot = [
            Prot::READ,
            Prot::READ | Prot::WRITE,
            Prot::READ | Prot::EXEC,
        ][(seed >> 16) as usize % 3];
        match (seed >> 24) % 4 {
            0 | 1 => {
                mm.mmap(at, n * PAGE, prot, fixed()).unwrap();
                if prot.contains(Prot::WRITE) {
                    mmu::store(mm, at, seed, true).unwrap();
                    assert_eq!(mmu::load(mm, at, true), Ok(seed));
                }
            }
            2 => {
                let _ = mm.mprotect(at, n * PAGE, prot);
            }
            _ => mm.munmap(at, n * PAGE).unwrap(),
        }
        // Anywhere-mappings exercise the gap search.
        if seed.is_multiple_of(7) {
            let a = mm.mmap(0, 4 * PAGE, Prot::READ, anon()).unwrap();
            mm.munmap(a, 4 * PAGE).unwrap();
        }
        mm.memory().rcu().quiescent_state();
        ops += 1;
    }
    ops
}

/// Reads the churner's zones, which are replaced, locked and detached all the time: exercises
/// VMA_LOCK_ABORT/MISS and the fallback. Any outcome but a wrong value is fine there: the
/// churner writes only the first word of a page, so the word read here is 0 unless a stale
/// translation reached a frame that went on to be used for something else. It also reads the
/// faulters' tagged words while they are written, unmapped and mapped again: a word is 0 or the
/// tag of that faulter and page, whatever the round; anything else came through a translation
/// that outlived its mapping.
fn prober(mm: &AddressSpace<Emulated>, stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for t in 0..FAULTERS {
            for p in (PAGES + 8..PAGES + 48).step_by(3) {
                let r = mmu::load(mm, region(t) + p * PAGE + 8, true);
                assert!(matches!(r, Ok(0) | Err(_)), "prober read {r:?}");
                n += 1;
            }
            for p in (0..PAGES).step_by(5) {
                if let Ok(v) = mmu::load(mm, region(t) + p * PAGE + 8 * (p % 64), true) {
                    assert!(
                        v == 0 || (v >> 48 == t as u64 && v & 0xffff == p),
                        "prober read {v:#x} at page {p} of thread {t}"
                    );
                }
                n += 1;
            }
        }
        mm.memory().rcu().quiescent_state();
        std::thread::sleep(Duration::from_micros(200));
    }
    n
}

#[test]
fn stress_faults_under_concurrent_mmap_munmap_mprotect() {
    let env = Env::new(16, FAULTERS + 2);
    {
        let mm = env.mm();
        let stop = AtomicBool::new(false);
        let (rounds, churn): (Vec<u64>, u64) = std::thread::scope(|s| {
            let hs: Vec<_> = (0..FAULTERS)
                .map(|t| {
                    let (mm, stop) = (&mm, &stop);
                    env.p.spawn_cpu(s, t, move || faulter(mm, t, stop))
                })
                .collect();
            let (mm2, stop2) = (&mm, &stop);
            let ch = env.p.spawn_cpu(s, FAULTERS, move || churner(mm2, stop2));
            let pr = env.p.spawn_cpu(s, FAULTERS + 1, move || prober(mm2, stop2));
            let t0 = Instant::now();
            while t0.elapsed() < RUN {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
            assert!(pr.join().unwrap() > 0);
            (
                hs.into_iter().map(|h| h.join().unwrap()).collect(),
                ch.join().unwrap(),
            )
        });
        mm.validate().unwrap();
        let s = env.mem.stats().snapshot();
        std::println!("stress: rounds per faulter {rounds:?}, churn ops {churn}");
        std::println!("stress: {s}");
        assert!(rounds.iter().all(|&r| r > 0) && churn > 0);
        // Faults at addresses with no VMA (the prober's) abort by design; judge the rest.
        let ok = s.get(Event::VmaLockSuccess);
        let with_vma = s.get(Event::Fault) - s.get(Event::Segv);
        assert!(with_vma > 1000, "too few faults to judge: {with_vma}");
        assert!(
            ok * 10 >= with_vma * 9,
            "fast path not the common case: {ok} of {with_vma}"
        );
    }
    env.assert_baseline();
}
