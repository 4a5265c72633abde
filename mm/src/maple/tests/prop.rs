//! Random operation sequences against a `BTreeMap` model, with `validate()` and a leak check
//! after every step.
//!
//! Long mode (`MM_TEST_LONG=1`, `make test-long`) runs [`LONG_CASES`] sequences instead of
//! [`CASES`] and the deep-tree sweep at every start, so that a bug one sequence in thousands
//! hits is not left to chance; `PROPTEST_CASES=n` sets the number of sequences directly.

extern crate std;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::tree;
use crate::maple::{GapDir, InsertError, MapleTree, MapleValue, StoreError};
use crate::platform::emulated::Emulated;

/// Number of random sequences by default; each has up to `MAX_OPS` operations.
const CASES: u32 = 256;
/// Number of random sequences in long mode.
const LONG_CASES: u32 = 20_000;
const MAX_OPS: usize = 120;
/// A small key space so that operations collide often.
const SPACE: u64 = 1200;

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64, u32),
    Store(u64, u64, u32),
    Erase(u64),
    /// `store_span` of nothing: empties the range.
    Clear(u64, u64),
    /// `store_span` of two entries: `v` on the second quarter and `v + 1` on the last.
    Span(u64, u64, u32),
    /// A `Store` whose node allocations fail after the first `budget`: it happens whole or
    /// not at all, and a failed one hands the value back and frees what it allocated.
    StoreOom(u64, u64, u32, usize),
    Replace(u64, u32),
    FindGap {
        size: u64,
        align_shift: u32,
        low: u64,
        high: u64,
        top_down: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..SPACE, 1..40u64, any::<u32>()).prop_map(|(s, l, v)| Op::Insert(s, l, v)),
        2 => (0..SPACE, 1..120u64, any::<u32>()).prop_map(|(s, l, v)| Op::Store(s, l, v)),
        3 => (0..SPACE + 50).prop_map(Op::Erase),
        1 => (0..SPACE, 1..200u64).prop_map(|(s, l)| Op::Clear(s, l)),
        1 => (0..SPACE, 4..200u64, any::<u32>()).prop_map(|(s, l, v)| Op::Span(s, l, v)),
        1 => (0..SPACE, any::<u32>()).prop_map(|(a, v)| Op::Replace(a, v)),
        1 => (0..SPACE, 1..120u64, any::<u32>(), 0..4usize)
            .prop_map(|(s, l, v, budget)| Op::StoreOom(s, l, v, budget)),
        2 => (1..60u64, 0..5u32, 0..SPACE, 0..SPACE + 100, any::<bool>()).prop_map(
            |(size, align_shift, low, high, top_down)| Op::FindGap { size, align_shift, low, high, top_down }
        ),
    ]
}

/// start -> (end, value)
type Model = BTreeMap<u64, (u64, u32)>;

/// A value that counts its live copies (clones included), so that a value the tree neither holds
/// nor has dropped (a leak), or one dropped while the tree still holds it, shows up as a wrong
/// count.
#[derive(Debug)]
struct Counted(Arc<(u32, Arc<AtomicUsize>)>);

// SAFETY: one `Arc`: a non-null pointer, movable by copying its bits.
unsafe impl MapleValue for Counted {}

impl Counted {
    fn new(v: u32, live: &Arc<AtomicUsize>) -> Counted {
        live.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::new((v, live.clone())))
    }

    fn v(&self) -> u32 {
        self.0.0
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.1.fetch_add(1, Ordering::Relaxed);
        Counted(self.0.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.1.fetch_sub(1, Ordering::Relaxed);
    }
}

type Tree = MapleTree<Counted, Emulated>;

fn overlapping(m: &Model, s: u64, e: u64) -> Vec<(u64, u64, u32)> {
    m.iter()
        .filter(|&(&a, &(b, _))| a < e && b > s)
        .map(|(&a, &(b, v))| (a, b, v))
        .collect()
}

fn model_gap(m: &Model, size: u64, align: u64, low: u64, high: u64, top_down: bool) -> Option<u64> {
    if high <= low || high - low < size {
        return None;
    }
    let mut free = Vec::new();
    let mut at = 0;
    for (&a, &(b, _)) in m {
        if a > at {
            free.push((at, a));
        }
        at = b;
    }
    free.push((at, u64::MAX));
    let fits = |(a, b): (u64, u64)| -> Option<u64> {
        let (a, b) = (a.max(low), b.min(high));
        if b <= a || b - a < size {
            return None;
        }
        if top_down {
            let s = (b - size) & !(align - 1);
            (s >= a).then_some(s)
        } else {
            let s = a.div_ceil(align) * align;
            (s + size <= b).then_some(s)
        }
    };
    if top_down {
        free.into_iter().rev().find_map(fits)
    } else {
        free.into_iter().find_map(fits)
    }
}

