//! The `SYSCALL` entry: ring 3 calls the kernel with `syscall`, number in `rax`, arguments in
//! `rdi, rsi, rdx, r10, r8, r9`, the result back in `rax` (Linux's x86-64 convention).
//!
//! The CPU loads the kernel's CS and SS (from `STAR`), saves RIP in `rcx` and RFLAGS in `r11`,
//! and clears the RFLAGS bits `FMASK` names; it does not switch stacks. FMASK clears IF (nothing
//! may interrupt before the GS swap and the stack switch), DF, TF, AC, NT and IOPL, as Linux does.
//! The entry swaps GS, parks the user RSP in the per-CPU area, loads the user thread's kernel
//! stack top from it, and pushes a [`TrapFrame`] shaped like an interrupt's, so the thread's saved
//! user state has one layout whichever way it entered.
//!
//! The way back is `SYSRET` when the frame allows it (Linux's conditions in `do_syscall_64`): RIP
//! a canonical user address below the last page, `rcx == rip`, `r11 == rflags`, no TF or RF.
//! Otherwise (a frame the kernel changed, as `clone` or a signal return would) it is `IRET`,
//! which cannot fault in ring 0 with the user's stack the way `SYSRET` to a non-canonical RIP does
//! (CVE-2012-0217).

use x86_64::VirtAddr;
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::gdt::SegmentSelector;

use super::gdt::{KERNEL_CS, KERNEL_DS, USER_CS, USER_DS};
use super::percpu::{KERNEL_RSP_OFFSET, USER_RSP_OFFSET};
use super::trap::{RFLAGS_RF, RFLAGS_TF, SYSCALL_VECTOR, TrapFrame, pop_gprs, push_gprs};

/// The highest RIP `SYSRET` returns to: below the last user page, as Linux requires.
const SYSRET_RIP_LIMIT: u64 = (1 << 47) - 4096;

/// Programs this CPU's `SYSCALL` MSRs.
pub fn init_cpu() {
    Star::write(
        SegmentSelector(USER_CS),
        SegmentSelector(USER_DS),
        SegmentSelector(KERNEL_CS),
        SegmentSelector(KERNEL_DS),
    )
    .expect("GDT layout fits SYSCALL/SYSRET");
    LStar::write(VirtAddr::new(syscall_entry as *const () as u64));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK
            | RFlags::IOPL_HIGH
            | RFlags::IOPL_LOW,
    );
    // SAFETY: enabling SYSCALL/SYSRET only makes the instructions available; STAR, LSTAR and
    // FMASK are set above.
    unsafe { Efer::update(|f| *f |= EferFlags::SYSTEM_CALL_EXTENSIONS) };
}

#[unsafe(naked)]
unsafe extern "C" fn syscall_entry() {
    core::arch::naked_asm!(
        "swapgs",
        "mov gs:[{user_rsp}], rsp",
        "mov rsp, gs:[{kernel_rsp}]",
        // The hardware part of an interrupt frame, then the stub's two words.
        "push {user_ds}",
        "push qword ptr gs:[{user_rsp}]",
        "push r11",
        "push {user_cs}",
        "push rcx",
        "push 0",
        "push {vector}",
        push_gprs!(),
        "mov rdi, rsp",
        "call {dispatch}",
        "test al, al",
        "jz {iret}",
        pop_gprs!(),
        // Interrupts are off (the dispatcher returns with them off): nothing runs between the
        // stack switch and `sysretq` with the user's stack or GS.
        "mov rsp, [rsp + 40]",
        "swapgs",
        "sysretq",
        user_rsp = const USER_RSP_OFFSET,
        kernel_rsp = const KERNEL_RSP_OFFSET,
        user_ds = const USER_DS as u64,
        user_cs = const USER_CS as u64,
        vector = const SYSCALL_VECTOR,
        dispatch = sym syscall_dispatch,
        iret = sym super::trap::trap_return,
    )
}

/// Runs the system call the frame describes, with interrupts on, then the return-to-user work.
/// Returns whether the entry may go back with `SYSRET` (interrupts off either way).
extern "C" fn syscall_dispatch(frame: &mut TrapFrame) -> bool {
    x86_64::instructions::interrupts::enable();
    (super::idt::user_entry().syscall)(frame);
    x86_64::instructions::interrupts::disable();
    return_to_user(frame);
    frame.rcx == frame.rip
        && frame.r11 == frame.rflags
        && frame.rip < SYSRET_RIP_LIMIT
        && frame.rflags & (RFLAGS_TF | RFLAGS_RF) == 0
        && frame.cs == u64::from(USER_CS)
        && frame.ss == u64::from(USER_DS)
}

/// The last step before any return to ring 3, interrupts off.
pub(super) fn return_to_user(frame: &mut TrapFrame) {
    (super::idt::user_entry().return_to_user)(frame);
    debug_assert!(!x86_64::instructions::interrupts::are_enabled());
}
