//! Random sequences of mmap (also of stacks, `MAP_GROWSDOWN`)/munmap/mprotect/mremap/brk/read/
//! write against a model (page -> protection and content byte; the set of stack pages; the break).
//! A read or write below a stack grows it as Linux's `expand_downwards` would. After every step
//! the VMA tree, the page tables and the model must agree and the tree must validate; after
//! every case every frame must be back.
//!
//! Each step runs on one of two emulated CPUs, each with its own TLB, so a translation one CPU
//! cached must be shot down when another changes the mapping. After every step every cached
//! translation must still be backed by its PTE (same frame, no permission the PTE lacks): a
//! missing flush shows up there at once, and later as a read of old data or an access that
//! should fault and does not.
//!
//! `forks_match_a_model_per_process` adds `fork` and exit: each process (the first, and every
//! copy a fork made of one) has a model of its own, copied at the fork, and the operations go
//! to any of them. Besides each side against its model, every step checks the frames: each
//! anonymous frame's reference and map counts equal the PTEs that map it in all processes.

use core::sync::atomic::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::vec::Vec;

use proptest::prelude::*;

use crate::address_space::AddressSpace;
use crate::ops::{MapFlags, MprotectError, MremapError, MremapFlags};
use crate::pgtable::{PTE_PROTNONE, Pte, USER_END};
use crate::platform::PageTableFlags;
use crate::platform::PhysFrame;
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::testutil::{Env, PAGE, PIC_BASE, anon, fixed, prot_of};
use crate::vma::Prot;

/// Pages of the window the operations work in (spans two PTE tables).
pub(super) const WINDOW: u64 = 600;
const CASES: u32 = 200;
pub(super) const CPUS: usize = 2;

#[derive(Clone, Debug)]
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
    Mremap {
        page: u64,
        n: u64,
        new_n: u64,
        /// 0: no flag, 1: `MAYMOVE`, 2: `MAYMOVE | FIXED` to `to`.
        how: u8,
        to: u64,
    },
    Read {
        page: u64,
    },
    Write {
        page: u64,
        byte: u8,
    },
    /// `mmap(MAP_FIXED | MAP_GROWSDOWN)`, read-write.
    MmapStack {
        page: u64,
        n: u64,
    },
    /// `brk(addr(page) + off)`.
    Brk {
        page: u64,
        off: u64,
    },
}

/// The heap starts 100 bytes below this window page.
const BRK_PAGE: u64 = 300;
/// `STACK_GUARD_GAP` in pages.
const GAP: u64 = crate::ops::STACK_GUARD_GAP / PAGE;

fn op() -> impl Strategy<Value = Op> {
    // Cluster around the 2 MiB boundary at page 512 so PTE tables fill, empty and get freed,
    // and on a few pages, so that accesses meet the pages' earlier translations.
    let page = prop_oneof![0..WINDOW, 500..524u64, 508..516u64];
    let prot = prop_oneof![Just('n'), Just('r'), Just('w'), Just('x')];
    prop_oneof![
        (page.clone(), 1..8u64, prot.clone(), any::<bool>()).prop_map(|(page, n, prot, fixed)| {
            Op::Mmap {
                page,
                n,
                prot,
                fixed,
            }
        }),
        (page.clone(), 1..12u64).prop_map(|(page, n)| Op::Munmap { page, n }),
        (page.clone(), 1..8u64, prot).prop_map(|(page, n, prot)| Op::Mprotect { page, n, prot }),
        (page.clone(), 1..8u64, 1..10u64, 0..3u8, page.clone()).prop_map(
            |(page, n, new_n, how, to)| Op::Mremap {
                page,
                n,
                new_n,
                how,
                to
            }
        ),
        page.clone().prop_map(|page| Op::Read { page }),
        page.clone().prop_map(|page| Op::Read { page }),
        (page.clone(), 1..=255u8).prop_map(|(page, byte)| Op::Write { page, byte }),
        (page.clone(), 1..=255u8).prop_map(|(page, byte)| Op::Write { page, byte }),
        (page, 1..4u64).prop_map(|(page, n)| Op::MmapStack { page, n }),
        (
            BRK_PAGE - 4..BRK_PAGE + 40,
            prop_oneof![Just(0u64), Just(1), Just(4095)]
        )
            .prop_map(|(page, off)| Op::Brk { page, off }),
    ]
}

