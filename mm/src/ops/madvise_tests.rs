//! `madvise`: pictures of what DONTNEED zaps and keeps, errors, the shootdown-before-free order,
//! faults racing DONTNEED on the same VMA, and random operation sequences against a model.

extern crate std;

use alloc::sync::Arc;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::address_space::AddressSpace;
use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
use crate::frame::{FrameKind, mem};
use crate::memory::Memory;
use crate::pgtable::{Pte, USER_END};
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::platform::probe::Probe;
use crate::platform::{CpuMask, PageTableFlags, Platform};
use crate::stats::{Event, StatsSnapshot};
use crate::testutil::{Env, PAGE, PIC_BASE, draw, fixed, picture, prot_of};
use crate::vma::Prot;

fn page(i: u64) -> u64 {
    PIC_BASE + i * PAGE
}

const HINTS: [i32; 6] = [
    MADV_NORMAL,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
];

fn dontneed_counts(since: &StatsSnapshot, env: &Env) -> (u64, u64) {
    let s = env.mem.stats().snapshot().since(since);
    (
        s.get(Event::MadvDontneedVmaLock),
        s.get(Event::MadvDontneedMmapLock),
    )
}

#[test]
fn dontneed_zeroes_the_range_frees_exactly_its_frames_and_keeps_the_vmas() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        draw(&mm, "wwwwww");
        for i in 0..6 {
            mmu::store(&mm, page(i) + 8, 100 + i, true).unwrap();
        }
        env.mem.quiesce();
        let free = env.p.free_frames();
        let (shootdowns, _) = env.p.shootdown_stats();
        let before = env.mem.stats().snapshot();

        assert_eq!(mm.madvise(page(1), 3 * PAGE, MADV_DONTNEED), Ok(()));
        assert_eq!(
            dontneed_counts(&before, &env),
            (1, 0),
            "not the VMA-lock path"
        );
        assert!(env.p.shootdown_stats().0 > shootdowns, "no shootdown");
        env.mem.quiesce();
        assert_eq!(
            env.p.free_frames(),
            free + 3,
            "not exactly the 3 zapped frames"
        );
        assert_eq!(picture(&mm, 6), ("AAAAAA".into(), "wwwwww".into()));
        for i in 1..4 {
            assert_eq!(mm.page_tables().lookup_pte(page(i)), Pte::EMPTY);
        }
        for i in 0..6 {
            let want = if (1..4).contains(&i) { 0 } else { 100 + i };
            assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(want), "page {i}");
        }
        // Reading the zapped pages mapped the zero frame: still no frame taken.
        env.mem.quiesce();
        assert_eq!(env.p.free_frames(), free + 3);

        // A length that is not a page multiple covers the page it ends in; MADV_FREE zaps too.
        assert_eq!(mm.madvise(page(4), 1, MADV_FREE), Ok(()));
        assert_eq!(mmu::load(&mm, page(4) + 8, true), Ok(0));
        assert_eq!(mmu::load(&mm, page(5) + 8, true), Ok(105));
        // The pages work as fresh ones afterwards.
        mmu::store(&mm, page(2) + 8, 7, true).unwrap();
        assert_eq!(mmu::load(&mm, page(2) + 8, true), Ok(7));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn dontneed_across_vmas_and_holes_applies_to_the_mapped_parts() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        draw(&mm, "ww rrw  w");
        for i in [0, 1, 5, 8] {
            mmu::store(&mm, page(i) + 8, 100 + i, true).unwrap();
        }
        for i in [3, 4] {
            assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(0));
        }
        env.mem.quiesce();
        let free = env.p.free_frames();

        // Several VMAs, no hole: mmap_lock path.
        let before = env.mem.stats().snapshot();
        assert_eq!(
            mm.madvise(page(1), 4 * PAGE, MADV_DONTNEED),
            Err(MadviseError::NotMapped)
        );
        assert_eq!(dontneed_counts(&before, &env), (0, 1));
        let before = env.mem.stats().snapshot();
        assert_eq!(mm.madvise(page(4), 2 * PAGE, MADV_DONTNEED), Ok(()));
        assert_eq!(dontneed_counts(&before, &env), (0, 1));
        for i in [1, 3, 4, 5] {
            assert_eq!(mm.page_tables().lookup_pte(page(i)), Pte::EMPTY, "page {i}");
        }
        assert_eq!(mmu::load(&mm, page(0) + 8, true), Ok(100));
        assert_eq!(mmu::load(&mm, page(8) + 8, true), Ok(108));

        // Starting in a hole, ending past the last VMA: still applied in between.
        mmu::store(&mm, page(5) + 8, 9, true).unwrap();
        let before = env.mem.stats().snapshot();
        assert_eq!(
            mm.madvise(page(2), 10 * PAGE, MADV_DONTNEED),
            Err(MadviseError::NotMapped)
        );
        assert_eq!(dontneed_counts(&before, &env), (0, 1));
        assert_eq!(mmu::load(&mm, page(5) + 8, true), Ok(0));
        assert_eq!(mmu::load(&mm, page(8) + 8, true), Ok(0));
        assert_eq!(mmu::load(&mm, page(0) + 8, true), Ok(100));

        env.mem.quiesce();
        assert_eq!(env.p.free_frames(), free + 3, "frames of pages 1, 5 and 8");
        assert_eq!(picture(&mm, 9), ("AA BBC  D".into(), "ww rrw  w".into()));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn invalid_arguments_are_errors_and_change_nothing() {
    let env = Env::new(4, 1);
    let mm = env.mm();
    draw(&mm, "w");
    mmu::store(&mm, page(0) + 8, 5, true).unwrap();
    let bad = |e| Err(MadviseError::BadRange(e));
    for advice in [5, 7, 9, 16, 100, -1, i32::MIN] {
        assert_eq!(
            mm.madvise(page(0), PAGE, advice),
            Err(MadviseError::BadAdvice(advice))
        );
    }
    // The advice is checked first, as Linux does.
    assert_eq!(
        mm.madvise(page(0) + 1, PAGE, 5),
        Err(MadviseError::BadAdvice(5))
    );
    assert_eq!(
        mm.madvise(page(0) + 8, PAGE, MADV_DONTNEED),
        bad(RangeError::Unaligned)
    );
    assert_eq!(
        mm.madvise(page(0) + 8, 0, MADV_DONTNEED),
        bad(RangeError::Unaligned)
    );
    assert_eq!(
        mm.madvise(page(0), u64::MAX, MADV_DONTNEED),
        bad(RangeError::Overflow)
    );
    // `start + len` wraps to 0 (Linux: EINVAL, not ENOMEM).
    assert_eq!(
        mm.madvise(!0xfff, PAGE, MADV_DONTNEED),
        bad(RangeError::Overflow)
    );
    // Nothing to do is success, mapped or not.
    assert_eq!(mm.madvise(page(0), 0, MADV_DONTNEED), Ok(()));
    assert_eq!(mm.madvise(page(7), 0, MADV_NORMAL), Ok(()));
    // Unmapped, including what can never be mapped.
    for (addr, len) in [
        (0, PAGE),
        (page(3), PAGE),
        (USER_END - PAGE, 2 * PAGE),
        (USER_END, PAGE),
        (!0xfff - PAGE, PAGE),
    ] {
        assert_eq!(
            mm.madvise(addr, len, MADV_DONTNEED),
            Err(MadviseError::NotMapped),
            "{addr:#x}"
        );
    }
    assert_eq!(mmu::load(&mm, page(0) + 8, true), Ok(5));
}

