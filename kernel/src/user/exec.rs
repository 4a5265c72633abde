//! Starting a program: the ELF file is checked and planned (`exec::elf`) before anything is
//! created, so a malformed or hostile file loads nothing; then a process is made and its first
//! thread, already running in the new address space, maps the segments, copies their bytes in,
//! gives each its protection, maps the stack, writes the initial stack (`exec::stack`) and enters
//! ring 3 at the entry point.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use exec::elf::{ElfError, Plan};
use exec::stack::{Machine, StackError};
use mm::ops::MapFlags;
use mm::vma::Prot;

use super::{UserProcess, start_thread};
use crate::arch::fpu::FpuState;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess::copy_to_user;

/// Where a static-PIE program is loaded (Linux's `ELF_ET_DYN_BASE`, without randomization).
const PIE_BASE: u64 = 0x5555_5555_4000;
/// The top of the main thread's stack. The stack is a `MAP_GROWSDOWN` mapping: the initial
/// stack's pages and [`STACK_EXPAND`] below them, grown by faults below it up to mm's
/// `STACK_LIMIT` (Linux's default `RLIMIT_STACK`, 8 MiB).
const STACK_TOP: u64 = 0x7fff_ffff_f000;
/// What is mapped below the initial stack up front (Linux's `stack_expand` in `setup_arg_pages`).
const STACK_EXPAND: u64 = 128 << 10;
/// How far below the stack's top `mmap` starts placing mappings (Linux's `mmap_base`: the
/// stack limit plus the guard gap, at least 128 MiB; no randomization), so that they leave the
/// stack room to grow.
const MMAP_BASE: u64 = STACK_TOP - (128 << 20);
/// The environment every program gets.
const ENVP: [&str; 2] = ["HOME=/", "PATH=/bin"];

/// Why a program could not start.
#[derive(Debug)]
pub enum ExecError {
    /// The ELF file is malformed, hostile or not a static x86-64 executable.
    Elf(ElfError),
    /// argv does not fit on a stack.
    Args(StackError),
    /// No memory for the process or its first thread.
    OutOfMemory,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Elf(e) => write!(f, "bad executable: {e}"),
            ExecError::Args(e) => write!(f, "bad arguments: {e}"),
            ExecError::OutOfMemory => write!(f, "out of memory"),
        }
    }
}

/// Starts the program in `elf` as a new process with `argv` (`argv[0]` its name). Returns the
/// process (to [`UserProcess::wait`] on) once its first thread is on its way; the thread loads
/// the program. Nothing is created for a file that does not plan.
pub fn spawn_program(elf: &'static [u8], argv: Vec<String>) -> Result<Arc<UserProcess>, ExecError> {
    let plan = exec::elf::plan(elf, PIE_BASE).map_err(ExecError::Elf)?;
    let name = argv.first().cloned().unwrap_or_default();
    let machine = Machine {
        execfn: "",
        random: random_bytes(),
        hwcap: hwcap(),
        ..Machine::default()
    };
    // Build the stack image now: bad arguments fail here, before any process exists.
    let stack =
        exec::stack::build(STACK_TOP, &argv, &ENVP, &plan, &machine).map_err(ExecError::Args)?;
    let process = UserProcess::new(&name).map_err(|_| ExecError::OutOfMemory)?;
    process.mm().set_brk_start(plan.brk);
    process.mm().set_mmap_base(MMAP_BASE);
    crate::serial_println!("user {} start {}", process.pid, argv.join(" "));
    let fpu = FpuState::new().ok_or(ExecError::OutOfMemory)?;
    let pid = process.pid;
    start_thread(&process, pid, fpu, move |me| {
        load(me.process.mm(), elf, &plan, &stack).map_err(|e| {
            crate::warn!("pid {pid}: cannot load the program: {e}");
        })
    })
    .map_err(|_| ExecError::OutOfMemory)?;
    Ok(process)
}