/// The model of everything beyond the pages: which pages are stack pages (`VM_GROWSDOWN`), and
/// the heap's start and break.
#[derive(Clone)]
pub(super) struct Extra {
    stacks: BTreeSet<u64>,
    start_brk: u64,
    brk: u64,
}

impl Extra {
    fn new(mm: &AddressSpace<Emulated>) -> Self {
        let start_brk = addr(window_page(BRK_PAGE)) - 100;
        mm.set_brk_start(start_brk);
        Extra {
            stacks: BTreeSet::new(),
            start_brk,
            brk: start_brk,
        }
    }

    /// The attributes that decide merging: protection and whether a stack.
    fn attrs(&self, model: &Model, p: u64) -> Option<(Prot, bool)> {
        model
            .get(&p)
            .map(|&(prot, _)| (prot, self.stacks.contains(&p)))
    }

    /// The first page of the VMA that holds page `p` (the run of equal attributes).
    fn vma_start(&self, model: &Model, p: u64) -> u64 {
        let a = self.attrs(model, p);
        let mut s = p;
        while s > 0 && self.attrs(model, s - 1) == a {
            s -= 1;
        }
        s
    }

    /// `expand_downwards` in the model: an access to unmapped page `p` below a stack grows the
    /// stack to `p` unless an accessible non-stack mapping ends within the guard gap below.
    fn grow(&mut self, model: &mut Model, p: u64) {
        if model.contains_key(&p) {
            return;
        }
        let Some((&q, &(prot, _))) = model.range(p..).next() else {
            return;
        };
        if !self.stacks.contains(&q) {
            return;
        }
        if let Some((&b, &(bprot, _))) = model.range(..p).next_back()
            && !self.stacks.contains(&b)
            && !bprot.is_empty()
            && p - (b + 1) < GAP
        {
            return;
        }
        for x in p..q {
            model.insert(x, (prot, 0));
            self.stacks.insert(x);
        }
    }

    /// Linux's `brk` in the model; returns what the call must return.
    fn brk(&mut self, model: &mut Model, want: u64) -> u64 {
        let up = |x: u64| x.div_ceil(PAGE);
        if want < self.start_brk {
            return self.brk;
        }
        let (new_end, old_end) = (up(want), up(self.brk));
        if new_end < old_end {
            if model.range(new_end..old_end).next().is_none() {
                return self.brk;
            }
            for x in new_end..old_end {
                model.remove(&x);
                self.stacks.remove(&x);
            }
        } else if new_end > old_end {
            if let Some((&q, _)) = model.range(old_end..new_end + 1 + GAP).next() {
                let gap = if self.stacks.contains(&q) { GAP } else { 0 };
                if self.vma_start(model, q).saturating_sub(gap) < new_end + 1 {
                    return self.brk;
                }
            }
            for x in old_end..new_end {
                model.insert(x, (Prot::READ | Prot::WRITE, 0));
            }
        }
        self.brk = want;
        want
    }
}

/// Page number (absolute) -> (protection, content byte).
pub(super) type Model = BTreeMap<u64, (Prot, u8)>;

pub(super) fn addr(page: u64) -> u64 {
    page * PAGE
}

pub(super) fn window_page(p: u64) -> u64 {
    PIC_BASE / PAGE + p
}

