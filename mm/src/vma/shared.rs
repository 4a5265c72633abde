//! Shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`; Linux's shmem object behind it).
//!
//! A [`SharedAnon`] owns the pages of one shared mapping, by page index, and lives as long as a
//! VMA refers to it: through `fork`, `mprotect`/`munmap` splits and `mremap` moves, every VMA
//! of the mapping in every process holds the same `Arc`. A VMA finds its page index through a
//! [`ShmLink`]: `index = addr / PAGE + delta` (wrapping), so a split keeps the link as it is,
//! and two adjacent VMAs of one object have contiguous offsets exactly when their links are
//! equal, which is when they may merge.
//!
//! Frames: the object holds one reference to each of its pages; each PTE mapping a page holds
//! another and a map count (taken by the fault, dropped by the zap like any anonymous page).
//! Writes go to the shared page itself (no copy-on-write), so every process sees them.
//! `madvise(MADV_DONTNEED)` zaps only the mappings: the object keeps its pages, and the next
//! fault maps them again. The object's references go when it is dropped (the last VMA gone).
//!
//! Lock: the page index is under a spinlock of class `Leaf`. Nothing is taken under it (a
//! frame is allocated with it dropped, then the index is looked at again); the fault takes it
//! under its VMA read lock or `mmap_lock`, never with a PTE lock held.

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;

use crate::platform::PhysFrame;
use crate::sync::{LockClass, SpinLock};

/// Gives back a frame reference an object held (implemented by the machine's `Memory`).
pub trait PutFrame: Send + Sync {
    /// Drops one reference to `frame` (`put_page`).
    fn put_frame(&self, frame: PhysFrame);
}

/// The pages of one shared anonymous mapping.
///
/// # Invariants
/// Each frame in `pages` is an allocated anonymous frame of the allocator behind `owner`, and
/// the object holds one reference to it. A page, once in the index, stays until the object is
/// dropped.
pub struct SharedAnon {
    pages: SpinLock<BTreeMap<u64, PhysFrame>>,
    owner: Weak<dyn PutFrame>,
}

impl SharedAnon {
    /// An empty object whose frames come from (and go back to) `owner`.
    pub fn new(owner: Weak<dyn PutFrame>) -> Arc<Self> {
        Arc::new(SharedAnon {
            pages: SpinLock::new(LockClass::Leaf, BTreeMap::new()),
            owner,
        })
    }

    /// The frame at page `index`, if the object has one.
    ///
    /// Locks: takes and drops the object's lock (a leaf).
    pub fn find(&self, index: u64) -> Option<PhysFrame> {
        self.pages.lock().get(&index).copied()
    }

    /// Stores `frame` at page `index` unless a page is there already; returns the frame the
    /// object has at `index` afterwards and whether it is `frame` (the object then holds the
    /// caller's reference to it).
    ///
    /// Locks: takes and drops the object's lock (a leaf).
    pub fn insert(&self, index: u64, frame: PhysFrame) -> (PhysFrame, bool) {
        let mut pages = self.pages.lock();
        match pages.get(&index) {
            Some(&f) => (f, false),
            None => {
                pages.insert(index, frame);
                (frame, true)
            }
        }
    }

    /// How many pages the object holds.
    pub fn nr_pages(&self) -> usize {
        self.pages.lock().len()
    }
}

impl Drop for SharedAnon {
    fn drop(&mut self) {
        let pages: Vec<PhysFrame> = core::mem::take(&mut *self.pages.lock())
            .into_values()
            .collect();
        // Without the machine there is no allocator left to give them to.
        if let Some(owner) = self.owner.upgrade() {
            for f in pages {
                owner.put_frame(f);
            }
        }
    }
}

impl core::fmt::Debug for SharedAnon {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SharedAnon({:p})", self)
    }
}

/// A VMA's reference to the object it maps: page `addr / PAGE + delta` (wrapping) of `obj` is
/// mapped at `addr`. Equal (same object, same `delta`) exactly when two VMAs may merge.
#[derive(Clone, Debug)]
pub struct ShmLink {
    /// The object.
    pub obj: Arc<SharedAnon>,
    /// Page index minus page number, wrapping.
    pub delta: u64,
}

impl ShmLink {
    /// A link that maps page `pgoff` of `obj` at `start`.
    pub fn new(obj: Arc<SharedAnon>, start: u64, pgoff: u64) -> Self {
        ShmLink {
            obj,
            delta: pgoff.wrapping_sub(start / 4096),
        }
    }

    /// The object's page index mapped at `addr`.
    pub fn index(&self, addr: u64) -> u64 {
        (addr / 4096).wrapping_add(self.delta)
    }

    /// The same pages mapped at `to` instead of `from` (an `mremap` move).
    pub fn moved(&self, from: u64, to: u64) -> Self {
        ShmLink::new(self.obj.clone(), to, self.index(from))
    }
}

impl PartialEq for ShmLink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.obj, &other.obj) && self.delta == other.delta
    }
}

impl Eq for ShmLink {}