#[test]
fn hints_change_nothing_but_report_holes() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        draw(&mm, "wr");
        mmu::store(&mm, page(0) + 8, 11, true).unwrap();
        let shootdowns = env.p.shootdown_stats().0;
        for advice in HINTS {
            assert_eq!(mm.madvise(page(0), 2 * PAGE, advice), Ok(()));
            assert_eq!(
                mm.madvise(page(0), 3 * PAGE, advice),
                Err(MadviseError::NotMapped)
            );
            assert_eq!(mmu::load(&mm, page(0) + 8, true), Ok(11));
        }
        assert_eq!(env.p.shootdown_stats().0, shootdowns);
        assert_eq!(picture(&mm, 2), ("AB".into(), "wr".into()));
    }
    env.assert_baseline();
}

/// The zapped frames are still allocated when the shootdown starts (a CPU may write through a
/// stale TLB entry until it is flushed), the shootdown reaches every CPU that ran the address
/// space (CPU ids 0 and 3 here: sparse), and the frames are free afterwards.
#[test]
fn frames_are_freed_only_after_the_shootdown_to_every_cpu_that_ran_the_mm() {
    let p = Arc::new(Probe::new(4, &[0, 3]));
    p.emulated().bind_cpu(0);
    let mem = Memory::new(p.clone()).unwrap();
    mem.quiesce();
    let base = p.emulated().free_frames();
    {
        let mm = AddressSpace::new(&mem).unwrap();
        mm.mmap(page(0), 4 * PAGE, Prot::READ | Prot::WRITE, fixed())
            .unwrap();
        mmu::store(&mm, page(0), 1, true).unwrap();
        mmu::store(&mm, page(1), 1, true).unwrap();
        std::thread::scope(|s| {
            p.emulated().spawn_cpu(s, 1, || {
                mmu::store(&mm, page(2), 1, true).unwrap();
                mmu::store(&mm, page(3), 1, true).unwrap();
            });
        });
        let frames: Vec<_> = (0..4)
            .map(|i| mm.page_tables().lookup_pte(page(i)).frame())
            .collect();
        // Per shootdown: its targets and the kinds of the zapped frames at that moment.
        type Seen = Vec<(CpuMask, Vec<FrameKind>)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        {
            let (weak, seen, frames) = (Arc::downgrade(&mem), seen.clone(), frames.clone());
            p.on_shootdown(std::boxed::Box::new(move |cpus| {
                let mem = weak.upgrade().unwrap();
                let kinds = frames
                    .iter()
                    .map(|&f| mem.frames().meta(f).kind())
                    .collect();
                seen.lock().unwrap().push((cpus, kinds));
            }));
        }
        assert_eq!(mm.madvise(page(0), 4 * PAGE, MADV_DONTNEED), Ok(()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one shootdown for the range");
        let (cpus, kinds) = &seen[0];
        assert!(cpus.contains(0) && cpus.contains(3), "targets {cpus:?}");
        assert!(
            kinds.iter().all(|&k| k == FrameKind::Anon),
            "a frame was freed before the shootdown: {kinds:?}"
        );
        for f in frames {
            assert_eq!(mem.frames().meta(f).kind(), FrameKind::Free);
        }
    }
    mem.quiesce();
    assert_eq!(p.emulated().free_frames(), base, "frames leaked");
}

/// DONTNEED never frees page tables (faults may be using them): an emptied PTE table stays until
/// munmap, which frees it.
#[test]
fn emptied_pte_tables_stay_until_munmap() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        draw(&mm, "www");
        for i in 0..3 {
            mmu::store(&mm, page(i), 1, true).unwrap();
        }
        let pt = mm.page_tables();
        let tables = pt.count_tables();
        assert_eq!(mm.madvise(page(0), 3 * PAGE, MADV_DONTNEED), Ok(()));
        assert_eq!(
            pt.count_tables(),
            tables,
            "a table was freed under a read lock"
        );
        assert_eq!(env.mem.stats().snapshot().get(Event::PgtableFree), 0);
        mm.munmap(page(0), 3 * PAGE).unwrap();
        assert_eq!(pt.count_tables(), tables - 1);
    }
    env.assert_baseline();
}