fn apply(mm: &AddressSpace<Emulated>, model: &mut Model, extra: &mut Extra, op: &Op) {
    match *op {
        Op::MmapStack { page, n } => {
            let first = window_page(page);
            let flags = fixed() | MapFlags::GROWSDOWN;
            let rw = Prot::READ | Prot::WRITE;
            assert_eq!(mm.mmap(addr(first), n * PAGE, rw, flags), Ok(addr(first)));
            for p in first..first + n {
                model.insert(p, (rw, 0));
                extra.stacks.insert(p);
            }
        }
        Op::Brk { page, off } => {
            let want = addr(window_page(page)) + off;
            let expect = extra.brk(model, want);
            assert_eq!(mm.brk(want), expect, "brk({want:#x})");
        }
        Op::Mmap {
            page,
            n,
            prot,
            fixed: is_fixed,
        } => {
            let first = window_page(page);
            let flags = if is_fixed { fixed() } else { anon() };
            let got = mm
                .mmap(addr(first), n * PAGE, prot_of(prot), flags)
                .unwrap();
            let free = (first..first + n).all(|p| !model.contains_key(&p));
            // The VMA above must start at least the guard gap above a hint if it is a stack.
            let clear = match model.range(first + n..).next() {
                Some((&q, _)) if extra.stacks.contains(&q) => q - (first + n) >= GAP,
                _ => true,
            };
            if is_fixed || (free && clear) {
                assert_eq!(got, addr(first), "a free hint was not used");
            } else if free {
                assert_ne!(got, addr(first), "a hint inside a guard gap was used");
            }
            for p in got / PAGE..got / PAGE + n {
                model.insert(p, (prot_of(prot), 0));
                extra.stacks.remove(&p);
            }
        }
        Op::Munmap { page, n } => {
            let first = window_page(page);
            mm.munmap(addr(first), n * PAGE).unwrap();
            for p in first..first + n {
                model.remove(&p);
                extra.stacks.remove(&p);
            }
        }
        Op::Mprotect { page, n, prot } => {
            let first = window_page(page);
            let r = mm.mprotect(addr(first), n * PAGE, prot_of(prot));
            if (first..first + n).all(|p| model.contains_key(&p)) {
                assert_eq!(r, Ok(()));
                for p in first..first + n {
                    model.get_mut(&p).unwrap().0 = prot_of(prot);
                }
            } else {
                assert_eq!(r, Err(MprotectError::NotMapped));
            }
        }
        Op::Mremap {
            page,
            n,
            new_n,
            how,
            to,
        } => mremap(
            mm,
            model,
            extra,
            window_page(page),
            n,
            new_n,
            how,
            window_page(to),
        ),
        Op::Read { page } => {
            let p = window_page(page);
            extra.grow(model, p);
            let got = mmu::load(mm, addr(p) + 8, true);
            match model.get(&p) {
                Some(&(prot, byte)) if !prot.is_empty() => assert_eq!(got, Ok(byte as u64)),
                _ => assert!(got.is_err(), "read of page {p:#x} should fault: {got:?}"),
            }
        }
        Op::Write { page, byte } => {
            let p = window_page(page);
            extra.grow(model, p);
            let got = mmu::store(mm, addr(p) + 8, byte as u64, true);
            match model.get_mut(&p) {
                Some((prot, b)) if prot.contains(Prot::WRITE) => {
                    assert_eq!(got, Ok(()));
                    *b = byte;
                }
                _ => assert!(got.is_err(), "write to page {p:#x} should fault"),
            }
        }
    }
}

/// `mremap` of pages `first..first + n` to `new_n` pages, against the model: Linux's result
/// computed from the model's layout, and the pages (data included) where they must go.
#[allow(clippy::too_many_arguments)]
fn mremap(
    mm: &AddressSpace<Emulated>,
    model: &mut Model,
    extra: &mut Extra,
    first: u64,
    n: u64,
    new_n: u64,
    how: u8,
    to: u64,
) {
    let flags = match how {
        0 => MremapFlags::empty(),
        1 => MremapFlags::MAYMOVE,
        _ => MremapFlags::MAYMOVE | MremapFlags::FIXED,
    };
    let fixed = flags.contains(MremapFlags::FIXED);
    if extra.stacks.contains(&first) {
        // Stacks are not remapped here: their growth below is modelled, a move is not.
        return;
    }
    let got = mm.mremap(addr(first), n * PAGE, new_n * PAGE, flags.bits(), addr(to));
    if fixed && first < to + new_n && to < first + n {
        assert_eq!(got, Err(MremapError::Overlap));
        return;
    }
    // The VMA holding `first`: the run of equal protection around it (a stack beside it is a
    // VMA of its own).
    let Some(&(prot, _)) = model.get(&first) else {
        assert_eq!(got, Err(MremapError::NotMapped));
        return;
    };
    let mut end = first;
    while model.get(&end).is_some_and(|&(p, _)| p == prot) && !extra.stacks.contains(&end) {
        end += 1;
    }
    if end < first + n {
        assert_eq!(got, Err(MremapError::NotMapped));
        return;
    }
    let move_to = |model: &mut Model, dest: u64| {
        let pages: Vec<(u64, u8)> = (0..n.min(new_n))
            .map(|i| (i, model.remove(&(first + i)).unwrap().1))
            .collect();
        for (i, byte) in pages {
            model.insert(dest + i, (prot, byte));
        }
        for i in n..new_n {
            model.insert(dest + i, (prot, 0));
        }
    };
    for p in first + new_n.min(n)..first + n {
        model.remove(&p);
    }
    if fixed {
        assert_eq!(got, Ok(addr(to)));
        for p in to..to + new_n {
            model.remove(&p);
            extra.stacks.remove(&p);
        }
        move_to(model, to);
    } else if new_n <= n {
        assert_eq!(got, Ok(addr(first)));
    } else if end == first + n && (first + n..first + new_n).all(|p| !model.contains_key(&p)) {
        assert_eq!(got, Ok(addr(first)), "did not grow in place");
        for p in first + n..first + new_n {
            model.insert(p, (prot, 0));
        }
    } else if how == 1 {
        let dest = got.expect("a move with room to spare failed") / PAGE;
        assert!((dest..dest + new_n).all(|p| !model.contains_key(&p)));
        move_to(model, dest);
    } else {
        assert_eq!(got, Err(MremapError::NoSpace));
    }
}

