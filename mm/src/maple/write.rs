//! Writes: one general operation, "make `[s, e]` hold this word" (0 erases), that copies what it
//! changes and publishes it with one pointer store.
//!
//! It works bottom-up on a *span*: a run of adjacent nodes of one height that are being replaced,
//! covering `[lo, hi]`, and the items (entries, or children) that will fill their replacements.
//! 1. Leaves: the leaves holding `s` and `e` are opened; their entries outside `[s, e]` are kept,
//!    entries cut by `s` or `e` keep their outside parts, the new entry goes between, and
//!    adjacent empty slots are merged. A leaf neighbour is absorbed into the span when an empty
//!    slot would otherwise touch one across the boundary, or when the span holds too few items
//!    for a node.
//! 2. The items are packed into as few nodes as fit, evenly. If that is one node replacing one
//!    node (same range), it is stored into the parent's slot in place and gaps are fixed up the
//!    path: done. Otherwise the parents of the span's ends are opened: their children left of
//!    `lo` and right of `hi` are kept, the new nodes go between, and everything else between is
//!    retired whole. Repeat one level up; at the root, a new root is stored. Once the span
//!    covers the whole key space, the new root is built from its items alone and the rest of
//!    the old tree (the levels above and every node between the span's ends) is retired.
//!
//! Every node the new version no longer reaches is retired exactly once, with every value it
//! held that the new version does not: an *opened* node (its slots taken into the span) is
//! retired alone, since what it held lives on in the items or was retired entry by entry; any
//! other node in the replaced range is retired with its whole subtree, skipping opened nodes
//! inside it.
//!
//! Nothing visible changes until that single store ([`publish`]); on allocation failure all new
//! nodes are freed and the tree is as it was.
//!
//! [`WriteOp::build`] is the loop over heights; per height, [`WriteOp::widen`] absorbs
//! neighbours (step 1's absorption, and any level's underflow), [`WriteOp::pack`] makes the
//! nodes (step 2), and [`WriteOp::ascend`] opens the parents of the span's ends.

mod publish;

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use super::node::{INTERNAL_MIN, INTERNAL_SLOTS, LEAF_MIN, LEAF_SLOTS, NodeRef};
use super::value::{clone_word, into_word};
use super::walk::slot_for;
use super::{MapleTree, MapleValue};
use crate::platform::Platform;

/// State owned by the writer lock.
pub(super) struct Writer {
    /// Height of the tree: 0 when empty, 1 when the root is a leaf.
    height: usize,
    /// Test hook: node allocations left before they start failing.
    #[cfg(test)]
    pub(super) fail_allocs_after: Option<usize>,
}

impl Writer {
    pub(super) fn new() -> Self {
        Writer {
            height: 0,
            #[cfg(test)]
            fail_allocs_after: None,
        }
    }

    pub(super) fn height(&self) -> usize {
        self.height
    }
}

/// A node could not be allocated.
#[derive(Debug)]
pub(super) struct NoMemory;

/// An entry (leaf level: `word` is a value, 0 for empty) or a child (`word` is a node, `gap` its
/// largest free range), ending at `hi` inclusive.
#[derive(Clone, Copy, Default)]
struct Item {
    hi: u64,
    word: u64,
    gap: u64,
}

/// Enough for two opened leaves, two absorbed neighbours and the new pieces.
const ITEMS_CAP: usize = 96;
/// The most pieces one write may store (a VMA rewrite needs at most three).
pub(super) const MAX_PIECES: usize = 8;

/// One entry of a multi-piece store: the new value `word` (0: nothing) up to `hi` inclusive.
#[derive(Clone, Copy)]
pub(super) struct Piece {
    pub(super) hi: u64,
    pub(super) word: u64,
}

struct Items {
    buf: [Item; ITEMS_CAP],
    len: usize,
}

impl Items {
    fn new() -> Self {
        Items {
            buf: [Item::default(); ITEMS_CAP],
            len: 0,
        }
    }

    fn push(&mut self, it: Item) {
        // Bounded by construction (see ITEMS_CAP); not reachable from caller input.
        assert!(self.len < ITEMS_CAP, "maple: item buffer overflow");
        self.buf[self.len] = it;
        self.len += 1;
    }

    fn get(&self) -> &[Item] {
        &self.buf[..self.len]
    }

