//! Maple nodes: 256-byte, 256-byte-aligned blocks of 32 words, and the tagged words that point to
//! them. Node memory is allocated, published and freed here; `value.rs` (values moved into and
//! out of words, borrowed through slot pointers) and `write.rs` with `write/publish.rs` (a value
//! cloned to split an entry; retired nodes and values freed) hold the rest of the tree's
//! `unsafe`, each block with its `SAFETY` comment. The other maple modules are safe code
//! (`#[allow(unsafe_code)]` is on `node`, `value` and `write` only).
//!
//! Layout (word 0 is `meta`: slot count, kind, dead and poison marks):
//! ```text
//! leaf      pivots w[0..15]   slots w[15..31] (values; 0 = empty range)
//! internal  pivots w[0..10]   slots w[10..20] (child words)   gaps w[20..30]
//! ```
//! Slot `i` covers `[pivot[i-1] + 1, pivot[i]]` (the node's min for `i == 0`); the last used slot
//! ends at the node's max, which the parent knows, so its pivot is not read. Every field is an
//! atomic word so that readers may load a node while a writer sets its dead mark or, in a live
//! internal node, replaces one child pointer or gap (the only in-place writes).

use alloc::alloc::{Layout, alloc, dealloc};

use crate::primitive::{AtomicU64, Ordering};

pub(super) const LEAF_SLOTS: usize = 16;
pub(super) const INTERNAL_SLOTS: usize = 10;
/// Fewest slots in a non-root node: about half, so that any two neighbours fit in two nodes.
pub(super) const LEAF_MIN: usize = 7;
pub(super) const INTERNAL_MIN: usize = 4;
/// Deepest tree: with at least `INTERNAL_MIN` children per internal node, 2^64 keys fit in 32
/// levels.
pub(super) const MAX_HEIGHT: usize = 33;

const META_END: u64 = 0xff;
const META_LEAF: u64 = 1 << 8;
const META_DEAD: u64 = 1 << 9;
/// What a freed node's meta word holds (in test builds freed nodes are kept, poisoned, for a
/// while, so a reader that reached one fails a check instead of reading reused memory).
const META_POISON: u64 = 0xdead_0000_0000_0000;

/// Low bit of a child word: the child is a leaf.
const TAG_LEAF: u64 = 1;

/// # Invariants
/// Allocated only by [`NodeRef::alloc`] with [`Node::LAYOUT`]; `meta & META_END` is the number of
/// used slots, at most the kind's capacity; after the node is published only `meta`'s dead bit
/// and, in internal nodes, slot and gap words change.
#[repr(C, align(256))]
pub(super) struct Node {
    meta: AtomicU64,
    w: [AtomicU64; 31],
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Node>() == 256 && core::mem::align_of::<Node>() == 256);

/// A node and its kind, as a word stored in a parent slot or the root: the address with
/// [`TAG_LEAF`] in the low bit for leaves. 0 is "no node".
///
/// # Invariants
/// Points to a live allocation made by [`NodeRef::alloc`] (or is dangling only after the node
/// was retired and a grace period passed, when no walker can hold it any more).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct NodeRef(u64);

impl Node {
    const LAYOUT: Layout = Layout::new::<Node>();
}

impl NodeRef {
    /// A fresh, unpublished node with `end` slots, or `None` when memory is out.
    pub(super) fn alloc(leaf: bool, end: usize) -> Option<NodeRef> {
        debug_assert!(end >= 1 && end <= if leaf { LEAF_SLOTS } else { INTERNAL_SLOTS });
        #[cfg(test)]
        if inject::next_fails() {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc(Node::LAYOUT) } as *mut Node;
        if p.is_null() {
            return None;
        }
        let meta = end as u64 | if leaf { META_LEAF } else { 0 };
        // SAFETY: `p` is a fresh allocation of the right layout; all-zero words are valid atomics.
        unsafe {
            p.write(Node {
                meta: AtomicU64::new(meta),
                w: core::array::from_fn(|_| AtomicU64::new(0)),
            })
        };
        Some(NodeRef(p as u64 | if leaf { TAG_LEAF } else { 0 }))
    }

