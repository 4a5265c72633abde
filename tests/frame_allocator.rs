//! The physical frame pool (`FramePool`): frames are distinct, writable, and come back when freed.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::vec::Vec;
use kernel::memory::{FRAMES, phys_to_virt};

kernel::test_kernel!();

#[test_case]
fn alloc_free_round_trip() {
    let (_, free_before) = FRAMES.stats();
    let frames: Vec<_> = (0..1000)
        .map(|_| FRAMES.alloc().expect("out of frames"))
        .collect();
    assert_eq!(FRAMES.stats().1, free_before - 1000);
    // Tag each frame with its own address, then check no frame was handed out twice.
    for f in &frames {
        let p = phys_to_virt(f.start_address()).as_mut_ptr::<u64>();
        // SAFETY: the frame is ours and mapped through the physical-memory mapping.
        unsafe { p.add(511).write(f.start_address().as_u64()) };
    }
    for f in &frames {
        let p = phys_to_virt(f.start_address()).as_ptr::<u64>();
        // SAFETY: as above.
        assert_eq!(unsafe { p.add(511).read() }, f.start_address().as_u64());
    }
    for f in frames {
        // SAFETY: allocated above, no longer used.
        unsafe { FRAMES.free(f) };
    }
    assert_eq!(FRAMES.stats().1, free_before);
}

#[test_case]
fn freed_frames_are_handed_out_again() {
    let a = FRAMES.alloc().expect("frame");
    // SAFETY: allocated above, unused.
    unsafe { FRAMES.free(a) };
    let b = FRAMES.alloc().expect("frame");
    assert_eq!(a, b, "the most recently freed frame comes back first");
    // SAFETY: allocated above, unused.
    unsafe { FRAMES.free(b) };
}
