//! Stack growth, `brk` and the `mmap` flags, as pictures (see `tests.rs`; upper case marks a
//! `VM_GROWSDOWN` VMA) and with exact frame accounting.

use core::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::address_space::AddressSpace;
use crate::fault::{
    Access, AccessKind, FaultResult, SegvReason, handle_mm_fault, lock_vma_under_rcu,
};
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::testutil::{Env, PAGE, PIC_BASE, anon, draw, fixed, picture};
use crate::vma::Prot;

fn page(i: u64) -> u64 {
    PIC_BASE + i * PAGE
}

fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}

fn write_fault(mm: &AddressSpace<Emulated>, addr: u64) -> FaultResult {
    handle_mm_fault(mm, addr, Access::user(AccessKind::Write))
}

fn segv(addr: u64) -> FaultResult {
    FaultResult::Segv {
        addr,
        reason: SegvReason::NoVma,
    }
}

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

#[test]
fn a_fault_below_a_stack_grows_it_to_the_faulting_page() {
    scenario(
        "     WW",
        |mm| {
            assert_eq!(write_fault(mm, page(2) + 8), FaultResult::Resolved);
            assert_eq!(mmu::load(mm, page(2) + 8, true), Ok(0));
        },
        ("  AAAAA", "  WWWWW"),
    );
    // A read grows it too, and maps the zero frame.
    scenario(
        "   W",
        |mm| {
            assert_eq!(mmu::load(mm, page(1), true), Ok(0));
        },
        (" AAA", " WWW"),
    );
    // Not a stack: no growth.
    scenario(
        "   ww",
        |mm| assert_eq!(write_fault(mm, page(2)), segv(page(2))),
        ("   AA", "   ww"),
    );
}

#[test]
fn a_stack_grows_up_to_a_prot_none_or_stack_vma_below_and_merges_with_an_equal_one() {
    // PROT_NONE below is not a guard-gap neighbour (Linux's `vma_is_accessible`).
    scenario(
        "n   W",
        |mm| assert_eq!(write_fault(mm, page(1)), FaultResult::Resolved),
        ("ABBBB", "nWWWW"),
    );
    // Another stack of the same protection below: reaching it merges the two.
    scenario(
        "W  W",
        |mm| {
            assert_eq!(write_fault(mm, page(2)), FaultResult::Resolved);
            assert_eq!(write_fault(mm, page(1)), FaultResult::Resolved);
        },
        ("AAAA", "WWWW"),
    );
}

#[test]
fn mprotect_keeps_each_vmas_flags_and_merges_only_equal_ones() {
    // The stack changes, the VMA beside it is kept (it has the new protection already, but not
    // the stack's flag) and must survive the one-write replacement of the span.
    scenario(
        "rrWW",
        |mm| mm.mprotect(page(0), 4 * PAGE, Prot::READ).unwrap(),
        ("AABB", "rrRR"),
    );
    scenario(
        "ww WWw",
        |mm| {
            assert_eq!(
                mm.mprotect(page(1), 4 * PAGE, Prot::READ),
                Err(MprotectError::NotMapped)
            );
        },
        ("AA BBC", "ww WWw"),
    );
    scenario(
        "wwWWw",
        |mm| mm.mprotect(page(1), 3 * PAGE, Prot::READ).unwrap(),
        ("ABCCD", "wrRRw"),
    );
    // More VMAs that stay apart than one tree write can store.
    scenario(
        "rWrWrWrWr",
        |mm| mm.mprotect(page(0), 9 * PAGE, rw()).unwrap(),
        ("ABCDEFGHI", "wWwWwWwWw"),
    );
}