/// Loads or stores the word at `addr` as the MMU would, faulting as needed, but with the PTE read
/// and the frame accessed under the PTE lock. The emulated MMU (`mmu`) does not make a shootdown
/// wait for an access in flight, so through it a store could land in a frame a zap had already
/// freed and reused, which real hardware rules out (a shootdown IPI is taken between
/// instructions); holding the PTE lock makes each access atomic with respect to the zap instead.
fn locked_access<P: Platform>(mm: &AddressSpace<P>, addr: u64, store: Option<u64>) -> u64 {
    let platform = mm.memory().platform();
    platform.preempt_disable();
    mm.activate_on(platform.cpu_id());
    platform.preempt_enable();
    let kind = if store.is_some() {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    loop {
        if let Some(pte) = mm.page_tables().pte_offset_map_lock(addr) {
            let e = pte.get(addr);
            let f = e.flags();
            if f.contains(PageTableFlags::PRESENT)
                && (store.is_none() || f.contains(PageTableFlags::WRITABLE))
            {
                let word = &mem::words(&**platform, e.frame())[((addr & 0xfff) / 8) as usize];
                return match store {
                    Some(v) => {
                        word.store(v, Ordering::Relaxed);
                        v
                    }
                    None => word.load(Ordering::Relaxed),
                };
            }
        }
        let r = handle_mm_fault(mm, addr, Access::user(kind));
        assert_eq!(r, FaultResult::Resolved, "fault at {addr:#x}");
    }
}

const RACE_FAULTERS: u64 = 3;
/// Pages of the VMA the race runs in; it straddles a 2 MiB boundary (two PTE tables).
const RACE_PAGES: u64 = 96;
const RACE_BASE: u64 = 0x4000_0000 - 48 * PAGE;

/// What faulter `t` writes into page `p` in round `round`: owner, round and page, so a value
/// that reached the wrong page or survived a zap it should not have is recognised.
fn race_tag(t: u64, round: u64, p: u64) -> u64 {
    ((t + 1) << 56) | (round << 16) | p
}

/// Three faulting threads write and re-read their own pages (interleaved, so they share the VMA
/// and its PTE tables) and read each other's, while a fourth DONTNEEDs random ranges of the same
/// VMA in a loop (within it: VMA-lock path; running past its end: `mmap_lock` path). Every value
/// read is the reader's own last write or zero (its own pages), or a well-formed tag of that
/// page or zero (other pages). Afterwards the frames in use are exactly the mapped pages plus
/// the page tables, and after munmap every frame is back.
#[test]
fn faults_racing_dontneed_on_the_same_vma_lose_nothing() {
    let env = Env::new(16, RACE_FAULTERS as usize + 1);
    let base = env.p.free_frames();
    {
        let mm = env.mm();
        let rw = Prot::READ | Prot::WRITE;
        mm.mmap(RACE_BASE, RACE_PAGES * PAGE, rw, fixed()).unwrap();
        let stop = AtomicBool::new(false);
        let zaps = AtomicU64::new(0);
        let before = env.mem.stats().snapshot();
        let rounds: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..RACE_FAULTERS)
                .map(|t| {
                    let (mm, stop) = (&mm, &stop);
                    env.p.spawn_cpu(s, t as usize, move || {
                        let mut round = 0;
                        while !stop.load(Ordering::Relaxed) {
                            race_round(mm, t, round);
                            mm.memory().rcu().quiescent_state();
                            round += 1;
                        }
                        round
                    })
                })
                .collect();
            let (mm, stop, zaps) = (&mm, &stop, &zaps);
            env.p.spawn_cpu(s, RACE_FAULTERS as usize, move || {
                let mut seed = 0x2545_f491_4f6c_dd1du64;
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let first = seed % RACE_PAGES;
                    let n = 1 + (seed >> 8) % 24;
                    let r = mm.madvise(RACE_BASE + first * PAGE, n * PAGE, MADV_DONTNEED);
                    if first + n <= RACE_PAGES {
                        assert_eq!(r, Ok(()));
                    } else {
                        assert_eq!(r, Err(MadviseError::NotMapped));
                    }
                    zaps.fetch_add(1, Ordering::Relaxed);
                    mm.memory().rcu().quiescent_state();
                }
            });
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(1500) {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (vma_lock, mmap_lock) = dontneed_counts(&before, &env);
        std::println!(
            "madvise race: rounds {rounds:?}, zaps {}, vma-lock {vma_lock}, mmap-lock {mmap_lock}",
            zaps.load(Ordering::Relaxed)
        );
        assert!(rounds.iter().all(|&r| r > 0));
        assert!(vma_lock > 0 && mmap_lock > 0, "both paths taken");
        mm.validate().unwrap();
        let vmas = mm.vmas();
        assert_eq!(vmas.len(), 1, "DONTNEED changed the VMAs");
        assert_eq!(vmas[0].range(), RACE_BASE..RACE_BASE + RACE_PAGES * PAGE);

        // Frame accounting: exactly the mapped (non-zero-frame) pages and the tables are in use.
        let zero = env.mem.frames().zero_frame();
        let mapped = (0..RACE_PAGES)
            .map(|p| mm.page_tables().lookup_pte(RACE_BASE + p * PAGE))
            .filter(|&e| !e.is_empty() && e.frame() != zero)
            .count();
        env.mem.quiesce();
        assert_eq!(
            base - env.p.free_frames(),
            mm.page_tables().count_tables() + mapped,
            "frames leaked or lost"
        );
        mm.munmap(RACE_BASE, RACE_PAGES * PAGE).unwrap();
    }
    env.assert_baseline();
}

