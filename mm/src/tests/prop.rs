//! Random sequences of mmap/munmap/mprotect/mremap/read/write against a model (page -> protection and
//! content byte). After every step the VMA tree, the page tables and the model must agree and
//! the tree must validate; after every case every frame must be back.
//!
//! Each step runs on one of two emulated CPUs, each with its own TLB, so a translation one CPU
//! cached must be shot down when another changes the mapping. After every step every cached
//! translation must still be backed by its PTE (same frame, no permission the PTE lacks): a
//! missing flush shows up there at once, and later as a read of old data or an access that
//! should fault and does not.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use crate::address_space::AddressSpace;
use crate::ops::{MprotectError, MremapError, MremapFlags};
use crate::pgtable::{PTE_PROTNONE, Pte};
use crate::platform::PageTableFlags;
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
}

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
        (page, 1..=255u8).prop_map(|(page, byte)| Op::Write { page, byte }),
    ]
}

/// Page number (absolute) -> (protection, content byte).
pub(super) type Model = BTreeMap<u64, (Prot, u8)>;

pub(super) fn addr(page: u64) -> u64 {
    page * PAGE
}

pub(super) fn window_page(p: u64) -> u64 {
    PIC_BASE / PAGE + p
}

fn apply(mm: &AddressSpace<Emulated>, model: &mut Model, op: &Op) {
    match *op {
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
            if is_fixed || (first..first + n).all(|p| !model.contains_key(&p)) {
                assert_eq!(got, addr(first), "a free hint was not used");
            }
            for p in got / PAGE..got / PAGE + n {
                model.insert(p, (prot_of(prot), 0));
            }
        }
        Op::Munmap { page, n } => {
            let first = window_page(page);
            mm.munmap(addr(first), n * PAGE).unwrap();
            for p in first..first + n {
                model.remove(&p);
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
        } => mremap(mm, model, window_page(page), n, new_n, how, window_page(to)),
        Op::Read { page } => {
            let p = window_page(page);
            let got = mmu::load(mm, addr(p) + 8, true);
            match model.get(&p) {
                Some(&(prot, byte)) if !prot.is_empty() => assert_eq!(got, Ok(byte as u64)),
                _ => assert!(got.is_err(), "read of page {p:#x} should fault: {got:?}"),
            }
        }
        Op::Write { page, byte } => {
            let p = window_page(page);
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
fn mremap(
    mm: &AddressSpace<Emulated>,
    model: &mut Model,
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
    let got = mm.mremap(addr(first), n * PAGE, new_n * PAGE, flags.bits(), addr(to));
    if fixed && first < to + new_n && to < first + n {
        assert_eq!(got, Err(MremapError::Overlap));
        return;
    }
    // The VMA holding `first`: the run of equal protection around it.
    let Some(&(prot, _)) = model.get(&first) else {
        assert_eq!(got, Err(MremapError::NotMapped));
        return;
    };
    let mut end = first;
    while model.get(&end).is_some_and(|&(p, _)| p == prot) {
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
    mm.validate().unwrap();
    check_tlbs(env, mm);
    // VMAs = the model's pages, merged into runs of equal protection.
    let mut want: Vec<(u64, u64, Prot)> = Vec::new();
    for (&p, &(prot, _)) in model {
        match want.last_mut() {
            Some((_, end, pr)) if *end == p && *pr == prot => *end += 1,
            _ => want.push((p, p + 1, prot)),
        }
    }
    let got: Vec<(u64, u64, Prot)> = mm
        .vmas()
        .iter()
        .map(|v| (v.start() / PAGE, v.end() / PAGE, v.prot()))
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
            for (cpu, op) in &ops {
                // One thread, moved between CPUs only between steps (nothing held then).
                env.p.bind_cpu(*cpu);
                apply(&mm, &mut model, op);
                check(&env, &mm, &model);
                env.mem.rcu().quiescent_state();
            }
            env.p.bind_cpu(0);
        }
        env.assert_baseline();
    }
}
