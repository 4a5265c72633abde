//! The initial user stack, laid out as Linux lays it out (`do_execve`'s string copies, then
//! fs/binfmt_elf.c `create_elf_tables`), as bytes the kernel copies below the stack top.
//!
//! From the top down:
//! ```text
//! top - 8          a zero word (Linux starts at `vm_end - sizeof(void *)`)
//!                  the AT_EXECFN string, then envp strings, then argv strings (argv[0] lowest)
//!                  down to a 16-byte boundary
//!                  "x86_64\0" (AT_PLATFORM), then the 16 AT_RANDOM bytes
//!                  padding, so that rsp ends 16-byte aligned
//!                  auxv (id, value) pairs ending with AT_NULL
//!                  envp pointers, NULL
//!                  argv pointers, NULL
//! rsp ->           argc
//! ```
//! An empty argv becomes `[""]`, as Linux does since 5.18, so that `argv[0]` always exists.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::elf::{PAGE_SIZE, Plan};

/// Auxiliary vector entry types (`include/uapi/linux/auxvec.h`).
pub mod auxv {
    pub const AT_NULL: u64 = 0;
    pub const AT_PHDR: u64 = 3;
    pub const AT_PHENT: u64 = 4;
    pub const AT_PHNUM: u64 = 5;
    pub const AT_PAGESZ: u64 = 6;
    pub const AT_BASE: u64 = 7;
    pub const AT_FLAGS: u64 = 8;
    pub const AT_ENTRY: u64 = 9;
    pub const AT_UID: u64 = 11;
    pub const AT_EUID: u64 = 12;
    pub const AT_GID: u64 = 13;
    pub const AT_EGID: u64 = 14;
    pub const AT_PLATFORM: u64 = 15;
    pub const AT_HWCAP: u64 = 16;
    pub const AT_CLKTCK: u64 = 17;
    pub const AT_SECURE: u64 = 23;
    pub const AT_RANDOM: u64 = 25;
    pub const AT_HWCAP2: u64 = 26;
    pub const AT_EXECFN: u64 = 31;
}

/// `AT_PLATFORM`'s string on x86-64.
pub const PLATFORM: &str = "x86_64";
/// `AT_CLKTCK`: the clock ticks per second `times()` counts in (`USER_HZ`).
pub const CLOCK_TICKS: u64 = 100;
/// Linux's limit on one argument or environment string, NUL included (`MAX_ARG_STRLEN`).
pub const MAX_ARG_STRLEN: usize = 32 * PAGE_SIZE as usize;
/// Limit on the strings and pointers of argv and envp together: a quarter of an 8 MiB stack
/// rlimit, as Linux allows (`bprm_stack_limits`).
pub const MAX_ARG_BYTES: usize = (8 << 20) / 4;

/// What the auxiliary vector says beyond the [`Plan`].
#[derive(Clone, Debug, Default)]
pub struct Machine<'a> {
    /// `AT_EXECFN`: the path the program was started by.
    pub execfn: &'a str,
    /// The `AT_RANDOM` bytes (stack canary, allocator secrets).
    pub random: [u8; 16],
    /// `AT_HWCAP` (x86: CPUID.1:EDX) and `AT_HWCAP2`.
    pub hwcap: u64,
    pub hwcap2: u64,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// The built stack.
///
/// # Invariants
/// `bytes` belong at `[rsp, top)`: `rsp + bytes.len() == top`, `rsp % 16 == 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialStack {
    pub bytes: Vec<u8>,
    /// The stack pointer at entry: the address of argc.
    pub rsp: u64,
    /// Where the argv strings start and the envp strings end (Linux's `mm->arg_start`,
    /// `arg_end`, `env_start`, `env_end`).
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `AT_RANDOM`: the address of the 16 random bytes.
    pub random: u64,
}

/// Why a stack cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackError {
    /// A string holds a NUL byte (it would end early).
    Nul { index: usize, env: bool },
    /// A string is longer than [`MAX_ARG_STRLEN`] (`E2BIG` on Linux).
    StringTooLong { index: usize, env: bool, len: usize },
    /// argv and envp together exceed [`MAX_ARG_BYTES`] (`E2BIG`).
    TooBig(usize),
    /// The stack does not fit below `top`.
    TopTooLow { top: u64, size: u64 },
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = |env: &bool| if *env { "envp" } else { "argv" };
        match self {
            StackError::Nul { index, env } => {
                write!(f, "{}[{index}] holds a NUL byte", which(env))
            }
            StackError::StringTooLong { index, env, len } => write!(
                f,
                "{}[{index}] is {len} bytes, more than {MAX_ARG_STRLEN}",
                which(env)
            ),
            StackError::TooBig(n) => {
                write!(f, "argv and envp take {n} bytes, more than {MAX_ARG_BYTES}")
            }
            StackError::TopTooLow { top, size } => {
                write!(f, "a {size:#x}-byte stack does not fit below {top:#x}")
            }
        }
    }
}

impl core::error::Error for StackError {}

