//! `mremap` as pictures (see `tests.rs`: a letter per VMA, then each page's protection), with
//! the data of every page checked through the emulated MMU and every frame accounted for.

use super::*;
use crate::address_space::AddressSpace;
use crate::fault::{FaultResult, SegvReason};
use crate::pgtable::PMD_SIZE;
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::testutil::{Env, PAGE, PIC_BASE, draw, picture};
use crate::vma::Prot;

const MAYMOVE: u32 = MremapFlags::MAYMOVE.bits();
const FIXED: u32 = MremapFlags::FIXED.bits() | MAYMOVE;
const DONTUNMAP: u32 = MremapFlags::DONTUNMAP.bits() | MAYMOVE;

fn page(i: u64) -> u64 {
    PIC_BASE + i * PAGE
}

/// Writes `tag + i` into every mapped writable page `i` of the picture.
fn fill(mm: &AddressSpace<Emulated>, prots: &str, tag: u64) {
    for (i, c) in prots.chars().enumerate() {
        if c == 'w' {
            mmu::store(mm, page(i as u64) + 8, tag + i as u64, true).unwrap();
        }
    }
}

/// What a user read at `addr` gets: the word, or the fault's result.
fn read(mm: &AddressSpace<Emulated>, addr: u64) -> Result<u64, FaultResult> {
    mmu::load(mm, addr + 8, true)
}

fn no_vma(addr: u64) -> Result<u64, FaultResult> {
    Err(FaultResult::Segv {
        addr: addr + 8,
        reason: SegvReason::NoVma,
    })
}

/// Draws `before`, fills its writable pages, runs `op` (whose result must be `want`), checks
/// the picture, then `check`; finally every frame must be back.
fn scenario(
    before: &str,
    op: impl FnOnce(&AddressSpace<Emulated>) -> Result<u64, MremapError>,
    want: Result<u64, MremapError>,
    after: (&str, &str),
    check: impl FnOnce(&AddressSpace<Emulated>),
) {
    let env = Env::new(8, 1);
    {
        let mm = env.mm();
        draw(&mm, before);
        fill(&mm, before, 100);
        assert_eq!(op(&mm), want);
        assert_eq!(picture(&mm, before.len()), (after.0.into(), after.1.into()));
        mm.validate().unwrap();
        check(&mm);
    }
    env.assert_baseline();
}

#[test]
fn shrink_unmaps_the_tail_and_keeps_the_rest() {
    scenario(
        "wwww",
        |mm| mm.mremap(page(0), 4 * PAGE, 2 * PAGE, 0, 0),
        Ok(page(0)),
        ("AA  ", "ww  "),
        |mm| {
            assert_eq!(read(mm, page(1)), Ok(101));
            assert_eq!(read(mm, page(2)), no_vma(page(2)));
        },
    );
    // The middle of a VMA: splits it. A length that is not page-aligned rounds up.
    scenario(
        "wwww",
        |mm| mm.mremap(page(1), 2 * PAGE, 100, 0, 0),
        Ok(page(1)),
        ("AA B", "ww w"),
        |mm| assert_eq!(read(mm, page(3)), Ok(103)),
    );
    // Same length: nothing happens.
    scenario(
        "ww",
        |mm| mm.mremap(page(0), 2 * PAGE, 2 * PAGE, MAYMOVE, 0),
        Ok(page(0)),
        ("AA", "ww"),
        |_| {},
    );
}

#[test]
fn grow_in_place_extends_the_vma_and_merges() {
    scenario(
        "ww   ",
        |mm| mm.mremap(page(0), 2 * PAGE, 4 * PAGE, 0, 0),
        Ok(page(0)),
        ("AAAA ", "wwww "),
        |mm| {
            assert_eq!(read(mm, page(1)), Ok(101));
            assert_eq!(read(mm, page(3)), Ok(0));
        },
    );
    // Up to an equal neighbour: one VMA.
    scenario(
        "ww w",
        |mm| mm.mremap(page(0), 2 * PAGE, 3 * PAGE, 0, 0),
        Ok(page(0)),
        ("AAAA", "wwww"),
        |mm| assert_eq!(read(mm, page(3)), Ok(103)),
    );
    // The last part of a VMA grows; the VMA keeps its start.
    scenario(
        "rww  ",
        |mm| mm.mremap(page(1), 2 * PAGE, 3 * PAGE, 0, 0),
        Ok(page(1)),
        ("ABBB ", "rwww "),
        |_| {},
    );
}

