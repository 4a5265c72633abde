//! The kernel around `mm`: boot, serial console, descriptor tables and exception handlers,
//! physical memory and the heap, ACPI, the scheduler, user processes, and the in-QEMU test
//! framework.
//!
//! Every kernel binary (the kernel itself, its unit tests, each integration test under `tests/`)
//! starts by calling [`init`].
//!
//! # Layers
//! Each layer uses only the ones below it; a lower layer reaches a higher one only through a
//! typed hook the higher one installs at boot (listed with each layer):
//!
//! 1. [`arch`]: the CPU. Per-CPU area and preemption count, GDT/TSS, IDT and the entry stubs,
//!    `SYSCALL`, FPU state, SMEP/SMAP and the user-copy helpers, the local APIC, TLB shootdown
//!    IPIs, the RTC. Hooks: `idt::set_sched_interrupts` (the scheduler's tick and reschedule
//!    work), `percpu::set_preempt_schedule` (the preemption point of `preempt_enable`),
//!    `idt::set_page_fault_hook` (the fault path), `idt::set_user_entry` (system calls, ring-3
//!    exceptions, the return to ring 3).
//! 2. [`memory`]: the frame pool, the kernel heap, kernel stacks, the kernel page table; the
//!    machine's `mm` platform type ([`memory::KernelPlatform`], [`memory::Mm`]).
//! 3. [`sched`]: threads on `sched-core`'s run queues, preemption, wait queues, sleeping.
//!    Hook: `sched::set_rcu_hook` (`mm`'s RCU grace periods advance at the tick).
//! 4. [`platform`]: `mm`'s `Platform` seam on this machine (its blocking uses the scheduler's
//!    wait queues) and the machine-wide `mm` state with its RCU thread.
//! 5. [`process`]: address spaces and their kernel threads, and the page-fault path into
//!    `mm::handle_mm_fault`. Hook: `process::set_user_segv` (a ring-3 fault ends its process).
//! 6. [`user`]: ring-3 processes running Linux programs: loading, system calls, futexes, fork.
//!
//! Beside them: [`smp`] brings up the other CPUs (it needs arch, memory for the trampoline page
//! and stacks, and the scheduler for their idle threads); [`acpi`] reads the CPU list (memory);
//! [`initrd`] the bootloader's ramdisk; [`serial`] and [`log`] are the console every layer
//! writes to (`log` reads the CPU number from the per-CPU area: the one edge back into `arch`,
//! through its macros); [`testing`] and [`qemu`] serve the test kernels; `bench` (feature
//! `bench`) sits on top. The kernel's locks and their order are in `kernel/LOCKING.md`.

#![no_std]
#![cfg_attr(test, no_main)]
#![feature(custom_test_frameworks)]
#![test_runner(crate::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

pub mod acpi;
pub mod arch;
#[cfg(feature = "bench")]
pub mod bench;
pub mod initrd;
pub mod log;
pub mod memory;
pub mod platform;
pub mod process;
pub mod qemu;
pub mod sched;
pub mod serial;
pub mod smp;
pub mod testing;
pub mod user;

pub use bootloader_api;
use bootloader_api::BootInfo;
use bootloader_api::config::{BootloaderConfig, Mapping};

/// Where the kernel image is linked to run: the top 2 GiB, as on Linux.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;

/// How every kernel binary asks to be loaded: the kernel and everything the bootloader maps
/// (all physical memory at an offset, boot info, stack) in the upper half, leaving the lower
/// half to user address spaces; and a kernel stack large enough for debug builds.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.kernel_base = Mapping::FixedAddress(KERNEL_BASE);
    config.mappings.dynamic_range_start = Some(0xffff_8000_0000_0000);
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

/// What `init` found.
#[derive(Debug)]
pub struct Boot {
    pub memory: memory::MemorySummary,
    pub cpus: Result<acpi::Cpus, acpi::AcpiError>,
    pub smp: smp::SmpReport,
    /// Time from entering the kernel to all CPUs online, in microseconds.
    pub boot_us: u64,
}

/// The local APIC's address when ACPI does not say.
const DEFAULT_XAPIC: u64 = 0xfee0_0000;

/// Brings the machine up: per-CPU area, serial, GDT/TSS, IDT, the legacy PIC masked, frame
/// allocator and heap, the CPU list from ACPI, the local APIC and its timer, the scheduler,
/// then every other CPU. Returns with interrupts on and the calling code running as thread
/// `main` on CPU 0.
pub fn init(boot_info: &'static mut BootInfo) -> &'static Boot {
    let t0 = arch::apic::rdtsc();
    arch::percpu::init_cpu(0, arch::apic::id());
    serial::init();
    log::init_from_build();
    arch::gdt::init_bsp();
    arch::idt::load();
    arch::init_cpu_features();
    arch::mask_legacy_pic();
    let offset = boot_info
        .physical_memory_offset
        .into_option()
        .expect("bootloader did not map physical memory (BOOTLOADER_CONFIG asks it to)");
    let memory = memory::init(&boot_info.memory_regions, offset);
    initrd::init(boot_info);
    memory::clear_lower_half();
    let cpus = acpi::cpus(boot_info.rsdp_addr.into_option());
    let xapic = cpus
        .as_ref()
        .map_or(DEFAULT_XAPIC, |c| c.local_apic_address);
    arch::apic::init_cpu(memory::phys_to_virt(x86_64::PhysAddr::new(xapic)));
    arch::apic::calibrate();
    arch::percpu::PERCPU[0]
        .online
        .store(true, core::sync::atomic::Ordering::Release);
    sched::init_bsp();
    let bsp = [arch::apic::id()];
    let apic_ids = cpus.as_ref().map_or(&bsp[..], |c| &c.apic_ids[..]);
    let smp = smp::start_all(apic_ids);
    platform::init_memory();
    process::init();
    user::init();
    arch::apic::start_timer(smp::TIMER_HZ);
    x86_64::instructions::interrupts::enable();
    // The trampoline's identity mapping may linger in the APs' TLBs.
    arch::tlb::shootdown(u64::MAX, x86_64::VirtAddr::zero(), u64::MAX);
    let boot_us = (arch::apic::rdtsc() - t0) / arch::apic::tsc_mhz().max(1);
    BOOT.call_once(|| Boot {
        memory,
        cpus,
        smp,
        boot_us,
    })
}

static BOOT: spin::Once<Boot> = spin::Once::new();

/// What `init` found.
pub fn boot() -> &'static Boot {
    BOOT.get().expect("kernel::init first")
}

/// Declares the entry point of a test kernel: `init`, then the crate's tests.
/// Use in a crate with `#![test_runner(kernel::testing::test_runner)]` and
/// `#![reexport_test_harness_main = "test_main"]`.
#[macro_export]
macro_rules! test_kernel {
    () => {
        $crate::bootloader_api::entry_point!(
            __test_kernel_main,
            config = &$crate::BOOTLOADER_CONFIG
        );
        fn __test_kernel_main(boot_info: &'static mut $crate::bootloader_api::BootInfo) -> ! {
            $crate::init(boot_info);
            test_main();
            $crate::qemu::exit($crate::qemu::ExitCode::Success)
        }
    };
}

#[cfg(test)]
test_kernel!();

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    testing::panic(info)
}
