//! Publication and retirement of a write: [`WriteOp::commit`] makes the new version visible with
//! one store and hands everything it replaced to `call_rcu`; [`WriteOp::abort`] frees the nodes
//! of a write that ran out of memory, which nobody saw. Dropping a tree frees it at once.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::super::node::{MAX_HEIGHT, NodeRef, publish_root};
use super::super::value::from_word;
use super::super::walk::slot_for;
use super::super::{MapleTree, MapleValue};
use super::{Item, Publish, WriteOp};
use crate::platform::Platform;

impl<V: MapleValue, P: Platform> WriteOp<'_, V, P> {
    pub(super) fn commit(mut self, p: Publish) {
        match p {
            Publish::Root(word, height) => {
                publish_root(&self.tree.root, word);
                self.w.height = height;
            }
            Publish::Slot { height, key, child } => self.publish_slot(height, key, child),
        }
        self.fresh.clear();
        for n in &self.dead_nodes {
            n.mark_dead();
        }
        let removed = self.dead_values.len();
        self.clone = None;
        let len = &self.tree.len;
        len.store(
            len.load(Ordering::Relaxed) + self.added - removed,
            Ordering::Relaxed,
        );
        if self.dead_nodes.is_empty() && self.dead_values.is_empty() {
            return;
        }
        let (nodes, values) = (
            core::mem::take(&mut self.dead_nodes),
            core::mem::take(&mut self.dead_values),
        );
        let count = self.tree.nodes.clone();
        self.tree
            .rcu
            .call_rcu(Box::new(move || free_retired::<V>(nodes, values, &count)));
    }

    /// Each node is retired at most once (twice would be a double free). Values cannot be
    /// checked the same way: two slots may hold equal words (a split `Arc` is one pointer).
    #[cfg(debug_assertions)]
    pub(super) fn assert_retired_once(&self) {
        let mut nodes: Vec<u64> = self.dead_nodes.iter().map(|n| n.word()).collect();
        nodes.sort_unstable();
        assert!(
            nodes.windows(2).all(|w| w[0] != w[1]),
            "maple: a node retired twice"
        );
    }

    /// Stores `child` into the slot covering `key` of the live node at height `height`, then
    /// brings the gaps on the path up to date.
    fn publish_slot(&mut self, height: usize, key: u64, child: Item) {
        let mut path = [(NodeRef::from_word(self.root), 0usize); MAX_HEIGHT];
        let mut node = NodeRef::from_word(self.root).expect("slot publish in a non-empty tree");
        let (mut min, mut max) = (0, u64::MAX);
        let mut depth = 0;
        loop {
            let (i, lo, hi) = slot_for(node, min, max, key);
            path[depth] = (Some(node), i);
            depth += 1;
            if self.w.height + 1 - depth == height {
                break;
            }
            node = NodeRef::from_word(node.slot(i)).expect("internal slots hold children");
            (min, max) = (lo, hi);
        }
        let (parent, slot) = path[depth - 1];
        let parent = parent.expect("path entries are set");
        parent.publish_slot(slot, NodeRef::from_word(child.word).expect("a new node"));
        let mut gap = child.gap;
        for &(n, slot) in path[..depth].iter().rev() {
            let n = n.expect("path entries are set");
            if n.gap(slot) == gap {
                break;
            }
            n.set_gap(slot, gap);
            gap = (0..n.end()).map(|i| n.gap(i)).max().unwrap_or(0);
        }
    }

    pub(super) fn abort(&mut self) {
        for n in self.fresh.drain(..) {
            // SAFETY: allocated by this write and never published.
            unsafe { n.free() };
            self.tree.nodes.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(c) = self.clone.take() {
            // SAFETY: the clone was made by this write and never published.
            drop(unsafe { from_word::<V>(c) });
        }
    }
}

/// The callback run a grace period after a write: no reader can hold these nodes or values.
fn free_retired<V: MapleValue>(nodes: Vec<NodeRef>, values: Vec<u64>, count: &AtomicUsize) {
    for w in values {
        // SAFETY: the tree owned this value and gave it up when the write was published; the
        // grace period has passed, so no reader still borrows it.
        drop(unsafe { from_word::<V>(w) });
    }
    count.fetch_sub(nodes.len(), Ordering::Relaxed);
    for n in nodes {
        // SAFETY: unlinked when the write was published, and a grace period has passed.
        unsafe { n.free() };
    }
}

impl<V: MapleValue, P: Platform> Drop for MapleTree<V, P> {
    fn drop(&mut self) {
        // `&mut self`: no reader can hold anything of this tree, so everything goes now.
        let root = *self.root.get_mut();
        // SAFETY: `&mut self` proves no reader or writer can reach the tree.
        unsafe { destroy::<V>(root, &self.nodes) };
    }
}

/// Frees a whole tree and drops its values at once.
///
/// # Safety
/// Nothing else can reach the tree at `root` any more (no reader, no writer).
unsafe fn destroy<V: MapleValue>(root: u64, count: &Arc<AtomicUsize>) {
    let Some(n) = NodeRef::from_word(root) else {
        return;
    };
    for i in 0..n.end() {
        let w = n.slot(i);
        if n.is_leaf() {
            if w != 0 {
                // SAFETY: the tree owns its values and no one else can see them (caller).
                drop(unsafe { from_word::<V>(w) });
            }
        } else {
            // SAFETY: a child of an unreachable tree is unreachable.
            unsafe { destroy::<V>(w, count) };
        }
    }
    count.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: unreachable (caller), and freed once: each node has one parent.
    unsafe { n.free() };
}
