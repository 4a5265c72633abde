//! Installing a table into an empty upper-level entry, race-free without a lock.
//!
//! Two CPUs faulting in the same empty 1 GiB or 2 MiB region both find the entry empty and both
//! allocate a zeroed table. Each tries `compare_exchange(0, new)`: exactly one wins and its table
//! is used by both; the loser frees its own table and continues with the winner's. The release
//! of the successful exchange publishes the zeroed contents of the table; the acquire on the
//! failure path lets the loser walk into the winner's table.

#[cfg(loom)]
use crate::primitive::Ordering;

/// An entry slot the protocol runs on: a page-table entry in (emulated) physical memory, or a
/// loom atomic in the model.
pub(crate) trait EntrySlot {
    fn load_acquire(&self) -> u64;
    fn install(&self, new: u64) -> Result<u64, u64>;
}

impl EntrySlot for core::sync::atomic::AtomicU64 {
    fn load_acquire(&self) -> u64 {
        self.load(core::sync::atomic::Ordering::Acquire)
    }

    fn install(&self, new: u64) -> Result<u64, u64> {
        self.compare_exchange(
            0,
            new,
            core::sync::atomic::Ordering::Release,
            core::sync::atomic::Ordering::Acquire,
        )
    }
}

#[cfg(loom)]
impl EntrySlot for loom::sync::atomic::AtomicU64 {
    fn load_acquire(&self) -> u64 {
        self.load(Ordering::Acquire)
    }

    fn install(&self, new: u64) -> Result<u64, u64> {
        self.compare_exchange(0, new, Ordering::Release, Ordering::Acquire)
    }
}

/// What [`install_or_discard`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// Our table is now in the entry.
    Ours(u64),
    /// Another CPU's table was there first: free ours and use this entry.
    Theirs(u64),
}

/// Installs `new` into `slot` if it is still empty.
pub(crate) fn install_or_discard<S: EntrySlot>(slot: &S, new: u64) -> Installed {
    match slot.install(new) {
        Ok(_) => Installed::Ours(new),
        Err(current) => Installed::Theirs(current),
    }
}
