//! The system calls about a process's CPUs, memory and usage: `sched_setaffinity`,
//! `sched_getaffinity`, `getrusage`, `sysinfo`, and the CPU-time clocks.
//!
//! # Differences from Linux
//! - CPU masks are one word: CPUs 0..64. A `sched_setaffinity` mask longer than that is read up
//!   to its first word (Linux ignores bits past its CPU count too), a shorter one is padded
//!   with zeros.
//! - A thread changing another thread's affinity does not wait for it to move: the target
//!   leaves a CPU it may no longer use at its next pass through the scheduler (see
//!   [`sched::set_affinity`]). A thread's own change has taken effect when the call returns.
//! - CPU time is not split into user and system time: `getrusage` reports all of it as
//!   `ru_utime` (and `ru_stime` 0). Major faults, swaps, block I/O, messages, signals and
//!   context-switch counts are 0, and so is `ru_maxrss`.
//! - `sysinfo` has no load average (0) and no swap, shared or buffer memory; `procs` counts
//!   the kernel's threads.

use alloc::sync::Arc;

use super::syscall::Errno;
use super::{Usage, UserThread};
use crate::arch::uaccess::{copy_from_user, copy_to_user, write_user};
use crate::sched::{self, AffinityError, Thread};
use x86_64::structures::paging::PageSize;

type Result<T = u64> = core::result::Result<T, Errno>;

/// Bytes of a CPU mask here (`cpumask_size()` on Linux).
const MASK_BYTES: u64 = 8;

/// The thread a `pid` argument of the affinity calls names: 0 is the caller; otherwise a
/// thread of the caller's process (there are no other processes it could see).
fn target(ut: &UserThread, pid: u64) -> Result<Arc<Thread>> {
    if pid == 0 || pid == ut.tid {
        return Ok(sched::current());
    }
    ut.process.thread(pid).ok_or(Errno::ESRCH)
}

/// `sched_setaffinity(pid, len, mask)`: the thread may run only on the online CPUs in `mask`.
pub(super) fn sched_setaffinity(ut: &UserThread, pid: u64, len: u64, mask: u64) -> Result {
    let mut bytes = [0u8; MASK_BYTES as usize];
    let n = len.min(MASK_BYTES) as usize;
    copy_from_user(&mut bytes[..n], mask)?;
    // Pid lookup after the copy, as Linux does it: a bad pointer is EFAULT whatever the pid.
    let t = target(ut, pid)?;
    match sched::set_affinity(&t, u64::from_le_bytes(bytes)) {
        Ok(()) => Ok(0),
        Err(AffinityError::NoOnlineCpu) => Err(Errno::EINVAL),
        // A user thread is never an idle thread.
        Err(AffinityError::Idle) => Err(Errno::EPERM),
    }
}

/// `sched_getaffinity(pid, len, mask)`: the CPUs the thread may run on (online ones); returns
/// the bytes written.
pub(super) fn sched_getaffinity(ut: &UserThread, pid: u64, len: u64, mask: u64) -> Result {
    // Linux: the buffer must hold a bit for every possible CPU and be a whole number of words.
    let possible = crate::arch::percpu::MAX_CPUS as u64;
    if len.saturating_mul(8) < possible || !len.is_multiple_of(8) {
        return Err(Errno::EINVAL);
    }
    let t = target(ut, pid)?;
    let bits = t.allowed() & sched::online_cpus();
    copy_to_user(mask, &bits.to_le_bytes())?;
    Ok(MASK_BYTES)
}

/// `struct timeval`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

impl Timeval {
    fn from_ns(ns: u64) -> Timeval {
        Timeval {
            sec: (ns / 1_000_000_000) as i64,
            usec: (ns % 1_000_000_000 / 1000) as i64,
        }
    }
}

/// `struct rusage`: two times, then fourteen counters of which `minflt` is the fifth.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    ixrss: i64,
    idrss: i64,
    isrss: i64,
    minflt: i64,
    rest: [i64; 9],
}

const _: () = assert!(size_of::<Rusage>() == 144);

const RUSAGE_SELF: i32 = 0;
const RUSAGE_CHILDREN: i32 = -1;
const RUSAGE_THREAD: i32 = 1;

/// `getrusage(who, usage)`: the calling thread's or process's minor faults and CPU time; a
/// process here never has children, so theirs is all zeros.
pub(super) fn getrusage(ut: &UserThread, who: u64, usage: u64) -> Result {
    let u = match who as i32 {
        RUSAGE_SELF => ut.process.usage(),
        RUSAGE_THREAD => sched::with_current(|t| Usage::of(t, crate::arch::apic::now_ns())),
        RUSAGE_CHILDREN => Usage::default(),
        _ => return Err(Errno::EINVAL),
    };
    let r = Rusage {
        utime: Timeval::from_ns(u.cpu_ns),
        minflt: u.min_flt as i64,
        ..Rusage::default()
    };
    write_user(usage, &r)?;
    Ok(0)
}

/// Writes `u` as a `struct rusage` at `addr` (`wait4`'s report of a child).
pub(super) fn write_rusage(addr: u64, u: Usage) -> Result {
    let r = Rusage {
        utime: Timeval::from_ns(u.cpu_ns),
        minflt: u.min_flt as i64,
        ..Rusage::default()
    };
    write_user(addr, &r)?;
    Ok(0)
}

/// `struct sysinfo` (x86-64: 112 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Sysinfo {
    uptime: i64,
    loads: [u64; 3],
    totalram: u64,
    freeram: u64,
    sharedram: u64,
    bufferram: u64,
    totalswap: u64,
    freeswap: u64,
    procs: u16,
    _pad: [u16; 3],
    totalhigh: u64,
    freehigh: u64,
    mem_unit: u32,
    _f: u32,
}

const _: () = assert!(size_of::<Sysinfo>() == 112);

/// `sysinfo(info)`: uptime, and memory as the frame allocator counts it (in bytes:
/// `mem_unit` 1).
pub(super) fn sysinfo(info: u64) -> Result {
    let (total, free) = crate::memory::FRAMES.stats();
    let page = x86_64::structures::paging::Size4KiB::SIZE;
    let ns = crate::arch::apic::now_ns();
    let s = Sysinfo {
        // Linux rounds a started second up.
        uptime: ns.div_ceil(1_000_000_000) as i64,
        totalram: total * page,
        freeram: free * page,
        procs: sched::live_threads().min(u16::MAX as usize) as u16,
        mem_unit: 1,
        ..Sysinfo::default()
    };
    write_user(info, &s)?;
    Ok(0)
}

/// `CLOCK_THREAD_CPUTIME_ID`: the calling thread's CPU time, ns.
pub(super) fn thread_cpu_ns() -> u64 {
    sched::with_current(|t| t.cpu_time_ns(crate::arch::apic::now_ns()))
}

/// `CLOCK_PROCESS_CPUTIME_ID`: the CPU time of the calling thread's process, ns.
pub(super) fn process_cpu_ns(ut: &UserThread) -> u64 {
    ut.process.usage().cpu_ns
}
