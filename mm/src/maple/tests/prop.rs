//! Random operation sequences against a `BTreeMap` model, with `validate()` after every step.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::tree;
use crate::maple::{GapDir, InsertError, MapleTree};
use crate::platform::emulated::Emulated;

/// Number of random sequences; each has up to `MAX_OPS` operations.
const CASES: u32 = 256;
const MAX_OPS: usize = 120;
/// A small key space so that operations collide often.
const SPACE: u64 = 1200;

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64, u32),
    Store(u64, u64, u32),
    Erase(u64),
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
        1 => (0..SPACE, any::<u32>()).prop_map(|(a, v)| Op::Replace(a, v)),
        2 => (1..60u64, 0..5u32, 0..SPACE, 0..SPACE + 100, any::<bool>()).prop_map(
            |(size, align_shift, low, high, top_down)| Op::FindGap { size, align_shift, low, high, top_down }
        ),
    ]
}

/// start -> (end, value)
type Model = BTreeMap<u64, (u64, u32)>;

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

fn check_same(t: &MapleTree<Arc<u32>, Emulated>, m: &Model) {
    t.validate().unwrap();
    assert_eq!(t.len(), m.len());
    let g = t.rcu().read_lock();
    let got: Vec<(u64, u64, u32)> = t
        .iter(&g, 0..u64::MAX)
        .map(|(r, v)| (r.start, r.end, **v))
        .collect();
    let want: Vec<(u64, u64, u32)> = m.iter().map(|(&a, &(b, v))| (a, b, v)).collect();
    assert_eq!(got, want);
}

fn run(ops: &[Op]) {
    let t: MapleTree<Arc<u32>, Emulated> = tree();
    let mut m = Model::new();
    for op in ops {
        match *op {
            Op::Insert(s, l, v) => {
                let res = t.insert(s..s + l, Arc::new(v));
                if overlapping(&m, s, s + l).is_empty() {
                    assert!(res.is_ok(), "{op:?}");
                    m.insert(s, (s + l, v));
                } else {
                    assert!(
                        matches!(res, Err(InsertError::Overlap(ref x)) if **x == v),
                        "{op:?}"
                    );
                }
            }
            Op::Store(s, l, v) => {
                t.store(s..s + l, Arc::new(v)).unwrap();
                for (a, b, w) in overlapping(&m, s, s + l) {
                    m.remove(&a);
                    if a < s {
                        m.insert(a, (s, w));
                    }
                    if b > s + l {
                        m.insert(s + l, (b, w));
                    }
                }
                m.insert(s, (s + l, v));
            }
            Op::Erase(a) => {
                let got = t.erase(a).map(|(r, v)| (r.start, r.end, *v));
                let want = overlapping(&m, a, a + 1).first().copied();
                assert_eq!(got, want, "{op:?}");
                if let Some((s, _, _)) = want {
                    m.remove(&s);
                }
            }
            Op::Replace(a, v) => {
                let got = t.replace(a, Arc::new(v)).ok().map(|old| *old);
                let want = overlapping(&m, a, a + 1).first().copied();
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
                    model_gap(&m, size, align, low, high, top_down),
                    "{op:?}"
                );
            }
        }
        check_same(&t, &m);
        t.rcu().quiescent_state();
    }
    drop(t);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

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
