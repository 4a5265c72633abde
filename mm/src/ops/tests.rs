//! Split/merge scenarios as pictures: one character per page from `PIC_BASE`; in the first
//! string each VMA has its own letter, the second gives each page's protection
//! (r, w, x, n = none).

use core::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::address_space::AddressSpace;
use crate::fault::lock_vma_under_rcu;
use crate::vma::Prot;

use crate::platform::PageTableFlags;
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::testutil::{Env, PAGE, PIC_BASE, SetOnDrop, anon, draw, fixed, picture};

fn scenario(before: &str, op: impl FnOnce(&AddressSpace<Emulated>), after: (&str, &str)) {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        draw(&mm, before);
        op(&mm);
        assert_eq!(picture(&mm, before.len()), (after.0.into(), after.1.into()));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

fn page(i: u64) -> u64 {
    PIC_BASE + i * PAGE
}

#[test]
fn adjacent_equal_mappings_merge_and_different_ones_do_not() {
    scenario("ww rr", |_| {}, ("AA BB", "ww rr"));
    scenario("wwr", |_| {}, ("AAB", "wwr"));
    // Filling the hole joins both neighbours into one VMA.
    scenario(
        "ww ww",
        |mm| {
            mm.mmap(page(2), PAGE, Prot::READ | Prot::WRITE, fixed())
                .unwrap();
        },
        ("AAAAA", "wwwww"),
    );
}

#[test]
fn munmap_splits_trims_and_spans_holes() {
    scenario(
        "wwwww",
        |mm| mm.munmap(page(2), PAGE).unwrap(),
        ("AA BB", "ww ww"),
    );
    scenario(
        "wwwww",
        |mm| mm.munmap(page(0), 2 * PAGE).unwrap(),
        ("  AAA", "  www"),
    );
    scenario(
        "ww r ww",
        |mm| mm.munmap(page(1), 5 * PAGE).unwrap(),
        ("A     B", "w     w"),
    );
    // Unmapping nothing is fine.
    scenario(
        "w  w",
        |mm| mm.munmap(page(1), 2 * PAGE).unwrap(),
        ("A  B", "w  w"),
    );
}

#[test]
fn mprotect_splits_and_merges_back() {
    scenario(
        "wwwww",
        |mm| mm.mprotect(page(1), 2 * PAGE, Prot::READ).unwrap(),
        ("ABBCC", "wrrww"),
    );
    scenario(
        "wwwww",
        |mm| {
            mm.mprotect(page(1), 2 * PAGE, Prot::READ).unwrap();
            mm.mprotect(page(1), 2 * PAGE, Prot::READ | Prot::WRITE)
                .unwrap();
        },
        ("AAAAA", "wwwww"),
    );
    // Changing the middle VMA to its neighbours' protection merges all three.
    scenario(
        "wwrww",
        |mm| {
            mm.mprotect(page(2), PAGE, Prot::READ | Prot::WRITE)
                .unwrap()
        },
        ("AAAAA", "wwwww"),
    );
    scenario(
        "rwwx",
        |mm| mm.mprotect(page(0), 4 * PAGE, Prot::empty()).unwrap(),
        ("AAAA", "nnnn"),
    );
}

#[test]
fn mprotect_of_a_hole_fails_and_changes_nothing() {
    scenario(
        "ww w",
        |mm| {
            assert_eq!(
                mm.mprotect(page(0), 4 * PAGE, Prot::READ),
                Err(MprotectError::NotMapped)
            );
        },
        ("AA B", "ww w"),
    );
}

#[test]
fn invalid_arguments_are_errors() {
    let env = Env::new(4, 1);
    let mm = env.mm();
    let rw = Prot::READ | Prot::WRITE;
    let bad = |e| Err(MmapError::BadRange(e));
    assert_eq!(mm.mmap(0, 0, rw, anon()), bad(RangeError::ZeroLength));
    assert_eq!(mm.mmap(0, u64::MAX, rw, anon()), bad(RangeError::Overflow));
    assert_eq!(
        mm.mmap(0x1234, PAGE, rw, fixed()),
        bad(RangeError::Unaligned)
    );
    assert_eq!(mm.mmap(0, PAGE, rw, fixed()), bad(RangeError::OutOfRange));
    assert_eq!(
        mm.mmap(USER_END - PAGE, 2 * PAGE, rw, fixed()),
        bad(RangeError::OutOfRange)
    );
    assert_eq!(
        mm.mmap(0, PAGE, Prot::from_bits_retain(8), anon()),
        Err(MmapError::BadProt)
    );
    assert_eq!(
        mm.mmap(0, PAGE, rw, MapFlags::ANONYMOUS),
        Err(MmapError::BadFlags)
    );
    assert_eq!(
        mm.mmap(0, PAGE, rw, anon() | MapFlags::from_bits_retain(1)),
        Err(MmapError::BadFlags)
    );
    assert_eq!(mm.mmap(0, 1 << 48, rw, anon()), bad(RangeError::OutOfRange));
    assert_eq!(
        mm.munmap(0x1001, PAGE),
        Err(MunmapError::BadRange(RangeError::Unaligned))
    );
    assert_eq!(
        mm.munmap(0x1000, 0),
        Err(MunmapError::BadRange(RangeError::ZeroLength))
    );
    assert_eq!(
        mm.munmap(!0xfff, PAGE),
        Err(MunmapError::BadRange(RangeError::Overflow))
    );
    assert_eq!(
        mm.mprotect(0x1000, PAGE, Prot::from_bits_retain(16)),
        Err(MprotectError::BadProt)
    );
    assert_eq!(mm.mprotect(0x1000, 0, Prot::READ), Ok(()));
    mm.mmap(page(0), PAGE, rw, fixed()).unwrap();
    assert_eq!(
        mm.mmap(page(0), PAGE, rw, anon() | MapFlags::FIXED_NOREPLACE),
        Err(MmapError::AlreadyMapped)
    );
    assert!(mm.vmas().len() == 1);
}

#[test]
fn hint_is_used_when_free_and_gap_search_otherwise() {
    let env = Env::new(4, 1);
    let mm = env.mm();
    let rw = Prot::READ | Prot::WRITE;
    assert_eq!(mm.mmap(page(4), PAGE, rw, anon()).unwrap(), page(4));
    let other = mm.mmap(page(4), PAGE, rw, anon()).unwrap();
    assert_ne!(other, page(4));
    let top = mm.mmap(0, 3 * PAGE, rw, anon()).unwrap();
    assert!(top + 3 * PAGE <= USER_END && top > page(4));
    mm.validate().unwrap();
}

#[test]
fn data_survives_splits_and_protection_changes_and_munmap_frees_it() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        draw(&mm, "wwww");
        for i in 0..4 {
            mmu::store(&mm, page(i) + 8, 100 + i, true).unwrap();
        }
        mm.mprotect(page(1), 2 * PAGE, Prot::READ).unwrap();
        assert!(
            mmu::store(&mm, page(1), 1, true).is_err(),
            "write to a read-only page"
        );
        for i in 0..4 {
            assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(100 + i));
        }
        mm.mprotect(page(1), 2 * PAGE, Prot::empty()).unwrap();
        assert!(mmu::load(&mm, page(1), true).is_err());
        mm.mprotect(page(0), 4 * PAGE, Prot::READ | Prot::WRITE)
            .unwrap();
        for i in 0..4 {
            assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(100 + i));
            // Write after the upgrade: do_wp_page reuses the sole-owner frame.
            mmu::store(&mm, page(i) + 16, 7, true).unwrap();
            assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(100 + i));
        }
        mm.munmap(page(1), PAGE).unwrap();
        assert!(mmu::load(&mm, page(1), true).is_err());
        assert_eq!(mmu::load(&mm, page(2) + 8, true), Ok(102));
        // MAP_FIXED over a mapped page replaces its contents with zeros.
        mm.mmap(page(2), PAGE, Prot::READ | Prot::WRITE, fixed())
            .unwrap();
        assert_eq!(mmu::load(&mm, page(2) + 8, true), Ok(0));
        assert!(env.p.shootdown_stats().0 > 0);
    }
    env.assert_baseline();
}