    /// Joins adjacent empty entries into one, so a free range is always a single slot.
    fn merge_nulls(&mut self) {
        let mut out = 0;
        for i in 0..self.len {
            let it = self.buf[i];
            if out > 0 && it.word == 0 && self.buf[out - 1].word == 0 {
                self.buf[out - 1].hi = it.hi;
            } else {
                self.buf[out] = it;
                out += 1;
            }
        }
        self.len = out;
    }
}

/// A node of the live tree and the range it covers.
#[derive(Clone, Copy)]
struct Located {
    node: NodeRef,
    min: u64,
    max: u64,
}

/// The run of adjacent nodes of one height being replaced, covering `[lo, hi]`: the items that
/// will fill their replacements, and the nodes of this height whose slots were taken into them.
struct Span {
    lo: u64,
    hi: u64,
    items: Items,
    opened: Vec<NodeRef>,
}

/// How the new version becomes visible.
enum Publish {
    /// Store this word (0: empty tree) as the root of a tree of this height.
    Root(u64, usize),
    /// Store `child` into the slot covering `key` of the node at height `height`.
    Slot {
        height: usize,
        key: u64,
        child: Item,
    },
}

/// One write, from planning to publication.
pub(super) struct WriteOp<'a, V: MapleValue, P: Platform> {
    tree: &'a MapleTree<V, P>,
    w: &'a mut Writer,
    root: u64,
    /// Allocated here and not yet published: freed if the write fails.
    fresh: Vec<NodeRef>,
    /// Nodes whose slots were taken into the span (at any height): their entries or children
    /// live on in the new version or were retired one by one, so they are retired alone.
    opened: Vec<NodeRef>,
    /// Nodes the new version no longer reaches: retired once it is published.
    dead_nodes: Vec<NodeRef>,
    /// Values the new version no longer holds: dropped a grace period after publication.
    dead_values: Vec<u64>,
    /// A value cloned to split an entry in two: dropped if the write fails.
    clone: Option<u64>,
    added: usize,
    _v: PhantomData<V>,
}

fn push<T>(v: &mut Vec<T>, x: T) -> Result<(), NoMemory> {
    v.try_reserve(1).map_err(|_| NoMemory)?;
    v.push(x);
    Ok(())
}

fn capacity(h: usize) -> usize {
    if h == 1 { LEAF_SLOTS } else { INTERNAL_SLOTS }
}

fn min_fill(h: usize) -> usize {
    if h == 1 { LEAF_MIN } else { INTERNAL_MIN }
}

/// Number of keys in `[lo, hi]`, saturating for the whole space.
pub(super) fn range_size(lo: u64, hi: u64) -> u64 {
    (hi - lo).saturating_add(1)
}

/// Calls `f(lo, hi, word, gap)` for each slot of a node covering `[min, max]`.
fn for_each_slot(n: NodeRef, min: u64, max: u64, mut f: impl FnMut(u64, u64, u64, u64)) {
    let end = n.end();
    let mut lo = min;
    for i in 0..end {
        let hi = if i == end - 1 { max } else { n.pivot(i) };
        f(lo, hi, n.slot(i), if n.is_leaf() { 0 } else { n.gap(i) });
        lo = hi.wrapping_add(1);
    }
}

impl<'a, V: MapleValue, P: Platform> WriteOp<'a, V, P> {
    pub(super) fn new(tree: &'a MapleTree<V, P>, w: &'a mut Writer) -> Self {
        let root = tree.root.load(Ordering::Relaxed);
        WriteOp {
            tree,
            w,
            root,
            fresh: Vec::new(),
            opened: Vec::new(),
            dead_nodes: Vec::new(),
            dead_values: Vec::new(),
            clone: None,
            added: 0,
            _v: PhantomData,
        }
    }

    /// Makes `[s, e]` hold `word` (0: nothing). On success the tree owns `word`; on failure the
    /// tree is unchanged and the caller still owns it.
    pub(super) fn store(self, s: u64, e: u64, word: u64) -> Result<(), NoMemory> {
        self.store_pieces(s, &[Piece { hi: e, word }])
    }

