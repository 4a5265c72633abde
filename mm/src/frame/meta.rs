//! Frame metadata: one [`FrameMeta`] per physical frame, in a flat array indexed by frame
//! number (like Linux's `struct page` array). Allocated once for the platform's whole
//! [`frame_range`](crate::platform::Platform::frame_range), so a `&FrameMeta` never dangles and
//! a lock in it stays valid even while its frame is being freed and reused.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use crate::platform::{PhysFrame, Size4KiB};
use crate::sync::{LockClass, RawSpinLock};

/// What a frame is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Free, or in a per-CPU cache.
    Free = 0,
    /// An anonymous user page.
    Anon = 1,
    /// A page-table page (any level).
    PageTable = 2,
    /// The shared zero frame.
    Zero = 3,
    /// Used by `mm` for something else.
    Other = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> FrameKind {
        match v {
            1 => FrameKind::Anon,
            2 => FrameKind::PageTable,
            3 => FrameKind::Zero,
            4 => FrameKind::Other,
            _ => FrameKind::Free,
        }
    }
}

/// The metadata of one frame.
///
/// # Invariants
/// `refcount` counts the owners of an allocated frame (for an anonymous page: one per mapping,
/// plus transient references held by a fault); the frame goes back to the allocator when it
/// drops to 0. `mapcount` counts the PTEs that map an anonymous page. The zero frame is never
/// counted. `pte_lock` is the split PTE lock when the frame is a last-level page table.
pub struct FrameMeta {
    kind: AtomicU8,
    refcount: AtomicU32,
    mapcount: AtomicU32,
    pte_lock: RawSpinLock,
}

impl FrameMeta {
    fn new() -> Self {
        FrameMeta {
            kind: AtomicU8::new(FrameKind::Free as u8),
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            pte_lock: RawSpinLock::new(LockClass::Pte),
        }
    }

    /// What the frame is used for.
    pub fn kind(&self) -> FrameKind {
        FrameKind::from_u8(self.kind.load(Ordering::Relaxed))
    }

    /// Owners of the frame.
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Acquire)
    }

    /// PTEs mapping the frame.
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Ordering::Relaxed)
    }

    /// The split PTE lock (meaningful for last-level page-table pages).
    pub fn pte_lock(&self) -> &RawSpinLock {
        &self.pte_lock
    }

    /// Adds an owner (`get_page`).
    pub fn get(&self) {
        let prev = self.refcount.fetch_add(1, Ordering::Relaxed);
        debug_assert!(prev > 0, "get on a free frame");
    }

    /// Drops an owner; true if it was the last (the caller then frees the frame).
    pub(super) fn put(&self) -> bool {
        let prev = self.refcount.fetch_sub(1, Ordering::Release);
        debug_assert!(prev > 0, "put on a free frame");
        if prev == 1 {
            // Pairs with the releases of other owners' puts: their accesses come before reuse.
            core::sync::atomic::fence(Ordering::Acquire);
            return true;
        }
        false
    }

    /// Records a new PTE mapping the frame.
    pub fn map(&self) {
        self.mapcount.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a PTE that stopped mapping the frame.
    pub fn unmap(&self) {
        let prev = self.mapcount.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(prev > 0, "unmap of an unmapped frame");
    }

    pub(super) fn set_allocated(&self, kind: FrameKind) {
        debug_assert_eq!(
            self.refcount.load(Ordering::Relaxed),
            0,
            "allocating a used frame"
        );
        self.kind.store(kind as u8, Ordering::Relaxed);
        self.mapcount.store(0, Ordering::Relaxed);
        self.refcount.store(1, Ordering::Release);
    }

    pub(super) fn set_free(&self) {
        debug_assert_eq!(
            self.mapcount.load(Ordering::Relaxed),
            0,
            "freeing a mapped frame"
        );
        self.kind.store(FrameKind::Free as u8, Ordering::Relaxed);
    }

    pub(super) fn pin_forever(&self, kind: FrameKind) {
        self.kind.store(kind as u8, Ordering::Relaxed);
        self.refcount.store(u32::MAX / 2, Ordering::Relaxed);
    }
}

/// The metadata of every frame the platform can hand out.
///
/// # Invariants
/// `metas[i]` describes frame number `first + i`.
pub struct FrameTable {
    first: u64,
    metas: Box<[FrameMeta]>,
}

impl FrameTable {
    /// Metadata for frame numbers `[first, end)`.
    pub fn new((first, end): (u64, u64)) -> Self {
        let metas = (first..end)
            .map(|_| FrameMeta::new())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        FrameTable { first, metas }
    }

    /// The metadata of `frame`. Frames outside the platform's range are a bug in `mm` (every
    /// frame it handles came from the platform), hence the panic.
    pub fn get(&self, frame: PhysFrame<Size4KiB>) -> &FrameMeta {
        let pfn = frame.start_address().as_u64() / 4096;
        pfn.checked_sub(self.first)
            .and_then(|i| self.metas.get(i as usize))
            .expect("frame outside the platform's frame range")
    }
}
