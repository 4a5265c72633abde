//! The maple tree: an RCU-safe B-tree of non-overlapping ranges `[start, end)` of `u64`, each
//! mapped to a one-word value (an `Arc<Vma>` for the VMA tree), in the spirit of Linux's
//! `lib/maple_tree.c`.
//!
//! # Shape
//! 256-byte nodes (`node`): leaves hold up to 16 ranges (15 pivots), internal nodes up to 10
//! children with, for each, the largest free range below it. Ranges partition the whole key
//! space: unmapped stretches are stored as empty slots, never two in a row, so the free range
//! around any address is one slot and the per-child gaps are exact (`gap`).
//!
//! # Concurrency protocol
//! * **Readers** (`walk`) take no lock: under an [`RcuReadGuard`] they load the root and descend
//!   with acquire loads, and what they return borrows from the guard.
//! * **One writer at a time** (the caller holds the `mmap_lock` for write; an internal spinlock
//!   makes a missing caller lock a wait, not a corruption). A write ([`write`]) never changes a
//!   node a reader can reach, except by one atomic store of a pointer: it copies the affected
//!   leaves and their ancestors up to the lowest one whose range does not change, and publishes
//!   the new subtree with a single release store into that node's parent slot (or the root).
//!   A reader thus sees, for any one lookup, the tree before or after each write, never a mix.
//! * Replaced nodes are marked dead and freed, and removed values dropped, after a grace period
//!   (`call_rcu`): a reader still inside an old node keeps a consistent old version. Because a
//!   reader may still hold a `&V` to a removed value, `erase`/`replace` hand back a clone and the
//!   tree's own copy is dropped after the grace period.
//! * Gap values are updated in place; only writers read them (`find_gap` takes the writer lock).
//!
//! See `API.md` beside this file for the contract in short.

mod gap;
#[allow(unsafe_code)]
mod node;
#[cfg(test)]
pub(crate) use node::inject::FailNodeAllocs;
#[cfg(test)]
mod tests;
mod validate;
#[allow(unsafe_code)]
mod value;
mod walk;
#[allow(unsafe_code)]
mod write;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::platform::Platform;
use crate::rcu::{Rcu, RcuReadGuard};
use crate::sync::{LockClass, SpinLock};
pub use gap::GapDir;
pub use validate::ValidateError;
pub use value::MapleValue;
use value::Word;
pub use walk::Iter;
use write::{MAX_PIECES, Piece, WriteOp, Writer};

/// Why [`MapleTree::insert`] failed; hands the value back.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError<V> {
    /// Part of the range is already mapped.
    Overlap(V),
    /// The range is empty (`start >= end`).
    InvalidRange(V),
    /// A node could not be allocated; the tree is unchanged.
    NoMemory(V),
}

/// Why [`MapleTree::store`] failed; hands the value back.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError<V> {
    /// The range is empty (`start >= end`).
    InvalidRange(V),
    /// A node could not be allocated; the tree is unchanged.
    NoMemory(V),
}

/// Why [`MapleTree::replace`] failed; hands the value back.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplaceError<V> {
    /// No range contains the address.
    NotFound(V),
    /// A node could not be allocated; the tree is unchanged.
    NoMemory(V),
}

/// Why [`MapleTree::store_span`] failed; hands the entries back.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreSpanError<V> {
    /// The span is empty, or the entries are empty ranges, out of order, overlapping, outside
    /// the span, or more than [`MapleTree::MAX_SPAN_ENTRIES`].
    InvalidRange(Vec<(Range<u64>, V)>),
    /// A node could not be allocated; the tree is unchanged.
    NoMemory(Vec<(Range<u64>, V)>),
}

/// A range tree readable under RCU with no lock. See the module documentation.
///
/// # Invariants
/// `root` is 0 (empty tree) or a `NodeRef` word of a tree of height `writer.height`
/// satisfying everything [`MapleTree::validate`] checks; every non-zero leaf slot owns a `V`
/// (moved in as a `value::Word`); `len` counts them; nodes and values removed from the tree are
/// handed to `rcu.call_rcu` and never touched by the tree again.
pub struct MapleTree<V: MapleValue, P: Platform> {
    root: AtomicU64,
    writer: SpinLock<Writer>,
    len: AtomicUsize,
    /// Nodes allocated and not yet freed (live, or dead and waiting for a grace period).
    nodes: Arc<AtomicUsize>,
    rcu: Arc<Rcu<P>>,
    _values: PhantomData<V>,
}