#[test]
fn growth_into_the_guard_gap_of_the_mapping_below_is_a_segfault() {
    // A mapping 3 pages below the stack: every page in between lies within its guard gap.
    scenario(
        "r   W",
        |mm| {
            for i in 1..4 {
                assert_eq!(write_fault(mm, page(i)), segv(page(i)));
            }
        },
        ("A   B", "r   W"),
    );
    // Exactly STACK_GUARD_GAP above the mapping below is allowed; a page lower is not.
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        let low = page(0);
        let stack = low + PAGE + STACK_GUARD_GAP + 4 * PAGE;
        mm.mmap(low, PAGE, Prot::READ, fixed()).unwrap();
        mm.mmap(stack, PAGE, rw(), fixed() | MapFlags::GROWSDOWN)
            .unwrap();
        let edge = low + PAGE + STACK_GUARD_GAP;
        assert_eq!(write_fault(&mm, edge - PAGE), segv(edge - PAGE));
        assert_eq!(write_fault(&mm, edge), FaultResult::Resolved);
        assert_eq!(mm.vmas().last().unwrap().range(), edge..stack + PAGE);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn a_stack_grows_to_stack_limit_and_no_further() {
    let env = Env::new(8, 1);
    {
        let mm = env.mm();
        let top = 0x7000_0000_0000;
        mm.mmap(top - PAGE, PAGE, rw(), fixed() | MapFlags::GROWSDOWN)
            .unwrap();
        let lowest = top - STACK_LIMIT;
        // A far fault grows it in one step (no distance limit, as in Linux since 4.20).
        assert_eq!(write_fault(&mm, lowest), FaultResult::Resolved);
        assert_eq!(write_fault(&mm, lowest - 8), segv(lowest - 8));
        assert_eq!(mm.vmas().len(), 1);
        assert_eq!(mm.vmas()[0].range(), lowest..top);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn mmap_keeps_the_guard_gap_below_a_stack_free() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        let top = crate::pgtable::USER_END;
        let stack = top - 4 * PAGE;
        mm.mmap(stack, 4 * PAGE, rw(), fixed() | MapFlags::GROWSDOWN)
            .unwrap();
        // Gap search: the first mapping goes below the guard gap, not right under the stack.
        let a = mm.mmap(0, PAGE, rw(), anon()).unwrap();
        assert_eq!(a, stack - STACK_GUARD_GAP - PAGE);
        // A hint inside the gap is not used; one ending at its bottom is.
        let hinted = stack - 2 * PAGE - STACK_GUARD_GAP / 2;
        assert_ne!(mm.mmap(hinted, PAGE, rw(), anon()).unwrap(), hinted);
        let b = stack - STACK_GUARD_GAP - 3 * PAGE;
        assert_eq!(mm.mmap(b, PAGE, rw(), anon()).unwrap(), b);
        // MAP_FIXED may still map there.
        let f = stack - PAGE * 2;
        assert_eq!(mm.mmap(f, PAGE, rw(), fixed()).unwrap(), f);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn the_gap_search_starts_below_mmap_base_and_falls_back_above_it() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        let base = 0x7000_0000_0000;
        mm.set_mmap_base(base + 5);
        assert_eq!(mm.mmap(0, PAGE, rw(), anon()).unwrap(), base - PAGE);
        // No room below: anywhere else, top down.
        mm.set_mmap_base(MMAP_MIN_ADDR + PAGE);
        mm.mmap(MMAP_MIN_ADDR, PAGE, rw(), fixed()).unwrap();
        let top = crate::pgtable::USER_END - PAGE;
        assert_eq!(mm.mmap(0, PAGE, rw(), anon()).unwrap(), top);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

/// A fault under the stack VMA's read lock racing a fault below the stack that grows it: the
/// expansion must `vma_start_write` the stack first, so it waits for the reader, and the VMA set
/// does not change while the reader holds the old VMA.
#[test]
fn stack_expansion_waits_for_faults_holding_the_stack_vma() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        draw(&mm, "   WW");
        mmu::store(&mm, page(3), 33, true).unwrap();
        let done = AtomicBool::new(false);
        let (finished, same_vma, draining) = thread::scope(|s| {
            let reader = lock_vma_under_rcu(&mm, page(3)).expect("the stack is not locked");
            env.p.spawn_cpu(s, 1, || {
                assert_eq!(write_fault(&mm, page(1)), FaultResult::Resolved);
                done.store(true, Ordering::SeqCst);
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut draining = false;
            while !done.load(Ordering::SeqCst) && !draining && Instant::now() < deadline {
                draining = lock_vma_under_rcu(&mm, page(4)).is_none();
                thread::yield_now();
            }
            // Give a writer that did not wait time to replace the VMA.
            thread::sleep(Duration::from_millis(50));
            let seen = (
                done.load(Ordering::SeqCst),
                mm.vmas_in(page(3)..page(4))
                    .first()
                    .is_some_and(|v| v.range() == reader.vma().range()),
                draining,
            );
            drop(reader);
            seen
        });
        assert!(!finished, "the stack grew while a fault held its VMA");
        assert!(same_vma, "the stack VMA was replaced under a reader");
        assert!(draining, "the expansion did not lock the stack VMA");
        assert_eq!(picture(&mm, 5), (" AAAA".into(), " WWWW".into()));
        assert_eq!(mmu::load(&mm, page(3), true), Ok(33));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

/// Stress: threads write and check their own words all over a stack that two of them keep
/// growing downwards from below, and one keeps unmapping its lower part (`munmap`) so it has to
/// grow again.
#[test]
fn faults_on_a_stack_race_its_growth() {
    const ROUNDS: u64 = 200;
    let env = Env::new(16, 4);
    {
        let mm = env.mm();
        let top = 0x7000_0000_0000;
        let depth = 64 * PAGE;
        mm.mmap(top - PAGE, PAGE, rw(), fixed() | MapFlags::GROWSDOWN)
            .unwrap();
        thread::scope(|s| {
            for cpu in 1..4u64 {
                let mm = &mm;
                env.p.spawn_cpu(s, cpu as usize, move || {
                    for round in 0..ROUNDS {
                        // Each thread its own word in every page, from the top down.
                        for i in (1..=depth / PAGE).rev() {
                            let a = top - i * PAGE + cpu * 8;
                            let v = round << 32 | i << 8 | cpu;
                            mmu::store(mm, a, v, true).unwrap();
                            let got = mmu::load(mm, a, true).unwrap();
                            // Zero if the trimming thread unmapped the page in between.
                            assert!(got == v || got == 0, "{a:#x}: {got:#x} != {v:#x}");
                        }
                        if cpu == 3 && round % 4 == 0 {
                            mm.munmap(top - depth, depth / 2).unwrap();
                        }
                    }
                });
            }
        });
        assert_eq!(mm.vmas().len(), 1);
        assert!(mm.vmas()[0].grows_down());
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn brk_moves_within_a_page_grows_shrinks_and_merges() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        // An image segment of the heap's protection ends where the heap starts.
        draw(&mm, "w");
        let start = page(1) - 100;
        mm.set_brk_start(start);
        assert_eq!(mm.brk(0), start, "brk(0) returns the break");
        assert_eq!(
            mm.brk(start + 50),
            start + 50,
            "within the page: recorded only"
        );
        assert_eq!(picture(&mm, 4), ("A   ".into(), "w   ".into()));
        assert_eq!(mm.brk(page(3) + 1), page(3) + 1);
        // The heap merges with the segment below.
        assert_eq!(picture(&mm, 5), ("AAAA ".into(), "wwww ".into()));
        for i in 1..4 {
            mmu::store(&mm, page(i), i, true).unwrap();
        }
        env.mem.quiesce();
        let frames = env.p.free_frames();
        assert_eq!(mm.brk(page(2) - 8), page(2) - 8);
        assert_eq!(picture(&mm, 5), ("AA   ".into(), "ww   ".into()));
        env.mem.quiesce();
        assert_eq!(env.p.free_frames(), frames + 2, "shrinking frees the pages");
        // Growing again gives zeroed pages.
        assert_eq!(mm.brk(page(4)), page(4));
        assert_eq!(mmu::load(&mm, page(2), true), Ok(0));
        assert_eq!(mmu::load(&mm, page(1), true), Ok(1));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn brk_that_cannot_move_returns_the_old_break_unchanged() {
    scenario(
        "      r",
        |mm| {
            let start = page(1);
            mm.set_brk_start(start);
            assert_eq!(mm.brk(page(2)), page(2));
            // Below the start, out of the user half, or overflowing: refused.
            for want in [start - 1, 0, crate::pgtable::USER_END + 1, u64::MAX] {
                assert_eq!(mm.brk(want), page(2), "{want:#x}");
            }
            // Into the mapping at page 6, or leaving no free page below it.
            assert_eq!(mm.brk(page(7)), page(2));
            assert_eq!(mm.brk(page(6)), page(2));
            // One free page must stay: page 5 is the last the heap may end at.
            assert_eq!(mm.brk(page(5)), page(5));
            // The heap unmapped behind the program's back: there is nothing to shrink.
            mm.munmap(page(1), 4 * PAGE).unwrap();
            assert_eq!(mm.brk(page(2)), page(5));
            assert_eq!(
                mm.brk(page(5) + 1),
                page(5),
                "no free page left below page 6"
            );
        },
        ("      A", "      r"),
    );
}

#[test]
fn brk_stays_out_of_the_guard_gap_below_a_stack() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        let stack = page(8) + STACK_GUARD_GAP;
        mm.mmap(stack, PAGE, rw(), fixed() | MapFlags::GROWSDOWN)
            .unwrap();
        mm.set_brk_start(page(1));
        assert_eq!(mm.brk(page(8)), page(1));
        assert_eq!(mm.brk(page(7)), page(7));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn map_populate_maps_every_page_before_returning() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        env.mem.quiesce();
        let frames = env.p.free_frames();
        let a = mm
            .mmap(
                0,
                8 * PAGE,
                rw(),
                anon() | MapFlags::POPULATE | MapFlags::NORESERVE,
            )
            .unwrap();
        for i in 0..8 {
            let e = mm.page_tables().lookup_pte(a + i * PAGE);
            assert!(e.present() && e.writable(), "page {i} not populated");
        }
        // Eight data frames and the page tables above them (PDPT, PD, PT).
        env.mem.quiesce();
        assert_eq!(frames - env.p.free_frames(), 8 + 3);
        // Read-only: the zero frame everywhere; PROT_NONE: nothing.
        let r = mm
            .mmap(0, 2 * PAGE, Prot::READ, anon() | MapFlags::POPULATE)
            .unwrap();
        let e = mm.page_tables().lookup_pte(r + PAGE);
        assert_eq!(e.frame(), env.mem.frames().zero_frame());
        let n = mm
            .mmap(0, PAGE, Prot::empty(), anon() | MapFlags::POPULATE)
            .unwrap();
        assert!(mm.page_tables().lookup_pte(n).is_empty());
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn map_populate_out_of_memory_fails_and_leaves_nothing_mapped() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        let before = mm.vmas().len();
        let free = env.p.free_frames() as u64;
        let r = mm.mmap(0, (free + 16) * PAGE, rw(), anon() | MapFlags::POPULATE);
        assert_eq!(r, Err(MmapError::OutOfMemory));
        assert_eq!(mm.vmas().len(), before);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn hints_are_rounded_down_to_a_page() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        assert_eq!(mm.mmap(page(3) + 123, PAGE, rw(), anon()).unwrap(), page(3));
        // Rounded down to page 0, it is no hint: the gap search places it at the top.
        assert!(mm.mmap(8, PAGE, rw(), anon()).unwrap() > page(3));
        // A fixed address is not rounded.
        assert_eq!(
            mm.mmap(page(5) + 1, PAGE, rw(), fixed()),
            Err(MmapError::BadRange(RangeError::Unaligned))
        );
        assert_eq!(
            mm.mmap(page(3), PAGE, rw(), anon() | MapFlags::FIXED_NOREPLACE),
            Err(MmapError::AlreadyMapped)
        );
        mm.validate().unwrap();
    }
    env.assert_baseline();
}