#[test]
fn growing_without_room_needs_maymove() {
    // A neighbour in the way, or an old range that does not end its VMA.
    for (before, at, len) in [("ww r", 0, 2), ("wwww", 0, 2), ("w ww", 0, 1)] {
        scenario(
            before,
            |mm| mm.mremap(page(at), len * PAGE, 4 * PAGE, 0, 0),
            Err(MremapError::NoSpace),
            picture_of(before),
            |mm| assert_eq!(read(mm, page(0)), Ok(100)),
        );
    }
}

/// The picture `draw(before)` gives when nothing changes (each run of equal pages one VMA).
fn picture_of(before: &'static str) -> (&'static str, &'static str) {
    match before {
        "ww r" => ("AA B", "ww r"),
        "wwww" => ("AAAA", "wwww"),
        "w ww" => ("A BB", "w ww"),
        _ => unreachable!("no picture for {before:?}"),
    }
}

#[test]
fn maymove_moves_the_pages_without_copying() {
    let frames = core::cell::Cell::new([None; 2]);
    scenario(
        "ww r",
        |mm| {
            frames.set([0, 1].map(|i| Some(mm.page_tables().lookup_pte(page(i)).frame())));
            mm.mremap(page(0), 2 * PAGE, 4 * PAGE, MAYMOVE, 0)
        },
        // Top-down, as `mmap` places a mapping: the highest free range.
        Ok(crate::pgtable::USER_END - 4 * PAGE),
        ("   A", "   r"),
        |mm| {
            let to = crate::pgtable::USER_END - 4 * PAGE;
            for i in 0..2 {
                assert_eq!(read(mm, to + i * PAGE), Ok(100 + i));
                assert_eq!(
                    Some(mm.page_tables().lookup_pte(to + i * PAGE).frame()),
                    frames.get()[i as usize],
                    "the data was copied"
                );
                assert_eq!(read(mm, page(i)), no_vma(page(i)));
            }
            assert_eq!(read(mm, to + 3 * PAGE), Ok(0));
            assert_eq!(mm.vmas().len(), 2);
        },
    );
}

#[test]
fn fixed_moves_exactly_there_replacing_what_was_mapped() {
    scenario(
        "ww    ",
        |mm| mm.mremap(page(0), 2 * PAGE, 2 * PAGE, FIXED, page(4)),
        Ok(page(4)),
        ("    AA", "    ww"),
        |mm| {
            assert_eq!(read(mm, page(4)), Ok(100));
            assert_eq!(read(mm, page(5)), Ok(101));
        },
    );
    // Over a mapping: its pages go (frames freed: the baseline check), ours come.
    scenario(
        "ww  rw",
        |mm| mm.mremap(page(0), 2 * PAGE, 2 * PAGE, FIXED, page(4)),
        Ok(page(4)),
        ("    AA", "    ww"),
        |mm| assert_eq!(read(mm, page(5)), Ok(101)),
    );
    // Shrinking on the way, and growing on the way.
    scenario(
        "www   ",
        |mm| mm.mremap(page(0), 3 * PAGE, PAGE, FIXED, page(5)),
        Ok(page(5)),
        ("     A", "     w"),
        |mm| assert_eq!(read(mm, page(5)), Ok(100)),
    );
    scenario(
        "w     ",
        |mm| mm.mremap(page(0), PAGE, 3 * PAGE, FIXED, page(3)),
        Ok(page(3)),
        ("   AAA", "   www"),
        |mm| {
            assert_eq!(read(mm, page(3)), Ok(100));
            assert_eq!(read(mm, page(4)), Ok(0));
        },
    );
    // Out of the middle of a VMA, next to an equal one: split there, merged here.
    scenario(
        "wwww  w",
        |mm| mm.mremap(page(1), PAGE, PAGE, FIXED, page(5)),
        Ok(page(5)),
        ("A BB CC", "w ww ww"),
        |mm| {
            assert_eq!(read(mm, page(5)), Ok(101));
            assert_eq!(read(mm, page(6)), Ok(106));
        },
    );
}

