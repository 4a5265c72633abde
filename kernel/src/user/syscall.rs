//! The system calls: Linux's numbers, argument checks and `errno` values.
//!
//! A handler gets the six argument registers and returns the result or an [`Errno`]; the result
//! goes back in `rax`, an error as `-errno`. Numbers without a handler return `ENOSYS`, logged
//! once per number.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use mm::ops::MapFlags;
use mm::vma::Prot;
use x86_64::instructions::interrupts;

use super::futex::{self, WaitError};
use super::resources;
use super::{ChildStart, Status, UserThread, current, exit_thread, signal, start_thread};

use crate::arch::fpu::FpuState;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess::{
    Efault, access_ok, copy_from_user, copy_to_user, read_user, write_user,
};

/// A Linux error number (named as Linux names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
#[allow(clippy::upper_case_acronyms)]
pub enum Errno {
    EPERM = 1,
    ENOENT = 2,
    ESRCH = 3,
    EINTR = 4,
    EBADF = 9,
    ECHILD = 10,
    EAGAIN = 11,
    ENOMEM = 12,
    EFAULT = 14,
    EEXIST = 17,
    ENODEV = 19,
    EINVAL = 22,
    ENOTTY = 25,
    ENOSYS = 38,
    ETIMEDOUT = 110,
}

impl From<Efault> for Errno {
    fn from(_: Efault) -> Errno {
        Errno::EFAULT
    }
}

type Result<T = u64> = core::result::Result<T, Errno>;

/// Runs the system call in `frame` (number in `rax`, arguments in `rdi, rsi, rdx, r10, r8, r9`)
/// and puts the result in `rax`. Interrupts are on.
///
/// A call that ends the thread (`exit`, `exit_group`, a fatal signal to itself) returns here
/// first, so that nothing this frame holds is leaked by the exit, which never returns.
pub(super) fn dispatch(frame: &mut TrapFrame) {
    let ut = current().expect("a system call from a user thread");
    let a = [
        frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9,
    ];
    let nr = frame.rax;
    let result = call(&ut, frame, nr, a);
    // `make run LOG=debug`: every call, as `strace` shows it.
    crate::debug!(
        "pid {} tid {}: syscall {nr}({:#x}, {:#x}, {:#x}, {:#x}) = {result:?}",
        ut.process.pid,
        ut.tid,
        a[0],
        a[1],
        a[2],
        a[3]
    );
    frame.rax = match result {
        Ok(v) => v,
        Err(e) => (-(e as i64)) as u64,
    };
    let exit = ut.exit_request.load(Ordering::Relaxed);
    drop(ut);
    if exit != NO_EXIT {
        exit_thread(exit as i32)
    }
}

/// `UserThread::exit_request` when no exit is asked for.
pub(super) const NO_EXIT: i64 = i64::MIN;

/// Asks `dispatch` to end the calling thread with `code` once the call returns.
fn request_exit(ut: &UserThread, code: i32) -> Result {
    ut.exit_request.store(i64::from(code), Ordering::Relaxed);
    Ok(0)
}

