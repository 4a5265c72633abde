//! Physical frames: metadata, contents, and the allocator.
//!
//! [`FrameAllocator`] puts a small per-CPU cache in front of the platform's shared pool
//! (`Platform::alloc_frame`/`free_frame`): a fault takes a frame from its own CPU's cache, under
//! that cache's spinlock (uncontended unless two threads share a CPU id), and only every
//! [`CACHE_BATCH`]-th allocation goes to the pool. When the pool is empty the allocator takes
//! frames cached on other CPUs before it reports [`FrameAllocError::OutOfMemory`].
//!
//! A reference to a frame is held as a [`FrameRef`], which puts it when dropped, so error paths
//! free nothing by hand; a PTE that takes over the reference gets the bare frame
//! ([`FrameRef::into_raw`]).
//!
//! Lock order: a cache lock is taken with no other cache lock held, and may be taken under a
//! PTE lock (class [`LockClass::FrameCache`](crate::sync::LockClass) after `Pte`).

#[allow(unsafe_code)]
pub mod mem;
mod meta;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

pub use meta::{FrameKind, FrameMeta, FrameTable};

use crate::platform::{PhysFrame, Platform};
use crate::sync::{LockClass, SpinLock};

/// Frames a per-CPU cache holds at most.
pub const CACHE_CAPACITY: usize = 64;
/// Frames moved between a cache and the pool at a time.
pub const CACHE_BATCH: usize = 16;

/// Why a frame could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameAllocError {
    /// The pool and every per-CPU cache are empty.
    OutOfMemory,
}

#[repr(align(64))]
struct FrameCache {
    frames: [Option<PhysFrame>; CACHE_CAPACITY],
    len: usize,
}

impl FrameCache {
    fn pop(&mut self) -> Option<PhysFrame> {
        self.len = self.len.checked_sub(1)?;
        self.frames[self.len].take()
    }

    fn push(&mut self, f: PhysFrame) -> Result<(), PhysFrame> {
        if self.len == CACHE_CAPACITY {
            return Err(f);
        }
        self.frames[self.len] = Some(f);
        self.len += 1;
        Ok(())
    }
}

/// The frame allocator and the frame metadata.
///
/// # Invariants
/// A frame is in at most one of: a per-CPU cache, handed out (`refcount > 0`), the platform's
/// pool. The zero frame is allocated once, zeroed, and never freed or written.
pub struct FrameAllocator<P: Platform> {
    platform: Arc<P>,
    table: FrameTable,
    caches: Box<[SpinLock<FrameCache>]>,
    zero: PhysFrame,
}

impl<P: Platform> FrameAllocator<P> {
    /// An allocator over the platform's pool, with the zero frame taken from it.
    pub fn new(platform: Arc<P>) -> Result<Self, FrameAllocError> {
        let table = FrameTable::new(platform.frame_range());
        let zero = platform.alloc_frame().ok_or(FrameAllocError::OutOfMemory)?;
        mem::zero(&*platform, zero);
        table.get(zero).pin_forever(FrameKind::Zero);
        // One per CPU id (ids may be sparse); the cache of an id that never runs stays empty.
        let caches = (0..platform.nr_cpu_ids())
            .map(|_| {
                SpinLock::new(
                    LockClass::FrameCache,
                    FrameCache {
                        frames: [None; CACHE_CAPACITY],
                        len: 0,
                    },
                )
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(FrameAllocator {
            platform,
            table,
            caches,
            zero,
        })
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<P> {
        &self.platform
    }

    /// The metadata of `frame`.
    pub fn meta(&self, frame: PhysFrame) -> &FrameMeta {
        self.table.get(frame)
    }

    /// The shared, always-zero frame that read faults on anonymous memory map.
    pub fn zero_frame(&self) -> PhysFrame {
        self.zero
    }

    /// A frame for `kind`, contents undefined, with one reference (the caller's).
    pub fn alloc(&self, kind: FrameKind) -> Result<FrameRef<'_, P>, FrameAllocError> {
        let frame = self.alloc_raw()?;
        self.table.get(frame).set_allocated(kind);
        Ok(FrameRef::from_raw(self, frame))
    }

    /// A zeroed frame for `kind`, with one reference (the caller's).
    pub fn alloc_zeroed(&self, kind: FrameKind) -> Result<FrameRef<'_, P>, FrameAllocError> {
        let frame = self.alloc(kind)?;
        mem::zero(&*self.platform, frame.frame());
        Ok(frame)
    }

    /// Another reference to `frame`, which must be in use (`get_page`). The zero frame is not
    /// counted: its references cost nothing.
    pub fn get(&self, frame: PhysFrame) -> FrameRef<'_, P> {
        if frame != self.zero {
            self.meta(frame).get();
        }
        FrameRef::from_raw(self, frame)
    }

