//! Entry from interrupts and exceptions: one assembly stub per vector builds a [`TrapFrame`] on
//! the stack and calls `trap_dispatch`; the way back restores it and `iretq`s.
//!
//! # Entry from ring 3
//! The CPU switches to the TSS's `rsp0` (the running user thread's kernel stack) before it pushes
//! its frame. The stub then swaps the GS base (`swapgs`) so that `gs:` reaches this CPU's area,
//! and only when the saved CS has RPL 3: an interrupt of kernel code already has the kernel's GS.
//! The way back swaps again under the same test, with interrupts off. With SMAP on, entry closes
//! user access (`clac`); the saved RFLAGS restore whatever the interrupted code had.
//!
//! # Layout
//! The stub pushes the vector number (and a 0 where the CPU pushes no error code), then the
//! general registers, so that every entry, `SYSCALL`'s included (`syscall.rs`), leaves the same
//! [`TrapFrame`] at the top of the thread's kernel stack: a user thread's saved user state is
//! always at `stack top - size_of::<TrapFrame>()`.

use core::sync::atomic::{AtomicBool, Ordering};

use super::gdt::USER_CS;

/// The registers of interrupted code, as the entry stubs save them (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector (`SYSCALL_VECTOR` for a system call).
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The `vector` of a frame built by the `SYSCALL` entry (no IDT vector has this number).
pub const SYSCALL_VECTOR: u64 = 0x100;

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);
// The stack stays 16-byte aligned at the call into Rust: the CPU aligns before its 5 words, the
// stub adds 17.
const _: () = assert!(core::mem::size_of::<TrapFrame>().is_multiple_of(16));

impl TrapFrame {
    /// The interrupted code ran in ring 3.
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }

    /// A frame that starts user code at `rip` with stack `rsp`, interrupts on.
    pub fn new_user(rip: u64, rsp: u64) -> TrapFrame {
        TrapFrame {
            rip,
            rsp,
            cs: u64::from(USER_CS),
            ss: u64::from(super::gdt::USER_DS),
            rflags: RFLAGS_IF | RFLAGS_RESERVED,
            ..TrapFrame::default()
        }
    }
}

/// RFLAGS bits the entry and exit code care about.
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_TF: u64 = 1 << 8;
pub const RFLAGS_RF: u64 = 1 << 16;
pub const RFLAGS_AC: u64 = 1 << 18;
/// Bit 1 of RFLAGS always reads 1.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// SMAP is on: the entry code closes user access, the user-copy helpers open it.
pub static SMAP: AtomicBool = AtomicBool::new(false);

/// Saves the general registers below the words already on the stack, in [`TrapFrame`]'s order
/// (`r15` lowest). One sequence for every entry, so the layout cannot drift between them.
macro_rules! push_gprs {
    () => {
        "push rax\npush rbx\npush rcx\npush rdx\npush rsi\npush rdi\npush rbp\npush r8\n\
         push r9\npush r10\npush r11\npush r12\npush r13\npush r14\npush r15"
    };
}
pub(super) use push_gprs;

/// Restores what [`push_gprs`] saved.
macro_rules! pop_gprs {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop r11\npop r10\npop r9\npop r8\npop rbp\n\
         pop rdi\npop rsi\npop rdx\npop rcx\npop rbx\npop rax"
    };
}
pub(super) use pop_gprs;

/// Every stub is 16 bytes apart, the first at `trap_stubs`: vector `v`'s is at `+ 16 * v`. The
/// vectors whose exceptions push an error code (8, 10-14, 17, 21, 29, 30) get no `push 0`.
macro_rules! stubs {
    ($($v:literal)*) => {
        core::arch::global_asm!(
            ".pushsection .text.trap_stubs, \"ax\"",
            ".balign 16",
            ".global trap_stubs",
            "trap_stubs:",
            $(
                ".balign 16",
                concat!(".if ", $v, " == 8 || ", $v, " == 10 || ", $v, " == 11 || ", $v, " == 12 || ",
                        $v, " == 13 || ", $v, " == 14 || ", $v, " == 17 || ", $v, " == 21 || ",
                        $v, " == 29 || ", $v, " == 30"),
                ".else",
                "push 0",
                ".endif",
                concat!("push ", $v),
                "jmp {common}",
            )*
            ".popsection",
            common = sym trap_common,
        );
    };
}

