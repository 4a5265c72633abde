//! Starting the application processors.
//!
//! The bootloader starts only the bootstrap CPU. For each other CPU the MADT lists, the BSP
//! fills the trampoline's data words (its own CR3, CR4 and EFER, a fresh stack, the entry point
//! and the CPU number), sends INIT-SIPI-SIPI, and waits for the CPU to come online before
//! starting the next, since all of them share the one trampoline page. A CPU that does not come
//! up in time is reported and skipped.

use alloc::boxed::Box;
use core::sync::atomic::Ordering;

use core::sync::atomic::AtomicU64;

use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::arch::gdt::{CpuTables, DOUBLE_FAULT_STACK_SIZE};
use crate::arch::percpu::{self, MAX_CPUS, PERCPU};
use crate::arch::{apic, idt};
use crate::memory::stack::Stack;
use crate::memory::{self, TRAMPOLINE_PAGE, map_kernel_page, phys_to_virt, unmap_kernel_page};

core::arch::global_asm!(include_str!("trampoline.s"), options(att_syntax));

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_cr3: u8;
    static ap_trampoline_cr4: u8;
    static ap_trampoline_efer: u8;
    static ap_trampoline_stack: u8;
    static ap_trampoline_entry: u8;
    static ap_trampoline_arg: u8;
}

/// Size of each CPU's boot stack (its idle thread runs on it).
const AP_STACK_SIZE: usize = 64 * 1024;

/// How long a CPU gets to come online. Generous: under nested virtualization a CPU runs real-mode
/// code orders of magnitude slower than on hardware.
const START_TIMEOUT_US: u64 = 5_000_000;

/// Interrupts per second of each CPU's timer (the scheduler's tick).
pub const TIMER_HZ: u64 = 100;

/// The BSP's CR4, which every AP copies once in long mode.
static BSP_CR4: AtomicU64 = AtomicU64::new(0);

/// The outcome of [`start_all`].
#[derive(Debug)]
pub struct SmpReport {
    pub online: usize,
    pub failed: alloc::vec::Vec<u32>,
    pub boot_us: u64,
}

/// Starts every AP in `apic_ids` (the BSP's own id first, as `acpi::cpus` lists them). The BSP's
/// APIC must be up and calibrated.
pub fn start_all(apic_ids: &[u32]) -> SmpReport {
    let t0 = apic::now_ns();
    let mut failed = alloc::vec::Vec::new();
    if !memory::trampoline_page_free() {
        crate::error!("smp: trampoline page {TRAMPOLINE_PAGE:#x} is not free; staying on one CPU");
        return SmpReport {
            online: 1,
            failed: apic_ids[1..].to_vec(),
            boot_us: 0,
        };
    }
    let page = Page::containing_address(VirtAddr::new(TRAMPOLINE_PAGE));
    let frame = PhysFrame::containing_address(PhysAddr::new(TRAMPOLINE_PAGE));
    // SAFETY: the memory map says the page is free, and the lower half is unused by the kernel;
    // the identity mapping lives only while CPUs start.
    unsafe {
        map_kernel_page(
            page,
            frame,
            PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
        )
    }
    .expect("identity-map the trampoline page");
    copy_trampoline();
    for (cpu, &apic_id) in apic_ids.iter().enumerate().skip(1) {
        if cpu >= MAX_CPUS {
            crate::warn!("smp: CPU with APIC id {apic_id} is beyond MAX_CPUS={MAX_CPUS}");
            failed.push(apic_id);
            continue;
        }
        let t = apic::now_ns();
        if start_one(cpu, apic_id) {
            crate::debug!(
                "smp: cpu{cpu} (APIC id {apic_id}) online in {} us",
                (apic::now_ns() - t) / 1000
            );
        } else {
            crate::error!("smp: CPU {cpu} (APIC id {apic_id}) did not come online");
            failed.push(apic_id);
        }
    }
    // SAFETY: every started CPU is past the trampoline (it is online), and failed CPUs were sent
    // no further SIPIs; nothing runs there any more.
    unsafe { unmap_kernel_page(page) };
    let boot_us = (apic::now_ns() - t0) / 1000;
    SmpReport {
        online: percpu::online_count(),
        failed,
        boot_us,
    }
}