/// Permissions a cached translation may keep only while its PTE still grants them.
fn grants(f: PageTableFlags) -> [bool; 4] {
    [
        f.contains(PageTableFlags::PRESENT),
        f.contains(PageTableFlags::USER_ACCESSIBLE),
        f.contains(PageTableFlags::WRITABLE),
        !f.contains(PageTableFlags::NO_EXECUTE),
    ]
}

/// With no operation in flight, a TLB may lag behind its PTEs only where x86 needs no flush
/// (a PTE that gained permissions); it never holds a frame or a permission the PTE dropped.
fn check_tlbs(env: &Env, mm: &AddressSpace<Emulated>) {
    for cpu in 0..CPUS {
        let tlb = env.p.tlb_of(cpu);
        if tlb.asid() != mm.id() {
            continue;
        }
        for (a, cached) in tlb.entries() {
            let e = mm.page_tables().lookup_pte(a);
            let (now, then) = (grants(e.flags()), grants(cached.flags));
            assert!(
                e.frame() == cached.frame && then.iter().zip(now).all(|(&t, n)| !t || n),
                "CPU {cpu} still caches {a:#x} -> {cached:?}, but the PTE is {e:?}: a flush \
                 is missing"
            );
        }
    }
}

pub(super) fn check(env: &Env, mm: &AddressSpace<Emulated>, model: &Model) {
    check_with_stacks(env, mm, model, &BTreeSet::new());
}

