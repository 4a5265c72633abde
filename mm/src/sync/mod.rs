//! Locks of the memory subsystem.
//!
//! - [`MmapLock`]: the per-address-space reader-writer semaphore (`mmap_lock`) together with
//!   `mm_lock_seq`, the sequence count whose bump on write unlock releases every VMA write lock
//!   of the address space at once (`vma_end_write_all`).
//! - [`RwSemaphore`]: the fair sleeping lock under it, in the shape of Linux's `rw_semaphore`:
//!   one-CAS fast paths, a FIFO queue of sleepers, queued readers admitted in batches, and a
//!   handoff to a waiter that has waited [`RWSEM_WAIT_TIMEOUT_NS`]. Waiters block through
//!   [`Park`] (the platform's futex-like `wait`/`wake` and its clock).
//! - [`SpinLock`] / [`RawSpinLock`]: the crate's one spinlock, for short critical sections that
//!   never sleep (the maple tree's writer lock, the split PTE lock, the per-CPU frame caches, the
//!   rwsem's wait queue). In
//!   debug builds with `std`, each acquisition checks the lock order of `LOCKING.md` through
//!   [`LockClass`].
//!
//! Lock order (outermost first): `mmap_lock` > VMA write lock > maple writer lock > PTE lock >
//! frame cache lock.

#[cfg(all(test, loom))]
#[allow(unsafe_code)] // `UnsafeCell` accesses: how a model sees a data race
mod loom_tests;
mod mmap_lock;
mod park;
mod rwsem;
#[allow(unsafe_code)]
mod spinlock;

pub use mmap_lock::{MmapLock, MmapReadGuard, MmapWriteGuard};
#[cfg(all(test, loom))]
pub(crate) use park::LoomPark;
pub use park::Park;
pub use rwsem::{RWSEM_WAIT_TIMEOUT_NS, RwSemaphore};
#[cfg(not(loom))]
pub(crate) use spinlock::install_preemption;
pub use spinlock::{LockClass, RawSpinGuard, RawSpinLock, SpinGuard, SpinLock};
