//! The interrupt descriptor table and what each vector does.
//!
//! Every vector enters through its stub in `trap.rs`, which calls `dispatch` with the saved
//! [`TrapFrame`]. An exception in ring 3 goes to the process layer ([`UserEntry::exception`]),
//! which ends the process: it never reaches the kernel's panic path. A page fault first goes to
//! the installed [`PageFaultHook`] (the memory subsystem's fault path); only a kernel-mode fault
//! the hook declines is a kernel bug. Faults the kernel cannot explain end in a panic with a dump
//! (vector, error code, registers, CR2 for #PF).

use core::sync::atomic::{AtomicPtr, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, PageFaultErrorCode};

use super::apic::{self, vector};
use super::gdt::DOUBLE_FAULT_IST_INDEX;
use super::percpu::this_cpu;
use super::trap::{self, TrapFrame};

/// Resolves a page fault at `addr` (or ends the thread or process that caused it). Returns `true`
/// when the interrupted code can go on (the faulting instruction is retried, or the frame was
/// pointed at a fix-up).
pub struct PageFaultHook(
    pub fn(addr: VirtAddr, error: PageFaultErrorCode, frame: &mut TrapFrame) -> bool,
);

/// The installed hook, or null.
static PAGE_FAULT_HOOK: AtomicPtr<PageFaultHook> = AtomicPtr::new(core::ptr::null_mut());

/// Installs (or with `None` removes) the page-fault hook.
pub fn set_page_fault_hook(hook: Option<&'static PageFaultHook>) {
    let p = hook.map_or(core::ptr::null_mut(), |h| {
        h as *const PageFaultHook as *mut PageFaultHook
    });
    PAGE_FAULT_HOOK.store(p, Ordering::Release);
}

/// An exception that interrupted ring 3.
#[derive(Clone, Copy, Debug)]
pub struct Exception {
    pub vector: u8,
    /// The architecture's mnemonic and name, e.g. "#GP general protection".
    pub name: &'static str,
    pub error: u64,
}

/// Where ring-3 code enters the process layer (above `arch`), installed once by it.
pub struct UserEntry {
    /// A system call: arguments and result in the frame's registers (Linux's convention).
    pub syscall: fn(&mut TrapFrame),
    /// An exception in ring 3 that nothing resolves: ends the process.
    pub exception: fn(&mut TrapFrame, Exception) -> !,
    /// The last thing before any return to ring 3 (interrupts off): pending work such as the
    /// process being killed.
    pub return_to_user: fn(&mut TrapFrame),
}

static USER_ENTRY: spin::Once<&'static UserEntry> = spin::Once::new();

/// What the timer and the reschedule IPI do beyond acknowledging the interrupt: the scheduler's
/// tick and preemption, installed by it (the scheduler sits above `arch`). Before it is
/// installed they only count and acknowledge.
pub struct SchedInterrupts {
    /// The timer tick (interrupts off, the interrupt acknowledged).
    pub tick: fn(),
    /// A reschedule IPI (interrupts off, acknowledged).
    pub reschedule: fn(),
}

static SCHED_INTERRUPTS: spin::Once<&'static SchedInterrupts> = spin::Once::new();

/// Installs the scheduler's interrupt work (once).
pub fn set_sched_interrupts(s: &'static SchedInterrupts) {
    SCHED_INTERRUPTS.call_once(|| s);
}

/// Installs the process layer's entry points (once).
pub fn set_user_entry(entry: &'static UserEntry) {
    USER_ENTRY.call_once(|| entry);
}

pub(crate) fn user_entry() -> &'static UserEntry {
    USER_ENTRY
        .get()
        .expect("ring-3 code runs only once the process layer is installed")
}

static IDT: spin::Lazy<InterruptDescriptorTable> = spin::Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    for v in 0..=255u8 {
        // Vectors 9, 15, 20-28 and 31 are reserved, and the x86_64 crate has no entry to set
        // for them; they never fire.
        if matches!(v, 9 | 15 | 20..=28 | 31) {
            continue;
        }
        let addr = trap::stub(v);
        // SAFETY: each stub is an interrupt entry point that saves a `TrapFrame` and returns with
        // `iretq`, matching the vector's error-code convention (see `trap.rs`).
        let options = unsafe {
            match v {
                0..=31 => set_exception(&mut idt, v, addr),
                _ => idt[v].set_handler_addr(addr),
            }
        };
        if v == 8 {
            // SAFETY: DOUBLE_FAULT_IST_INDEX names a stack that every CPU's TSS sets up (gdt.rs).
            unsafe { options.set_stack_index(DOUBLE_FAULT_IST_INDEX) };
        }
        if v == 3 {
            // `int3` from ring 3 reaches the kernel (and ends the process) instead of raising #GP.
            options.set_privilege_level(x86_64::PrivilegeLevel::Ring3);
        }
    }
    idt
});

