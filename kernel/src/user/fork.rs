//! `fork`, `vfork`, `clone` without `CLONE_VM`, `wait4`, `waitid`, `getppid`.
//!
//! A fork copies the address space with `mm`'s `dup_mmap` (copy-on-write; out of memory fails
//! with `ENOMEM` and leaves the parent as it was) and starts one thread in the child with the
//! calling thread's registers (`rax` 0), FPU state, FS/GS bases and signal mask; the process
//! gets the parent's program break and signal dispositions. `vfork` is a plain fork: the
//! parent is not suspended, which a correct `vfork` caller cannot tell apart (it may only call
//! `_exit` or `execve` in the child). The exit signal (the low byte of `clone`'s flags) is not
//! delivered: no signal reaches a handler here, and SIGCHLD's default action is to ignore it.
//!
//! The parent keeps each child in its `children` until `wait4`/`waitid` reaps it. A parent that
//! ends first drops its list: its children run on, parented to nothing (`getppid` gives 0), and
//! nobody reaps them; [`wait_all`] still waits for them to end. There are no process groups:
//! `wait4`'s pid 0 and `-pgid` mean any child, as every process here is in one group.

use alloc::sync::Arc;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::instructions::interrupts;

use super::resources;
use super::syscall::Errno;
use super::{ChildStart, Status, UserProcess, UserThread, start_thread};
use crate::arch::fpu::FpuState;
use crate::arch::trap::TrapFrame;
use crate::arch::uaccess::write_user;
use crate::process::Process;
use crate::sched::WaitQueue;

type Result<T = u64> = core::result::Result<T, Errno>;

/// Processes made and not yet ended.
pub(super) static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Woken when a process ends.
static ENDED: WaitQueue = WaitQueue::new();

/// A process ended: counts it out of [`LIVE`].
pub(super) fn process_ended() {
    LIVE.fetch_sub(1, Ordering::AcqRel);
    ENDED.wake_all();
}

/// Blocks until every user process (also children nobody waits for) has ended.
pub fn wait_all() {
    ENDED.wait_while(|| LIVE.load(Ordering::Acquire) != 0);
}

const CLONE_VM: u64 = 0x100;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x10_0000;
const CLONE_CHILD_CLEARTID: u64 = 0x20_0000;
const CLONE_CHILD_SETTID: u64 = 0x100_0000;

/// Whether `clone` with `flags` asks for a new process (this module) rather than a thread.
pub(super) fn is_fork(flags: u64) -> bool {
    flags & (CLONE_VM | CLONE_THREAD | CLONE_SIGHAND) == 0
}

/// `fork()`: `clone(SIGCHLD, 0, ...)`.
pub(super) fn fork(ut: &Arc<UserThread>, frame: &TrapFrame) -> Result {
    const SIGCHLD: u64 = 17;
    clone_process(ut, frame, [SIGCHLD, 0, 0, 0, 0, 0])
}

/// `clone(flags, stack, ptid, ctid, tls)` without `CLONE_VM`: a new process. Supports the
/// flags Linux's `fork` paths use: the exit signal, `CLONE_VFORK` (as a fork),
/// `CLONE_SETTLS`, `CLONE_PARENT_SETTID` (in the parent), `CLONE_CHILD_SETTID` and
/// `CLONE_CHILD_CLEARTID` (in the child's copy of memory).
pub(super) fn clone_process(ut: &Arc<UserThread>, frame: &TrapFrame, a: [u64; 6]) -> Result {
    const ALLOWED: u64 = 0xff
        | CLONE_VFORK
        | CLONE_SETTLS
        | CLONE_PARENT_SETTID
        | CLONE_CHILD_CLEARTID
        | CLONE_CHILD_SETTID;
    let [flags, stack, ptid, ctid, tls, _] = a;
    if flags & !ALLOWED != 0 || flags & 0xff > 64 {
        return Err(Errno::EINVAL);
    }
    if flags & CLONE_SETTLS != 0 && tls >= mm::pgtable::USER_END {
        return Err(Errno::EPERM);
    }
    let parent = &ut.process;
    let mm = mm::AddressSpace::with_kernel_half(
        crate::platform::memory(),
        &crate::memory::kernel_half(),
    )
    .map_err(|_| Errno::ENOMEM)?;
    parent.mm().dup_mmap(&mm).map_err(|_| Errno::ENOMEM)?;
    let fpu = FpuState::snapshot().ok_or(Errno::ENOMEM)?;
    let child = UserProcess::with_process(
        Process::with_mm(parent.name(), mm),
        Some(Arc::downgrade(parent)),
    );
    *child.sigactions.lock() = interrupts::without_interrupts(|| *parent.sigactions.lock());
    let pid = child.pid;
    if flags & CLONE_PARENT_SETTID != 0 {
        // Linux writes it in the parent's memory before the child runs (and ignores a fault).
        let _ = write_user(ptid, &(pid as u32));
    }
    crate::serial_println!("user {pid} fork {}", parent.pid);
    let tls = (flags & CLONE_SETTLS != 0).then_some(tls);
    let clear = if flags & CLONE_CHILD_CLEARTID != 0 {
        ctid
    } else {
        0
    };
    let start = ChildStart::new(ut, frame, stack, tls, clear);
    let set_tid = (flags & CLONE_CHILD_SETTID != 0).then_some(ctid);
    interrupts::without_interrupts(|| parent.children.lock().push(child.clone()));
    let started = start_thread(&child, pid, fpu, move |me| {
        // In the child's address space: its copy of the word.
        if let Some(ctid) = set_tid {
            let _ = write_user(ctid, &(pid as u32));
        }
        Ok(start.apply(me))
    });
    if started.is_err() {
        // No thread ever ran: the process ends here, unreaped.
        interrupts::without_interrupts(|| {
            parent.children.lock().retain(|c| !Arc::ptr_eq(c, &child));
        });
        child.finish(0);
        return Err(Errno::ENOMEM);
    }
    Ok(pid)
}