/// An operation that runs out of memory for tree nodes fails as a whole: the VMAs, the page
/// tables and the data are as before, and a retry without the failure succeeds. (Erasing the
/// old VMAs and inserting the new ones one tree write at a time left the address space with a
/// hole where the VMA was and its pages still mapped when a later insert failed.)
#[test]
fn tree_out_of_memory_leaves_the_address_space_unchanged() {
    type Op = fn(&AddressSpace<Emulated>) -> bool;
    let ops: [(&str, Op, (&str, &str)); 3] = [
        (
            "munmap",
            |mm| mm.munmap(page(2), PAGE).is_ok(),
            ("AA BB", "ww ww"),
        ),
        (
            "mprotect",
            |mm| mm.mprotect(page(2), PAGE, Prot::READ).is_ok(),
            ("AABCC", "wwrww"),
        ),
        (
            "mmap",
            |mm| mm.mmap(page(1), 3 * PAGE, Prot::READ, fixed()).is_ok(),
            ("ABBBC", "wrrrw"),
        ),
    ];
    for (name, op, after) in ops {
        for budget in 0..4 {
            let env = Env::new(4, 1);
            {
                let mm = env.mm();
                draw(&mm, "wwwww");
                for i in 0..5 {
                    mmu::store(&mm, page(i) + 8, 100 + i, true).unwrap();
                }
                mm.tree().fail_node_allocs_after(Some(budget));
                let ok = op(&mm);
                mm.tree().fail_node_allocs_after(None);
                mm.validate().unwrap();
                if !ok {
                    assert_eq!(
                        picture(&mm, 5),
                        ("AAAAA".into(), "wwwww".into()),
                        "{name} with {budget} nodes failed half-way"
                    );
                    for i in 0..5 {
                        assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(100 + i), "{name}");
                    }
                    assert!(op(&mm), "{name} retried");
                }
                assert_eq!(picture(&mm, 5), (after.0.into(), after.1.into()), "{name}");
            }
            env.assert_baseline();
        }
    }
}

