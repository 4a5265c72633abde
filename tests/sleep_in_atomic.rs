//! Giving up the CPU with preemption disabled is a kernel bug, caught in every build: the
//! scheduler panics and names where preemption was disabled.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;

use kernel::arch::percpu::preempt_disable;

kernel::bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut kernel::bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    let (line, ()) = (line!(), preempt_disable());
    // The report must name this file and line as where preemption was disabled.
    let disabled_at: &'static str = format!("{}:{line}:", file!()).leak();
    let needles = vec!["scheduling while atomic", "preempt count 1", disabled_at].leak();
    kernel::testing::expect_panic_containing(
        "sleep_in_atomic::sleeping_with_preemption_disabled_panics",
        needles,
    );
    kernel::sched::sleep_ns(1_000_000);
    kernel::serial_println!("slept with preemption disabled and nothing noticed");
    kernel::qemu::exit(kernel::qemu::ExitCode::Failed)
}
