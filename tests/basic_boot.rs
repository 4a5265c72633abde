//! The kernel boots, prints, and sees the CPUs and memory QEMU was given.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

kernel::test_kernel!();

#[test_case]
fn serial_prints() {
    kernel::serial_println!("serial works");
}

#[test_case]
fn breakpoint_returns() {
    x86_64::instructions::interrupts::int3();
}

#[test_case]
fn memory_map_has_usable_memory() {
    let (total, free) = kernel::memory::FRAMES.stats();
    // QEMU runs with 1 GiB; the heap and the bootloader take some of it.
    assert!(total > 200_000, "only {total} frames");
    assert!(free <= total);
}