fn call(ut: &Arc<UserThread>, frame: &mut TrapFrame, nr: u64, a: [u64; 6]) -> Result {
    let p = &ut.process;
    match nr {
        0 => read(a[0], a[1], a[2]),
        1 => write(ut, a[0], a[1], a[2]),
        3 => close(a[0]),
        7 => poll(a[0], a[1]),
        9 => mmap(ut, a),
        10 => mprotect(ut, a[0], a[1], a[2]),
        11 => munmap(ut, a[0], a[1]),
        12 => brk(ut, a[0]),
        13 => rt_sigaction(ut, a[0], a[1], a[2], a[3]),
        14 => rt_sigprocmask(ut, a[0], a[1], a[2], a[3]),
        16 => ioctl(a[0]),
        20 => writev(ut, a[0], a[1], a[2]),
        24 => {
            crate::sched::yield_now();
            Ok(0)
        }
        25 => mremap(ut, a[0], a[1], a[2], a[3], a[4]),
        28 => madvise(ut, a[0], a[1], a[2]),
        35 => nanosleep(ut, a[0], false, a[1]),
        39 => Ok(p.pid),
        60 => request_exit(ut, a[0] as i32),
        62 => kill(ut, a[0], a[1], None),
        63 => uname(a[0]),
        72 => fcntl(a[0], a[1]),
        97 => getrlimit(a[0], a[1]),
        98 => resources::getrusage(ut, a[0], a[1]),
        99 => resources::sysinfo(a[0]),
        102 | 104 | 107 | 108 => Ok(0),
        110 => super::fork::getppid(ut),
        131 => sigaltstack(ut, a[0], a[1]),
        157 => prctl(a[0], a[1]),
        158 => arch_prctl(ut, a[0], a[1]),
        186 => Ok(ut.tid),
        200 => kill(ut, p.pid, a[1], Some(a[0])),
        202 => futex(ut, a),
        203 => resources::sched_setaffinity(ut, a[0], a[1], a[2]),
        204 => resources::sched_getaffinity(ut, a[0], a[1], a[2]),
        218 => {
            ut.clear_child_tid.store(a[0], Ordering::Relaxed);
            Ok(ut.tid)
        }
        // The CPU-time clocks need the caller.
        228 if a[0] == CLOCK_PROCESS_CPUTIME_ID => {
            write_user(a[1], &Timespec::from_ns(resources::process_cpu_ns(ut)))?;
            Ok(0)
        }
        228 if a[0] == CLOCK_THREAD_CPUTIME_ID => {
            write_user(a[1], &Timespec::from_ns(resources::thread_cpu_ns()))?;
            Ok(0)
        }
        228 => clock_gettime(a[0], a[1]),
        230 => clock_nanosleep(ut, a[0], a[1], a[2]),
        231 => {
            ut.process.kill(Status::Exited(a[0] as i32 & 0xff));
            request_exit(ut, a[0] as i32)
        }
        234 => {
            if a[0] != p.pid {
                return Err(Errno::ESRCH);
            }
            kill(ut, p.pid, a[2], Some(a[1]))
        }
        257 | 2 => Err(Errno::ENOENT),
        273 => Ok(0),
        302 => prlimit64(a[0], a[1], a[2], a[3]),
        318 => getrandom(a[0], a[1]),
        56 if super::fork::is_fork(a[0]) => super::fork::clone_process(ut, frame, a),
        56 => clone(ut, frame, a),
        57 | 58 => super::fork::fork(ut, frame),
        61 => super::fork::wait4(ut, a[0], a[1], a[2], a[3]),
        247 => super::fork::waitid(ut, a[0], a[1], a[2], a[3]),
        _ => {
            log_unknown(nr);
            Err(Errno::ENOSYS)
        }
    }
}

/// Numbers already reported (bit per number below 512).
static REPORTED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

fn log_unknown(nr: u64) {
    let (word, bit) = ((nr / 64).min(7) as usize, 1 << (nr % 64));
    if REPORTED[word].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
        crate::info!("syscall {nr} is not implemented: ENOSYS");
    }
}

fn read(fd: u64, buf: u64, count: u64) -> Result {
    if fd > 2 {
        return Err(Errno::EBADF);
    }
    if !access_ok(buf, count as usize) {
        return Err(Errno::EFAULT);
    }
    // Standard input is at its end.
    Ok(0)
}

