//! The memory subsystem of a small x86-64 kernel, in the shape of Linux's: an RCU-walked B-tree of
//! VMAs, per-VMA read locks on the fault path with the `mmap_lock` as fallback, and real 4-level
//! page tables with a split lock per page-table page.
//!
//! `mm` knows nothing of the kernel: all it needs from the machine comes through
//! [`Platform`], so the same code runs on eight CPUs in QEMU and under `cargo test` on
//! emulated RAM. Lock order and the rules of each field are in `LOCKING.md`.

#![no_std]

extern crate alloc;
#[cfg(any(test, loom, feature = "std"))]
extern crate std;

#[cfg(not(loom))]
pub mod address_space;
#[cfg(not(loom))]
pub mod fault;
pub mod frame;
#[cfg(not(loom))]
pub mod maple;
#[cfg(not(loom))]
pub mod memory;
#[cfg(not(loom))]
pub mod ops;
#[cfg(not(loom))]
pub mod pgtable;
pub mod platform;
mod primitive;
pub mod rcu;
pub mod shootdown;
pub mod stats;
pub mod sync;
pub mod vma;

#[cfg(not(loom))]
pub use address_space::AddressSpace;
#[cfg(not(loom))]
pub use fault::{Access, FaultResult, handle_mm_fault};
#[cfg(not(loom))]
pub use memory::{FaultPolicy, Memory};
#[cfg(not(loom))]
pub use ops::MapFlags;
pub use platform::Platform;
pub use vma::Prot;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;
#[cfg(all(test, not(loom)))]
mod testutil;
