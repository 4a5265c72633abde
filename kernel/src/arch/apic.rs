//! The local APIC, in x2APIC mode (MSRs) when the CPU has it and xAPIC mode (MMIO) otherwise:
//! interrupt acknowledgment, IPIs (fixed, INIT, SIPI), and the timer, calibrated against the
//! PIT.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use volatile::VolatilePtr;
use x86_64::VirtAddr;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

/// Interrupt vectors the kernel uses.
pub mod vector {
    pub const TIMER: u8 = 0x20;
    pub const RESCHEDULE: u8 = 0xf0;
    pub const TLB_SHOOTDOWN: u8 = 0xf1;
    pub const CALL: u8 = 0xf2;
    pub const SPURIOUS: u8 = 0xff;
}

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const ICR_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;

/// How registers are reached.
#[derive(Clone, Copy, Debug)]
enum Mode {
    X2Apic,
    XApic { base: NonNull<u32> },
}

// SAFETY: the MMIO base is the same physical page for every CPU (each sees its own APIC there);
// sharing the pointer between CPUs is what the hardware intends.
unsafe impl Send for Mode {}
// SAFETY: as above.
unsafe impl Sync for Mode {}

static MODE: spin::Once<Mode> = spin::Once::new();

/// Timer ticks per millisecond at divide-by-16, and TSC ticks per microsecond.
static TIMER_PER_MS: AtomicU64 = AtomicU64::new(0);
static TSC_PER_US: AtomicU64 = AtomicU64::new(0);

/// Whether the CPU has an x2APIC.
fn has_x2apic() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 21) != 0
}

/// Enables this CPU's local APIC (x2APIC mode when available), whose xAPIC registers are mapped at
/// `xapic`. The first call picks the mode.
pub fn init_cpu(xapic: VirtAddr) {
    let mode = *MODE.call_once(|| {
        if has_x2apic() {
            Mode::X2Apic
        } else {
            Mode::XApic {
                base: NonNull::new(xapic.as_mut_ptr()).expect("APIC base at null"),
            }
        }
    });
    let mut base = Msr::new(IA32_APIC_BASE);
    // SAFETY: enabling the APIC (bit 11) and, when present, x2APIC mode (bit 10) in this CPU's
    // APIC base MSR changes nothing but how the APIC is reached.
    unsafe {
        let mut v = base.read() | (1 << 11);
        if matches!(mode, Mode::X2Apic) {
            v |= 1 << 10;
        }
        base.write(v);
    }
    write(REG_ESR, 0);
    write(REG_SVR, 0x100 | vector::SPURIOUS as u32);
    write(REG_LVT_TIMER, LVT_MASKED);
}

/// Enables an application processor's local APIC in the mode the BSP chose.
pub fn init_cpu_ap() {
    assert!(MODE.get().is_some(), "the BSP's APIC first");
    // The mode (and the xAPIC base) is already set: the address is not looked at again.
    init_cpu(VirtAddr::zero());
}

/// Whether the APIC runs in x2APIC mode.
pub fn is_x2apic() -> bool {
    matches!(MODE.get(), Some(Mode::X2Apic))
}

fn read(reg: u32) -> u32 {
    match *MODE.get().expect("apic::init_cpu first") {
        // SAFETY: x2APIC registers are MSRs 0x800 + reg/16; reading them has no side effects
        // for the registers this module reads.
        Mode::X2Apic => unsafe { Msr::new(0x800 + (reg >> 4)).read() as u32 },
        Mode::XApic { base } => {
            // SAFETY: `base` maps the 4 KiB APIC page, `reg` is a register offset inside it.
            let p = unsafe { VolatilePtr::new(base.byte_add(reg as usize)) };
            p.read()
        }
    }
}

fn write(reg: u32, value: u32) {
    match *MODE.get().expect("apic::init_cpu first") {
        // SAFETY: as in `read`; the callers write valid register values.
        Mode::X2Apic => unsafe { Msr::new(0x800 + (reg >> 4)).write(value as u64) },
        Mode::XApic { base } => {
            // SAFETY: as in `read`.
            let p = unsafe { VolatilePtr::new(base.byte_add(reg as usize)) };
            p.write(value);
        }
    }
}

/// This CPU's APIC id.
pub fn id() -> u32 {
    match MODE.get() {
        Some(Mode::X2Apic) => read(REG_ID),
        Some(Mode::XApic { .. }) => read(REG_ID) >> 24,
        None => core::arch::x86_64::__cpuid(1).ebx >> 24,
    }
}

/// Acknowledges the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}

fn send(dest: u32, low: u32) {
    match *MODE.get().expect("apic::init_cpu first") {
        Mode::X2Apic => {
            // SAFETY: the x2APIC ICR (MSR 0x830) takes the destination in the high half.
            unsafe { Msr::new(0x830).write(((dest as u64) << 32) | low as u64) };
        }
        // Two register writes: an interrupt between them that sends an IPI of its own would
        // redirect ours.
        Mode::XApic { .. } => x86_64::instructions::interrupts::without_interrupts(|| {
            write(REG_ICR_HIGH, dest << 24);
            write(REG_ICR_LOW, low);
            while read(REG_ICR_LOW) & ICR_PENDING != 0 {
                core::hint::spin_loop();
            }
        }),
    }
}

