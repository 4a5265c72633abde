//! Scenarios drawn as pictures of the address space, one character per page: a run of one
//! letter is one range whose value is that letter, a space is unmapped.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

use super::tree;
use crate::maple::{GapDir, InsertError, MapleTree, ReplaceError, StoreError, StoreSpanError};
use crate::platform::emulated::Emulated;

const PAGE: u64 = 0x1000;
type T = MapleTree<Arc<char>, Emulated>;

/// The ranges of a picture: `"AA B"` is `A` at pages 0..2 and `B` at page 3.
fn parse(pic: &str) -> Vec<(Range<u64>, char)> {
    let mut out: Vec<(Range<u64>, char)> = Vec::new();
    for (i, c) in pic.chars().enumerate() {
        let page = i as u64 * PAGE;
        match out.last_mut() {
            Some((r, last)) if *last == c && r.end == page => r.end += PAGE,
            _ if c == ' ' => {}
            _ => out.push((page..page + PAGE, c)),
        }
    }
    out
}

fn pages(r: Range<u64>) -> Range<u64> {
    r.start * PAGE..r.end * PAGE
}

fn draw(pic: &str) -> T {
    let t = tree();
    for (r, c) in parse(pic) {
        t.insert(r, Arc::new(c))
            .expect("picture ranges do not overlap");
    }
    t.validate().unwrap();
    t
}

/// The tree as a picture `width` pages wide; also checks each range is one run of its letter.
fn render(t: &T, width: usize) -> String {
    let rcu = t.rcu().clone();
    let g = rcu.read_lock();
    let mut out: Vec<char> = core::iter::repeat_n(' ', width).collect();
    for (r, c) in t.iter(&g, 0..width as u64 * PAGE) {
        assert!(
            r.start % PAGE == 0 && r.end % PAGE == 0,
            "range {r:x?} not page-aligned"
        );
        for p in r.start / PAGE..r.end / PAGE {
            out[p as usize] = **c;
        }
    }
    out.into_iter().collect()
}

fn expect(t: &T, pic: &str) {
    t.validate().unwrap();
    assert_eq!(render(t, pic.len()), pic);
    let want = parse(pic);
    assert_eq!(t.len(), want.len(), "entry count");
}

#[test]
fn picture_round_trips_and_walks() {
    let t = draw("AA B   CC");
    expect(&t, "AA B   CC");
    let g = t.rcu().read_lock();
    assert_eq!(
        t.walk(&g, 3 * PAGE + 5).map(|(r, c)| (r, **c)),
        Some((pages(3..4), 'B'))
    );
    assert!(t.walk(&g, 2 * PAGE).is_none());
    assert_eq!(
        t.find(&g, 2 * PAGE).map(|(r, c)| (r, **c)),
        Some((pages(3..4), 'B'))
    );
    assert_eq!(
        t.find(&g, 4 * PAGE).map(|(r, c)| (r, **c)),
        Some((pages(7..9), 'C'))
    );
    assert!(t.find(&g, 9 * PAGE).is_none());
}

#[test]
fn store_inside_one_range_splits_it() {
    let t = draw("AAAAAAAA");
    t.store(pages(2..4), Arc::new('X')).unwrap();
    expect(&t, "AAXXAAAA");
}

#[test]
fn store_across_ranges_trims_and_removes() {
    let t = draw("AA BB CC DD");
    t.store(pages(1..10), Arc::new('Z')).unwrap();
    expect(&t, "AZZZZZZZZZD");
    t.store(pages(0..11), Arc::new('Y')).unwrap();
    expect(&t, "YYYYYYYYYYY");
}

#[test]
fn erase_leaves_one_merged_hole() {
    let t = draw("AA B CC");
    let (r, c) = t.erase(3 * PAGE).unwrap();
    assert_eq!((r, *c), (pages(3..4), 'B'));
    expect(&t, "AA   CC");
    assert!(t.erase(3 * PAGE).is_none());
    // The three free pages are one gap: a 3-page search finds them.
    assert_eq!(
        t.find_gap(3 * PAGE, PAGE, 0, 7 * PAGE, GapDir::BottomUp),
        Some(2 * PAGE)
    );
}

#[test]
fn insert_refuses_overlap_and_empty_ranges_and_hands_the_value_back() {
    let t = draw("AA B");
    match t.insert(pages(1..3), Arc::new('X')) {
        Err(InsertError::Overlap(v)) => assert_eq!(*v, 'X'),
        other => panic!("expected overlap, got {other:?}"),
    }
    assert!(matches!(
        t.insert(pages(3..4), Arc::new('X')),
        Err(InsertError::Overlap(_))
    ));
    assert!(matches!(
        t.insert(pages(2..2), Arc::new('X')),
        Err(InsertError::InvalidRange(_))
    ));
    let reversed = Range {
        start: 3 * PAGE,
        end: 2 * PAGE,
    };
    assert!(matches!(
        t.store(reversed, Arc::new('X')),
        Err(StoreError::InvalidRange(_))
    ));
    t.insert(pages(2..3), Arc::new('X')).unwrap();
    expect(&t, "AAXB");
}

#[test]
fn replace_keeps_the_range() {
    let t = draw("AA BB");
    assert_eq!(*t.replace(4 * PAGE, Arc::new('Q')).unwrap(), 'B');
    expect(&t, "AA QQ");
    assert!(matches!(
        t.replace(2 * PAGE, Arc::new('Q')),
        Err(ReplaceError::NotFound(_))
    ));
}

