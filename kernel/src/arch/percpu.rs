//! Per-CPU state, reached through the GS base: `gs:[0]` holds the area's own address and
//! `gs:[8]` the CPU number, so `cpu_id()` is one load.
//!
//! Each CPU's area is written only by that CPU, except for fields that say otherwise.
//!
//! # Preemption count
//! `preempt_count` is per CPU, not per thread, as on Linux x86. That is sound because a CPU
//! switches threads only at count zero: the timer and the reschedule IPI preempt only then, and
//! `sched::schedule` panics ("scheduling while atomic") when a thread gives up the CPU with a
//! nonzero count. So while a thread runs, its CPU's count is that thread's own nesting depth,
//! and no thread carries a count across a switch or a migration. Updates are single
//! `gs`-relative instructions: a thread preempted before one lands on another CPU and updates
//! that CPU's count, which is then its own.

use core::panic::Location;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

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
    /// Nesting depth of `preempt_disable`; the timer preempts only at zero. Read it with
    /// [`preempt_count`], which is exact for the calling thread.
    pub preempt_count: AtomicU32,
    /// This CPU should reschedule at its next preemption point (`preempt_enable` to zero with
    /// interrupts on, or a tick): set by a tick or reschedule IPI that found preemption
    /// disabled and by wake-ups that queue a thread here; cleared by `sched::schedule`.
    /// Written by any CPU.
    pub need_resched: AtomicBool,
    /// Where preemption was last raised from zero (for "scheduling while atomic" reports).
    owner_at: AtomicPtr<Location<'static>>,
    /// ... or, when it was raised through a hook that cannot know its caller, the return
    /// addresses above the hook.
    owner_code: [AtomicU64; OWNER_FRAMES],
    /// Timer interrupts taken.
    pub ticks: AtomicU64,
    /// Interrupts of any kind taken (timer, IPIs).
    pub interrupts: AtomicU64,
    /// `CALL` IPIs received (the IPI test counts them).
    pub ipi_calls: AtomicU64,
    /// The top of the running user thread's kernel stack: where `SYSCALL` entry switches the
    /// stack to (the TSS's `rsp0` holds the same for interrupts). Written at each switch to a
    /// user thread, read by this CPU's entry code.
    pub kernel_rsp: AtomicU64,
    /// The user stack pointer while `SYSCALL` entry builds the frame (scratch, this CPU only).
    pub user_rsp: AtomicU64,
    /// This CPU's task-state segment (to update `rsp0`), once its tables are loaded.
    pub tss: AtomicPtr<x86_64::structures::tss::TaskStateSegment>,
}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            self_addr: AtomicUsize::new(0),
            id: AtomicUsize::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            preempt_count: AtomicU32::new(0),
            need_resched: AtomicBool::new(false),
            owner_at: AtomicPtr::new(core::ptr::null_mut()),
            owner_code: [const { AtomicU64::new(0) }; OWNER_FRAMES],
            ticks: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            ipi_calls: AtomicU64::new(0),
            kernel_rsp: AtomicU64::new(0),
            user_rsp: AtomicU64::new(0),
            tss: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// This area's CPU number.
    pub fn id(&self) -> usize {
        self.id.load(Ordering::Relaxed)
    }

    /// Where preemption was last raised from zero on this CPU. Meaningful while the count is
    /// nonzero, and read by this CPU (a report about the running thread).
    pub fn preempt_owner(&self) -> PreemptOwner {
        let at = self.owner_at.load(Ordering::Relaxed);
        // SAFETY: only `set_owner` stores here, and only `&'static Location`s or null.
        if let Some(at) = unsafe { at.as_ref() } {
            return PreemptOwner::At(at);
        }
        let code: [u64; OWNER_FRAMES] =
            core::array::from_fn(|i| self.owner_code[i].load(Ordering::Relaxed));
        if code[0] == 0 {
            PreemptOwner::Unknown
        } else {
            PreemptOwner::Code(code)
        }
    }

    fn set_owner(&self, at: Option<&'static Location<'static>>, code: [u64; OWNER_FRAMES]) {
        let at = at.map_or(core::ptr::null_mut(), |l| {
            l as *const Location<'static> as *mut _
        });
        self.owner_at.store(at, Ordering::Relaxed);
        for (slot, ip) in self.owner_code.iter().zip(code) {
            slot.store(ip, Ordering::Relaxed);
        }
    }
}

/// Return addresses kept for a preemption owner recorded from code addresses.
pub const OWNER_FRAMES: usize = 3;

/// Where preemption was raised from zero, for "scheduling while atomic" reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreemptOwner {
    /// Not recorded (preemption never disabled on this CPU).
    Unknown,
    /// The source location of the `preempt_disable` (or `NoPreempt::new`) call.
    At(&'static Location<'static>),
    /// Return addresses, innermost first, above the preemption hook `mm`'s spinlocks call
    /// (a plain `fn()` cannot carry its caller's location); 0 where the frame chain ended.
    Code([u64; OWNER_FRAMES]),
}

impl core::fmt::Display for PreemptOwner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PreemptOwner::Unknown => write!(f, "an unknown place"),
            PreemptOwner::At(at) => write!(f, "{at}"),
            PreemptOwner::Code(code) => {
                write!(f, "an mm spinlock, called from (addr2line -e ELF)")?;
                for ip in code.iter().filter(|&&ip| ip != 0) {
                    write!(f, " {:#x}", ip.wrapping_sub(crate::KERNEL_BASE))?;
                }
                Ok(())
            }
        }
    }
}

/// Every CPU's area, indexed by CPU number (not APIC id).
pub static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

static READY: AtomicBool = AtomicBool::new(false);