    /// Makes `[s, pieces.last().hi]` hold `pieces` (each ends at its `hi`, starts after the
    /// previous one; word 0 is nothing), published with one store. On success the tree owns the
    /// words; on failure the tree is unchanged and the caller still owns them.
    pub(super) fn store_pieces(mut self, s: u64, pieces: &[Piece]) -> Result<(), NoMemory> {
        debug_assert!(!pieces.is_empty() && pieces.len() <= MAX_PIECES);
        debug_assert!(pieces.windows(2).all(|w| w[0].hi < w[1].hi));
        let e = pieces[pieces.len() - 1].hi;
        debug_assert!(s <= pieces[0].hi && e < u64::MAX);
        match self.build(s, e, pieces) {
            Ok(p) => {
                #[cfg(debug_assertions)]
                self.assert_retired_once();
                self.commit(p);
                Ok(())
            }
            Err(NoMemory) => {
                self.abort();
                Err(NoMemory)
            }
        }
    }

    /// Builds the new version bottom-up, one height per turn: the span at height `h` is widened
    /// until its items make well-filled nodes, packed, and then either published (one node in
    /// place of one, or a new root) or carried up into the parents of its ends.
    fn build(&mut self, s: u64, e: u64, pieces: &[Piece]) -> Result<Publish, NoMemory> {
        let mut span = self.open_leaves(s, e, pieces)?;
        self.added += pieces.iter().filter(|p| p.word != 0).count();
        let mut h = 1;
        loop {
            if h == 1 {
                span.items.merge_nulls();
            }
            let whole = span.lo == 0 && span.hi == u64::MAX;
            if whole && !span.opened.is_empty() {
                // The span covers every node of this level: the new version is built from the
                // items alone, so everything of the old tree not opened into them goes (the
                // levels above, and the nodes of this level between the span's ends with all
                // below them).
                let root = self.root;
                self.retire_subtree(root)?;
                span.opened.clear();
            }
            if !whole && self.widen(&mut span, h)? {
                continue;
            }
            if whole && span.items.len == 1 {
                let only = span.items.get()[0];
                if h == 1 && only.word == 0 {
                    return Ok(Publish::Root(0, 0));
                }
                if h > 1 {
                    // A root with one child: the child becomes the root.
                    return Ok(Publish::Root(only.word, h - 1));
                }
            }
            let built = self.pack(&span.items, h, span.lo)?;
            if whole {
                if built.len == 1 {
                    return Ok(Publish::Root(built.get()[0].word, h));
                }
                // The root split: build a level above it.
                span.items = built;
                span.opened.clear();
                h += 1;
                continue;
            }
            if built.len == 1 && span.opened.len() == 1 {
                return Ok(Publish::Slot {
                    height: h + 1,
                    key: span.lo,
                    child: built.get()[0],
                });
            }
            span = self.ascend(&span, built, h)?;
            h += 1;
        }
    }

    /// The leaf-level span of a store of `pieces` over `[s, e]`: the leaves holding `s` and `e`
    /// opened, their entries cut around the pieces (or, in an empty tree, the whole key space).
    fn open_leaves(&mut self, s: u64, e: u64, pieces: &[Piece]) -> Result<Span, NoMemory> {
        let mut span = Span {
            lo: 0,
            hi: u64::MAX,
            items: Items::new(),
            opened: Vec::new(),
        };
        let mut placed = false;
        if self.w.height == 0 {
            self.cut(&mut span.items, 0, u64::MAX, 0, s, e, pieces, &mut placed)?;
            return Ok(span);
        }
        let l = self.locate(1, s);
        let r = self.locate(1, e);
        (span.lo, span.hi) = (l.min, r.max);
        let both = [l, r];
        for leaf in &both[..if l.node == r.node { 1 } else { 2 }] {
            self.open(&mut span.opened, leaf.node)?;
            let (n, end) = (leaf.node, leaf.node.end());
            let mut elo = leaf.min;
            for i in 0..end {
                let ehi = if i == end - 1 { leaf.max } else { n.pivot(i) };
                self.cut(
                    &mut span.items,
                    elo,
                    ehi,
                    n.slot(i),
                    s,
                    e,
                    pieces,
                    &mut placed,
                )?;
                elo = ehi.wrapping_add(1);
            }
        }
        Ok(span)
    }