stubs!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
       32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
       64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95
       96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120
       121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144
       145 146 147 148 149 150 151 152 153 154 155 156 157 158 159 160 161 162 163 164 165 166 167 168
       169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191 192
       193 194 195 196 197 198 199 200 201 202 203 204 205 206 207 208 209 210 211 212 213 214 215 216
       217 218 219 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240
       241 242 243 244 245 246 247 248 249 250 251 252 253 254 255);

unsafe extern "C" {
    static trap_stubs: u8;
}

/// The entry stub of vector `v`, for the IDT.
pub fn stub(v: u8) -> x86_64::VirtAddr {
    x86_64::VirtAddr::from_ptr(&raw const trap_stubs) + 16 * u64::from(v)
}

/// Saves the general registers below the stub's words and calls [`trap_dispatch`]; then
/// [`trap_return`].
#[unsafe(naked)]
unsafe extern "C" fn trap_common() {
    core::arch::naked_asm!(
        // [rsp] vector, [rsp + 8] error, [rsp + 16] rip, [rsp + 24] cs.
        "test byte ptr [rsp + 24], 3",
        "jz 2f",
        "swapgs",
        "2:",
        "cmp byte ptr [rip + {smap}], 0",
        "je 3f",
        "clac",
        "3:",
        push_gprs!(),
        "mov rdi, rsp",
        "cld",
        "call {dispatch}",
        "jmp {ret}",
        smap = sym SMAP,
        dispatch = sym trap_dispatch,
        ret = sym trap_return,
    )
}

/// Restores the [`TrapFrame`] at `rsp` and returns to the code it describes (swapping GS back
/// first if that is ring 3).
#[unsafe(naked)]
pub(crate) unsafe extern "C" fn trap_return() -> ! {
    core::arch::naked_asm!(
        pop_gprs!(),
        "test byte ptr [rsp + 24], 3",
        "jz 2f",
        // No interrupt between the swap and the `iretq`: it would run with the user's GS.
        "cli",
        "swapgs",
        "2:",
        "add rsp, 16",
        "iretq",
    )
}

/// Starts (or resumes) user code: places `frame` where the entry code keeps a user thread's
/// frame, at the top of the current thread's kernel stack `stack_top`, and returns through it.
/// Whatever the thread had on that stack is abandoned.
///
/// # Safety
/// `stack_top` is the top of the running thread's kernel stack, which the TSS (`rsp0`) and the
/// per-CPU `kernel_rsp` name; `frame` describes ring-3 code (user CS and SS); the caller's own
/// frames lie below `stack_top - size_of::<TrapFrame>()` and are never returned to.
pub unsafe fn enter_user(frame: &TrapFrame, stack_top: u64) -> ! {
    debug_assert!(frame.from_user());
    x86_64::instructions::interrupts::disable();
    let slot = (stack_top - core::mem::size_of::<TrapFrame>() as u64) as *mut TrapFrame;
    // SAFETY: the slot is the top of our own stack, above every live frame (the caller's
    // promise); `frame` may be anywhere below it, so the copy does not overlap.
    unsafe {
        slot.write(*frame);
        core::arch::asm!(
            "mov rsp, {slot}",
            "jmp {ret}",
            slot = in(reg) slot,
            ret = sym trap_return,
            options(noreturn),
        )
    }
}

/// Where every stub lands, on the interrupted code's stack or (from ring 3) the thread's kernel
/// stack, interrupts off.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    super::idt::dispatch(frame);
    if frame.from_user() {
        super::syscall::return_to_user(frame);
    }
}

/// Turns on SMEP and SMAP on this CPU where it has them (the kernel then faults on executing
/// user pages, and on touching them outside the user-copy helpers).
pub fn enable_smep_smap() {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max < 7 {
        return;
    }
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let mut flags = Cr4::read();
    if leaf7.ebx & (1 << 7) != 0 {
        flags |= Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION;
    }
    if leaf7.ebx & (1 << 20) != 0 {
        flags |= Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION;
        SMAP.store(true, Ordering::Relaxed);
    }
    // SAFETY: the CPU supports the bits (CPUID above); the kernel neither runs nor touches user
    // pages outside the helpers that open access.
    unsafe { Cr4::write(flags) };
}