    /// Rebuilds a reference from a word read from a slot or the root (0 gives `None`).
    pub(super) fn from_word(word: u64) -> Option<NodeRef> {
        if word == 0 { None } else { Some(NodeRef(word)) }
    }

    pub(super) fn word(self) -> u64 {
        self.0
    }

    pub(super) fn is_leaf(self) -> bool {
        self.0 & TAG_LEAF != 0
    }

    fn node(&self) -> &Node {
        // Callers hold only a `NodeRef` loaded from the live tree under an RCU guard or the
        // writer lock, or one they allocated.
        // SAFETY: by the type invariant the node is allocated, and not freed while used.
        unsafe { &*((self.0 & !TAG_LEAF) as *const Node) }
    }

    /// Used slots.
    pub(super) fn end(self) -> usize {
        let meta = self.node().meta.load(Ordering::Relaxed);
        debug_assert!(
            meta & META_POISON != META_POISON,
            "walked into a freed maple node"
        );
        (meta & META_END) as usize
    }

    pub(super) fn is_dead(self) -> bool {
        self.node().meta.load(Ordering::Relaxed) & META_DEAD != 0
    }

    pub(super) fn is_poisoned(self) -> bool {
        self.node().meta.load(Ordering::Relaxed) & META_POISON == META_POISON
    }

    /// Marks a node that has just been unlinked from the tree: readers that still hold it may
    /// finish with it, the validator and writers must never reach it again.
    pub(super) fn mark_dead(self) {
        self.node().meta.fetch_or(META_DEAD, Ordering::Relaxed);
    }

    pub(super) fn pivot(self, i: usize) -> u64 {
        self.node().w[i].load(Ordering::Relaxed)
    }

    /// The word in slot `i`. Acquire: a child published by a store into this slot is seen
    /// complete.
    pub(super) fn slot(self, i: usize) -> u64 {
        let base = if self.is_leaf() { 15 } else { 10 };
        self.node().w[base + i].load(Ordering::Acquire)
    }

    /// Where slot `i` lives, for borrowing a value in place.
    #[cfg(not(loom))]
    pub(super) fn slot_ptr(self, i: usize) -> *const u64 {
        debug_assert!(self.is_leaf());
        self.node().w[15 + i].as_ptr()
    }

    /// Largest free range below child `i` (internal nodes).
    pub(super) fn gap(self, i: usize) -> u64 {
        debug_assert!(!self.is_leaf());
        self.node().w[20 + i].load(Ordering::Relaxed)
    }

    /// Fills slot `i` of a node that is not yet published.
    pub(super) fn init_slot(self, i: usize, pivot: u64, word: u64, gap: u64) {
        let n = self.node();
        let cap = if self.is_leaf() {
            LEAF_SLOTS
        } else {
            INTERNAL_SLOTS
        };
        debug_assert!(i < cap);
        if i < cap - 1 || !self.is_leaf() {
            n.w[i].store(pivot, Ordering::Relaxed);
        }
        if self.is_leaf() {
            n.w[15 + i].store(word, Ordering::Relaxed);
        } else {
            n.w[10 + i].store(word, Ordering::Relaxed);
            n.w[20 + i].store(gap, Ordering::Relaxed);
        }
    }

    /// Publishes `child` in slot `i` of this live internal node, replacing a child that covers
    /// the same range. Release: a reader that loads the slot ([`slot`](Self::slot), acquire)
    /// sees the child as it was built.
    pub(super) fn publish_slot(self, i: usize, child: NodeRef) {
        debug_assert!(!self.is_leaf());
        self.node().w[10 + i].store(child.0, Ordering::Release);
    }

