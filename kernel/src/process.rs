//! Processes: an address space and the threads that run in it, and the page-fault path from the
//! CPU's #PF into `mm::fault::handle_mm_fault`.
//!
//! Threads of a process run in ring 0 for now, touching user-half addresses; the fault decoding
//! already carries the user bit of the error code for ring-3 threads. A fault `mm` cannot
//! resolve (no VMA, access the VMA forbids, out of memory) ends the faulting thread with one log
//! line; the kernel carries on. Nothing unwinds: the thread's entry closure, and so what it
//! captured (say an `Arc<Process>`), is dropped by `sched::exit`, but values the thread made on
//! its own stack are not.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;

use mm::AddressSpace;
use mm::fault::{Access, FaultResult, handle_mm_fault};
use mm::frame::FrameAllocError;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts;
use x86_64::structures::idt::PageFaultErrorCode;

use crate::arch::idt::PageFaultHook;
use crate::arch::trap::{RFLAGS_AC, RFLAGS_IF, TrapFrame};

use crate::memory::stack::StackError;
use crate::platform::{Mm, memory};
use crate::sched::{self, JoinHandle};

/// Exit code of a thread killed by a fault it could not survive (like SIGSEGV's 128 + 11).
pub const EXIT_SEGV: i64 = -11;
/// Exit code of a thread killed because a fault found no memory.
pub const EXIT_OOM: i64 = -12;

/// An address space and its threads.
pub struct Process {
    name: String,
    mm: Arc<Mm>,
}

impl Process {
    /// A process with an empty user half.
    pub fn new(name: impl Into<String>) -> Result<Arc<Process>, FrameAllocError> {
        let mm = AddressSpace::with_kernel_half(memory(), &crate::memory::kernel_half())?;
        Ok(Arc::new(Process {
            name: name.into(),
            mm: Arc::new(mm),
        }))
    }

    /// A process around the address space `mm` (a `fork`'s copy).
    pub fn with_mm(name: impl Into<String>, mm: Mm) -> Arc<Process> {
        Arc::new(Process {
            name: name.into(),
            mm: Arc::new(mm),
        })
    }

