//! Lockless lookups. Each descent loads the root once and then only nodes reachable from it; a
//! node is immutable once published except for whole-child pointer swaps, whose old and new
//! child cover the same range, so a descent always lands in a leaf that covers the address and
//! reflects the tree at some instant between the start and the end of the descent.

use core::ops::Range;
use core::sync::atomic::AtomicU64;

use super::node::{NodeRef, load_root};
use super::{MapleTree, MapleValue};
use crate::platform::Platform;
use crate::rcu::RcuReadGuard;

/// The slot of `node` (covering `[min, max]`) that contains `key`, with its bounds.
pub(super) fn slot_for(node: NodeRef, min: u64, max: u64, key: u64) -> (usize, u64, u64) {
    let end = node.end();
    let mut lo = min;
    for i in 0..end - 1 {
        let p = node.pivot(i);
        if key <= p {
            return (i, lo, p);
        }
        lo = p + 1;
    }
    (end - 1, lo, max)
}

/// The leaf covering `key`, with its bounds; `None` for the empty tree.
fn leaf_for(root: u64, key: u64) -> Option<(NodeRef, u64, u64)> {
    let mut node = NodeRef::from_word(root)?;
    let (mut min, mut max) = (0, u64::MAX);
    while !node.is_leaf() {
        let (i, lo, hi) = slot_for(node, min, max, key);
        // Every internal slot in use holds a child (type invariant of the tree).
        node = NodeRef::from_word(node.slot(i))?;
        (min, max) = (lo, hi);
    }
    Some((node, min, max))
}

/// The entry containing `addr`: inclusive bounds and where its value lives.
pub(super) fn walk(root: &AtomicU64, addr: u64) -> Option<(u64, u64, *const u64)> {
    let (leaf, min, max) = leaf_for(load_root(root), addr)?;
    let (i, lo, hi) = slot_for(leaf, min, max, addr);
    (leaf.slot(i) != 0).then(|| (lo, hi, leaf.slot_ptr(i)))
}

/// The first entry ending at or above `addr`.
pub(super) fn find(root: &AtomicU64, addr: u64) -> Option<(u64, u64, *const u64)> {
    find_in(load_root(root), addr).map(|(lo, hi, _, p)| (lo, hi, p))
}

/// [`find`] for writers (under the writer lock), returning the value word.
pub(super) fn find_word(root: u64, addr: u64) -> Option<(u64, u64, u64)> {
    find_in(root, addr).map(|(lo, hi, w, _)| (lo, hi, w))
}

fn find_in(root: u64, mut addr: u64) -> Option<(u64, u64, u64, *const u64)> {
    loop {
        let (leaf, min, max) = leaf_for(root, addr)?;
        let (first, _, _) = slot_for(leaf, min, max, addr);
        let mut lo = if first == 0 {
            min
        } else {
            leaf.pivot(first - 1) + 1
        };
        let end = leaf.end();
        for i in first..end {
            let hi = if i == end - 1 { max } else { leaf.pivot(i) };
            let w = leaf.slot(i);
            if w != 0 {
                return Some((lo, hi, w, leaf.slot_ptr(i)));
            }
            lo = hi.checked_add(1)?;
        }
        // The rest of this leaf is empty: continue in the next one.
        addr = max.checked_add(1)?;
    }
}

/// Iterator over the entries intersecting a range; see [`MapleTree::iter`].
pub struct Iter<'g, V: MapleValue, P: Platform> {
    tree: &'g MapleTree<V, P>,
    guard: &'g RcuReadGuard<'g, P>,
    next: u64,
    end: u64,
    done: bool,
}

impl<'g, V: MapleValue, P: Platform> Iter<'g, V, P> {
    pub(super) fn new(
        tree: &'g MapleTree<V, P>,
        guard: &'g RcuReadGuard<'g, P>,
        range: Range<u64>,
    ) -> Self {
        Iter {
            tree,
            guard,
            next: range.start,
            end: range.end,
            done: range.start >= range.end,
        }
    }
}

impl<'g, V: MapleValue, P: Platform> Iterator for Iter<'g, V, P> {
    type Item = (Range<u64>, &'g V);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let found = find(&self.tree.root, self.next).filter(|&(lo, _, _)| lo < self.end);
        let Some((lo, hi, slot)) = found else {
            self.done = true;
            return None;
        };
        match hi.checked_add(1) {
            Some(n) if n < self.end => self.next = n,
            _ => self.done = true,
        }
        Some((lo..hi + 1, self.tree.borrow(slot, self.guard)))
    }
}