/// Sends interrupt `vector` to the CPU with APIC id `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    send(dest, vector as u32);
}

/// Sends interrupt `vector` to every CPU but this one.
pub fn send_ipi_all_but_self(vector: u8) {
    send(0, ICR_ALL_BUT_SELF | vector as u32);
}

/// INIT alone: the CPU stops whatever it runs and waits for a STARTUP IPI.
pub fn send_init(dest: u32) {
    send(dest, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// INIT, then two STARTUP IPIs at `page` (the trampoline's physical page number, < 0x100).
pub fn start_ap(dest: u32, page: u8) {
    send(dest, ICR_INIT | ICR_LEVEL_ASSERT);
    delay_us(10_000);
    for _ in 0..2 {
        send(dest, ICR_STARTUP | ICR_LEVEL_ASSERT | page as u32);
        delay_us(200);
    }
}

/// Measures the APIC timer and the TSC against the PIT's 1.193182 MHz clock. Returns (APIC
/// timer ticks per ms at divide-by-16, TSC ticks per us).
///
/// Each of several 10 ms windows can only come out too long (the CPU noticed the PIT's terminal
/// count late, e.g. a virtual CPU that was descheduled), never too short, so the smallest
/// measurement is the best one.
pub fn calibrate() -> (u64, u64) {
    const WINDOWS: usize = 5;
    let (mut per_ms, mut per_us) = (u64::MAX, u64::MAX);
    for _ in 0..WINDOWS {
        let (t, c) = calibrate_window();
        per_ms = per_ms.min(t);
        per_us = per_us.min(c);
    }
    TIMER_PER_MS.store(per_ms, Ordering::Relaxed);
    TSC_PER_US.store(per_us, Ordering::Relaxed);
    (per_ms, per_us)
}

fn calibrate_window() -> (u64, u64) {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    let mut gate = Port::<u8>::new(0x61);
    let mut cmd = Port::<u8>::new(0x43);
    let mut ch2 = Port::<u8>::new(0x42);
    write(REG_TIMER_DIVIDE, 0b0011);
    // SAFETY: PIT channel 2 and the speaker gate are ours; the speaker stays off (bit 1 clear).
    unsafe {
        let g = gate.read();
        gate.write((g & !0b10) | 0b1);
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count)
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
    }
    write(REG_TIMER_INIT, u32::MAX);
    let tsc0 = rdtsc();
    // SAFETY: reading the gate port has no side effects; bit 5 is channel 2's output.
    while unsafe { gate.read() } & 0x20 == 0 {
        core::hint::spin_loop();
    }
    let tsc1 = rdtsc();
    let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INIT, 0);
    (
        (elapsed as u64 / MS).max(1),
        ((tsc1 - tsc0) / (MS * 1000)).max(1),
    )
}

/// Starts this CPU's periodic timer at `hz` interrupts per second on [`vector::TIMER`].
pub fn start_timer(hz: u64) {
    let per_ms = TIMER_PER_MS.load(Ordering::Relaxed);
    assert!(per_ms > 0, "apic::calibrate first");
    write(REG_TIMER_DIVIDE, 0b0011);
    write(REG_LVT_TIMER, LVT_PERIODIC | vector::TIMER as u32);
    write(REG_TIMER_INIT, ((per_ms * 1000) / hz).max(1) as u32);
}

/// Timer frequency (Hz, at divide-by-16) measured by `calibrate`.
pub fn timer_hz() -> u64 {
    TIMER_PER_MS.load(Ordering::Relaxed) * 1000
}

/// The time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds since boot, from the TSC (0 before calibration).
pub fn now_ns() -> u64 {
    let per_us = TSC_PER_US.load(Ordering::Relaxed);
    (rdtsc() as u128 * 1000)
        .checked_div(per_us as u128)
        .unwrap_or(0) as u64
}

/// TSC frequency in MHz.
pub fn tsc_mhz() -> u64 {
    TSC_PER_US.load(Ordering::Relaxed)
}

/// Busy-waits `us` microseconds (TSC after calibration, PIT before).
pub fn delay_us(us: u64) {
    let per_us = TSC_PER_US.load(Ordering::Relaxed);
    if per_us != 0 {
        let end = rdtsc() + us * per_us;
        while rdtsc() < end {
            core::hint::spin_loop();
        }
        return;
    }
    // Before calibration: count PIT channel-2 terminal counts of at most 50 ms each.
    let mut left = us;
    while left > 0 {
        let chunk = left.min(50_000);
        let count = (1_193_182 * chunk / 1_000_000).max(1) as u16;
        let mut gate = Port::<u8>::new(0x61);
        // SAFETY: as in `calibrate`.
        unsafe {
            let g = gate.read();
            gate.write(g & !0b11);
            Port::<u8>::new(0x43).write(0b1011_0000);
            Port::<u8>::new(0x42).write(count as u8);
            Port::<u8>::new(0x42).write((count >> 8) as u8);
            let g = gate.read();
            gate.write((g & !0b10) | 0b1);
            while gate.read() & 0x20 == 0 {
                core::hint::spin_loop();
            }
        }
        left -= chunk;
    }
}