    /// Absorbs one neighbour of the span at height `h` if it needs one (Linux's rebalancing):
    /// a leaf neighbour whose empty slot would touch an empty end of the span, or any
    /// neighbour when the span holds too few items for a node. Returns whether it did.
    fn widen(&mut self, span: &mut Span, h: usize) -> Result<bool, NoMemory> {
        let (first, last) = (span.items.get()[0], span.items.get()[span.items.len - 1]);
        if h == 1 && first.word == 0 && span.lo > 0 {
            let n = self.locate(1, span.lo - 1);
            if n.node.slot(n.node.end() - 1) == 0 {
                span.lo = self.absorb(&mut span.items, &mut span.opened, n, true)?;
                return Ok(true);
            }
        }
        if h == 1 && last.word == 0 && span.hi < u64::MAX {
            let n = self.locate(1, span.hi + 1);
            if n.node.slot(0) == 0 {
                span.hi = self.absorb(&mut span.items, &mut span.opened, n, false)?;
                return Ok(true);
            }
        }
        if span.items.len >= min_fill(h) {
            return Ok(false);
        }
        if span.lo > 0 {
            let n = self.locate(h, span.lo - 1);
            span.lo = self.absorb(&mut span.items, &mut span.opened, n, true)?;
        } else {
            let n = self.locate(h, span.hi + 1);
            span.hi = self.absorb(&mut span.items, &mut span.opened, n, false)?;
        }
        Ok(true)
    }

    /// The span one height up, with `built` (the new nodes of height `h`) in place of `span`:
    /// the parents of the span's ends are opened, their children left and right of it kept,
    /// and every child in between retired.
    fn ascend(&mut self, span: &Span, built: Items, h: usize) -> Result<Span, NoMemory> {
        let (lo, hi) = (span.lo, span.hi);
        let pl = self.locate(h + 1, lo);
        let pr = self.locate(h + 1, hi);
        let mut up = Items::new();
        let both = [pl, pr];
        let parents = &both[..if pl.node == pr.node { 1 } else { 2 }];
        let mut kept_after = Items::new();
        for p in parents {
            let mut children = Items::new();
            for_each_slot(p.node, p.min, p.max, |_, chi, w, g| {
                children.push(Item {
                    hi: chi,
                    word: w,
                    gap: g,
                })
            });
            let mut clo = p.min;
            for c in children.get() {
                if c.hi < lo {
                    up.push(*c);
                } else if clo > hi {
                    kept_after.push(*c);
                } else {
                    self.retire_subtree(c.word)?;
                }
                clo = c.hi.wrapping_add(1);
            }
        }
        for c in built.get().iter().chain(kept_after.get()) {
            up.push(*c);
        }
        let mut opened = Vec::new();
        for p in parents {
            self.open(&mut opened, p.node)?;
        }
        Ok(Span {
            lo: pl.min,
            hi: pr.max,
            items: up,
            opened,
        })
    }

    /// Adds the pieces of entry `[elo, ehi] -> w` that survive a store of `pieces` over
    /// `[s, e]` (and the new pieces themselves, once, where they belong).
    #[allow(clippy::too_many_arguments)]
    fn cut(
        &mut self,
        items: &mut Items,
        elo: u64,
        ehi: u64,
        w: u64,
        s: u64,
        e: u64,
        pieces: &[Piece],
        placed: &mut bool,
    ) -> Result<(), NoMemory> {
        if ehi < s || elo > e {
            items.push(Item {
                hi: ehi,
                word: w,
                gap: 0,
            });
            return Ok(());
        }
        let (left, right) = (elo < s, ehi > e);
        if left {
            items.push(Item {
                hi: s - 1,
                word: w,
                gap: 0,
            });
        }
        if !*placed {
            for p in pieces {
                items.push(Item {
                    hi: p.hi,
                    word: p.word,
                    gap: 0,
                });
            }
            *placed = true;
        }
        if right {
            let mut rw = w;
            if left && w != 0 {
                // One entry cut on both sides becomes two: the right part gets its own clone.
                // SAFETY: `w` is a value the tree owns and keeps (as the left part).
                rw = into_word(unsafe { clone_word::<V>(w) });
                self.clone = Some(rw);
                self.added += 1;
            }
            items.push(Item {
                hi: ehi,
                word: rw,
                gap: 0,
            });
        }
        if !left && !right && w != 0 {
            // Covered whole: dropped a grace period after the new version is published.
            push(&mut self.dead_values, w)?;
        }
        Ok(())
    }