/// Copies `count` bytes at `buf` to the console in page-sized pieces.
fn write(ut: &UserThread, fd: u64, buf: u64, count: u64) -> Result {
    if fd == 0 || fd > 2 {
        return Err(Errno::EBADF);
    }
    if !access_ok(buf, count as usize) {
        return Err(Errno::EFAULT);
    }
    let mut done = 0u64;
    let mut chunk = [0u8; 512];
    while done < count {
        let n = (count - done).min(chunk.len() as u64) as usize;
        if copy_from_user(&mut chunk[..n], buf + done).is_err() {
            // Linux reports what it wrote before the bad byte, or EFAULT if nothing.
            return if done > 0 {
                Ok(done)
            } else {
                Err(Errno::EFAULT)
            };
        }
        ut.process.console_write(fd as usize, &chunk[..n]);
        done += n as u64;
    }
    Ok(done)
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoVec {
    base: u64,
    len: u64,
}

fn writev(ut: &UserThread, fd: u64, iov: u64, n: u64) -> Result {
    if n > 1024 {
        return Err(Errno::EINVAL);
    }
    let mut total = 0;
    for i in 0..n {
        let v: IoVec = read_user(iov + 16 * i)?;
        if v.len == 0 {
            continue;
        }
        match write(ut, fd, v.base, v.len) {
            Ok(w) => total += w,
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(total)
}

fn close(fd: u64) -> Result {
    if fd > 2 { Err(Errno::EBADF) } else { Ok(0) }
}

/// `struct pollfd`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

const POLLIN: i16 = 1;
const POLLOUT: i16 = 4;
const POLLNVAL: i16 = 0x20;

/// Standard input is readable (at its end), output writable; other descriptors do not exist.
/// Returns at once whatever the timeout.
fn poll(fds: u64, n: u64) -> Result {
    if n > 1024 {
        return Err(Errno::EINVAL);
    }
    let mut ready = 0;
    for i in 0..n {
        let at = fds + 8 * i;
        let mut p: PollFd = read_user(at)?;
        p.revents = match p.fd {
            fd if fd < 0 => 0,
            0 => p.events & POLLIN,
            1 | 2 => p.events & POLLOUT,
            _ => POLLNVAL,
        };
        if p.revents != 0 {
            ready += 1;
        }
        write_user(at, &p)?;
    }
    Ok(ready)
}

fn ioctl(fd: u64) -> Result {
    if fd > 2 {
        Err(Errno::EBADF)
    } else {
        Err(Errno::ENOTTY)
    }
}

fn fcntl(fd: u64, cmd: u64) -> Result {
    const F_GETFD: u64 = 1;
    const F_SETFD: u64 = 2;
    const F_GETFL: u64 = 3;
    const O_RDONLY: u64 = 0;
    const O_WRONLY: u64 = 1;
    if fd > 2 {
        return Err(Errno::EBADF);
    }
    match cmd {
        F_GETFD | F_SETFD => Ok(0),
        F_GETFL => Ok(if fd == 0 { O_RDONLY } else { O_WRONLY }),
        _ => Err(Errno::EINVAL),
    }
}

/// `PROT_READ | PROT_WRITE | PROT_EXEC`.
const PROT_MASK: u64 = 0x7;
/// `PROT_SEM`: accepted by `mprotect`, meaningless on x86.
const PROT_SEM: u64 = 0x8;
const MAP_SHARED: u64 = 0x01;
const MAP_PRIVATE: u64 = 0x02;
const MAP_SHARED_VALIDATE: u64 = 0x03;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_NORESERVE: u64 = 0x4000;
const MAP_POPULATE: u64 = 0x8000;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;

/// `mmap`'s protection: Linux ignores bits it does not know there.
fn mmap_prot(bits: u64) -> Prot {
    Prot::from_bits_truncate((bits & PROT_MASK) as u32)
}

/// `mprotect`'s protection: unknown bits are `EINVAL` (and `PROT_GROWSDOWN`/`UP` too: extending
/// a change to the whole stack is not supported).
fn mprotect_prot(bits: u64) -> Result<Prot> {
    if bits & !(PROT_MASK | PROT_SEM) != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(mmap_prot(bits))
}

fn mmap(ut: &UserThread, a: [u64; 6]) -> Result {
    let [addr, len, prot_bits, flags, fd, off] = a;
    let prot = mmap_prot(prot_bits);
    let mut mflags = MapFlags::ANONYMOUS;
    match flags & MAP_SHARED_VALIDATE {
        MAP_PRIVATE => mflags |= MapFlags::PRIVATE,
        MAP_SHARED => mflags |= MapFlags::SHARED,
        // Linux checks MAP_SHARED_VALIDATE's flags only for files: an anonymous mapping of
        // that type is EINVAL.
        MAP_SHARED_VALIDATE if flags & MAP_ANONYMOUS != 0 => return Err(Errno::EINVAL),
        MAP_SHARED_VALIDATE => {}
        _ => return Err(Errno::EINVAL),
    }
    if flags & MAP_ANONYMOUS == 0 {
        // There are no files: the standard streams cannot be mapped, nothing else exists.
        return Err(if fd as i32 >= 0 && fd as i32 <= 2 {
            Errno::ENODEV
        } else {
            Errno::EBADF
        });
    }
    if off & 0xfff != 0 || len == 0 {
        return Err(Errno::EINVAL);
    }
    if flags & MAP_FIXED_NOREPLACE != 0 {
        mflags |= MapFlags::FIXED_NOREPLACE;
    } else if flags & MAP_FIXED != 0 {
        mflags |= MapFlags::FIXED;
    }
    for (bit, f) in [
        (MAP_GROWSDOWN, MapFlags::GROWSDOWN),
        (MAP_NORESERVE, MapFlags::NORESERVE),
        (MAP_POPULATE, MapFlags::POPULATE),
    ] {
        if flags & bit != 0 {
            mflags |= f;
        }
    }
    use mm::ops::{MmapError, RangeError};
    match ut.process.mm().mmap(addr, len, prot, mflags) {
        Ok(va) => Ok(va),
        // Only a fixed mapping below `mmap_min_addr` is a permission matter.
        Err(MmapError::BadRange(RangeError::OutOfRange))
            if mflags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE)
                && addr < mm::ops::MMAP_MIN_ADDR =>
        {
            Err(Errno::EPERM)
        }
        Err(MmapError::BadRange(RangeError::OutOfRange | RangeError::Overflow)) => {
            Err(Errno::ENOMEM)
        }
        Err(MmapError::BadRange(_) | MmapError::BadProt | MmapError::BadFlags) => {
            Err(Errno::EINVAL)
        }
        Err(MmapError::AlreadyMapped) => Err(Errno::EEXIST),
        Err(MmapError::NoSpace | MmapError::OutOfMemory) => Err(Errno::ENOMEM),
    }
}

fn munmap(ut: &UserThread, addr: u64, len: u64) -> Result {
    use mm::ops::MunmapError;
    match ut.process.mm().munmap(addr, len) {
        Ok(()) => Ok(0),
        Err(MunmapError::BadRange(_)) => Err(Errno::EINVAL),
        Err(MunmapError::OutOfMemory) => Err(Errno::ENOMEM),
    }
}

fn mprotect(ut: &UserThread, addr: u64, len: u64, prot_bits: u64) -> Result {
    use mm::ops::MprotectError;
    if addr & 0xfff != 0 {
        return Err(Errno::EINVAL);
    }
    let prot = mprotect_prot(prot_bits)?;
    if len == 0 {
        return Ok(0);
    }
    match ut.process.mm().mprotect(addr, len, prot) {
        Ok(()) => Ok(0),
        Err(MprotectError::BadRange(mm::ops::RangeError::OutOfRange)) => Err(Errno::ENOMEM),
        Err(MprotectError::BadRange(_) | MprotectError::BadProt) => Err(Errno::EINVAL),
        Err(MprotectError::NotMapped | MprotectError::OutOfMemory) => Err(Errno::ENOMEM),
    }
}

fn madvise(ut: &UserThread, addr: u64, len: u64, advice: u64) -> Result {
    use mm::ops::MadviseError;
    match ut.process.mm().madvise(addr, len, advice as i32) {
        Ok(()) => Ok(0),
        Err(MadviseError::BadAdvice(_) | MadviseError::BadRange(_)) => Err(Errno::EINVAL),
        Err(MadviseError::NotMapped) => Err(Errno::ENOMEM),
    }
}

fn mremap(ut: &UserThread, old: u64, old_len: u64, new_len: u64, flags: u64, new: u64) -> Result {
    use mm::ops::MremapError;
    let flags = u32::try_from(flags).map_err(|_| Errno::EINVAL)?;
    match ut.process.mm().mremap(old, old_len, new_len, flags, new) {
        Ok(addr) => Ok(addr),
        Err(
            MremapError::BadFlags
            | MremapError::BadRange(_)
            | MremapError::Overlap
            | MremapError::NotShared,
        ) => Err(Errno::EINVAL),
        Err(MremapError::NotMapped) => Err(Errno::EFAULT),
        Err(MremapError::NoSpace | MremapError::OutOfMemory) => Err(Errno::ENOMEM),
    }
}

/// The program break (mm's `brk`): `brk(0)` (or any address it cannot move to) returns the
/// current break; it never fails.
fn brk(ut: &UserThread, want: u64) -> Result {
    Ok(ut.process.mm().brk(want))
}

/// Signal numbers are 1..=64.
fn check_signal(sig: u64) -> Result<usize> {
    if (1..=64).contains(&sig) {
        Ok(sig as usize - 1)
    } else {
        Err(Errno::EINVAL)
    }
}

/// Records the action and reports the previous one (nothing is ever delivered).
fn rt_sigaction(ut: &UserThread, sig: u64, act: u64, oact: u64, setsize: u64) -> Result {
    if setsize != 8 {
        return Err(Errno::EINVAL);
    }
    let i = check_signal(sig)?;
    if act != 0 && (sig == signal::SIGKILL as u64 || sig == 19) {
        return Err(Errno::EINVAL);
    }
    let new: Option<[u64; 4]> = if act != 0 {
        Some(read_user(act)?)
    } else {
        None
    };
    let old = interrupts::without_interrupts(|| {
        let mut all = ut.process.sigactions.lock();
        let old = all[i];
        if let Some(new) = new {
            all[i] = new;
        }
        old
    });
    if oact != 0 {
        write_user(oact, &old)?;
    }
    Ok(0)
}

fn rt_sigprocmask(ut: &UserThread, how: u64, set: u64, oset: u64, setsize: u64) -> Result {
    const SIG_BLOCK: u64 = 0;
    const SIG_UNBLOCK: u64 = 1;
    const SIG_SETMASK: u64 = 2;
    if setsize != 8 {
        return Err(Errno::EINVAL);
    }
    let old = ut.sigmask.load(Ordering::Relaxed);
    if set != 0 {
        let s: u64 = read_user(set)?;
        let new = match how {
            SIG_BLOCK => old | s,
            SIG_UNBLOCK => old & !s,
            SIG_SETMASK => s,
            _ => return Err(Errno::EINVAL),
        };
        // SIGKILL and SIGSTOP cannot be blocked.
        ut.sigmask
            .store(new & !((1 << 8) | (1 << 18)), Ordering::Relaxed);
    }
    if oset != 0 {
        write_user(oset, &old)?;
    }
    Ok(0)
}

/// `stack_t`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct StackT {
    sp: u64,
    flags: i32,
    _pad: i32,
    size: u64,
}

fn sigaltstack(ut: &UserThread, ss: u64, old: u64) -> Result {
    const SS_DISABLE: i32 = 2;
    const MINSIGSTKSZ: u64 = 2048;
    let new: Option<StackT> = if ss != 0 { Some(read_user(ss)?) } else { None };
    if let Some(n) = new {
        if n.flags & !SS_DISABLE != 0 {
            return Err(Errno::EINVAL);
        }
        if n.flags & SS_DISABLE == 0 && n.size < MINSIGSTKSZ {
            return Err(Errno::ENOMEM);
        }
    }
    let prev = interrupts::without_interrupts(|| {
        let mut a = ut.altstack.lock();
        let prev = *a;
        if let Some(n) = new {
            *a = if n.flags & SS_DISABLE != 0 {
                (0, SS_DISABLE, 0)
            } else {
                (n.sp, 0, n.size)
            };
        }
        prev
    });
    if old != 0 {
        let o = StackT {
            sp: prev.0,
            flags: prev.1,
            _pad: 0,
            size: prev.2,
        };
        write_user(old, &o)?;
    }
    Ok(0)
}

/// A signal to the calling process (`kill`, `tkill`, `tgkill` of itself): its default action,
/// unless the program ignores it. No handler is ever run.
fn kill(ut: &UserThread, pid: u64, sig: u64, tid: Option<u64>) -> Result {
    if pid != ut.process.pid || tid.is_some_and(|t| t == 0 || t > i32::MAX as u64) {
        return Err(Errno::ESRCH);
    }
    if sig == 0 {
        return Ok(0);
    }
    let i = check_signal(sig)?;
    const SIG_IGN: u64 = 1;
    // Default action "ignore": SIGCHLD, SIGCONT, SIGURG, SIGWINCH.
    let ignored = matches!(sig, 17 | 18 | 23 | 28)
        || interrupts::without_interrupts(|| ut.process.sigactions.lock()[i][0] == SIG_IGN);
    if ignored && sig != signal::SIGKILL as u64 {
        return Ok(0);
    }
    ut.process.kill(Status::Killed(sig as i32));
    request_exit(ut, 128 + sig as i32)
}

fn uname(buf: u64) -> Result {
    let mut u = [[0u8; 65]; 6];
    let fields: [&[u8]; 6] = [
        b"Linux",
        b"mmkernel",
        b"6.8.0-mmkernel",
        b"#1 SMP",
        b"x86_64",
        b"(none)",
    ];
    for (f, v) in u.iter_mut().zip(fields) {
        f[..v.len()].copy_from_slice(v);
    }
    write_user(buf, &u)?;
    Ok(0)
}

/// `struct rlimit`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Rlimit {
    cur: u64,
    max: u64,
}

