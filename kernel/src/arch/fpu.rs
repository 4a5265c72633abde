//! The x87/SSE/AVX register state of user threads. The kernel itself never touches those
//! registers (its target is soft-float), so a user thread's state stays in the CPU while the
//! kernel runs for it; it is saved when the CPU switches away from a user thread and restored when
//! it switches to one (eagerly: no lazy #NM tricks).
//!
//! With `XSAVE` the area holds every component the CPU supports among x87, SSE and AVX (`XCR0`);
//! without it, the 512-byte `FXSAVE` image.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// `XSAVE` is used (else `FXSAVE`).
static XSAVE: AtomicBool = AtomicBool::new(false);
/// The state components saved (`XCR0`).
static XCR0: AtomicUsize = AtomicUsize::new(0);
/// Bytes of a save area.
static AREA_SIZE: AtomicUsize = AtomicUsize::new(512);

/// x87, SSE and AVX state components.
const X87: u64 = 1;
const SSE: u64 = 2;
const AVX: u64 = 4;

/// Sets up this CPU for user floating point: no emulation, native errors, `FXSAVE` and SSE
/// exceptions enabled, and `XSAVE` with x87|SSE|AVX where the CPU has it. Every CPU runs this
/// (the bootstrap CPU first, which sizes the save area).
pub fn init_cpu() {
    let mut cr0 = Cr0::read();
    cr0.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
    cr0.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR);
    // SAFETY: these bits only select native x87/SSE behaviour, which nothing in the kernel uses.
    unsafe { Cr0::write(cr0) };
    let leaf1 = core::arch::x86_64::__cpuid(1);
    let has_xsave = leaf1.ecx & (1 << 26) != 0;
    let mut cr4 = Cr4::read();
    cr4.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
    if has_xsave {
        cr4.insert(Cr4Flags::OSXSAVE);
    }
    // SAFETY: FXSR and SSE exist on every x86-64 CPU; OSXSAVE only where CPUID says XSAVE.
    unsafe { Cr4::write(cr4) };
    if !has_xsave {
        return;
    }
    let supported = core::arch::x86_64::__cpuid_count(0xd, 0).eax as u64;
    let xcr0 = supported & (X87 | SSE | AVX);
    // SAFETY: XCR0 gets only components the CPU supports, with x87 (bit 0) always set.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32,
                         options(nomem, nostack))
    };
    // With XCR0 set, EBX is the area size those components need.
    let size = core::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
    XCR0.store(xcr0 as usize, Ordering::Relaxed);
    AREA_SIZE.store(size.max(512 + 64), Ordering::Relaxed);
    XSAVE.store(true, Ordering::Relaxed);
}

/// One thread's saved registers (64-byte aligned, as `XSAVE` requires).
pub struct FpuState {
    area: *mut u8,
    size: usize,
}

// SAFETY: the area is owned memory; its users (`save`, `restore`) run on one CPU at a time, which
// the scheduler's handoff orders (the thread is on at most one CPU).
unsafe impl Send for FpuState {}
// SAFETY: as above: no two CPUs use one thread's state at once.
unsafe impl Sync for FpuState {}

impl FpuState {
    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).expect("FPU area layout")
    }

    /// The state a new program starts with: every register in its initial state, default
    /// control words (x87 FCW 0x37f, MXCSR 0x1f80: all exceptions masked).
    pub fn new() -> Option<FpuState> {
        let size = AREA_SIZE.load(Ordering::Relaxed);
        // SAFETY: the layout has a non-zero size.
        let area = unsafe { alloc_zeroed(Self::layout(size)) };
        if area.is_null() {
            return None;
        }
        // A zero XSAVE header (offset 512) means every component is in its initial state, which
        // XRSTOR then loads; MXCSR comes from offset 24 either way.
        // SAFETY: the area is >= 512 bytes: FCW at 0, MXCSR at 24 (FXSAVE's layout, XSAVE's too).
        unsafe {
            (area as *mut u16).write(0x37f);
            (area.add(24) as *mut u32).write(0x1f80);
        }
        Some(FpuState { area, size })
    }

    /// The calling user thread's registers as they are now (a new thread starts with its
    /// creator's, as on Linux). Whenever a user thread's code runs, the CPU holds its registers.
    pub fn snapshot() -> Option<FpuState> {
        let s = FpuState::new()?;
        // SAFETY: the area is fresh and ours; the CPU holds the calling thread's registers.
        unsafe { s.save() };
        Some(s)
    }

    /// Saves this CPU's registers here.
    ///
    /// # Safety
    /// The calling CPU runs the thread this state belongs to (its registers are the thread's),
    /// and no other CPU uses this state.
    pub unsafe fn save(&self) {
        let mask = XCR0.load(Ordering::Relaxed) as u64;
        // SAFETY: the area is 64-byte aligned and large enough for the components in XCR0 (or
        // 512 bytes for FXSAVE); the caller rules out concurrent use.
        unsafe {
            if XSAVE.load(Ordering::Relaxed) {
                core::arch::asm!("xsave64 [{}]", in(reg) self.area, in("eax") mask as u32,
                                 in("edx") (mask >> 32) as u32, options(nostack));
            } else {
                core::arch::asm!("fxsave64 [{}]", in(reg) self.area, options(nostack));
            }
        }
    }

    /// Loads this state into the CPU's registers.
    ///
    /// # Safety
    /// The calling CPU is about to run the thread this state belongs to, and no other CPU uses
    /// this state.
    pub unsafe fn restore(&self) {
        let mask = XCR0.load(Ordering::Relaxed) as u64;
        // SAFETY: as in `save`; the area holds a valid image (initial or saved).
        unsafe {
            if XSAVE.load(Ordering::Relaxed) {
                core::arch::asm!("xrstor64 [{}]", in(reg) self.area, in("eax") mask as u32,
                                 in("edx") (mask >> 32) as u32, options(nostack));
            } else {
                core::arch::asm!("fxrstor64 [{}]", in(reg) self.area, options(nostack));
            }
        }
    }
}

impl Drop for FpuState {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`/`try_clone` with this layout.
        unsafe { dealloc(self.area, Self::layout(self.size)) };
    }
}
