//! The memory subsystem of a small x86-64 kernel, in the shape of Linux's: an RCU-walked B-tree of
//! VMAs, per-VMA read locks on the fault path with the `mmap_lock` as fallback, and real 4-level
//! page tables with a split lock per page-table page.
//!
//! `mm` knows nothing of the kernel: all it needs from the machine comes through
//! [`Platform`], so the same code runs on eight CPUs in QEMU and under `cargo test` on
//! emulated RAM. Lock order and the rules of each field are in `LOCKING.md`.
//!
//! Types: a user virtual address is a `u64` throughout the API (Linux's `unsigned long`; VMA
//! and maple ranges are `Range<u64>`), a page-table entry a [`pgtable::Pte`], a held frame
//! reference a [`frame::FrameRef`]. The platform seam speaks the `x86_64` crate's types
//! (`VirtAddr`, `PhysFrame`), since it is where `mm` meets the hardware.
//!
//! The crate denies `unsafe` code except in the leaf modules that carry an
//! `#[allow(unsafe_code)]`: the platform seam and its emulation, frame memory (`frame::mem`),
//! the maple tree's nodes, values and their retirement, RCU callbacks, the spinlock, the rwsem's
//! wait list and the benchmark's floor probe (plus tests that free by hand on purpose).

#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

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
// The seam is an unsafe trait, implemented by the emulated platform below it.
#[allow(unsafe_code)]
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
#[allow(unsafe_code)] // `UnsafeCell` accesses: how a model sees a data race
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;
#[cfg(all(test, not(loom)))]
mod testutil;
