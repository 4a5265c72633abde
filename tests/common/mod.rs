//! Helpers shared by the test kernels (each uses a part of them).

#![allow(dead_code)]

use mm::ops::MapFlags;
use mm::vma::Prot;

/// A page.
pub const PAGE: u64 = 4096;
/// Private anonymous memory, the kind every test maps.
pub const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
/// Read-write.
pub const RW: Prot = Prot::READ.union(Prot::WRITE);

/// Free frames once the machine has settled (see `kernel::platform::settled_free_frames`).
pub fn free_frames() -> u64 {
    kernel::platform::settled_free_frames()
}

/// Heap bytes in use.
pub fn heap_used() -> usize {
    kernel::memory::heap::usage().0
}
