//! Per-CPU state, reached through the GS base: `gs:[0]` holds the area's own address and
//! `gs:[8]` the CPU number, so `cpu_id()` is one load.
//!
//! Each CPU's area is written only by that CPU, except for fields that say otherwise.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

use crate::sched::CpuSched;

/// CPUs the kernel supports (`mm` keeps per-CPU state for as many).
pub const MAX_CPUS: usize = mm::platform::MAX_CPUS;

/// One CPU's area.
///
/// # Invariants
/// `self_addr` is the area's own address and `id` its index in [`PERCPU`] once the CPU has run
/// [`init_cpu`]; they never change after that.
#[repr(C, align(64))]
pub struct PerCpu {
    self_addr: AtomicUsize,
    id: AtomicUsize,
    /// This CPU's local APIC id.
    pub apic_id: AtomicU32,
    /// Set once the CPU runs kernel code with its own tables loaded.
    pub online: AtomicBool,
    /// Nesting depth of `preempt_disable`; the timer preempts only at zero.
    pub preempt_count: AtomicU32,
    /// Where preemption was last disabled from zero (for "scheduling while atomic" reports).
    pub preempt_owner: core::sync::atomic::AtomicPtr<core::panic::Location<'static>>,
    /// Timer interrupts taken.
    pub ticks: AtomicU64,
    /// Interrupts of any kind taken (timer, IPIs).
    pub interrupts: AtomicU64,
    /// `CALL` IPIs received (the IPI test counts them).
    pub ipi_calls: AtomicU64,
    /// The scheduler's state for this CPU.
    pub sched: CpuSched,
}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            self_addr: AtomicUsize::new(0),
            id: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            preempt_count: AtomicU32::new(0),
            preempt_owner: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
            ticks: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            ipi_calls: AtomicU64::new(0),
            sched: CpuSched::new(),
        }
    }

    /// This area's CPU number.
    pub fn id(&self) -> usize {
        self.id.load(Ordering::Relaxed)
    }
}

/// Every CPU's area, indexed by CPU number (not APIC id).
pub static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

static READY: AtomicBool = AtomicBool::new(false);

/// Makes `PERCPU[id]` the calling CPU's area.
pub fn init_cpu(id: usize, apic_id: u32) {
    let area = &PERCPU[id];
    area.self_addr.store(area as *const PerCpu as usize, Ordering::Relaxed);
    area.id.store(id, Ordering::Relaxed);
    area.apic_id.store(apic_id, Ordering::Relaxed);
    GsBase::write(VirtAddr::from_ptr(area));
    READY.store(true, Ordering::Release);
}

/// The calling CPU's number (0 before per-CPU areas exist).
#[inline]
pub fn cpu_id() -> usize {
    if !READY.load(Ordering::Relaxed) {
        return 0;
    }
    let id: usize;
    // SAFETY: once READY is set, every CPU that runs kernel code has loaded its GS base with
    // `init_cpu` (APs do so before anything else), and `id` sits at offset 8 (`repr(C)`).
    unsafe { core::arch::asm!("mov {}, gs:[8]", out(reg) id, options(nostack, readonly, preserves_flags)) };
    id
}

/// The calling CPU's area.
#[inline]
pub fn this_cpu() -> &'static PerCpu {
    &PERCPU[cpu_id()]
}

/// The number of CPUs online.
pub fn online_count() -> usize {
    PERCPU.iter().filter(|c| c.online.load(Ordering::Acquire)).count()
}

/// Keeps the current thread on this CPU: the timer does not preempt it until the matching
/// [`preempt_enable`]. Nests.
///
/// One `gs`-relative instruction, so a preemption between finding this CPU's area and updating
/// it cannot make the thread count on another CPU's counter.
#[inline]
#[track_caller]
pub fn preempt_disable() {
    if READY.load(Ordering::Relaxed) {
        if this_cpu().preempt_count.load(Ordering::Relaxed) == 0 {
            let here: *const core::panic::Location<'static> = core::panic::Location::caller();
            this_cpu().preempt_owner.store(here as *mut _, Ordering::Relaxed);
        }
        // SAFETY: GS points at this CPU's `PerCpu` (READY), and the offset is that of the u32
        // `preempt_count`, which only this CPU writes.
        unsafe { core::arch::asm!("inc dword ptr gs:[{o}]", o = const PREEMPT_OFFSET, options(nostack)) };
    }
}

/// Undoes one [`preempt_disable`].
#[inline]
pub fn preempt_enable() {
    if READY.load(Ordering::Relaxed) {
        debug_assert!(this_cpu().preempt_count.load(Ordering::Relaxed) > 0, "unbalanced preempt_enable");
        // SAFETY: as in `preempt_disable`.
        unsafe { core::arch::asm!("dec dword ptr gs:[{o}]", o = const PREEMPT_OFFSET, options(nostack)) };
    }
}

/// Preemption disabled for as long as it lives: for spinlocks that preemption-disabled code may
/// also wait for (a preempted holder would leave such a waiter on its CPU spinning for good).
#[must_use]
pub struct NoPreempt(());

impl NoPreempt {
    /// Disables preemption until the value is dropped.
    pub fn new() -> Self {
        preempt_disable();
        NoPreempt(())
    }
}

impl Default for NoPreempt {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoPreempt {
    fn drop(&mut self) {
        preempt_enable();
    }
}

const PREEMPT_OFFSET: usize = core::mem::offset_of!(PerCpu, preempt_count);
const _: () = assert!(core::mem::offset_of!(PerCpu, id) == 8);