    /// Drops a reference to `frame` (`put_page`), freeing it on the last. The zero frame is
    /// not reference-counted and is ignored.
    pub fn put(&self, frame: PhysFrame) {
        if frame == self.zero {
            return;
        }
        let meta = self.table.get(frame);
        if meta.put() {
            meta.set_free();
            self.free_raw(frame);
        }
    }

    /// Gives every cached frame back to the platform's pool (so tests can compare the pool with
    /// its baseline, and a kernel can reclaim under pressure).
    pub fn drain_caches(&self) {
        for cache in self.caches.iter() {
            // Lock order: one cache lock at a time, nothing else held.
            let mut c = cache.lock();
            while let Some(f) = c.pop() {
                self.platform.free_frame(f);
            }
        }
    }

    /// Frames sitting in per-CPU caches.
    pub fn cached_frames(&self) -> usize {
        self.caches.iter().map(|c| c.lock().len).sum()
    }

    fn alloc_raw(&self) -> Result<PhysFrame, FrameAllocError> {
        self.platform.preempt_disable();
        let cpu = self.platform.cpu_id();
        let got = {
            // Lock order: this CPU's cache, then the platform's pool (a leaf).
            let mut c = self.caches[cpu].lock();
            match c.pop() {
                Some(f) => Some(f),
                None => {
                    for _ in 0..CACHE_BATCH {
                        let Some(f) = self.platform.alloc_frame() else {
                            break;
                        };
                        // Cannot fail: the cache was empty.
                        let _ = c.push(f);
                    }
                    c.pop()
                }
            }
        };
        self.platform.preempt_enable();
        if let Some(f) = got {
            return Ok(f);
        }
        // The pool is dry: take a frame another CPU cached, one cache lock at a time.
        for cache in self.caches.iter() {
            if let Some(f) = cache.lock().pop() {
                return Ok(f);
            }
        }
        Err(FrameAllocError::OutOfMemory)
    }

    fn free_raw(&self, frame: PhysFrame) {
        self.platform.preempt_disable();
        let cpu = self.platform.cpu_id();
        {
            let mut c = self.caches[cpu].lock();
            if let Err(f) = c.push(frame) {
                for _ in 0..CACHE_BATCH {
                    if let Some(old) = c.pop() {
                        self.platform.free_frame(old);
                    }
                }
                let _ = c.push(f);
            }
        }
        self.platform.preempt_enable();
    }
}

/// One reference to a frame, held by whoever has this value (Linux's page pointer after
/// `get_page`): dropping it drops the reference ([`FrameAllocator::put`]). Two words and no
/// atomics of its own; what it costs is the `put` a manual error path would make anyway.
#[must_use = "dropping a FrameRef drops its reference at once"]
pub struct FrameRef<'a, P: Platform> {
    frames: &'a FrameAllocator<P>,
    frame: PhysFrame,
}

impl<'a, P: Platform> FrameRef<'a, P> {
    /// Takes over a reference to `frame` that the caller holds as a bare frame (the one a PTE
    /// held, once the PTE is cleared).
    pub fn from_raw(frames: &'a FrameAllocator<P>, frame: PhysFrame) -> Self {
        FrameRef { frames, frame }
    }

    /// The frame.
    pub fn frame(&self) -> PhysFrame {
        self.frame
    }

    /// Hands the reference over to whatever points to the frame now (a PTE, a table entry):
    /// it is not dropped.
    pub fn into_raw(self) -> PhysFrame {
        let frame = self.frame;
        core::mem::forget(self);
        frame
    }
}