/// `getppid()`: the parent's pid while it lives, else 0.
pub(super) fn getppid(ut: &UserThread) -> Result {
    Ok(ut
        .process
        .parent
        .as_ref()
        .and_then(|p| p.upgrade())
        .map_or(0, |p| p.pid))
}

const WNOHANG: u64 = 1;
const WEXITED: u64 = 4;
const WNOWAIT: u64 = 0x0100_0000;
/// Linux's `__WALL`, `__WCLONE`, `__WNOTHREAD`: accepted, meaningless without threads as
/// children.
const WAIT_LINUX_FLAGS: u64 = 0xe000_0000;

/// Which children a wait is for.
#[derive(Clone, Copy)]
enum Which {
    Any,
    Pid(u64),
}

/// A child that ended, reaped (or only looked at, `WNOWAIT`).
struct Reaped {
    pid: u64,
    status: Status,
    usage: super::Usage,
}

/// Waits (unless `nohang`) for a child matching `which` to end. `Ok(None)`: `nohang` and none
/// has ended yet.
fn wait_child(ut: &UserThread, which: Which, nohang: bool, reap: bool) -> Result<Option<Reaped>> {
    let p = &ut.process;
    let matches = |c: &UserProcess| match which {
        Which::Any => true,
        Which::Pid(pid) => c.pid == pid,
    };
    let found: RefCell<Option<Arc<UserProcess>>> = RefCell::new(None);
    let any = Cell::new(false);
    let scan = || {
        interrupts::without_interrupts(|| {
            let mut children = p.children.lock();
            any.set(children.iter().any(|c| matches(c)));
            let i = children
                .iter()
                .position(|c| matches(c) && c.done.load(Ordering::Acquire))?;
            Some(if reap {
                children.remove(i)
            } else {
                children[i].clone()
            })
        })
    };
    // Checked under the queue's lock, which the child's `finish` takes to wake us: an end
    // after the scan is not missed.
    p.child_exit.wait_while(|| {
        *found.borrow_mut() = scan();
        found.borrow().is_none() && any.get() && !nohang && !p.is_killed()
    });
    let (found, any) = (found.into_inner(), any.get());
    let Some(c) = found else {
        return if any && !p.is_killed() {
            Ok(None)
        } else if any {
            Err(Errno::EINTR)
        } else {
            Err(Errno::ECHILD)
        };
    };
    let status = interrupts::without_interrupts(|| *c.status.lock()).unwrap_or(Status::Exited(0));
    Ok(Some(Reaped {
        pid: c.pid,
        status,
        usage: c.usage(),
    }))
}

/// `wait4(pid, wstatus, options, rusage)`.
pub(super) fn wait4(ut: &UserThread, pid: u64, wstatus: u64, options: u64, rusage: u64) -> Result {
    if options & !(WNOHANG | WAIT_LINUX_FLAGS | 2 | 8) != 0 {
        return Err(Errno::EINVAL);
    }
    let which = match pid as i64 {
        p if p > 0 => Which::Pid(p as u64),
        i64::MIN => return Err(Errno::ESRCH),
        _ => Which::Any,
    };
    let Some(r) = wait_child(ut, which, options & WNOHANG != 0, true)? else {
        return Ok(0);
    };
    if wstatus != 0 {
        let w: u32 = match r.status {
            Status::Exited(code) => ((code & 0xff) as u32) << 8,
            Status::Killed(sig) => (sig & 0x7f) as u32,
        };
        write_user(wstatus, &w)?;
    }
    if rusage != 0 {
        resources::write_rusage(rusage, r.usage)?;
    }
    Ok(r.pid)
}

/// `waitid(idtype, id, infop, options)` for `P_ALL` and `P_PID` (and `P_PGID` as `P_ALL`:
/// one process group), `WEXITED` required.
pub(super) fn waitid(ut: &UserThread, idtype: u64, id: u64, infop: u64, options: u64) -> Result {
    const P_ALL: u64 = 0;
    const P_PID: u64 = 1;
    const P_PGID: u64 = 2;
    const SIGCHLD: i32 = 17;
    const CLD_EXITED: i32 = 1;
    const CLD_KILLED: i32 = 2;
    if options & WEXITED == 0
        || options & !(WNOHANG | WEXITED | WNOWAIT | 2 | 8 | WAIT_LINUX_FLAGS) != 0
    {
        return Err(Errno::EINVAL);
    }
    let which = match idtype {
        P_ALL | P_PGID => Which::Any,
        P_PID if id as i64 > 0 => Which::Pid(id),
        _ => return Err(Errno::EINVAL),
    };
    let got = wait_child(ut, which, options & WNOHANG != 0, options & WNOWAIT == 0)?;
    if infop != 0 {
        // `siginfo_t` (128 bytes): signo, errno, code, then pid, uid, status.
        let mut info = [0i32; 32];
        if let Some(r) = &got {
            info[0] = SIGCHLD;
            let (code, status) = match r.status {
                Status::Exited(c) => (CLD_EXITED, c & 0xff),
                Status::Killed(s) => (CLD_KILLED, s),
            };
            info[2] = code;
            info[4] = r.pid as i32;
            info[6] = status;
        }
        write_user(infop, &info)?;
    }
    Ok(0)
}