#[test]
fn find_gap_both_directions_with_alignment() {
    let t = draw("AA  B    C");
    assert_eq!(
        t.find_gap(2 * PAGE, PAGE, 0, 10 * PAGE, GapDir::BottomUp),
        Some(2 * PAGE)
    );
    assert_eq!(
        t.find_gap(2 * PAGE, PAGE, 0, 10 * PAGE, GapDir::TopDown),
        Some(7 * PAGE)
    );
    assert_eq!(
        t.find_gap(2 * PAGE, 4 * PAGE, 0, 10 * PAGE, GapDir::BottomUp),
        None
    );
    assert_eq!(
        t.find_gap(2 * PAGE, 4 * PAGE, 0, 20 * PAGE, GapDir::BottomUp),
        Some(12 * PAGE)
    );
    assert_eq!(
        t.find_gap(5 * PAGE, PAGE, 0, 10 * PAGE, GapDir::TopDown),
        None
    );
    assert_eq!(t.find_gap(0, PAGE, 0, 10 * PAGE, GapDir::TopDown), None);
    assert_eq!(t.find_gap(PAGE, 3, 0, 10 * PAGE, GapDir::TopDown), None);
}

#[test]
fn many_ranges_grow_and_shrink_the_tree_and_free_every_node() {
    let t: T = tree();
    let n = 2000u64;
    // A scattered order exercises splits all over the tree.
    let order: Vec<u64> = (0..n).map(|i| (i * 7919) % n).collect();
    for &i in &order {
        t.insert(pages(2 * i..2 * i + 1), Arc::new('A')).unwrap();
    }
    t.validate().unwrap();
    assert_eq!(t.len(), n as usize);
    assert_eq!(
        t.find_gap(2 * PAGE, PAGE, 0, u64::MAX, GapDir::BottomUp),
        Some(2 * n * PAGE - PAGE)
    );
    for &i in order.iter().rev() {
        assert!(t.erase(2 * i * PAGE).is_some());
        t.rcu().barrier();
        assert_eq!(
            t.allocated_nodes(),
            t.reachable_nodes().unwrap(),
            "leak after erasing {i}"
        );
        if i % 97 == 0 {
            t.validate().unwrap();
        }
    }
    t.validate().unwrap();
    assert!(t.is_empty());
    t.rcu().barrier();
    assert_eq!(t.allocated_nodes(), 0);
}

#[test]
fn out_of_memory_leaves_the_tree_unchanged() {
    let t: T = tree();
    for i in 0..300u64 {
        t.insert(
            pages(3 * i..3 * i + 2),
            Arc::new(if i % 2 == 0 { 'A' } else { 'B' }),
        )
        .unwrap();
    }
    let before = render(&t, 900);
    for budget in 0..6 {
        t.fail_node_allocs_after(Some(budget));
        let ins = t.insert(pages(2..3), Arc::new('X'));
        let st = t.store(pages(100..700), Arc::new('Y'));
        let split = t.store(pages(301..302), Arc::new('Z'));
        t.fail_node_allocs_after(None);
        t.validate().unwrap();
        // Each either fully happened or not at all.
        if let Err(e) = ins {
            // Once it got through, later attempts overlap.
            assert!(
                matches!(e, InsertError::NoMemory(ref v) | InsertError::Overlap(ref v) if **v == 'X')
            );
        }
        if let Err(e) = st {
            assert!(matches!(e, StoreError::NoMemory(ref v) if **v == 'Y'));
        }
        if let Err(e) = split {
            assert!(matches!(e, StoreError::NoMemory(ref v) if **v == 'Z'));
        }
        if budget == 0 {
            assert_eq!(render(&t, 900), before);
            assert_eq!(t.len(), 300);
        }
    }
}

#[test]
fn store_span_replaces_a_run_in_one_write_or_not_at_all() {
    let entries = || alloc::vec![(pages(1..2), Arc::new('X')), (pages(3..5), Arc::new('Y'))];
    let mut budget = 0;
    loop {
        let t = draw("AABBBCC");
        t.fail_node_allocs_after(Some(budget));
        let r = t.store_span(pages(0..6), entries());
        t.fail_node_allocs_after(None);
        t.validate().unwrap();
        match r {
            Err(StoreSpanError::NoMemory(back)) => {
                assert_eq!(render(&t, 7), "AABBBCC", "half-done with {budget} nodes");
                assert_eq!(back.len(), 2);
                budget += 1;
            }
            r => {
                r.unwrap();
                assert_eq!(render(&t, 7), " X YY C");
                break;
            }
        }
    }
    let t = draw("AA");
    let overlapping = alloc::vec![(pages(0..2), Arc::new('X')), (pages(1..3), Arc::new('Y'))];
    assert!(
        matches!(t.store_span(pages(0..4), overlapping), Err(StoreSpanError::InvalidRange(v)) if v.len() == 2)
    );
    let outside = alloc::vec![(pages(3..5), Arc::new('X'))];
    assert!(matches!(
        t.store_span(pages(0..4), outside),
        Err(StoreSpanError::InvalidRange(_))
    ));
    assert_eq!(render(&t, 4), "AA  ");
}

/// The writer lock is a `sync::SpinLock` of class `MapleWriter`: taking it under a PTE lock
/// (an inversion of `LOCKING.md`) is caught in debug builds.
#[cfg(debug_assertions)]
#[test]
fn writer_lock_is_checked_against_the_lock_order() {
    use crate::sync::{LockClass, RawSpinLock};
    let t: T = tree();
    let pte = RawSpinLock::new(LockClass::Pte);
    let held = pte.lock();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = t.insert(pages(0..1), Arc::new('A'));
    }));
    drop(held);
    assert!(r.is_err(), "maple writer lock taken under a PTE lock");
    t.insert(pages(0..1), Arc::new('A')).unwrap();
}
