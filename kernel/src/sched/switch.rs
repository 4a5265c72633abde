//! The context switch: callee-saved registers and RFLAGS on the old stack, stack pointer swap,
//! pop them off the new one. Everything else is caller-saved, so the compiler has already saved
//! it. RFLAGS is switched for its AC bit: a kernel thread working on a process's memory runs with
//! user access open (SMAP's AC set), and keeps it across switches; IF is clear at every switch.

/// Saves the current context's stack pointer to `*save` and resumes the context whose stack
/// pointer is `next`.
///
/// # Safety
/// `next` must be a stack pointer saved by this function (or built by `initial_stack`) whose
/// stack is still alive and is not running anywhere; interrupts must be off.
#[unsafe(naked)]
pub unsafe extern "C" fn switch_stacks(save: *mut u64, next: u64) {
    core::arch::naked_asm!(
        "pushfq",
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov [rdi], rsp",
        "mov rsp, rsi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "popfq",
        "ret",
    )
}

/// Prepares a fresh stack whose first `switch_stacks` into it "returns" to `entry`, with the
/// stack aligned as at a function's entry and RFLAGS clear (interrupts off, user access closed).
/// Returns the stack pointer to switch to.
///
/// # Safety
/// `top` must be the 16-byte-aligned top of a mapped stack of at least 72 bytes that nothing
/// uses.
pub unsafe fn initial_stack(top: u64, entry: extern "C" fn() -> !) -> u64 {
    debug_assert!(top.is_multiple_of(16));
    // r15, r14, r13, r12, rbx, rbp, RFLAGS (only the always-one bit), the return address, and a
    // pad word so that `entry` starts with the stack as a `call` leaves it.
    let frame: [u64; 9] = [0, 0, 0, 0, 0, 0, 0x2, entry as *const () as u64, 0];
    let rsp = top - 8 * frame.len() as u64;
    // SAFETY: the caller guarantees the 72 bytes below `top` are ours.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), rsp as *mut u64, frame.len()) };
    rsp
}