/// Makes `PERCPU[id]` the calling CPU's area.
pub fn init_cpu(id: usize, apic_id: u32) {
    let area = &PERCPU[id];
    area.self_addr
        .store(area as *const PerCpu as usize, Ordering::Relaxed);
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
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) id, options(nostack, readonly, preserves_flags))
    };
    id
}

/// The calling CPU's area.
#[inline]
pub fn this_cpu() -> &'static PerCpu {
    &PERCPU[cpu_id()]
}

/// The number of CPUs online.
pub fn online_count() -> usize {
    PERCPU
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}

/// The calling thread's preemption nesting depth (0 before per-CPU areas exist). Exact: one
/// `gs`-relative load, so it reads the count of the CPU the thread runs on at that instant,
/// which is the thread's own (see the module header).
#[inline]
pub fn preempt_count() -> u32 {
    if !READY.load(Ordering::Relaxed) {
        return 0;
    }
    let count: u32;
    // SAFETY: GS points at this CPU's `PerCpu` (READY), and the offset is that of the u32
    // `preempt_count`.
    unsafe {
        core::arch::asm!(
            "mov {c:e}, dword ptr gs:[{o}]",
            c = out(reg) count,
            o = const PREEMPT_OFFSET,
            options(nostack, readonly, preserves_flags)
        );
    }
    count
}

/// Adds `delta` to this CPU's count in one instruction; returns the count before.
#[inline]
fn preempt_count_add(delta: i32) -> u32 {
    let mut v = delta as u32;
    // `xadd` without `lock` is atomic with respect to interrupts on this CPU, the only other
    // writer of the count.
    // SAFETY: GS points at this CPU's `PerCpu` (callers check READY); the offset is its u32
    // `preempt_count`, which only this CPU writes.
    unsafe {
        core::arch::asm!("xadd dword ptr gs:[{o}], {v:e}", v = inout(reg) v, o = const PREEMPT_OFFSET, options(nostack))
    };
    v
}

/// Keeps the current thread on this CPU: the timer does not preempt it until the matching
/// [`preempt_enable`]. Nests. Records the caller as the owner when the count leaves zero.
#[inline]
#[track_caller]
pub fn preempt_disable() {
    if READY.load(Ordering::Relaxed) && preempt_count_add(1) == 0 {
        // From here on the thread cannot move, and code that interrupts it finds the count
        // nonzero and records nothing: `this_cpu()` is the CPU whose count went up.
        this_cpu().set_owner(Some(Location::caller()), [0; OWNER_FRAMES]);
    }
}

/// Undoes one [`preempt_disable`]. Dropping to zero with interrupts on is a preemption point:
/// a pending reschedule (`need_resched`) happens here.
#[inline]
pub fn preempt_enable() {
    if READY.load(Ordering::Relaxed) {
        let before = preempt_count_add(-1);
        assert!(before != 0, "unbalanced preempt_enable");
        if before == 1
            && this_cpu().need_resched.load(Ordering::Relaxed)
            && let Some(schedule) = PREEMPT_SCHEDULE.get()
        {
            schedule();
        }
    }
}

/// What `preempt_enable` calls when the count drops to zero with a reschedule pending: the
/// scheduler's `preempt_schedule`, installed by it (the scheduler sits above `arch`).
static PREEMPT_SCHEDULE: spin::Once<fn()> = spin::Once::new();

/// Installs the scheduler's preemption point (once).
pub fn set_preempt_schedule(f: fn()) {
    PREEMPT_SCHEDULE.call_once(|| f);
}

/// [`preempt_disable`] for `mm`'s spinlocks (`Platform::spinlock_preemption`). A hook is a plain
/// `fn()`, through which `#[track_caller]` reports the hook itself, so the owner is recorded as
/// the return addresses above this frame instead.
#[inline(never)]
pub fn preempt_disable_hook() {
    if READY.load(Ordering::Relaxed) && preempt_count_add(1) == 0 {
        this_cpu().set_owner(None, return_addresses());
    }
}

/// [`preempt_enable`] for `mm`'s spinlocks.
pub fn preempt_enable_hook() {
    preempt_enable();
}

/// The return addresses of the caller's frame and the frames above it (kernels are built with
/// frame pointers), innermost first; 0 where the chain ends.
#[inline(always)]
fn return_addresses() -> [u64; OWNER_FRAMES] {
    let mut out = [0; OWNER_FRAMES];
    let mut rbp: u64;
    // SAFETY: reads the frame-pointer register.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    let low = rbp;
    for slot in &mut out {
        // Only upwards within this stack, in the kernel half: a broken chain ends the walk.
        if rbp < low || rbp - low > 1 << 20 || !rbp.is_multiple_of(8) || rbp < 0xffff_8000_0000_0000
        {
            break;
        }
        // SAFETY: `rbp` is a saved frame of this stack (checked above): the caller's rbp, then
        // the return address.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        *slot = ret;
        if ret == 0 || next <= rbp {
            break;
        }
        rbp = next;
    }
    out
}

/// Preemption disabled for as long as it lives: for spinlocks that preemption-disabled code may
/// also wait for (a preempted holder would leave such a waiter on its CPU spinning for good).
#[must_use]
pub struct NoPreempt(());

impl NoPreempt {
    /// Disables preemption until the value is dropped.
    #[track_caller]
    pub fn new() -> Self {
        preempt_disable();
        NoPreempt(())
    }
}

impl Default for NoPreempt {
    #[track_caller]
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
/// `gs`-relative offsets the entry code uses.
pub(crate) const KERNEL_RSP_OFFSET: usize = core::mem::offset_of!(PerCpu, kernel_rsp);
pub(crate) const USER_RSP_OFFSET: usize = core::mem::offset_of!(PerCpu, user_rsp);
const _: () = assert!(core::mem::offset_of!(PerCpu, id) == 8);
