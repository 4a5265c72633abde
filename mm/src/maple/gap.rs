//! Free-area search (`get_unmapped_area`'s core). Each internal slot records the largest empty
//! range below it, so the search descends only into children that can hold `size`, in address
//! order (bottom-up) or reverse (top-down), and stops at the first fit. Runs under the writer
//! lock: gaps are updated in place by writers and read by nobody else.

use super::node::NodeRef;
use super::write::range_size;

/// Which end of `[low, high)` the search prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapDir {
    /// The lowest fitting address.
    BottomUp,
    /// The highest fitting address (Linux's default mmap layout).
    TopDown,
}

struct Query {
    size: u64,
    align: u64,
    low: u64,
    /// Inclusive upper bound of the allowed area.
    last: u64,
    dir: GapDir,
}

pub(super) fn find_gap(
    root: u64,
    size: u64,
    align: u64,
    low: u64,
    high: u64,
    dir: GapDir,
) -> Option<u64> {
    if size == 0 || !align.is_power_of_two() || high <= low || high - low < size {
        return None;
    }
    let q = Query {
        size,
        align,
        low,
        last: high - 1,
        dir,
    };
    match NodeRef::from_word(root) {
        None => q.fit(0, u64::MAX),
        Some(n) => search(&q, n, 0, u64::MAX),
    }
}

impl Query {
    /// The preferred aligned start of a `size` range inside the empty `[lo, hi]` and the query
    /// bounds, if one fits.
    fn fit(&self, lo: u64, hi: u64) -> Option<u64> {
        let (a, b) = (lo.max(self.low), hi.min(self.last));
        if a > b || range_size(a, b) < self.size {
            return None;
        }
        let mask = self.align - 1;
        match self.dir {
            GapDir::BottomUp => {
                let start = a.checked_add(mask)? & !mask;
                (start <= b && range_size(start, b) >= self.size).then_some(start)
            }
            GapDir::TopDown => {
                let start = (b - (self.size - 1)) & !mask;
                (start >= a).then_some(start)
            }
        }
    }
}

fn search(q: &Query, n: NodeRef, min: u64, max: u64) -> Option<u64> {
    let end = n.end();
    let mut bounds = [(0u64, 0u64); 16];
    let mut lo = min;
    for (i, b) in bounds.iter_mut().enumerate().take(end) {
        let hi = if i == end - 1 { max } else { n.pivot(i) };
        *b = (lo, hi);
        lo = hi.wrapping_add(1);
    }
    let visit = |i: usize| -> Option<u64> {
        let (lo, hi) = bounds[i];
        if hi < q.low || lo > q.last {
            return None;
        }
        if n.is_leaf() {
            return if n.slot(i) == 0 { q.fit(lo, hi) } else { None };
        }
        if n.gap(i) < q.size {
            return None;
        }
        let child = NodeRef::from_word(n.slot(i))?;
        search(q, child, lo, hi)
    };
    match q.dir {
        GapDir::BottomUp => (0..end).find_map(visit),
        GapDir::TopDown => (0..end).rev().find_map(visit),
    }
}