    /// Updates the gap of child `i` in place; only writers read gaps.
    pub(super) fn set_gap(self, i: usize, gap: u64) {
        debug_assert!(!self.is_leaf());
        self.node().w[20 + i].store(gap, Ordering::Relaxed);
    }

    /// Frees a node.
    ///
    /// # Safety
    /// The node is not reachable from the tree and no walker can still hold it: it was never
    /// published, or it was unlinked and a grace period has passed since. It is not used again.
    pub(super) unsafe fn free(self) {
        let p = (self.0 & !TAG_LEAF) as *mut Node;
        self.node().meta.store(META_POISON, Ordering::Relaxed);
        #[cfg(test)]
        let Some(p) = quarantine::delay(p) else {
            return;
        };
        // SAFETY: allocated by `alloc` with this layout (type invariant), and by the caller's
        // promise no one uses it any more.
        unsafe { dealloc(p as *mut u8, Node::LAYOUT) };
    }
}

/// Injected allocation failures (test builds): node allocations of one thread fail in a seeded
/// random sequence while a [`inject::FailNodeAllocs`] guard of that thread lives. Per thread,
/// so tests running in parallel do not see each other's failures.
#[cfg(test)]
pub(crate) mod inject {
    extern crate std;
    use core::cell::Cell;

    use crate::platform::emulated::FailRandomly;

    std::thread_local! {
        static FAIL: Cell<Option<FailRandomly>> = const { Cell::new(None) };
        static INJECTED: Cell<u64> = const { Cell::new(0) };
    }

    /// Node allocations on this thread fail as `fail` says until this is dropped.
    #[must_use = "injection stops when the guard is dropped"]
    pub(crate) struct FailNodeAllocs {
        _not_send: core::marker::PhantomData<*const ()>,
    }

    impl FailNodeAllocs {
        pub(crate) fn new(fail: FailRandomly) -> Self {
            FAIL.with(|f| f.set(Some(fail)));
            FailNodeAllocs {
                _not_send: core::marker::PhantomData,
            }
        }

        /// Node allocations this thread was made to fail so far.
        pub(crate) fn injected() -> u64 {
            INJECTED.with(Cell::get)
        }
    }

    impl Drop for FailNodeAllocs {
        fn drop(&mut self) {
            FAIL.with(|f| f.set(None));
        }
    }

    pub(super) fn next_fails() -> bool {
        FAIL.with(|f| {
            let Some(mut fail) = f.get() else {
                return false;
            };
            let fails = fail.next_fails();
            f.set(Some(fail));
            if fails {
                INJECTED.with(|n| n.set(n.get() + 1));
            }
            fails
        })
    }
}

/// Publishes `word` (a node's word, or 0 for the empty tree) as the tree's root. Release: a
/// reader that loads the root with [`load_root`] sees the node as it was built.
pub(super) fn publish_root(root: &AtomicU64, word: u64) {
    root.store(word, Ordering::Release);
}

/// The root word, for a lockless descent (acquire, pairs with [`publish_root`]).
pub(super) fn load_root(root: &AtomicU64) -> u64 {
    root.load(Ordering::Acquire)
}

/// Test builds keep the last freed nodes allocated (and poisoned) so that a use after free shows
/// up as a failed poison check rather than as silently reused memory.
#[cfg(test)]
mod quarantine {
    extern crate std;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::Node;

    const KEEP: usize = 1 << 14;

    struct Parked(*mut Node);
    // SAFETY: parked nodes are owned by the quarantine alone.
    unsafe impl Send for Parked {}

    static PARKED: Mutex<VecDeque<Parked>> = Mutex::new(VecDeque::new());

    /// Parks `p` and returns the node that now leaves the quarantine, if any.
    pub(super) fn delay(p: *mut Node) -> Option<*mut Node> {
        let mut q = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(Parked(p));
        if q.len() > KEEP {
            q.pop_front().map(|x| x.0)
        } else {
            None
        }
    }
}