/// Checks the tree against the model after `op`.
fn check_same(t: &Tree, m: &Model, live: &AtomicUsize, op: &Op) {
    if let Err(e) = t.validate() {
        panic!("after {op:?}: {e:?}");
    }
    assert_eq!(t.len(), m.len(), "after {op:?}");
    {
        let g = t.rcu().read_lock();
        let got: Vec<(u64, u64, u32)> = t
            .iter(&g, 0..u64::MAX)
            .map(|(r, v)| (r.start, r.end, v.v()))
            .collect();
        let want: Vec<(u64, u64, u32)> = m.iter().map(|(&a, &(b, v))| (a, b, v)).collect();
        assert_eq!(got, want, "after {op:?}");
    }
    // Once every grace period has passed, exactly the values and nodes the tree holds are left.
    t.rcu().barrier();
    assert_eq!(
        live.load(Ordering::Relaxed),
        m.len(),
        "values leaked or freed early after {op:?}"
    );
    assert_eq!(
        t.allocated_nodes(),
        t.reachable_nodes().unwrap(),
        "nodes leaked or freed twice after {op:?}"
    );
}

/// Removes `[s, e)` from the model, keeping the parts of entries that stick out.
fn model_clear(m: &mut Model, s: u64, e: u64) {
    for (a, b, w) in overlapping(m, s, e) {
        m.remove(&a);
        if a < s {
            m.insert(a, (s, w));
        }
        if b > e {
            m.insert(e, (b, w));
        }
    }
}

/// Applies `op` to the tree and the model, checking what the tree returns.
fn apply(t: &Tree, m: &mut Model, op: &Op, live: &Arc<AtomicUsize>) {
    let val = |v| Counted::new(v, live);
    match *op {
        Op::Insert(s, l, v) => {
            let res = t.insert(s..s + l, val(v));
            if overlapping(m, s, s + l).is_empty() {
                assert!(res.is_ok(), "{op:?}");
                m.insert(s, (s + l, v));
            } else {
                assert!(
                    matches!(res, Err(InsertError::Overlap(ref x)) if x.v() == v),
                    "{op:?}"
                );
            }
        }
        Op::Store(s, l, v) => {
            t.store(s..s + l, val(v)).unwrap();
            model_clear(m, s, s + l);
            m.insert(s, (s + l, v));
        }
        Op::Clear(s, l) => {
            t.store_span(s..s + l, Vec::new()).unwrap();
            model_clear(m, s, s + l);
        }
        Op::Span(s, l, v) => {
            let (a, b) = (s + l / 4..s + l / 2, s + 3 * l / 4..s + l);
            let entries = alloc::vec![(a.clone(), val(v)), (b.clone(), val(v.wrapping_add(1)))];
            t.store_span(s..s + l, entries).unwrap();
            model_clear(m, s, s + l);
            m.insert(a.start, (a.end, v));
            m.insert(b.start, (b.end, v.wrapping_add(1)));
        }
        Op::StoreOom(s, l, v, budget) => {
            t.fail_node_allocs_after(Some(budget));
            let res = t.store(s..s + l, val(v));
            t.fail_node_allocs_after(None);
            match res {
                Ok(()) => {
                    model_clear(m, s, s + l);
                    m.insert(s, (s + l, v));
                }
                Err(StoreError::NoMemory(back)) => assert_eq!(back.v(), v, "{op:?}"),
                Err(e) => panic!("{op:?}: {e:?}"),
            }
        }
        Op::Erase(a) => {
            let got = t.erase(a).map(|(r, v)| (r.start, r.end, v.v()));
            let want = overlapping(m, a, a + 1).first().copied();
            assert_eq!(got, want, "{op:?}");
            if let Some((s, _, _)) = want {
                m.remove(&s);
            }
        }
        Op::Replace(a, v) => {
            let got = t.replace(a, val(v)).ok().map(|old| old.v());
            let want = overlapping(m, a, a + 1).first().copied();
            assert_eq!(got, want.map(|(_, _, w)| w), "{op:?}");
            if let Some((s, e, _)) = want {
                m.insert(s, (e, v));
            }
        }
        Op::FindGap {
            size,
            align_shift,
            low,
            high,
            top_down,
        } => {
            let align = 1 << align_shift;
            let dir = if top_down {
                GapDir::TopDown
            } else {
                GapDir::BottomUp
            };
            let got = t.find_gap(size, align, low, high, dir);
            assert_eq!(
                got,
                model_gap(m, size, align, low, high, top_down),
                "{op:?}"
            );
        }
    }
}