/// # Safety
/// `addr` is the stub for exception vector `v`.
unsafe fn set_exception(
    idt: &mut InterruptDescriptorTable,
    v: u8,
    addr: VirtAddr,
) -> &mut x86_64::structures::idt::EntryOptions {
    // SAFETY: forwarded from the caller.
    unsafe {
        match v {
            0 => idt.divide_error.set_handler_addr(addr),
            1 => idt.debug.set_handler_addr(addr),
            2 => idt.non_maskable_interrupt.set_handler_addr(addr),
            3 => idt.breakpoint.set_handler_addr(addr),
            4 => idt.overflow.set_handler_addr(addr),
            5 => idt.bound_range_exceeded.set_handler_addr(addr),
            6 => idt.invalid_opcode.set_handler_addr(addr),
            7 => idt.device_not_available.set_handler_addr(addr),
            8 => idt.double_fault.set_handler_addr(addr),
            10 => idt.invalid_tss.set_handler_addr(addr),
            11 => idt.segment_not_present.set_handler_addr(addr),
            12 => idt.stack_segment_fault.set_handler_addr(addr),
            13 => idt.general_protection_fault.set_handler_addr(addr),
            14 => idt.page_fault.set_handler_addr(addr),
            16 => idt.x87_floating_point.set_handler_addr(addr),
            17 => idt.alignment_check.set_handler_addr(addr),
            18 => idt.machine_check.set_handler_addr(addr),
            19 => idt.simd_floating_point.set_handler_addr(addr),
            29 => idt.vmm_communication_exception.set_handler_addr(addr),
            30 => idt.security_exception.set_handler_addr(addr),
            _ => unreachable!("reserved vector {v}"),
        }
    }
}

/// Loads the shared IDT on the calling CPU.
pub fn load() {
    IDT.load();
}

/// What vector `frame.vector` means. Interrupts are off.
pub(super) fn dispatch(frame: &mut TrapFrame) {
    let v = frame.vector as u8;
    match v {
        vector::TIMER => {
            count_interrupt();
            // Acknowledge first: the tick may switch to another thread, which must get further
            // ticks.
            apic::eoi();
            if let Some(s) = SCHED_INTERRUPTS.get() {
                (s.tick)();
            }
        }
        vector::RESCHEDULE => {
            count_interrupt();
            apic::eoi();
            if let Some(s) = SCHED_INTERRUPTS.get() {
                (s.reschedule)();
            }
        }
        vector::TLB_SHOOTDOWN => {
            count_interrupt();
            super::tlb::handle_shootdown_ipi();
            apic::eoi();
        }
        vector::CALL => {
            count_interrupt();
            this_cpu().ipi_calls.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
        }
        // Spurious interrupts are not acknowledged (Intel SDM 10.9).
        vector::SPURIOUS => {}
        14 => page_fault(frame),
        3 if !frame.from_user() => crate::info!("#BP breakpoint at rip={:#x}", frame.rip),
        0..=31 => exception(frame),
        _ => panic!("unexpected interrupt, vector {v}\n{}", Dump(frame)),
    }
}

fn count_interrupt() {
    this_cpu().interrupts.fetch_add(1, Ordering::Relaxed);
}

/// The mnemonic and name of exception vector `v`.
fn exception_name(v: u8) -> &'static str {
    match v {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating-point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating-point",
        29 => "#VC VMM communication",
        30 => "#SX security",
        _ => "reserved exception",
    }
}

/// An exception other than #PF: the end of a user process, or a kernel bug.
fn exception(frame: &mut TrapFrame) {
    let v = frame.vector as u8;
    let e = Exception {
        vector: v,
        name: exception_name(v),
        error: frame.error,
    };
    if frame.from_user() && v != 8 && v != 18 {
        (user_entry().exception)(frame, e)
    }
    panic!(
        "{} (vector {v}), error={:#x}\n{}",
        e.name,
        frame.error,
        Dump(frame)
    );
}

fn page_fault(frame: &mut TrapFrame) {
    let addr = Cr2::read_raw();
    let error = PageFaultErrorCode::from_bits_truncate(frame.error);
    let hook = PAGE_FAULT_HOOK.load(Ordering::Acquire);
    // SAFETY: only `set_page_fault_hook` stores here: null or a `&'static PageFaultHook`.
    if let Some(hook) = unsafe { hook.as_ref() }
        && let Ok(va) = VirtAddr::try_new(addr)
        && (hook.0)(va, error, frame)
    {
        return;
    }
    if frame.from_user() {
        // Nothing resolved it (no hook, or a non-canonical address).
        (user_entry().exception)(
            frame,
            Exception {
                vector: 14,
                name: exception_name(14),
                error: frame.error,
            },
        )
    }
    panic!(
        "#PF page fault (vector 14) at cr2={addr:#x}, error={:#x} {:?}\n{}",
        error.bits(),
        error,
        Dump(frame)
    );
}

/// The interrupted context, for panic messages.
pub struct Dump<'a>(pub &'a TrapFrame);

impl core::fmt::Display for Dump<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.0;
        writeln!(
            f,
            "  rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x}",
            s.rip, s.cs, s.rflags, s.rsp, s.ss
        )?;
        writeln!(
            f,
            "  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
            s.rax, s.rbx, s.rcx, s.rdx, s.rsi, s.rdi, s.rbp
        )?;
        write!(
            f,
            "  r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
            s.r8, s.r9, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15
        )
    }
}
