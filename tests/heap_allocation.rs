//! The kernel heap: boxes, growing vectors, reuse of freed memory.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;

kernel::test_kernel!();

#[test_case]
fn boxes_hold_values() {
    let a = Box::new(41);
    let b = Box::new(1);
    assert_eq!(*a + *b, 42);
}

#[test_case]
fn a_large_vector_grows() {
    let n = 100_000u64;
    let v: Vec<u64> = (0..n).collect();
    assert_eq!(v.iter().sum::<u64>(), (n - 1) * n / 2);
}

#[test_case]
fn freed_memory_is_reused() {
    let (used_before, _) = kernel::memory::heap::usage();
    for i in 0..10_000 {
        let x = Box::new(i);
        assert_eq!(*x, i);
    }
    let long_lived = Box::new(1);
    assert_eq!(*long_lived, 1);
    let (used_after, _) = kernel::memory::heap::usage();
    assert!(
        used_after <= used_before + 64,
        "heap leaked: {used_before} -> {used_after}"
    );
}
