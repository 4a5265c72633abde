//! What is shared by every address space of a machine: the platform, the RCU domain, the frame
//! allocator (with the frame metadata and the zero frame), the event counters, and the fault
//! policy.

use alloc::sync::{Arc, Weak};
use core::sync::atomic::{AtomicU8, Ordering};

use crate::frame::{FrameAllocError, FrameAllocator};
use crate::platform::Platform;
use crate::rcu::Rcu;
use crate::stats::{Event, Stats};
use crate::vma::SharedAnon;
use crate::vma::shared::PutFrame;

/// Which lock page faults take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultPolicy {
    /// Per-VMA read lock under RCU first, `mmap_lock` only as the fallback (the default).
    PerVmaLock = 0,
    /// Every fault takes `mmap_lock` for read (the pre-6.4 Linux behaviour; for comparisons).
    MmapLockOnly = 1,
}

/// Machine-wide memory-management state.
pub struct Memory<P: Platform> {
    platform: Arc<P>,
    rcu: Arc<Rcu<P>>,
    frames: FrameAllocator<P>,
    stats: Stats,
    policy: AtomicU8,
}

impl<P: Platform> Memory<P> {
    /// State for `platform`; takes the zero frame from its pool.
    pub fn new(platform: Arc<P>) -> Result<Arc<Self>, FrameAllocError> {
        crate::sync::install_preemption(P::spinlock_preemption());
        Ok(Arc::new(Memory {
            rcu: Arc::new(Rcu::new(platform.clone())),
            frames: FrameAllocator::new(platform.clone())?,
            stats: Stats::new(platform.nr_cpu_ids()),
            policy: AtomicU8::new(FaultPolicy::PerVmaLock as u8),
            platform,
        }))
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<P> {
        &self.platform
    }

    /// The RCU domain of the VMA trees and page tables.
    pub fn rcu(&self) -> &Arc<Rcu<P>> {
        &self.rcu
    }

    /// The frame allocator.
    pub fn frames(&self) -> &FrameAllocator<P> {
        &self.frames
    }

    /// The event counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts `event` on this CPU.
    pub fn count(&self, event: Event) {
        self.stats.count(self.platform.cpu_id(), event);
    }

    /// The fault policy in force.
    pub fn fault_policy(&self) -> FaultPolicy {
        match self.policy.load(Ordering::Relaxed) {
            1 => FaultPolicy::MmapLockOnly,
            _ => FaultPolicy::PerVmaLock,
        }
    }

    /// Switches the fault policy (takes effect for faults that start afterwards).
    pub fn set_fault_policy(&self, policy: FaultPolicy) {
        self.policy.store(policy as u8, Ordering::Relaxed);
    }

    /// A new, empty shared anonymous object (`MAP_SHARED|MAP_ANONYMOUS`) whose pages come
    /// from this machine's frames and go back to them when it is dropped.
    pub fn new_shared_anon(self: &Arc<Self>) -> Arc<SharedAnon> {
        let weak: Weak<Memory<P>> = Arc::downgrade(self);
        SharedAnon::new(weak)
    }

    /// Runs every deferred free (RCU callbacks) and gives the per-CPU frame caches back to the
    /// platform: afterwards the platform's free-frame count is exact. Call outside any lock and
    /// RCU read section, e.g. before dropping the last handle (pending callbacks hold one).
    pub fn quiesce(&self) {
        self.rcu.barrier();
        self.frames.drain_caches();
    }
}

impl<P: Platform> PutFrame for Memory<P> {
    fn put_frame(&self, frame: crate::platform::PhysFrame) {
        self.frames.put(frame);
    }
}