/// A PTE table with no PTE left (a fault allocated it, then ran out of memory for the page) is
/// still reachable through the PMD entry that other CPUs' paging-structure caches may hold:
/// unhooking and freeing it needs a shootdown even though no PTE was cleared.
#[test]
fn freeing_an_empty_pte_table_is_shot_down() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        mm.mmap(page(0), PAGE, Prot::READ | Prot::WRITE, fixed())
            .unwrap();
        let pt = mm.page_tables();
        pt.pte_alloc(pt.pmd_alloc(page(0)).unwrap()).unwrap();
        let tables = pt.count_tables();
        let (before, _) = env.p.shootdown_stats();
        mm.munmap(page(0), PAGE).unwrap();
        assert_eq!(
            pt.count_tables(),
            tables - 1,
            "the empty table was not freed"
        );
        assert!(
            env.p.shootdown_stats().0 > before,
            "page-table page freed without a shootdown"
        );
    }
    env.assert_baseline();
}

/// `MAP_FIXED` over part of a VMA with the protection it already has leaves the layout as it
/// is but zaps the pages: it must write-lock the VMA first, so a fault holding the VMA's read
/// lock finishes before the zap. (It used to zap without the lock: `rewrite` returned early as
/// nothing in the tree changed.)
#[test]
fn map_fixed_over_part_of_a_vma_waits_for_its_readers() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        let rw = Prot::READ | Prot::WRITE;
        draw(&mm, "wwww");
        for i in 0..4 {
            mmu::store(&mm, page(i) + 8, 100 + i, true).unwrap();
        }
        let done = AtomicBool::new(false);
        // Observed while the reader held the VMA: whether the MAP_FIXED had returned, whether
        // the page was zapped, whether a new reader was turned away (a writer draining them).
        let (finished, zapped, draining) = thread::scope(|s| {
            let reader = lock_vma_under_rcu(&mm, page(1)).expect("the VMA is not locked");
            env.p.spawn_cpu(s, 1, || {
                mm.mmap(page(1), PAGE, rw, fixed()).unwrap();
                done.store(true, Ordering::SeqCst);
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut draining = false;
            while !done.load(Ordering::SeqCst) && !draining && Instant::now() < deadline {
                draining = lock_vma_under_rcu(&mm, page(1)).is_none();
                thread::yield_now();
            }
            let seen = (
                done.load(Ordering::SeqCst),
                mm.page_tables().lookup_pte(page(1)).is_empty(),
                draining,
            );
            // Released before anything is asserted, so a failure cannot leave the writer waiting.
            drop(reader);
            seen
        });
        assert!(!finished, "MAP_FIXED returned while a reader held the VMA");
        assert!(!zapped, "MAP_FIXED zapped a page of a read-locked VMA");
        assert!(
            draining,
            "MAP_FIXED neither finished nor waited for the reader"
        );
        // The same as munmap then mmap: one VMA as before, the remapped page zero-filled.
        assert_eq!(picture(&mm, 4), ("AAAA".into(), "wwww".into()));
        for i in [0, 2, 3] {
            assert_eq!(mmu::load(&mm, page(i) + 8, true), Ok(100 + i));
        }
        assert_eq!(mmu::load(&mm, page(1) + 8, true), Ok(0));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

/// Stress for the above: a thread holding a VMA's read lock (as a fault does) must see every
/// page it found mapped stay mapped to the same frame until it drops the lock, while another
/// thread keeps mapping `MAP_FIXED` (same protection) over parts of the VMA and faulting the
/// pages back in.
#[test]
fn pages_stay_mapped_under_a_vma_read_lock_while_map_fixed_runs() {
    const PAGES: u64 = 8;
    /// Holds that found a page mapped, to reach before stopping.
    const CHECKS: usize = 1000;
    let env = Env::new(8, 3);
    {
        let mm = env.mm();
        let rw = Prot::READ | Prot::WRITE;
        draw(&mm, "wwwwwwww");
        let stop = AtomicBool::new(false);
        let checked = thread::scope(|s| {
            env.p.spawn_cpu(s, 1, || {
                let mut x = 0x2545_f491_4f6c_dd1d_u64;
                while !stop.load(Ordering::SeqCst) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (at, len) = (x % PAGES, 1 + (x >> 8) % 3);
                    let len = len.min(PAGES - at);
                    mm.mmap(page(at), len * PAGE, rw, fixed()).unwrap();
                    for i in 0..PAGES {
                        mmu::store(&mm, page(i), i, true).unwrap();
                    }
                    thread::yield_now();
                }
            });
            let checker = env.p.spawn_cpu(s, 2, || {
                // The mapper stops when we are done, or when an assertion below fails.
                let _stop = SetOnDrop(&stop);
                let mut checked = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                for n in 0.. {
                    if checked == CHECKS || Instant::now() > deadline {
                        break;
                    }
                    let i = n % PAGES;
                    let Some(reader) = lock_vma_under_rcu(&mm, page(i)) else {
                        continue;
                    };
                    let before = mm.page_tables().lookup_pte(page(i));
                    for _ in 0..200 {
                        core::hint::spin_loop();
                    }
                    thread::yield_now();
                    let after = mm.page_tables().lookup_pte(page(i));
                    drop(reader);
                    if before.flags().contains(PageTableFlags::PRESENT) {
                        assert!(
                            after.flags().contains(PageTableFlags::PRESENT)
                                && after.frame() == before.frame(),
                            "page {i} zapped under the VMA read lock: PTE {before:?} -> {after:?}"
                        );
                        checked += 1;
                    }
                }
                checked
            });
            checker.join()
        });
        let checked = checked.unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert_eq!(checked, CHECKS, "too few holds found a page mapped");
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

/// `munmap` zaps after `mmap_write_downgrade`: a fault that needs `mmap_lock` (here every fault
/// does, by policy) on another VMA, queued while `munmap` held the lock for write, is let in at
/// the downgrade and completes while the zap is held up at a hook; the unmapped range is gone
/// for it already. With the zap under the write lock (or a downgrade that leaves the queued
/// readers waiting) the fault waits for the whole zap, and this fails.
#[test]
fn munmap_zaps_under_the_read_lock_so_faults_elsewhere_proceed() {
    use crate::memory::FaultPolicy;
    use crate::pgtable::{PMD_SIZE, tests::on_unmap_step};

    let env = Env::new(8, 3);
    {
        let mm = env.mm();
        let rw = Prot::READ | Prot::WRITE;
        // Far apart: different PTE tables, so the fault does not wait for the zap's PTE lock.
        let (x, y) = (PIC_BASE, PIC_BASE + 4 * PMD_SIZE);
        mm.mmap(x, 8 * PAGE, rw, fixed()).unwrap();
        mm.mmap(y, PAGE, Prot::READ, fixed()).unwrap();
        for i in 0..8 {
            mmu::store(&mm, x + i * PAGE, 1 + i, true).unwrap();
        }
        env.mem.set_fault_policy(FaultPolicy::MmapLockOnly);
        let write_held = std::sync::Arc::new(AtomicBool::new(false));
        let fault_started = std::sync::Arc::new(AtomicBool::new(false));
        let release = std::sync::Arc::new(AtomicBool::new(false));
        let faulted = AtomicBool::new(false);
        thread::scope(|s| {
            let unmapper = env.p.spawn_cpu(s, 1, || {
                let (write_held, fault_started, release) =
                    (write_held.clone(), fault_started.clone(), release.clone());
                let mut step = 0;
                on_unmap_step(Some(std::boxed::Box::new(move || {
                    step += 1;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    if step == 1 {
                        // Before the downgrade: let the fault queue on mmap_lock.
                        write_held.store(true, Ordering::SeqCst);
                        while !fault_started.load(Ordering::SeqCst) && Instant::now() < deadline {
                            thread::yield_now();
                        }
                        thread::sleep(Duration::from_millis(100));
                    } else if step == 2 {
                        // The zap of the first PTE table: held up until the fault is done.
                        while !release.load(Ordering::SeqCst) {
                            thread::yield_now();
                        }
                    }
                })));
                mm.munmap(x, 8 * PAGE).unwrap();
                on_unmap_step(None);
            });
            let _release = SetOnDrop(&release);
            while !write_held.load(Ordering::SeqCst) {
                thread::yield_now();
            }
            let fault = env.p.spawn_cpu(s, 2, || {
                fault_started.store(true, Ordering::SeqCst);
                assert_eq!(mmu::load(&mm, y, true), Ok(0));
                // A fault in the range being zapped (its PTEs may still be there for a CPU to
                // walk, as in Linux until munmap returns) finds no VMA.
                let read = crate::fault::Access::user(crate::fault::AccessKind::Read);
                assert!(matches!(
                    crate::fault::handle_mm_fault(&mm, x, read),
                    crate::fault::FaultResult::Segv { .. }
                ));
                faulted.store(true, Ordering::SeqCst);
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !faulted.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            let done_during_zap = faulted.load(Ordering::SeqCst);
            release.store(true, Ordering::SeqCst);
            fault.join().unwrap();
            unmapper.join().unwrap();
            assert!(done_during_zap, "the fault waited for the zap");
        });
        assert_eq!(picture(&mm, 8).0, "        ");
        env.mem.set_fault_policy(FaultPolicy::PerVmaLock);
    }
    env.assert_baseline();
}

/// After the downgrade `munmap` frees an emptied PTE table only if no VMA meets its 2 MiB (as
/// Linux's `free_pgtables` stops at the neighbours): a fault on a neighbour may be using it.
#[test]
fn munmap_keeps_a_pte_table_a_neighbour_shares() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        let rw = Prot::READ | Prot::WRITE;
        mm.mmap(page(0), 4 * PAGE, rw, fixed()).unwrap();
        mm.mmap(page(8), PAGE, Prot::READ, fixed()).unwrap();
        for i in 0..4 {
            mmu::store(&mm, page(i), 1, true).unwrap();
        }
        let tables = mm.page_tables().count_tables();
        mm.munmap(page(0), 4 * PAGE).unwrap();
        assert_eq!(
            mm.page_tables().count_tables(),
            tables,
            "a table the neighbour's range shares was freed"
        );
        mm.munmap(page(8), PAGE).unwrap();
        assert_eq!(mm.page_tables().count_tables(), tables - 1);
    }
    env.assert_baseline();
}