fn copy_trampoline() {
    let start = &raw const ap_trampoline_start;
    // SAFETY: both symbols delimit the trampoline in this image's text.
    let len = unsafe { (&raw const ap_trampoline_end).offset_from(start) } as usize;
    assert!(len <= 4096, "trampoline larger than a page");
    let dst = phys_to_virt(PhysAddr::new(TRAMPOLINE_PAGE)).as_mut_ptr::<u8>();
    // SAFETY: the trampoline page is ours (see `start_all`), and `len` bytes fit.
    unsafe { core::ptr::copy_nonoverlapping(start, dst, len) };
}

/// Writes a data word of the copied trampoline.
fn set_word(symbol: *const u8, value: u64) {
    // SAFETY: `symbol` is one of the trampoline's 8-byte data words.
    let off = unsafe { symbol.offset_from(&raw const ap_trampoline_start) } as u64;
    let p = phys_to_virt(PhysAddr::new(TRAMPOLINE_PAGE + off)).as_mut_ptr::<u64>();
    // SAFETY: inside the trampoline page, 8-aligned (`.balign 8`), which no AP runs right now.
    unsafe { p.write_volatile(value) };
}

fn start_one(cpu: usize, apic_id: u32) -> bool {
    let stack = match Stack::new(AP_STACK_SIZE) {
        Ok(s) => s,
        Err(e) => {
            crate::error!("smp: no stack for CPU {cpu}: {e:?}");
            return false;
        }
    };
    let root = crate::memory::kernel_root().start_address().as_u64();
    // The trampoline loads CR3 in 32-bit mode.
    assert!(
        root < 1 << 32,
        "kernel page table at {root:#x}, above what the AP trampoline can load"
    );
    set_word(&raw const ap_trampoline_cr3, root);
    // Only what entering long mode needs: bits such as PCIDE are illegal before it, so the
    // rest of CR4 is set by `ap_entry`, in 64-bit code.
    let cr4 = Cr4::read() & (Cr4Flags::PHYSICAL_ADDRESS_EXTENSION | Cr4Flags::PAGE_GLOBAL);
    set_word(&raw const ap_trampoline_cr4, cr4.bits());
    let efer = Efer::read()
        & (EferFlags::LONG_MODE_ENABLE
            | EferFlags::NO_EXECUTE_ENABLE
            | EferFlags::SYSTEM_CALL_EXTENSIONS);
    set_word(&raw const ap_trampoline_efer, efer.bits());
    BSP_CR4.store(Cr4::read_raw(), Ordering::Relaxed);
    set_word(&raw const ap_trampoline_stack, stack.top().as_u64());
    set_word(&raw const ap_trampoline_entry, ap_entry as *const () as u64);
    set_word(&raw const ap_trampoline_arg, cpu as u64);
    // The AP's boot stack becomes its idle thread's stack: it lives as long as the kernel.
    core::mem::forget(stack);
    apic::start_ap(apic_id, (TRAMPOLINE_PAGE >> 12) as u8);
    let deadline = apic::now_ns() + START_TIMEOUT_US * 1000;
    while apic::now_ns() < deadline {
        if PERCPU[cpu].online.load(Ordering::Acquire) {
            return true;
        }
        core::hint::spin_loop();
    }
    // Too slow or stuck: INIT puts it back to waiting for a SIPI, so it cannot run on in the
    // trampoline while the next CPU's data is written there.
    apic::send_init(apic_id);
    false
}

/// Where an AP lands in Rust, on its own stack, with the kernel's page table.
extern "C" fn ap_entry(cpu: usize) -> ! {
    // SAFETY: the BSP runs with these CR4 bits, so this CPU (of the same kind) supports them;
    // the trampoline already set the paging bits among them.
    unsafe { Cr4::write_raw(BSP_CR4.load(Ordering::Relaxed)) };
    // The APIC id is read only once the APIC is in the BSP's mode: in x2APIC mode its
    // registers are MSRs that fault while this CPU's APIC is still in xAPIC mode.
    percpu::init_cpu(cpu, 0);
    let df_stack = Box::leak(Box::new([0u8; DOUBLE_FAULT_STACK_SIZE]));
    let top = VirtAddr::from_ptr(df_stack.as_ptr()) + DOUBLE_FAULT_STACK_SIZE as u64;
    Box::leak(Box::new(CpuTables::new(top))).load();
    idt::load();
    crate::arch::init_cpu_features();
    apic::init_cpu_ap();
    PERCPU[cpu].apic_id.store(apic::id(), Ordering::Relaxed);
    crate::sched::init_cpu();
    PERCPU[cpu].online.store(true, Ordering::Release);
    apic::start_timer(TIMER_HZ);
    crate::sched::idle_loop()
}