impl<V: MapleValue, P: Platform> MapleTree<V, P> {
    /// An empty tree whose readers use `rcu`.
    pub fn new(rcu: Arc<Rcu<P>>) -> Self {
        MapleTree {
            root: AtomicU64::new(0),
            writer: SpinLock::new(LockClass::MapleWriter, Writer::new()),
            len: AtomicUsize::new(0),
            nodes: Arc::new(AtomicUsize::new(0)),
            rcu,
            _values: PhantomData,
        }
    }

    /// The RCU domain readers must hold a guard of.
    pub fn rcu(&self) -> &Arc<Rcu<P>> {
        &self.rcu
    }

    /// Number of ranges stored.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no range is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Levels of nodes (0 when empty, 1 when the root is a leaf).
    pub fn height(&self) -> usize {
        self.writer.lock().height()
    }

    /// Nodes allocated and not yet freed, including dead ones waiting for a grace period.
    pub fn allocated_nodes(&self) -> usize {
        self.nodes.load(Ordering::Relaxed)
    }

    /// Maps `range` to `v`; fails if any part of it is already mapped.
    pub fn insert(&self, range: Range<u64>, v: V) -> Result<(), InsertError<V>> {
        if range.start >= range.end {
            return Err(InsertError::InvalidRange(v));
        }
        let mut w = self.writer.lock();
        let (s, e) = (range.start, range.end - 1);
        if let Some((lo, _, _)) = self.find_locked(&w, s)
            && lo <= e
        {
            return Err(InsertError::Overlap(v));
        }
        let word = Word::new(v);
        match WriteOp::<V, P>::new(self, &mut w).store(s, e, word.get()) {
            Ok(()) => {
                word.into_tree();
                Ok(())
            }
            Err(_) => Err(InsertError::NoMemory(word.into_value())),
        }
    }

    /// Maps `range` to `v`, trimming or removing whatever was mapped there (entries partly
    /// covered keep their uncovered parts; one cut on both sides is split, cloning its value).
    pub fn store(&self, range: Range<u64>, v: V) -> Result<(), StoreError<V>> {
        if range.start >= range.end {
            return Err(StoreError::InvalidRange(v));
        }
        let mut w = self.writer.lock();
        let word = Word::new(v);
        match WriteOp::<V, P>::new(self, &mut w).store(range.start, range.end - 1, word.get()) {
            Ok(()) => {
                word.into_tree();
                Ok(())
            }
            Err(_) => Err(StoreError::NoMemory(word.into_value())),
        }
    }

    /// The most entries [`store_span`](Self::store_span) takes at once.
    pub const MAX_SPAN_ENTRIES: usize = (MAX_PIECES - 1) / 2;

    /// Makes `span` hold exactly `entries` (sorted, disjoint, inside `span`) and nothing else,
    /// trimming whatever was mapped there, in one write: a reader sees all of it or none, and on
    /// failure the tree is unchanged. Several `insert`/`erase` calls would leave a half-done
    /// change behind when one of the later ones runs out of memory.
    pub fn store_span(
        &self,
        span: Range<u64>,
        entries: Vec<(Range<u64>, V)>,
    ) -> Result<(), StoreSpanError<V>> {
        let mut at = span.start;
        let valid = span.start < span.end
            && entries.len() <= Self::MAX_SPAN_ENTRIES
            && entries.iter().all(|(r, _)| {
                let ok = at <= r.start && r.start < r.end && r.end <= span.end;
                at = r.end;
                ok
            });
        if !valid {
            return Err(StoreSpanError::InvalidRange(entries));
        }
        let mut pieces = [Piece { hi: 0, word: 0 }; MAX_PIECES];
        let mut n = 0;
        let mut at = span.start;
        let mut ranges = Vec::with_capacity(entries.len());
        let mut words = Vec::with_capacity(entries.len());
        for (r, v) in entries {
            if r.start > at {
                pieces[n] = Piece {
                    hi: r.start - 1,
                    word: 0,
                };
                n += 1;
            }
            let word = Word::new(v);
            pieces[n] = Piece {
                hi: r.end - 1,
                word: word.get(),
            };
            words.push(word);
            n += 1;
            at = r.end;
            ranges.push(r);
        }
        if at < span.end {
            pieces[n] = Piece {
                hi: span.end - 1,
                word: 0,
            };
            n += 1;
        }
        let mut w = self.writer.lock();
        match WriteOp::<V, P>::new(self, &mut w).store_pieces(span.start, &pieces[..n]) {
            Ok(()) => {
                words.into_iter().for_each(Word::into_tree);
                Ok(())
            }
            Err(_) => {
                let back = ranges
                    .into_iter()
                    .zip(words.into_iter().map(Word::into_value));
                Err(StoreSpanError::NoMemory(back.collect()))
            }
        }
    }