/// Why loading into the new address space failed.
#[derive(Debug)]
enum LoadError {
    Map(mm::ops::MmapError),
    Protect(mm::ops::MprotectError),
    Copy,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Map(e) => write!(f, "cannot map the image or stack: {e:?}"),
            LoadError::Protect(e) => write!(f, "cannot protect a segment: {e:?}"),
            LoadError::Copy => write!(f, "cannot copy the image into its mapping"),
        }
    }
}

fn prot_of(p: exec::elf::Prot) -> Prot {
    let mut prot = Prot::empty();
    prot.set(Prot::READ, p.read);
    prot.set(Prot::WRITE, p.write);
    prot.set(Prot::EXEC, p.exec);
    prot
}

/// Runs on the process's first thread, in its address space: maps and fills the image and the
/// stack; returns the frame that starts the program.
fn load(
    mm: &crate::platform::Mm,
    elf: &[u8],
    plan: &Plan,
    stack: &exec::stack::InitialStack,
) -> Result<TrapFrame, LoadError> {
    let fixed = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
    let rw = Prot::READ | Prot::WRITE;
    // Writable first, so that the bytes can be copied in; each gets its protection after.
    for s in plan.segments.iter().filter(|s| s.map_end > s.map_start) {
        mm.mmap(s.map_start, s.map_end - s.map_start, rw, fixed)
            .map_err(LoadError::Map)?;
    }
    for s in &plan.segments {
        let data = s.data(elf).ok_or(LoadError::Copy)?;
        // The rest up to `mem_size` (bss) is fresh anonymous memory: zero.
        copy_to_user(s.dest, data).map_err(|_| LoadError::Copy)?;
    }
    for s in plan.segments.iter().filter(|s| s.map_end > s.map_start) {
        mm.mprotect(s.map_start, s.map_end - s.map_start, prot_of(s.prot))
            .map_err(LoadError::Protect)?;
    }
    let stack_prot = if plan.stack_exec { rw | Prot::EXEC } else { rw };
    let stack_bottom = (stack.rsp & !0xfff) - STACK_EXPAND;
    mm.mmap(
        stack_bottom,
        STACK_TOP - stack_bottom,
        stack_prot,
        fixed | MapFlags::GROWSDOWN,
    )
    .map_err(LoadError::Map)?;
    copy_to_user(stack.rsp, &stack.bytes).map_err(|_| LoadError::Copy)?;
    Ok(TrapFrame::new_user(plan.entry, stack.rsp))
}

/// `AT_HWCAP`: CPUID.1:EDX, as Linux reports it on x86.
fn hwcap() -> u64 {
    u64::from(core::arch::x86_64::__cpuid(1).edx)
}

/// The generator's state when the CPU has no RDRAND.
static SEED: AtomicU64 = AtomicU64::new(0);

/// A random word: RDRAND where the CPU has it, else a xorshift generator seeded from the TSC
/// (unpredictable enough for hash keys and canaries in a test kernel, not for secrets).
pub(super) fn random_u64() -> u64 {
    let has_rdrand = core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0;
    if has_rdrand {
        for _ in 0..10 {
            let mut v = 0u64;
            // SAFETY: the CPU has RDRAND (CPUID above).
            if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
                return v;
            }
        }
    }
    let mut x = SEED.load(Ordering::Relaxed) ^ crate::arch::apic::rdtsc();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    SEED.store(x, Ordering::Relaxed);
    x
}

fn random_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&random_u64().to_le_bytes());
    out[8..].copy_from_slice(&random_u64().to_le_bytes());
    out
}

/// The real time at boot, in nanoseconds since the epoch (from the CMOS clock, read once).
static BOOT_EPOCH_NS: spin::Once<u64> = spin::Once::new();

pub(super) fn boot_epoch_ns() -> u64 {
    *BOOT_EPOCH_NS.call_once(|| {
        let secs = crate::arch::rtc::read_epoch_seconds().unwrap_or(0);
        (secs * 1_000_000_000).saturating_sub(crate::arch::apic::now_ns())
    })
}