fn limit(resource: u64) -> Result<Rlimit> {
    const INFINITY: u64 = u64::MAX;
    match resource {
        // RLIMIT_STACK: 8 MiB soft, as a default Linux shell gives.
        3 => Ok(Rlimit {
            cur: 8 << 20,
            max: INFINITY,
        }),
        // RLIMIT_NOFILE.
        7 => Ok(Rlimit {
            cur: 1024,
            max: 4096,
        }),
        0..=15 => Ok(Rlimit {
            cur: INFINITY,
            max: INFINITY,
        }),
        _ => Err(Errno::EINVAL),
    }
}

fn getrlimit(resource: u64, old: u64) -> Result {
    write_user(old, &limit(resource)?)?;
    Ok(0)
}

/// Reports the limits; new ones are accepted and not enforced.
fn prlimit64(pid: u64, resource: u64, new: u64, old: u64) -> Result {
    let _ = pid;
    let l = limit(resource)?;
    if new != 0 {
        let _: Rlimit = read_user(new)?;
    }
    if old != 0 {
        write_user(old, &l)?;
    }
    Ok(0)
}

fn prctl(option: u64, arg: u64) -> Result {
    const PR_SET_NAME: u64 = 15;
    const PR_GET_NAME: u64 = 16;
    match option {
        PR_SET_NAME => {
            let _: [u8; 16] = read_user(arg)?;
            Ok(0)
        }
        PR_GET_NAME => {
            write_user(arg, &[0u8; 16])?;
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

fn arch_prctl(ut: &UserThread, code: u64, addr: u64) -> Result {
    const ARCH_SET_GS: u64 = 0x1001;
    const ARCH_SET_FS: u64 = 0x1002;
    const ARCH_GET_FS: u64 = 0x1003;
    const ARCH_GET_GS: u64 = 0x1004;
    match code {
        ARCH_SET_FS | ARCH_SET_GS if addr >= mm::pgtable::USER_END => Err(Errno::EPERM),
        ARCH_SET_FS => {
            ut.set_fs_base(addr);
            Ok(0)
        }
        ARCH_SET_GS => {
            ut.set_gs_base(addr);
            Ok(0)
        }
        ARCH_GET_FS => {
            write_user(addr, &ut.fs_base.load(Ordering::Relaxed))?;
            Ok(0)
        }
        ARCH_GET_GS => {
            write_user(addr, &ut.gs_base.load(Ordering::Relaxed))?;
            Ok(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

/// `struct timespec`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

impl Timespec {
    fn to_ns(self) -> Result<u64> {
        if self.sec < 0 || !(0..1_000_000_000).contains(&self.nsec) {
            return Err(Errno::EINVAL);
        }
        Ok((self.sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(self.nsec as u64))
    }

    fn from_ns(ns: u64) -> Timespec {
        Timespec {
            sec: (ns / 1_000_000_000) as i64,
            nsec: (ns % 1_000_000_000) as i64,
        }
    }
}

const CLOCK_REALTIME: u64 = 0;
const CLOCK_MONOTONIC: u64 = 1;
const CLOCK_PROCESS_CPUTIME_ID: u64 = 2;
const CLOCK_THREAD_CPUTIME_ID: u64 = 3;

/// Nanoseconds on clock `clock`: the monotonic clocks count from boot, the real-time ones from
/// the epoch (the boot time the RTC gave plus the time since).
fn clock_ns(clock: u64) -> Result<u64> {
    let now = crate::arch::apic::now_ns();
    match clock {
        // REALTIME, REALTIME_COARSE, TAI.
        0 | 5 | 11 => Ok(super::exec::boot_epoch_ns() + now),
        // MONOTONIC, RAW, COARSE, BOOTTIME; `clock_gettime` of the CPU-time clocks (2, 3) is
        // answered in `call`, which knows the caller.
        1..=4 | 6 | 7 => Ok(now),
        _ => Err(Errno::EINVAL),
    }
}

fn clock_gettime(clock: u64, tp: u64) -> Result {
    let ns = clock_ns(clock)?;
    write_user(tp, &Timespec::from_ns(ns))?;
    Ok(0)
}

/// Sleeps until `deadline` (`now_ns` time), or until the process is killed.
fn sleep_until(ut: &UserThread, deadline: u64) -> Result {
    loop {
        if ut.process.is_killed() {
            return Err(Errno::EINTR);
        }
        if crate::arch::apic::now_ns() >= deadline {
            return Ok(0);
        }
        crate::sched::block_current(Some(deadline), |_| !ut.process.is_killed());
    }
}

fn nanosleep(ut: &UserThread, req: u64, _abs: bool, _rem: u64) -> Result {
    let t: Timespec = read_user(req)?;
    let ns = t.to_ns()?;
    sleep_until(ut, crate::arch::apic::now_ns().saturating_add(ns))
}

fn clock_nanosleep(ut: &UserThread, clock: u64, flags: u64, req: u64) -> Result {
    const TIMER_ABSTIME: u64 = 1;
    if !matches!(clock, CLOCK_REALTIME | CLOCK_MONOTONIC | 7) {
        return Err(Errno::EINVAL);
    }
    let t: Timespec = read_user(req)?;
    let ns = t.to_ns()?;
    let now = crate::arch::apic::now_ns();
    let deadline = if flags & TIMER_ABSTIME != 0 {
        // An absolute time on `clock`, as a `now_ns` time.
        let clock_now = clock_ns(clock)?;
        now.saturating_add(ns.saturating_sub(clock_now))
    } else {
        now.saturating_add(ns)
    };
    sleep_until(ut, deadline)
}

fn futex(ut: &UserThread, a: [u64; 6]) -> Result {
    const FUTEX_WAIT: u64 = 0;
    const FUTEX_WAKE: u64 = 1;
    const FUTEX_REQUEUE: u64 = 3;
    const FUTEX_CMP_REQUEUE: u64 = 4;
    const FUTEX_WAIT_BITSET: u64 = 9;
    const FUTEX_WAKE_BITSET: u64 = 10;
    const FUTEX_PRIVATE: u64 = 128;
    const FUTEX_CLOCK_REALTIME: u64 = 256;
    let [addr, op, val, timeout, uaddr2, val3] = a;
    let cmd = op & !(FUTEX_PRIVATE | FUTEX_CLOCK_REALTIME);
    if addr & 3 != 0 {
        return Err(Errno::EINVAL);
    }
    let mm = ut.process.mm();
    match cmd {
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            let bitset = if cmd == FUTEX_WAIT {
                u32::MAX
            } else {
                val3 as u32
            };
            if bitset == 0 {
                return Err(Errno::EINVAL);
            }
            let deadline = if timeout == 0 {
                None
            } else {
                let t: Timespec = read_user(timeout)?;
                let ns = t.to_ns()?;
                let now = crate::arch::apic::now_ns();
                Some(if cmd == FUTEX_WAIT {
                    // Relative, on the monotonic clock.
                    now.saturating_add(ns)
                } else {
                    let clock = if op & FUTEX_CLOCK_REALTIME != 0 {
                        CLOCK_REALTIME
                    } else {
                        CLOCK_MONOTONIC
                    };
                    now.saturating_add(ns.saturating_sub(clock_ns(clock)?))
                })
            };
            match futex::wait(mm, addr, val as u32, bitset, deadline, || {
                ut.process.is_killed()
            }) {
                Ok(()) => Ok(0),
                Err(WaitError::Again) => Err(Errno::EAGAIN),
                Err(WaitError::TimedOut) => Err(Errno::ETIMEDOUT),
                Err(WaitError::Interrupted) => Err(Errno::EINTR),
                Err(WaitError::Fault) => Err(Errno::EFAULT),
            }
        }
        FUTEX_WAKE | FUTEX_WAKE_BITSET => {
            let bitset = if cmd == FUTEX_WAKE {
                u32::MAX
            } else {
                val3 as u32
            };
            if bitset == 0 {
                return Err(Errno::EINVAL);
            }
            Ok(futex::wake(mm, addr, (val as u32).min(i32::MAX as u32) as usize, bitset) as u64)
        }
        FUTEX_REQUEUE | FUTEX_CMP_REQUEUE => {
            // The fourth argument is a count here, not a timeout.
            let (n_wake, n_requeue) = (val as i32, timeout as i32);
            if n_wake < 0 || n_requeue < 0 || uaddr2 & 3 != 0 {
                return Err(Errno::EINVAL);
            }
            let expected = (cmd == FUTEX_CMP_REQUEUE).then_some(val3 as u32);
            match futex::requeue(
                mm,
                addr,
                uaddr2,
                n_wake as usize,
                n_requeue as usize,
                expected,
            ) {
                Ok(n) => Ok(n as u64),
                Err(WaitError::Again) => Err(Errno::EAGAIN),
                Err(_) => Err(Errno::EFAULT),
            }
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// Random bytes (RDRAND where the CPU has it, else a TSC-seeded generator: not for secrets).
fn getrandom(buf: u64, len: u64) -> Result {
    if !access_ok(buf, len as usize) {
        return Err(Errno::EFAULT);
    }
    let mut done = 0;
    while done < len {
        let word = super::exec::random_u64().to_le_bytes();
        let n = (len - done).min(8) as usize;
        copy_to_user(buf + done, &word[..n])?;
        done += n as u64;
    }
    Ok(len)
}

/// `clone` for threads: the new thread shares everything and starts where the caller returns,
/// with `rax` 0 and the given stack and thread pointer. Other flag sets (a new process) are not
/// supported yet.
fn clone(ut: &Arc<UserThread>, frame: &TrapFrame, a: [u64; 6]) -> Result {
    const CLONE_VM: u64 = 0x100;
    const CLONE_FS: u64 = 0x200;
    const CLONE_FILES: u64 = 0x400;
    const CLONE_SIGHAND: u64 = 0x800;
    const CLONE_THREAD: u64 = 0x10000;
    const CLONE_SYSVSEM: u64 = 0x40000;
    const CLONE_SETTLS: u64 = 0x80000;
    const CLONE_PARENT_SETTID: u64 = 0x10_0000;
    const CLONE_CHILD_CLEARTID: u64 = 0x20_0000;
    const CLONE_DETACHED: u64 = 0x40_0000;
    const CLONE_CHILD_SETTID: u64 = 0x100_0000;
    const THREAD: u64 = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD;
    const ALLOWED: u64 = THREAD
        | CLONE_SYSVSEM
        | CLONE_SETTLS
        | CLONE_PARENT_SETTID
        | CLONE_CHILD_CLEARTID
        | CLONE_DETACHED
        | CLONE_CHILD_SETTID;
    let [flags, stack, ptid, ctid, tls, _] = a;
    // The low byte is the exit signal, which a thread does not have.
    let flags = flags & !0xff;
    if flags & THREAD != THREAD {
        // A new process (fork) or a half-shared task.
        return Err(if flags & CLONE_VM == 0 {
            Errno::ENOSYS
        } else {
            Errno::EINVAL
        });
    }
    if flags & !ALLOWED != 0 {
        return Err(Errno::EINVAL);
    }
    if flags & CLONE_SETTLS != 0 && tls >= mm::pgtable::USER_END {
        return Err(Errno::EPERM);
    }
    let tid = super::NEXT_TID.fetch_add(1, Ordering::Relaxed);
    if flags & CLONE_PARENT_SETTID != 0 {
        write_user(ptid, &(tid as u32))?;
    }
    if flags & CLONE_CHILD_SETTID != 0 {
        write_user(ctid, &(tid as u32))?;
    }
    let fpu = FpuState::snapshot().ok_or(Errno::ENOMEM)?;
    let tls = (flags & CLONE_SETTLS != 0).then_some(tls);
    let clear = if flags & CLONE_CHILD_CLEARTID != 0 {
        ctid
    } else {
        0
    };
    let start = ChildStart::new(ut, frame, stack, tls, clear);
    start_thread(&ut.process, tid, fpu, move |me| Ok(start.apply(me)))
        .map_err(|_| Errno::ENOMEM)?;
    Ok(tid)
}
