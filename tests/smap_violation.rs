//! With SMAP on, kernel code that touches user memory outside the user-copy helpers faults even
//! on a present, writable page, and that is a kernel bug: the #PF handler panics with a dump
//! (it must not hand the fault to `mm`, which would find the page fine and retry forever).

#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use kernel::process::Process;
use mm::ops::MapFlags;
use mm::vma::Prot;

kernel::bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut kernel::bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    if !kernel::arch::trap::SMAP.load(Ordering::Relaxed) {
        kernel::serial_println!("this CPU has no SMAP (run under -cpu max)");
        kernel::qemu::exit(kernel::qemu::ExitCode::Failed)
    }
    let p = Process::new("smap").expect("process");
    let mm = p.mm().clone();
    let _never_returns = p
        .spawn("toucher", move || {
            let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
            let a = mm
                .mmap(0, 4096, Prot::READ | Prot::WRITE, flags)
                .expect("mmap");
            let page = a as *mut u64;
            // SAFETY: our own fresh mapping; this thread runs with user access open.
            unsafe { page.write_volatile(1) };
            kernel::testing::expect_panic_containing(
                "smap_violation::kernel_access_with_user_access_closed_panics",
                &["#PF", "PROTECTION_VIOLATION"],
            );
            // SAFETY: `clac` closes user access; the next access must fault and panic.
            unsafe {
                core::arch::asm!("clac", options(nomem, nostack));
                page.write_volatile(2);
            }
            kernel::serial_println!("wrote a user page with user access closed: SMAP is not on");
            kernel::qemu::exit(kernel::qemu::ExitCode::Failed)
        })
        .expect("spawn")
        .join();
    kernel::qemu::exit(kernel::qemu::ExitCode::Failed)
}