#[test]
fn dontunmap_moves_the_pages_and_leaves_the_old_range_empty() {
    scenario(
        "ww    ",
        |mm| mm.mremap(page(0), 2 * PAGE, 2 * PAGE, DONTUNMAP | FIXED, page(4)),
        Ok(page(4)),
        ("AA  BB", "ww  ww"),
        |mm| {
            assert_eq!(read(mm, page(4)), Ok(100));
            assert_eq!(read(mm, page(0)), Ok(0));
        },
    );
    // Without FIXED the new address is a hint, used when free.
    scenario(
        "ww    ",
        |mm| mm.mremap(page(0), 2 * PAGE, 2 * PAGE, DONTUNMAP, page(3)),
        Ok(page(3)),
        ("AA BB ", "ww ww "),
        |mm| assert_eq!(read(mm, page(4)), Ok(101)),
    );
}

#[test]
fn moves_across_page_tables_keep_every_page() {
    let env = Env::new(16, 1);
    {
        let mm = env.mm();
        let rw = Prot::READ | Prot::WRITE;
        // 40 pages across a 2 MiB boundary, moved to straddle another one at a different
        // offset within its tables.
        let from = PIC_BASE + PMD_SIZE - 20 * PAGE;
        let to = PIC_BASE + 3 * PMD_SIZE - 7 * PAGE;
        mm.mmap(from, 40 * PAGE, rw, crate::testutil::fixed())
            .unwrap();
        for i in 0..40 {
            mmu::store(&mm, from + i * PAGE, 1000 + i, true).unwrap();
        }
        let tables = mm.page_tables().count_tables();
        assert_eq!(mm.mremap(from, 40 * PAGE, 40 * PAGE, FIXED, to), Ok(to));
        for i in 0..40 {
            assert_eq!(mmu::load(&mm, to + i * PAGE, true), Ok(1000 + i));
            assert!(mm.page_tables().lookup_pte(from + i * PAGE).is_empty());
        }
        // Both old PTE tables were emptied and freed; two new ones hold the pages.
        assert_eq!(mm.page_tables().count_tables(), tables);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

/// What is tried, the call, what it must return.
type Case = (
    &'static str,
    fn(&AddressSpace<Emulated>) -> Result<u64, MremapError>,
    Result<u64, MremapError>,
);

#[test]
fn invalid_arguments_are_linux_errors() {
    let bad = |e| Err(MremapError::BadRange(e));
    let cases: [Case; 12] = [
        (
            "flags",
            |mm| mm.mremap(page(0), PAGE, PAGE, 8, 0),
            Err(MremapError::BadFlags),
        ),
        (
            "fixed without maymove",
            |mm| mm.mremap(page(0), PAGE, PAGE, 2, page(4)),
            Err(MremapError::BadFlags),
        ),
        (
            "dontunmap without maymove",
            |mm| mm.mremap(page(0), PAGE, PAGE, 4, page(4)),
            Err(MremapError::BadFlags),
        ),
        (
            "dontunmap resizing",
            |mm| mm.mremap(page(0), PAGE, 2 * PAGE, DONTUNMAP, page(4)),
            Err(MremapError::BadFlags),
        ),
        (
            "unaligned",
            |mm| mm.mremap(page(0) + 1, PAGE, PAGE, 0, 0),
            bad(RangeError::Unaligned),
        ),
        (
            "unaligned new",
            |mm| mm.mremap(page(0), PAGE, PAGE, FIXED, page(4) + 8),
            bad(RangeError::Unaligned),
        ),
        (
            "zero new length",
            |mm| mm.mremap(page(0), PAGE, 0, 0, 0),
            bad(RangeError::ZeroLength),
        ),
        (
            "overlap",
            |mm| mm.mremap(page(0), 2 * PAGE, 2 * PAGE, FIXED, page(1)),
            Err(MremapError::Overlap),
        ),
        (
            "private duplicate",
            |mm| mm.mremap(page(0), 0, PAGE, MAYMOVE, 0),
            Err(MremapError::NotShared),
        ),
        (
            "unmapped",
            |mm| mm.mremap(page(2), PAGE, PAGE, 0, 0),
            Err(MremapError::NotMapped),
        ),
        (
            "past the VMA",
            |mm| mm.mremap(page(0), 3 * PAGE, PAGE, 0, 0),
            Err(MremapError::NotMapped),
        ),
        (
            "two VMAs",
            |mm| mm.mremap(page(0), 5 * PAGE, 5 * PAGE, MAYMOVE, 0),
            Err(MremapError::NotMapped),
        ),
    ];
    for (what, op, want) in cases {
        scenario("ww  r", op, want, ("AA  B", "ww  r"), |mm| {
            assert_eq!(read(mm, page(1)), Ok(101), "{what}")
        });
    }
}

#[test]
fn out_of_memory_changes_nothing_and_leaks_nothing() {
    // No frame for the destination's page tables (far away: new tables at every level).
    let far = PIC_BASE + 512 * PMD_SIZE;
    scenario(
        "ww",
        |mm| {
            let mem = mm.memory();
            mem.frames().drain_caches();
            mem.platform().fail_allocs_after(1);
            let r = mm.mremap(page(0), 2 * PAGE, 2 * PAGE, FIXED, far);
            mem.platform().fail_allocs_after(u64::MAX);
            r
        },
        Err(MremapError::OutOfMemory),
        ("AA", "ww"),
        |mm| {
            assert_eq!(read(mm, page(1)), Ok(101));
            assert!(mm.vmas_in(far..far + 2 * PAGE).is_empty());
        },
    );
    // No node for the new VMA.
    scenario(
        "ww",
        |mm| {
            mm.tree().fail_node_allocs_after(Some(0));
            let r = mm.mremap(page(0), 2 * PAGE, 2 * PAGE, FIXED, far);
            mm.tree().fail_node_allocs_after(None);
            r
        },
        Err(MremapError::OutOfMemory),
        ("AA", "ww"),
        |mm| assert_eq!(read(mm, page(0)), Ok(100)),
    );
}

/// A fault holding the old VMA's read lock keeps the move from touching its PTEs: `mremap`
/// write-locks the VMA first, which waits for that reader (and turns new ones away), so the
/// fault's page is still in place until the reader is done, and then moves with the others.
#[test]
fn a_move_waits_for_readers_of_the_old_vma() {
    use core::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use crate::fault::lock_vma_under_rcu;

    let env = Env::new(8, 2);
    {
        let mm = env.mm();
        draw(&mm, "ww    ");
        fill(&mm, "ww", 100);
        let done = AtomicBool::new(false);
        let (finished, moved, draining) = thread::scope(|s| {
            let reader = lock_vma_under_rcu(&mm, page(1)).expect("the VMA is not locked");
            env.p.spawn_cpu(s, 1, || {
                assert_eq!(
                    mm.mremap(page(0), 2 * PAGE, 2 * PAGE, FIXED, page(4)),
                    Ok(page(4))
                );
                done.store(true, Ordering::SeqCst);
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut draining = false;
            while !done.load(Ordering::SeqCst) && !draining && Instant::now() < deadline {
                draining = lock_vma_under_rcu(&mm, page(0)).is_none();
                thread::yield_now();
            }
            // Give a move that does not wait the time to happen.
            thread::sleep(Duration::from_millis(50));
            let seen = (
                done.load(Ordering::SeqCst),
                mm.page_tables().lookup_pte(page(1)).is_empty(),
                draining,
            );
            // Released before anything is asserted, so a failure cannot leave the mover waiting.
            drop(reader);
            seen
        });
        assert!(!finished, "mremap returned while a reader held the old VMA");
        assert!(!moved, "mremap moved a PTE of a read-locked VMA");
        assert!(
            draining,
            "mremap neither finished nor waited for the reader"
        );
        assert_eq!(picture(&mm, 6), ("    AA".into(), "    ww".into()));
        assert_eq!(read(&mm, page(5)), Ok(101));
        mm.validate().unwrap();
    }
    env.assert_baseline();
}