fn run(ops: &[Op]) {
    let live = Arc::new(AtomicUsize::new(0));
    let t: Tree = tree();
    let mut m = Model::new();
    for op in ops {
        apply(&t, &mut m, op, &live);
        check_same(&t, &m, &live, op);
    }
    drop(t);
    assert_eq!(
        live.load(Ordering::Relaxed),
        0,
        "values left after the tree was dropped"
    );
}

fn long_mode() -> bool {
    std::env::var_os("MM_TEST_LONG").is_some_and(|v| v != "0")
}

/// `PROPTEST_CASES` when set, else [`CASES`] or, in long mode, [`LONG_CASES`].
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long_mode() { LONG_CASES } else { CASES })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn matches_a_btreemap_model(ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        run(&ops);
    }
}

/// Dense sequential fills and a sweeping store: deep trees the random test rarely builds.
#[test]
fn dense_fill_then_sweeping_store() {
    let mut ops = Vec::new();
    for i in 0..400u64 {
        ops.push(Op::Insert(i * 3, 2, i as u32));
    }
    ops.push(Op::Store(100, 900, 7));
    for i in 0..400u64 {
        ops.push(Op::Erase(i * 3));
    }
    run(&ops);
}

/// A tree three levels deep: `ENTRIES` entries of 2 keys, 1 key apart.
fn deep_tree(live: &Arc<AtomicUsize>) -> (Tree, Model) {
    let t: Tree = tree();
    let mut m = Model::new();
    for i in 0..ENTRIES {
        t.insert(i * 3..i * 3 + 2, Counted::new(i as u32, live))
            .unwrap();
        m.insert(i * 3, (i * 3 + 2, i as u32));
    }
    assert!(
        t.height() >= 3,
        "the tree is not deep enough to test anything"
    );
    (t, m)
}

const ENTRIES: u64 = 400;

/// Stores, clears and splits over a tree three levels deep (entries of 2 keys, 1 apart), each
/// on a fresh copy: the edges of the writes land at many positions relative to leaf and parent
/// boundaries, which random sequences over a small tree rarely reach (long mode: every start).
#[test]
fn every_write_over_a_deep_tree_frees_exactly_what_it_removes() {
    let end = ENTRIES * 3;
    let mut writes = Vec::new();
    let step = if long_mode() { 1 } else { 23 };
    for s in (0..end).step_by(step) {
        for len in [1, 4, 20, 61, 150, 333, 700, end] {
            writes.push(Op::Store(s, len, 7));
            writes.push(Op::Clear(s, len));
            if len >= 4 {
                writes.push(Op::Span(s, len, 9));
            }
        }
    }
    for w in &writes {
        let live = Arc::new(AtomicUsize::new(0));
        let (t, mut m) = deep_tree(&live);
        apply(&t, &mut m, w, &live);
        check_same(&t, &m, &live, w);
        drop(t);
        assert_eq!(live.load(Ordering::Relaxed), 0, "after {w:?}");
    }
}

/// A store that ends up spanning the whole key space at the leaf level (first and last leaf
/// opened) used to take entries only from those two leaves and retire only the root: the leaves
/// between them and their values leaked and `len` stayed too high.
#[test]
fn store_spanning_every_leaf_retires_the_middle_leaves() {
    use Op::{Insert, Store};
    run(&[
        Insert(649, 1, 1),
        Store(514, 1, 2),
        Insert(405, 1, 3),
        Insert(516, 1, 4),
        Insert(407, 1, 5),
        Store(409, 1, 6),
        Insert(463, 1, 7),
        Insert(1, 1, 8),
        Insert(411, 1, 9),
        Insert(0, 1, 10),
        Insert(3, 1, 11),
        Insert(5, 1, 12),
        Store(7, 1, 13),
        Store(356, 108, 14),
    ]);
}

/// A store whose span absorbs the left neighbour of its first leaf, under another parent: the
/// parent of that first leaf then lies between the span's ends one level up and is retired
/// whole, and it used to retire the opened leaf inside it a second time, with the entries the
/// write kept from it (a double free of the node, values dropped while still in the tree).
#[test]
fn store_absorbing_a_neighbour_under_another_parent_retires_each_node_once() {
    let live = Arc::new(AtomicUsize::new(0));
    let (t, mut m) = deep_tree(&live);
    let op = Op::Store(85, 333, 7);
    apply(&t, &mut m, &op, &live);
    check_same(&t, &m, &live, &op);
}
