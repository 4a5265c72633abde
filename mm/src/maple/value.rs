//! How values live in the tree: a [`MapleValue`] is stored as the bits of one word in a leaf
//! slot, and the slot owns it. This module (with [`node`](super::node) for the nodes and
//! [`write`](super::write) for retiring both) holds the tree's unsafe code: turning values into
//! words and back, and borrowing a slot as a `&V` for as long as an RCU guard lives.
//!
//! The rest of the tree handles values through [`Word`], which owns a value in word form until
//! it is either given to the tree or taken back.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::num::NonZeroUsize;

use alloc::sync::Arc;

use super::MapleTree;
use super::write::Writer;
use crate::platform::Platform;
use crate::rcu::RcuReadGuard;

/// A value the tree can hold in one slot: a non-null pointer-like word.
///
/// # Safety
/// Implementors are exactly one `u64` in size with alignment at most 8, no value of the type is
/// all-zero bits (0 marks an empty slot), and the type may be moved by copying its bits (so a
/// slot holding those bits can be borrowed as `&Self`).
pub unsafe trait MapleValue: Clone + Send + Sync + 'static {}

// SAFETY: an `Arc` is one non-null pointer.
unsafe impl<T: Send + Sync + 'static> MapleValue for Arc<T> {}
// SAFETY: a non-zero word.
unsafe impl MapleValue for NonZeroUsize {}
// SAFETY: a non-null pointer; shared references are `Copy`.
unsafe impl<T: Sync + 'static> MapleValue for &'static T {}

/// The value's bits, ownership moving into the word.
pub(super) fn into_word<V: MapleValue>(v: V) -> u64 {
    const { assert!(size_of::<V>() == 8 && align_of::<V>() <= 8) };
    let v = ManuallyDrop::new(v);
    // SAFETY: `V` is one word (checked above, promised by `MapleValue`); the bits now own it.
    unsafe { core::mem::transmute_copy::<V, u64>(&v) }
}

/// Takes ownership of the value whose bits are `word`.
///
/// # Safety
/// `word` came from [`into_word::<V>`] and this is the one place its ownership goes back to.
pub(super) unsafe fn from_word<V: MapleValue>(word: u64) -> V {
    // SAFETY: same size (checked in `into_word`), bits of a valid `V` by the caller's promise.
    unsafe { core::mem::transmute_copy::<u64, V>(&word) }
}

/// A clone of the value stored as `word`, which the tree keeps owning.
///
/// # Safety
/// `word` is the bits of a `V` the tree owns and will not drop during the call.
pub(super) unsafe fn clone_word<V: MapleValue>(word: u64) -> V {
    // SAFETY: by the caller's promise; `ManuallyDrop` keeps the tree's copy alive.
    let v = ManuallyDrop::new(unsafe { from_word::<V>(word) });
    V::clone(&v)
}

/// A value in word form on its way into the tree: a write stores [`get`](Self::get), and then
/// either the tree owns it ([`into_tree`](Self::into_tree)) or the write failed and the caller
/// takes it back ([`into_value`](Self::into_value)). Dropped in between, it drops the value.
///
/// # Invariants
/// `word` came from [`into_word::<V>`] and is owned by this handle.
pub(super) struct Word<V: MapleValue> {
    word: u64,
    _value: PhantomData<V>,
}

impl<V: MapleValue> Word<V> {
    pub(super) fn new(v: V) -> Self {
        // INVARIANT: the word was just made from `v`, which it now owns.
        Word {
            word: into_word(v),
            _value: PhantomData,
        }
    }

    /// The bits to store in a slot.
    pub(super) fn get(&self) -> u64 {
        self.word
    }

    /// The tree stored the word and owns the value from now on.
    pub(super) fn into_tree(self) {
        core::mem::forget(self);
    }

    /// The value back (the write that was to store it failed).
    pub(super) fn into_value(self) -> V {
        let this = ManuallyDrop::new(self);
        // SAFETY: this handle owned the word (invariant) and is gone without dropping.
        unsafe { from_word(this.word) }
    }
}

impl<V: MapleValue> Drop for Word<V> {
    fn drop(&mut self) {
        // SAFETY: the handle owns the word (invariant).
        drop(unsafe { from_word::<V>(self.word) });
    }
}

impl<V: MapleValue, P: Platform> MapleTree<V, P> {
    /// The range `(lo, hi)` (inclusive) of the entry containing `addr`, with a clone of its
    /// value, read under the writer lock.
    pub(super) fn entry_cloned(&self, w: &Writer, addr: u64) -> Option<(u64, u64, V)> {
        let (lo, hi, word) = self.find_locked(w, addr).filter(|&(lo, _, _)| lo <= addr)?;
        // SAFETY: `word` is a value the tree owns, and only a writer, which `w` keeps out,
        // retires it.
        Some((lo, hi, unsafe { clone_word::<V>(word) }))
    }

    /// Borrows the value in a leaf slot for as long as the guard lives.
    pub(super) fn borrow<'g>(&'g self, slot: *const u64, _g: &'g RcuReadGuard<'_, P>) -> &'g V {
        // `slot` is a non-empty slot of a leaf reached under `_g`: it holds the bits of a `V`
        // (type invariant), never rewritten while the leaf lives (published leaf slots are
        // immutable); `MapleValue` allows borrowing the bits.
        // SAFETY: neither the leaf nor the value is freed before a grace period that cannot end
        // while `_g` lives.
        unsafe { &*(slot as *const V) }
    }
}