    /// Its address space (for `mmap`, `munmap`, `mprotect`).
    pub fn mm(&self) -> &Arc<Mm> {
        &self.mm
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a thread in this process (as [`sched::spawn`]: the thread owns `f` until it ends,
    /// also when a fault kills it).
    pub fn spawn<F>(&self, name: impl Into<String>, f: F) -> Result<JoinHandle, StackError>
    where
        F: FnMut() -> i64 + Send + 'static,
    {
        sched::start(
            name.into(),
            sched::ALL_CPUS,
            Some(self.mm.clone()),
            None,
            Box::new(f),
        )
    }

    /// Starts a thread in this process that runs only on `cpu`.
    pub fn spawn_on<F>(
        &self,
        cpu: usize,
        name: impl Into<String>,
        f: F,
    ) -> Result<JoinHandle, StackError>
    where
        F: FnMut() -> i64 + Send + 'static,
    {
        sched::start(
            name.into(),
            sched::only_cpu(cpu),
            Some(self.mm.clone()),
            None,
            Box::new(f),
        )
    }
}

/// Routes page faults on user-half addresses to `mm`, and ring-3 entries to the user layer.
pub fn init() {
    install_fault_hook();
}

/// Ends the process of a ring-3 fault `mm` could not resolve (the user layer's `segv`, above
/// this one, installs it): never returns.
pub type UserSegv = fn(frame: &TrapFrame, addr: u64, why: &str, access: Access) -> !;

static USER_SEGV: spin::Once<UserSegv> = spin::Once::new();

/// Installs what ends a process on a ring-3 fault (once).
pub fn set_user_segv(f: UserSegv) {
    USER_SEGV.call_once(|| f);
}

/// A ring-3 fault that cannot be resolved: the user layer ends the process. Ring-3 code runs
/// only once that layer is installed.
fn user_segv(frame: &TrapFrame, addr: u64, why: &str, access: Access) -> ! {
    let segv = USER_SEGV
        .get()
        .expect("ring-3 code runs only once the user layer is installed");
    segv(frame, addr, why, access)
}

/// Routes page faults on user-half addresses to `mm`.
pub fn install_fault_hook() {
    static HOOK: PageFaultHook = PageFaultHook(page_fault);
    crate::arch::idt::set_page_fault_hook(Some(&HOOK));
}

/// Faults the current thread's address space resolves; everything else is the kernel's bug
/// (`false`: the #PF handler panics with a dump).
fn page_fault(addr: VirtAddr, error: PageFaultErrorCode, frame: &mut TrapFrame) -> bool {
    handle_user_fault(addr, error, frame, |mm, access| {
        // The fault may sleep on mmap_lock or wait for a shootdown: run it with interrupts on,
        // as the faulting code had them (an interrupt gate turned them off).
        interrupts::enable();
        let result = handle_mm_fault(mm, addr.as_u64(), access);
        interrupts::disable();
        result
    })
}

/// The part of a #PF hook common to every resolver: checks that the fault is a user-half fault
/// of a thread with an address space, in a context that may sleep, calls `resolve` (interrupts
/// off) and carries out its verdict. A fault it cannot resolve ends the process (from ring 3),
/// fails the user copy that caused it (the kernel's user-copy helpers: `EFAULT`), or ends the
/// thread (a kernel thread working on a process's memory), each with one log line. Returns
/// `false` for a fault that is the kernel's bug.
pub(crate) fn handle_user_fault(
    addr: VirtAddr,
    error: PageFaultErrorCode,
    frame: &mut TrapFrame,
    resolve: impl FnOnce(&Mm, Access) -> FaultResult,
) -> bool {
    let access = Access::from_error_code(error.bits());
    if addr.as_u64() >= mm::pgtable::USER_END {
        if frame.from_user() {
            user_segv(frame, addr.as_u64(), "kernel address", access);
        }
        return false;
    }
    if !frame.from_user()
        && frame.rflags & RFLAGS_AC == 0
        && crate::arch::trap::SMAP.load(core::sync::atomic::Ordering::Relaxed)
    {
        // Kernel code touched user memory with user access closed (SMAP): outside the
        // user-copy helpers, and outside a kernel thread that works on a process's memory. A
        // kernel bug, whatever `mm` would say about the page (it may be present and allowed,
        // and retrying would fault forever): the #PF handler panics.
        return false;
    }
    if crate::arch::percpu::preempt_count() != 0 || frame.rflags & RFLAGS_IF == 0 {
        // A user-memory fault with preemption or interrupts off (inside a spinlock or RCU read
        // section) cannot sleep to resolve: a user copy that may not fault fails with EFAULT;
        // anything else is a kernel bug, reported by the #PF handler's panic.
        return crate::arch::uaccess::fixup(frame);
    }
    let outcome = sched::with_current(|t| {
        let result = resolve(t.mm()?, access);
        if matches!(result, FaultResult::Resolved) {
            // Linux's `mm_account_fault`: every fault resolved without I/O is a minor fault.
            t.count_fault();
        }
        Some((result, t.id()))
    });
    let Some((result, tid)) = outcome else {
        // A kernel thread touched the user half: a kernel bug.
        return false;
    };
    if !matches!(result, FaultResult::Resolved) {
        if frame.from_user() {
            let why = match result {
                FaultResult::Segv { reason, .. } => reason_text(reason),
                _ => "out of memory",
            };
            user_segv(frame, addr.as_u64(), why, access);
        }
        if crate::arch::uaccess::fixup(frame) {
            return true;
        }
    }
    match result {
        FaultResult::Resolved => true,
        FaultResult::Segv { addr, reason } => {
            crate::warn!(
                "thread {tid}: segmentation fault at {:#x} ({reason:?}, {access:?}), rip {:#x}; thread ended",
                addr,
                frame.rip
            );
            interrupts::enable();
            sched::exit(EXIT_SEGV)
        }
        FaultResult::Oom => {
            crate::warn!(
                "thread {tid}: out of memory at {:#x}; thread ended",
                addr.as_u64()
            );
            interrupts::enable();
            sched::exit(EXIT_OOM)
        }
    }
}

/// Why `mm` refused a fault, as the kill line says it.
fn reason_text(reason: mm::fault::SegvReason) -> &'static str {
    use mm::fault::SegvReason;
    match reason {
        SegvReason::NoVma => "no mapping",
        SegvReason::AccessDenied => "access not permitted",
        SegvReason::NotUserAddress => "kernel address",
    }
}