/// [`check`], with `stacks` the pages of `VM_GROWSDOWN` VMAs.
fn check_with_stacks(
    env: &Env,
    mm: &AddressSpace<Emulated>,
    model: &Model,
    stacks: &BTreeSet<u64>,
) {
    mm.validate().unwrap();
    check_tlbs(env, mm);
    // VMAs = the model's pages, merged into runs of equal protection and flags.
    let mut want: Vec<(u64, u64, Prot, bool)> = Vec::new();
    for (&p, &(prot, _)) in model {
        let stack = stacks.contains(&p);
        match want.last_mut() {
            Some((_, end, pr, st)) if *end == p && *pr == prot && *st == stack => *end += 1,
            _ => want.push((p, p + 1, prot, stack)),
        }
    }
    let got: Vec<(u64, u64, Prot, bool)> = mm
        .vmas()
        .iter()
        .map(|v| (v.start() / PAGE, v.end() / PAGE, v.prot(), v.grows_down()))
        .collect();
    assert_eq!(got, want, "VMA tree disagrees with the model");
    // PTEs: none outside mappings, none more permissive than the VMA, PROT_NONE not present.
    let zero = env.mem.frames().zero_frame();
    let window = window_page(0)..window_page(WINDOW + 16);
    let outside = model.keys().copied().filter(|p| !window.contains(p));
    for p in window.clone().chain(outside) {
        let e = mm.page_tables().lookup_pte(addr(p));
        match model.get(&p) {
            None => assert_eq!(e, Pte::EMPTY, "PTE left behind at page {p:#x}"),
            Some(&(prot, byte)) => {
                if e.is_empty() {
                    assert_eq!(byte, 0, "written page {p:#x} lost its frame");
                    continue;
                }
                assert!(e.holds_frame());
                let f = e.flags();
                if prot.is_empty() {
                    assert!(f.contains(PTE_PROTNONE) && !f.contains(PageTableFlags::PRESENT));
                } else {
                    assert!(f.contains(PageTableFlags::PRESENT));
                }
                if f.contains(PageTableFlags::WRITABLE) {
                    assert!(prot.contains(Prot::WRITE) && e.frame() != zero);
                }
                if byte != 0 {
                    assert_ne!(e.frame(), zero);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ops_and_faults_match_a_model(
        ops in proptest::collection::vec((0..CPUS, op()), 1..40)
    ) {
        let env = Env::new(8, CPUS);
        {
            let mm = env.mm();
            let mut model = Model::new();
            let mut extra = Extra::new(&mm);
            for (cpu, op) in &ops {
                // One thread, moved between CPUs only between steps (nothing held then).
                env.p.bind_cpu(*cpu);
                apply(&mm, &mut model, &mut extra, op);
                check_with_stacks(&env, &mm, &model, &extra.stacks);
                env.mem.rcu().quiescent_state();
            }
            env.p.bind_cpu(0);
        }
        env.assert_baseline();
    }
}

/// What the fork property test does at a step: an operation in one process, a fork of one, or
/// the exit (drop) of one.
#[derive(Clone, Debug)]
enum ForkStep {
    Op(Op),
    Fork,
    Exit,
}

fn fork_step() -> impl Strategy<Value = ForkStep> {
    prop_oneof![
        8 => op().prop_map(ForkStep::Op),
        1 => Just(ForkStep::Fork),
        1 => Just(ForkStep::Exit),
    ]
}

/// The word each operation writes (at +8) holds, in the frame each mapped page's PTE points to,
/// the model's byte: a write on one side of a fork never shows on the other.
fn check_contents(env: &Env, mm: &AddressSpace<Emulated>, model: &Model) {
    for (&p, &(_, byte)) in model {
        let e = mm.page_tables().lookup_pte(addr(p));
        if e.holds_frame() {
            let w = crate::frame::mem::words(&*env.p, e.frame())[1].load(Ordering::Relaxed);
            assert_eq!(w, byte as u64, "page {p:#x} holds another process's write");
        }
    }
}

/// Every anonymous frame's reference and map counts are the number of PTEs mapping it, over
/// all of `mms` (nothing else holds a frame between steps).
fn check_frame_counts<'a>(env: &Env, mms: impl Iterator<Item = &'a AddressSpace<Emulated>>) {
    let frames = env.mem.frames();
    let mut maps: HashMap<PhysFrame, u32> = HashMap::new();
    for mm in mms {
        for v in mm.vmas_in(0..USER_END) {
            for a in v.range().step_by(PAGE as usize) {
                let e = mm.page_tables().lookup_pte(a);
                if e.holds_frame() && e.frame() != frames.zero_frame() {
                    *maps.entry(e.frame()).or_default() += 1;
                }
            }
        }
    }
    for (f, n) in maps {
        let meta = frames.meta(f);
        assert_eq!(
            (meta.refcount(), meta.mapcount()),
            (n, n),
            "frame {:#x} is mapped {n} times",
            f.start_address().as_u64()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn forks_match_a_model_per_process(
        steps in proptest::collection::vec((0..CPUS, 0..4usize, fork_step()), 1..50)
    ) {
        let env = Env::new(8, CPUS);
        {
            let first = env.mm();
            let extra = Extra::new(&first);
            let mut procs: Vec<(AddressSpace<Emulated>, Model, Extra)> =
                std::vec![(first, Model::new(), extra)];
            for (cpu, who, step) in &steps {
                env.p.bind_cpu(*cpu);
                let i = who % procs.len();
                match step {
                    ForkStep::Op(op) => {
                        let (mm, model, extra) = &mut procs[i];
                        apply(mm, model, extra, op);
                    }
                    ForkStep::Fork if procs.len() < 4 => {
                        let child = procs[i].0.fork().unwrap();
                        let model = procs[i].1.clone();
                        let extra = procs[i].2.clone();
                        procs.push((child, model, extra));
                    }
                    ForkStep::Exit if procs.len() > 1 => drop(procs.swap_remove(i)),
                    ForkStep::Fork | ForkStep::Exit => {}
                }
                for (mm, model, extra) in &procs {
                    check_with_stacks(&env, mm, model, &extra.stacks);
                    check_contents(&env, mm, model);
                }
                check_frame_counts(&env, procs.iter().map(|(mm, _, _)| mm));
                env.mem.rcu().quiescent_state();
            }
            env.p.bind_cpu(0);
        }
        env.assert_baseline();
    }
}