/// Builds the initial stack that ends at `top` for a program loaded by `plan`.
pub fn build<A: AsRef<[u8]>, E: AsRef<[u8]>>(
    top: u64,
    argv: &[A],
    envp: &[E],
    plan: &Plan,
    machine: &Machine<'_>,
) -> Result<InitialStack, StackError> {
    let empty: [&[u8]; 1] = [b""];
    let argv: Vec<&[u8]> = if argv.is_empty() {
        empty.to_vec()
    } else {
        argv.iter().map(AsRef::as_ref).collect()
    };
    let envp: Vec<&[u8]> = envp.iter().map(AsRef::as_ref).collect();
    let arg_bytes = strings_size(&argv, false)?;
    let env_bytes = strings_size(&envp, true)?;
    let pointers = (argv.len() + envp.len() + 2) * 8;
    let total = arg_bytes + env_bytes + pointers;
    if total > MAX_ARG_BYTES {
        return Err(StackError::TooBig(total));
    }

    // Addresses, computed downwards from `top` as Linux does. Everything is bounded by
    // MAX_ARG_BYTES plus a few hundred bytes, so only the subtraction from `top` can fail.
    let auxv = auxv_entries(plan, machine);
    let items = 1 + argv.len() + 1 + envp.len() + 1;
    let execfn_len = machine.execfn.len() as u64 + 1;
    let below_top = 8 + execfn_len + (env_bytes + arg_bytes) as u64;
    let worst = below_top + 15 + PLATFORM.len() as u64 + 1 + 16 + 16 * auxv.len() as u64;
    let worst = worst + 8 * items as u64 + 15;
    let too_low = StackError::TopTooLow { top, size: worst };
    if top < worst {
        return Err(too_low);
    }
    let execfn = top - 8 - execfn_len;
    let env_start = execfn - env_bytes as u64;
    let arg_start = env_start - arg_bytes as u64;
    let platform = (arg_start & !15) - (PLATFORM.len() as u64 + 1);
    let random = platform - 16;
    let auxv_start = random - 16 * auxv.len() as u64;
    let rsp = (auxv_start - 8 * items as u64) & !15;

    let mut image = Image {
        base: rsp,
        bytes: vec![0; (top - rsp) as usize],
    };
    image.put(execfn, machine.execfn.as_bytes());
    let arg_ptrs = image.put_strings(arg_start, &argv);
    let env_ptrs = image.put_strings(env_start, &envp);
    image.put(platform, PLATFORM.as_bytes());
    image.put(random, &machine.random);

    let mut words: Vec<u64> = Vec::with_capacity(items + 2 * auxv.len() + 2);
    words.push(argv.len() as u64);
    words.extend(&arg_ptrs);
    words.push(0);
    words.extend(&env_ptrs);
    words.push(0);
    for (id, value) in auxv {
        let value = match id {
            auxv::AT_RANDOM => random,
            auxv::AT_EXECFN => execfn,
            auxv::AT_PLATFORM => platform,
            _ => value,
        };
        words.extend([id, value]);
    }
    for (i, word) in words.iter().enumerate() {
        image.put(rsp + 8 * i as u64, &word.to_le_bytes());
    }
    Ok(InitialStack {
        bytes: image.bytes,
        rsp,
        arg_start,
        arg_end: env_start,
        env_start,
        env_end: execfn,
        random,
    })
}

/// The bytes `strings` take with their NULs, checking each against Linux's limits.
fn strings_size(strings: &[&[u8]], env: bool) -> Result<usize, StackError> {
    let mut total = 0usize;
    for (index, s) in strings.iter().enumerate() {
        if s.contains(&0) {
            return Err(StackError::Nul { index, env });
        }
        let len = s.len() + 1;
        if len > MAX_ARG_STRLEN {
            return Err(StackError::StringTooLong { index, env, len });
        }
        total = total.saturating_add(len);
    }
    Ok(total)
}

/// The auxiliary vector in Linux's x86-64 order, AT_NULL last. The values of the entries that
/// point into the stack are filled in by [`build`].
fn auxv_entries(plan: &Plan, m: &Machine<'_>) -> [(u64, u64); 19] {
    use auxv::*;
    [
        (AT_HWCAP, m.hwcap),
        (AT_PAGESZ, PAGE_SIZE),
        (AT_CLKTCK, CLOCK_TICKS),
        (AT_PHDR, plan.phdr),
        (AT_PHENT, plan.phent),
        (AT_PHNUM, plan.phnum),
        (AT_BASE, Plan::AT_BASE),
        (AT_FLAGS, 0),
        (AT_ENTRY, plan.entry),
        (AT_UID, m.uid.into()),
        (AT_EUID, m.euid.into()),
        (AT_GID, m.gid.into()),
        (AT_EGID, m.egid.into()),
        (AT_SECURE, 0),
        (AT_RANDOM, 0),
        (AT_HWCAP2, m.hwcap2),
        (AT_EXECFN, 0),
        (AT_PLATFORM, 0),
        (AT_NULL, 0),
    ]
}

/// The stack's bytes, addressed by user address.
struct Image {
    base: u64,
    bytes: Vec<u8>,
}

impl Image {
    /// Writes `data` at `addr`; `build` computed every address to lie in `[base, top)`.
    fn put(&mut self, addr: u64, data: &[u8]) {
        let at = (addr - self.base) as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    /// Writes `strings` NUL-terminated from `addr` up; returns their addresses.
    fn put_strings(&mut self, mut addr: u64, strings: &[&[u8]]) -> Vec<u64> {
        let mut ptrs = Vec::with_capacity(strings.len());
        for s in strings {
            ptrs.push(addr);
            self.put(addr, s);
            addr += s.len() as u64 + 1;
        }
        ptrs
    }
}