impl<P: Platform> Drop for FrameRef<'_, P> {
    fn drop(&mut self) {
        self.frames.put(self.frame);
    }
}

impl<P: Platform> Drop for FrameAllocator<P> {
    fn drop(&mut self) {
        self.drain_caches();
        self.platform.free_frame(self.zero);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::platform::emulated::Emulated;
    use core::sync::atomic::Ordering;

    fn setup(mib: usize, cpus: usize) -> (Arc<Emulated>, FrameAllocator<Emulated>) {
        let p = Arc::new(Emulated::new(mib, cpus));
        p.bind_cpu(0);
        let a = FrameAllocator::new(p.clone()).unwrap();
        (p, a)
    }

    #[test]
    fn alloc_zeroed_put_and_drain_restore_the_pool() {
        let (p, a) = setup(1, 2);
        let base = p.free_frames();
        let f = a.alloc_zeroed(FrameKind::Anon).unwrap().into_raw();
        assert!(
            mem::words(&*p, f)
                .iter()
                .all(|w| w.load(Ordering::Relaxed) == 0)
        );
        mem::words(&*p, f)[7].store(42, Ordering::Relaxed);
        assert_eq!(a.meta(f).refcount(), 1);
        assert_eq!(a.meta(f).kind(), FrameKind::Anon);
        a.meta(f).get();
        a.put(f);
        assert_eq!(
            a.meta(f).kind(),
            FrameKind::Anon,
            "freed with a reference left"
        );
        a.put(f);
        assert_eq!(a.meta(f).kind(), FrameKind::Free);
        // The next allocation on this CPU reuses the cached frame, and zeroes it.
        let g = a.alloc_zeroed(FrameKind::Anon).unwrap().into_raw();
        assert_eq!(g, f);
        assert_eq!(mem::words(&*p, g)[7].load(Ordering::Relaxed), 0);
        a.put(g);
        a.drain_caches();
        assert_eq!(p.free_frames(), base);
    }

    #[test]
    fn zero_frame_is_shared_and_never_freed() {
        let (_p, a) = setup(1, 1);
        let z = a.zero_frame();
        a.put(z);
        assert_eq!(a.meta(z).kind(), FrameKind::Zero);
    }

    #[test]
    fn a_frame_ref_drops_its_reference_unless_handed_over() {
        let (p, a) = setup(1, 1);
        let base = p.free_frames();
        let f = a.alloc(FrameKind::Anon).unwrap();
        let frame = f.frame();
        let extra = a.get(frame);
        assert_eq!(a.meta(frame).refcount(), 2);
        drop(extra);
        assert_eq!(a.meta(frame).refcount(), 1);
        let raw = f.into_raw();
        assert_eq!(a.meta(raw).refcount(), 1, "into_raw dropped the reference");
        drop(FrameRef::from_raw(&a, raw));
        assert_eq!(a.meta(raw).kind(), FrameKind::Free);
        let zero = a.get(a.zero_frame());
        drop(zero);
        assert_eq!(a.meta(a.zero_frame()).kind(), FrameKind::Zero);
        a.drain_caches();
        assert_eq!(p.free_frames(), base);
    }

    #[test]
    fn out_of_memory_is_an_error_after_other_caches_are_used() {
        let (p, a) = setup(1, 2);
        // Leave frames in CPU 1's cache, then exhaust the pool from CPU 0.
        std::thread::scope(|s| {
            p.spawn_cpu(s, 1, || {
                drop(a.alloc(FrameKind::Anon).unwrap());
            });
        });
        let cached_elsewhere = a.cached_frames();
        assert!(cached_elsewhere > 0);
        let mut got = Vec::new();
        loop {
            match a.alloc(FrameKind::Anon) {
                Ok(f) => got.push(f),
                Err(e) => {
                    assert_eq!(e, FrameAllocError::OutOfMemory);
                    break;
                }
            }
        }
        assert_eq!(
            a.cached_frames(),
            0,
            "OOM reported with frames still cached"
        );
        assert_eq!(p.free_frames(), 0);
        drop(got);
    }
}
