//! Installing a table into an empty upper-level entry, race-free without a lock.
//!
//! Two CPUs faulting in the same empty 1 GiB or 2 MiB region both find the entry empty and both
//! allocate a zeroed table. Each tries `compare_exchange(0, new)`: exactly one wins and its table
//! is used by both; the loser frees its own table and continues with the winner's. The release
//! of the successful exchange publishes the zeroed contents of the table; the acquire of the
//! first load and of the failure path lets a CPU that finds the entry filled walk into the
//! winner's table.
//!
//! [`ensure_table`] is the whole protocol, generic over the entry word so that the loom model
//! (`loom_tests.rs`) runs this very function on loom atomics; [`PageTables`](super::PageTables)
//! adds only the frame allocator and the counters.

use crate::platform::PageTableFlags;
use crate::primitive::Ordering;

/// An entry word the protocol runs on: a page-table entry in (emulated or real) physical memory,
/// or a loom atomic in the model. Implementations only forward to the atomic; the orderings are
/// chosen by [`ensure_table`].
pub(crate) trait EntrySlot {
    fn load(&self, order: Ordering) -> u64;
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl EntrySlot for core::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        core::sync::atomic::AtomicU64::load(self, order)
    }

    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        core::sync::atomic::AtomicU64::compare_exchange(self, current, new, success, failure)
    }
}

#[cfg(loom)]
impl EntrySlot for loom::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        loom::sync::atomic::AtomicU64::load(self, order)
    }

    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        loom::sync::atomic::AtomicU64::compare_exchange(self, current, new, success, failure)
    }
}

/// What [`ensure_table`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// The entry already pointed to a table; nothing was allocated.
    Present(u64),
    /// Our new table is now in the entry.
    Ours(u64),
    /// Another CPU's table got there first: `current` is the entry to use, and our table
    /// (`discarded`, never published) is the caller's to free.
    Theirs { current: u64, discarded: u64 },
}

impl Installed {
    /// The entry to continue the walk with.
    pub(crate) fn entry(self) -> u64 {
        match self {
            Installed::Present(e) | Installed::Ours(e) => e,
            Installed::Theirs { current, .. } => current,
        }
    }
}

/// The present entry in `slot`, or, if it is empty, the entry of a table made by `alloc`
/// (zeroed, unpublished) and installed by compare-and-swap. Fails only if `alloc` does, and
/// then the entry is unchanged.
pub(crate) fn ensure_table<S: EntrySlot, E>(
    slot: &S,
    alloc: impl FnOnce() -> Result<u64, E>,
) -> Result<Installed, E> {
    let e = slot.load(Ordering::Acquire);
    if e & PageTableFlags::PRESENT.bits() != 0 {
        return Ok(Installed::Present(e));
    }
    let new = alloc()?;
    Ok(
        match slot.compare_exchange(0, new, Ordering::Release, Ordering::Acquire) {
            Ok(_) => Installed::Ours(new),
            Err(current) => Installed::Theirs {
                current,
                discarded: new,
            },
        },
    )
}