    /// Removes the range containing `addr` and returns it with its value. The value returned is
    /// a clone: readers may still hold the tree's copy, which is dropped after a grace period.
    ///
    /// `None` when no range contains `addr`, or (tree unchanged) when memory for the new nodes
    /// ran out.
    pub fn erase(&self, addr: u64) -> Option<(Range<u64>, V)> {
        let mut w = self.writer.lock();
        // A clone: the op below retires the tree's copy only on success.
        let (lo, hi, old) = self.entry_cloned(&w, addr)?;
        WriteOp::<V, P>::new(self, &mut w).store(lo, hi, 0).ok()?;
        Some((lo..hi + 1, old))
    }

    /// Gives the range containing `addr` a new value, returning (a clone of) the old one.
    pub fn replace(&self, addr: u64, v: V) -> Result<V, ReplaceError<V>> {
        let mut w = self.writer.lock();
        let Some((lo, hi, old)) = self.entry_cloned(&w, addr) else {
            return Err(ReplaceError::NotFound(v));
        };
        let word = Word::new(v);
        match WriteOp::<V, P>::new(self, &mut w).store(lo, hi, word.get()) {
            Ok(()) => {
                word.into_tree();
                Ok(old)
            }
            Err(_) => Err(ReplaceError::NoMemory(word.into_value())),
        }
    }

    /// A free, `align`-aligned range of `size` inside `[low, high)`: the lowest (bottom-up) or
    /// highest (top-down) such start. `align` must be a power of two.
    pub fn find_gap(&self, size: u64, align: u64, low: u64, high: u64, dir: GapDir) -> Option<u64> {
        let _w = self.writer.lock();
        gap::find_gap(
            self.root.load(Ordering::Relaxed),
            size,
            align,
            low,
            high,
            dir,
        )
    }

    /// Checks every structural invariant of the live tree.
    pub fn validate(&self) -> Result<(), ValidateError> {
        let w = self.writer.lock();
        validate::validate(self.root.load(Ordering::Relaxed), w.height(), self.len()).map(|_| ())
    }

    /// Nodes reachable from the root (after validating the tree).
    pub fn reachable_nodes(&self) -> Result<usize, ValidateError> {
        let w = self.writer.lock();
        validate::validate(self.root.load(Ordering::Relaxed), w.height(), self.len())
    }

    /// Makes node allocations fail after the next `n` (tests of the out-of-memory paths).
    #[cfg(test)]
    pub(crate) fn fail_node_allocs_after(&self, n: Option<usize>) {
        self.writer.lock().fail_allocs_after = n;
    }

    /// The range `(lo, hi)` (inclusive) and value word of the first entry ending at or above
    /// `addr`, read under the writer lock.
    fn find_locked(&self, _w: &Writer, addr: u64) -> Option<(u64, u64, u64)> {
        walk::find_word(self.root.load(Ordering::Relaxed), addr)
    }

    /// Walks under `g` (see `walk`); the guard must belong to this tree's RCU domain.
    pub fn walk<'g>(
        &'g self,
        g: &'g RcuReadGuard<'_, P>,
        addr: u64,
    ) -> Option<(Range<u64>, &'g V)> {
        self.check_guard(g);
        walk::walk(&self.root, addr).map(|(lo, hi, slot)| (lo..hi + 1, self.borrow(slot, g)))
    }

    /// The first range ending above `addr` (the one containing it, or the next one).
    pub fn find<'g>(
        &'g self,
        g: &'g RcuReadGuard<'_, P>,
        addr: u64,
    ) -> Option<(Range<u64>, &'g V)> {
        self.check_guard(g);
        walk::find(&self.root, addr).map(|(lo, hi, slot)| (lo..hi + 1, self.borrow(slot, g)))
    }

    /// The ranges that intersect `range`, in address order. Each step is a fresh lookup, so a
    /// range inserted or removed meanwhile may or may not show up, but every range present
    /// throughout the iteration does.
    pub fn iter<'g>(&'g self, g: &'g RcuReadGuard<'_, P>, range: Range<u64>) -> Iter<'g, V, P> {
        self.check_guard(g);
        Iter::new(self, g, range)
    }

    fn check_guard(&self, g: &RcuReadGuard<'_, P>) {
        debug_assert!(
            core::ptr::eq(g.rcu(), &*self.rcu),
            "RCU guard of another domain"
        );
    }
}