fn race_round<P: Platform>(mm: &AddressSpace<P>, t: u64, round: u64) {
    let word = |p: u64| RACE_BASE + p * PAGE + 8 * (p % 64);
    for p in (t..RACE_PAGES).step_by(RACE_FAULTERS as usize) {
        let tag = race_tag(t, round, p);
        locked_access(mm, word(p), Some(tag));
        let got = locked_access(mm, word(p), None);
        assert!(
            got == tag || got == 0,
            "page {p}: wrote {tag:#x}, read {got:#x}"
        );
        // A neighbour's page: zero or one of its owner's tags for that very page.
        let q = (p + 1) % RACE_PAGES;
        let got = locked_access(mm, word(q), None);
        assert!(
            got == 0 || (got & 0xffff == q && got >> 56 == q % RACE_FAULTERS + 1),
            "page {q} holds {got:#x}"
        );
    }
}

/// Pages of the model test's window, which straddles a 2 MiB boundary (two PTE tables).
const WINDOW: u64 = 24;
const WINDOW_BASE: u64 = 0x20_0000 - 12 * PAGE;

#[derive(Clone, Debug)]
enum Op {
    Mmap { page: u64, n: u64, prot: char },
    Munmap { page: u64, n: u64 },
    Mprotect { page: u64, n: u64, prot: char },
    Read { page: u64 },
    Write { page: u64, value: u64 },
    Madvise { page: u64, n: u64, advice: i32 },
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..WINDOW;
    let prot = prop_oneof![Just('n'), Just('r'), Just('w'), Just('x')];
    let advice = prop_oneof![
        3 => Just(MADV_DONTNEED),
        1 => Just(MADV_FREE),
        1 => proptest::sample::select(HINTS.to_vec()),
        1 => proptest::sample::select(std::vec![5, 9, -1, 1000]),
    ];
    prop_oneof![
        (page.clone(), 1..6u64, prot.clone()).prop_map(|(page, n, prot)| Op::Mmap {
            page,
            n,
            prot
        }),
        (page.clone(), 1..6u64).prop_map(|(page, n)| Op::Munmap { page, n }),
        (page.clone(), 1..6u64, prot).prop_map(|(page, n, prot)| Op::Mprotect { page, n, prot }),
        page.clone().prop_map(|page| Op::Read { page }),
        (page.clone(), 1..u64::MAX).prop_map(|(page, value)| Op::Write { page, value }),
        (page.clone(), 1..u64::MAX).prop_map(|(page, value)| Op::Write { page, value }),
        (page.clone(), 0..10u64, advice.clone()).prop_map(|(page, n, advice)| Op::Madvise {
            page,
            n,
            advice
        }),
        (page, 0..10u64, advice).prop_map(|(page, n, advice)| Op::Madvise { page, n, advice }),
    ]
}

