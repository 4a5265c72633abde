//! Helpers shared by the test kernels (each uses a part of them).

#![allow(dead_code)]

/// Free frames once the machine has settled (see `kernel::platform::settled_free_frames`).
pub fn free_frames() -> u64 {
    kernel::platform::settled_free_frames()
}

/// Heap bytes in use.
pub fn heap_used() -> usize {
    kernel::memory::heap::usage().0
}