    /// Adds node `n` (adjacent to the span) to the span, on its left or right; returns the new
    /// span end on that side.
    fn absorb(
        &mut self,
        items: &mut Items,
        opened: &mut Vec<NodeRef>,
        n: Located,
        left: bool,
    ) -> Result<u64, NoMemory> {
        self.open(opened, n.node)?;
        let mut theirs = Items::new();
        for_each_slot(n.node, n.min, n.max, |_, hi, w, g| {
            theirs.push(Item {
                hi,
                word: w,
                gap: g,
            })
        });
        if left {
            for it in items.get() {
                theirs.push(*it);
            }
            *items = theirs;
            Ok(n.min)
        } else {
            for it in theirs.get() {
                items.push(*it);
            }
            Ok(n.max)
        }
    }

    /// Packs `items` into the fewest nodes of height `h`, evenly; the first starts at `lo`.
    fn pack(&mut self, items: &Items, h: usize, lo: u64) -> Result<Items, NoMemory> {
        let len = items.len;
        let k = len.div_ceil(capacity(h));
        let (base, extra) = (len / k, len % k);
        let mut out = Items::new();
        let mut idx = 0;
        let mut min = lo;
        for j in 0..k {
            let n = base + usize::from(j < extra);
            let node = self.alloc(h == 1, n)?;
            let mut gap = 0;
            let mut elo = min;
            for (t, it) in items.get()[idx..idx + n].iter().enumerate() {
                node.init_slot(t, it.hi, it.word, it.gap);
                gap = gap.max(if h > 1 {
                    it.gap
                } else if it.word == 0 {
                    range_size(elo, it.hi)
                } else {
                    0
                });
                elo = it.hi.wrapping_add(1);
            }
            let max = items.get()[idx + n - 1].hi;
            out.push(Item {
                hi: max,
                word: node.word(),
                gap,
            });
            idx += n;
            min = max.wrapping_add(1);
        }
        Ok(out)
    }

    /// The node at height `h` covering `key` in the tree being replaced.
    fn locate(&self, h: usize, key: u64) -> Located {
        let mut node = NodeRef::from_word(self.root).expect("locate in a non-empty tree");
        let (mut min, mut max) = (0, u64::MAX);
        for _ in h..self.w.height {
            let (i, lo, hi) = slot_for(node, min, max, key);
            node = NodeRef::from_word(node.slot(i)).expect("internal slots hold children");
            (min, max) = (lo, hi);
        }
        Located { node, min, max }
    }

    /// Takes the slots of `n` into the span (the caller adds them to its items): `n` is
    /// retired, what it holds is not.
    fn open(&mut self, opened: &mut Vec<NodeRef>, n: NodeRef) -> Result<(), NoMemory> {
        push(opened, n)?;
        push(&mut self.opened, n)?;
        push(&mut self.dead_nodes, n)
    }

    /// Retires the subtree at `word`, which the new version does not reach, with its values,
    /// except the opened nodes inside it: they are retired already and what they hold is in the
    /// span. (An opened node can sit below a node that is retired whole: when the span absorbs
    /// a neighbour under another parent, the parent of the span's old end lies between the new
    /// ends one level up.)
    fn retire_subtree(&mut self, word: u64) -> Result<(), NoMemory> {
        let n = NodeRef::from_word(word).expect("internal slots hold children");
        if self.opened.contains(&n) {
            return Ok(());
        }
        push(&mut self.dead_nodes, n)?;
        for i in 0..n.end() {
            let w = n.slot(i);
            if n.is_leaf() {
                if w != 0 {
                    push(&mut self.dead_values, w)?;
                }
            } else {
                self.retire_subtree(w)?;
            }
        }
        Ok(())
    }

    fn alloc(&mut self, leaf: bool, end: usize) -> Result<NodeRef, NoMemory> {
        #[cfg(test)]
        if let Some(left) = self.w.fail_allocs_after.as_mut() {
            if *left == 0 {
                return Err(NoMemory);
            }
            *left -= 1;
        }
        self.fresh.try_reserve(1).map_err(|_| NoMemory)?;
        let n = NodeRef::alloc(leaf, end).ok_or(NoMemory)?;
        self.fresh.push(n);
        self.tree.nodes.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }
}