/// Window page -> (protection, value of word 1).
type Model = BTreeMap<u64, (Prot, u64)>;

fn at(page: u64) -> u64 {
    WINDOW_BASE + page * PAGE
}

fn apply(env: &Env, mm: &AddressSpace<Emulated>, model: &mut Model, op: &Op) {
    match *op {
        Op::Mmap { page, n, prot } => {
            mm.mmap(at(page), n * PAGE, prot_of(prot), fixed()).unwrap();
            for p in page..page + n {
                model.insert(p, (prot_of(prot), 0));
            }
        }
        Op::Munmap { page, n } => {
            mm.munmap(at(page), n * PAGE).unwrap();
            for p in page..page + n {
                model.remove(&p);
            }
        }
        Op::Mprotect { page, n, prot } => {
            let r = mm.mprotect(at(page), n * PAGE, prot_of(prot));
            if (page..page + n).all(|p| model.contains_key(&p)) {
                assert_eq!(r, Ok(()));
                for p in page..page + n {
                    model.get_mut(&p).unwrap().0 = prot_of(prot);
                }
            } else {
                assert_eq!(r, Err(MprotectError::NotMapped));
            }
        }
        Op::Read { page } => {
            let got = mmu::load(mm, at(page) + 8, true);
            match model.get(&page) {
                Some(&(prot, v)) if !prot.is_empty() => assert_eq!(got, Ok(v)),
                _ => assert!(got.is_err(), "read of page {page} should fault"),
            }
        }
        Op::Write { page, value } => {
            let got = mmu::store(mm, at(page) + 8, value, true);
            match model.get_mut(&page) {
                Some((prot, v)) if prot.contains(Prot::WRITE) => {
                    assert_eq!(got, Ok(()));
                    *v = value;
                }
                _ => assert!(got.is_err(), "write to page {page} should fault"),
            }
        }
        Op::Madvise { page, n, advice } => {
            let before = env.mem.stats().snapshot();
            let r = mm.madvise(at(page), n * PAGE, advice);
            let pages = page..page + n;
            let dontneed = advice == MADV_DONTNEED || advice == MADV_FREE;
            let want = if !dontneed && !HINTS.contains(&advice) {
                Err(MadviseError::BadAdvice(advice))
            } else if n == 0 || pages.clone().all(|p| model.contains_key(&p)) {
                Ok(())
            } else {
                Err(MadviseError::NotMapped)
            };
            assert_eq!(r, want);
            if dontneed {
                for p in pages.clone() {
                    if let Some((_, v)) = model.get_mut(&p) {
                        *v = 0;
                        assert_eq!(
                            mm.page_tables().lookup_pte(at(p)),
                            Pte::EMPTY,
                            "page {p} not zapped"
                        );
                    }
                }
                // One VMA holds the range iff its pages are all mapped with one protection
                // (VMAs are merged runs of equal protection).
                let one_vma = pages
                    .clone()
                    .map(|p| model.get(&p).map(|&(prot, _)| prot))
                    .collect::<Option<Vec<_>>>()
                    .is_some_and(|prots| prots.windows(2).all(|w| w[0] == w[1]));
                if n > 0 {
                    let want = if one_vma { (1, 0) } else { (0, 1) };
                    assert_eq!(dontneed_counts(&before, env), want, "lock path");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn madvise_and_faults_match_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let env = Env::new(4, 1);
        {
            let mm = env.mm();
            let mut model = Model::new();
            for op in &ops {
                apply(&env, &mm, &mut model, op);
                env.mem.rcu().quiescent_state();
            }
            mm.validate().unwrap();
            for p in 0..WINDOW {
                let got = mmu::load(&mm, at(p) + 8, true);
                match model.get(&p) {
                    Some(&(prot, v)) if !prot.is_empty() => prop_assert_eq!(got, Ok(v)),
                    _ => prop_assert!(got.is_err()),
                }
            }
        }
        env.assert_baseline();
    }
}
