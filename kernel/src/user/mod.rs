//! User processes: programs in ring 3 with the Linux x86-64 system-call ABI.
//!
//! A [`UserProcess`] is an address space (a [`Process`]) plus what Linux keeps per process: its
//! pid, its threads, how it ended, its program break, signal dispositions, and its console
//! output. A user thread is a scheduler thread whose [`UserThread`] context carries the user-side
//! registers the CPU does not save on entry (FPU/SSE/AVX, the FS and GS bases); its kernel stack
//! holds the saved user registers ([`TrapFrame`]) at its top whenever it is in the kernel.
//!
//! # Ending
//! A process ends when its last thread does. `exit` ends one thread; `exit_group`, a fatal
//! exception or a fatal signal to itself ends them all: the process is marked killed, every
//! thread of it is woken from an interruptible wait (futex, sleep), and each thread leaves at its
//! next return to ring 3 (`return_to_user`). Nothing is delivered to a user signal handler:
//! dispositions are recorded and reported back, and a fatal signal ends the process as its
//! default action would.
//!
//! # Console
//! Writes to fds 1 and 2 go to the serial log one line at a time, as `user <pid> out| <line>`
//! (or `err|`); a process's start and end are logged as `user <pid> start <argv...>` and
//! `user <pid> exit <code>` or `user <pid> killed <signal>`; a process made by `fork` starts
//! with `user <pid> fork <parent pid>` instead. Test drivers compare these lines with the same
//! program's output on Linux (a forked process's lines count as its program's).
//!
//! # Processes
//! `fork` (and `clone` without `CLONE_VM`, see `fork`) makes a child that the parent reaps with
//! `wait4`/`waitid`. A process's memory is freed when its last thread exits (`exit_mmap`), so
//! an unreaped child (a zombie) holds only its record and an empty address space. A parent
//! that ends first leaves its children running, parented to nothing
//! (`getppid` then gives 0, as for a program the kernel started); [`wait_all`] waits for every
//! process, so the kernel can check that all frames came back.

mod exec;
mod fork;
mod futex;
mod resources;
mod syscall;

use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use mm::fault::Access;
use spin::Mutex;
use x86_64::instructions::interrupts;

use crate::arch::fpu::FpuState;
use crate::arch::idt::{Exception, UserEntry};
use crate::arch::trap::TrapFrame;
use crate::platform::Mm;
use crate::process::Process;
use crate::sched::{self, Thread, UserContext, WaitQueue};

pub use exec::{ExecError, spawn_program};
pub use fork::wait_all;

/// Signal numbers the kernel itself raises.
pub mod signal {
    pub const SIGILL: i32 = 4;
    pub const SIGTRAP: i32 = 5;
    pub const SIGABRT: i32 = 6;
    pub const SIGBUS: i32 = 7;
    pub const SIGFPE: i32 = 8;
    pub const SIGKILL: i32 = 9;
    pub const SIGSEGV: i32 = 11;
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `exit`/`exit_group` with this code (the low 8 bits, as `wait` reports it).
    Exited(i32),
    /// Ended by this signal's default action.
    Killed(i32),
}

/// Pids and tids: one number space, as on Linux; a process's pid is its first thread's tid.
static NEXT_TID: AtomicU64 = AtomicU64::new(1);

/// A process running a user program.
pub struct UserProcess {
    pid: u64,
    name: String,
    process: Arc<Process>,
    /// Threads started and not yet exited.
    live: AtomicUsize,
    /// Its running threads (to wake them when it is killed): each adds itself when it starts and
    /// leaves at exit, so the list never outlives them (it would keep their address space).
    threads: Mutex<Vec<Arc<Thread>>>,
    /// Set once the process must end; every thread leaves at its next return to ring 3.
    killed: AtomicBool,
    /// How it ends: the first `exit_group` or fatal signal decides.
    status: Mutex<Option<Status>>,
    /// The last thread is gone (`status` is final).
    done: AtomicBool,
    /// Who waits for `done`.
    waiters: WaitQueue,
    /// Unfinished output lines of fds 1 and 2.
    console: Mutex<[Vec<u8>; 2]>,
    /// Bytes written to fds 1 and 2 in all.
    written: AtomicU64,
    /// Recorded signal dispositions (`rt_sigaction`), 32 bytes each as the kernel ABI has them.
    sigactions: Mutex<[[u64; 4]; 64]>,
    /// What its exited threads counted (`getrusage(RUSAGE_SELF)` adds the live ones' counts).
    /// Updated under the `threads` lock as a thread leaves the list, so a sum taken under that
    /// lock counts every thread once.
    exited: Mutex<Usage>,
    /// The process that forked it (none for a program the kernel started); its pid is
    /// `getppid` while it lives.
    parent: Option<Weak<UserProcess>>,
    /// Children not yet reaped by `wait4`/`waitid` (see `fork`).
    children: Mutex<Vec<Arc<UserProcess>>>,
    /// Where `wait4`/`waitid` wait for a child to end.
    child_exit: WaitQueue,
}

/// Resource usage counts, as `getrusage` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Page faults resolved without I/O (`ru_minflt`).
    pub min_flt: u64,
    /// CPU time, ns (user and kernel together: the kernel does not tell them apart).
    pub cpu_ns: u64,
}

impl Usage {
    /// What `t` has counted so far (`now`: `apic::now_ns` time).
    pub(crate) fn of(t: &Thread, now: u64) -> Usage {
        Usage {
            min_flt: t.min_flt(),
            cpu_ns: t.cpu_time_ns(now),
        }
    }

    fn add(&mut self, o: Usage) {
        self.min_flt += o.min_flt;
        self.cpu_ns += o.cpu_ns;
    }
}

impl UserProcess {
    fn new(name: &str) -> Result<Arc<UserProcess>, mm::frame::FrameAllocError> {
        Ok(Self::with_process(Process::new(name)?, None))
    }

    /// A process around `process` (its address space), forked by `parent` if any.
    fn with_process(process: Arc<Process>, parent: Option<Weak<UserProcess>>) -> Arc<UserProcess> {
        fork::LIVE.fetch_add(1, Ordering::AcqRel);
        let name = String::from(process.name());
        Arc::new(UserProcess {
            pid: NEXT_TID.fetch_add(1, Ordering::Relaxed),
            name,
            process,
            live: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            killed: AtomicBool::new(false),
            status: Mutex::new(None),
            done: AtomicBool::new(false),
            waiters: WaitQueue::new(),
            console: Mutex::new([Vec::new(), Vec::new()]),
            written: AtomicU64::new(0),
            sigactions: Mutex::new([[0; 4]; 64]),
            exited: Mutex::new(Usage::default()),
            parent,
            children: Mutex::new(Vec::new()),
            child_exit: WaitQueue::new(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u64 {
        self.pid
    }

    /// Its program's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address space.
    pub fn mm(&self) -> &Arc<Mm> {
        self.process.mm()
    }

    /// Bytes the program has written to its standard output and error.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Blocks until the process has ended; gives how.
    pub fn wait(&self) -> Status {
        self.waiters
            .wait_while(|| !self.done.load(Ordering::Acquire));
        self.status.lock().expect("a finished process has a status")
    }

    /// The process must end with `status` (unless something already decided how): marks it,
    /// and wakes its threads from interruptible waits so they leave.
    fn kill(&self, status: Status) {
        interrupts::without_interrupts(|| {
            let mut s = self.status.lock();
            if s.is_none() {
                *s = Some(status);
            }
        });
        self.killed.store(true, Ordering::Release);
        let threads: Vec<Arc<Thread>> =
            interrupts::without_interrupts(|| self.threads.lock().clone());
        // A thread running on another CPU is sent into the kernel (a reschedule IPI), a blocked
        // one is woken (its wait re-checks and sees `killed`); each leaves at its return to user
        // mode.
        threads.into_iter().for_each(sched::kick);
    }

    /// What all its threads, live and exited, have counted (`getrusage(RUSAGE_SELF)`).
    pub(crate) fn usage(&self) -> Usage {
        let now = crate::arch::apic::now_ns();
        interrupts::without_interrupts(|| {
            let threads = self.threads.lock();
            let mut u = *self.exited.lock();
            for t in threads.iter() {
                u.add(Usage::of(t, now));
            }
            u
        })
    }

    /// Its live thread with id `tid`.
    pub(crate) fn thread(&self, tid: u64) -> Option<Arc<Thread>> {
        let threads = interrupts::without_interrupts(|| self.threads.lock().clone());
        threads.into_iter().find(|t| {
            t.user()
                .and_then(|u| {
                    let u: &dyn core::any::Any = &**u;
                    u.downcast_ref::<UserThread>()
                })
                .is_some_and(|u| u.tid == tid)
        })
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Appends `bytes` written to fd `fd` (1 or 2) and logs every line completed.
    fn console_write(&self, fd: usize, bytes: &[u8]) {
        self.written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        interrupts::without_interrupts(|| {
            let mut c = self.console.lock();
            let buf = &mut c[fd - 1];
            buf.extend_from_slice(bytes);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                self.log_line(fd, &line[..nl]);
            }
        });
    }

    fn log_line(&self, fd: usize, line: &[u8]) {
        let tag = if fd == 1 { "out" } else { "err" };
        crate::serial_println!("user {} {tag}| {}", self.pid, String::from_utf8_lossy(line));
    }

    /// The last thread left: flush the console, log how it ended, wake waiters.
    fn finish(&self, last_code: i32) {
        let status = interrupts::without_interrupts(|| {
            let mut c = self.console.lock();
            for fd in 1..=2 {
                let rest = core::mem::take(&mut c[fd - 1]);
                if !rest.is_empty() {
                    self.log_line(fd, &rest);
                }
            }
            *self
                .status
                .lock()
                .get_or_insert(Status::Exited(last_code & 0xff))
        });
        match status {
            Status::Exited(code) => crate::serial_println!("user {} exit {code}", self.pid),
            Status::Killed(sig) => crate::serial_println!("user {} killed {sig}", self.pid),
        }
        self.done.store(true, Ordering::Release);
        self.waiters.wake_all();
        if let Some(parent) = self.parent.as_ref().and_then(Weak::upgrade) {
            parent.child_exit.wake_all();
        }
        fork::process_ended();
    }
}

impl Drop for UserProcess {
    fn drop(&mut self) {
        // Made but never started (a spawn or fork that failed half-way): it ends here.
        if !self.done.load(Ordering::Acquire) {
            fork::process_ended();
        }
    }
}

/// The user side of a user thread.
pub struct UserThread {
    tid: u64,
    process: Arc<UserProcess>,
    fpu: FpuState,
    fs_base: AtomicU64,
    gs_base: AtomicU64,
    /// `set_tid_address`/`CLONE_CHILD_CLEARTID`: zeroed and futex-woken at exit.
    clear_child_tid: AtomicU64,
    /// The blocked-signal mask (`rt_sigprocmask`).
    sigmask: AtomicU64,
    /// The alternate signal stack (`sigaltstack`): sp, flags, size.
    altstack: Mutex<(u64, i32, u64)>,
    /// The exit code a system call asked the thread to end with (`syscall::NO_EXIT`: none).
    exit_request: core::sync::atomic::AtomicI64,
}

/// `SS_DISABLE`: no alternate signal stack.
const SS_DISABLE: i32 = 2;

impl UserThread {
    fn new(process: Arc<UserProcess>, tid: u64, fpu: FpuState) -> Arc<UserThread> {
        Arc::new(UserThread {
            tid,
            process,
            fpu,
            fs_base: AtomicU64::new(0),
            gs_base: AtomicU64::new(0),
            clear_child_tid: AtomicU64::new(0),
            sigmask: AtomicU64::new(0),
            altstack: Mutex::new((0, SS_DISABLE, 0)),
            exit_request: core::sync::atomic::AtomicI64::new(syscall::NO_EXIT),
        })
    }

    /// Sets the FS base (the thread pointer), now and at every switch to this thread.
    fn set_fs_base(&self, base: u64) {
        self.fs_base.store(base, Ordering::Relaxed);
        x86_64::registers::model_specific::FsBase::write(x86_64::VirtAddr::new(base));
    }

    /// Sets the user GS base (kept in `KERNEL_GS_BASE` while the kernel runs).
    fn set_gs_base(&self, base: u64) {
        self.gs_base.store(base, Ordering::Relaxed);
        x86_64::registers::model_specific::KernelGsBase::write(x86_64::VirtAddr::new(base));
    }
}

impl UserContext for UserThread {
    fn switch_out(&self) {
        // SAFETY: the CPU switching away runs this thread: its registers are the thread's, and
        // no other CPU uses the area until this one clears `on_cpu`.
        unsafe { self.fpu.save() };
    }

    fn switch_in(&self) {
        // SAFETY: the CPU is about to run this thread; the CPU that saved the area released it
        // (`on_cpu`) before this one started the switch.
        unsafe { self.fpu.restore() };
        x86_64::registers::model_specific::FsBase::write(x86_64::VirtAddr::new(
            self.fs_base.load(Ordering::Relaxed),
        ));
        x86_64::registers::model_specific::KernelGsBase::write(x86_64::VirtAddr::new(
            self.gs_base.load(Ordering::Relaxed),
        ));
    }
}

/// How a new thread (`clone` of a thread) or process (`fork`) starts, as Linux starts it: the
/// creator's registers with `rax` 0 and the new stack if one is given, the creator's FS base or
/// the new TLS, its GS base and signal mask, and the `clear_child_tid` word.
#[derive(Clone, Copy)]
pub(crate) struct ChildStart {
    regs: TrapFrame,
    fs_base: u64,
    gs_base: u64,
    sigmask: u64,
    clear_child_tid: u64,
}

impl ChildStart {
    /// The start of a child of the calling thread `ut`, whose system call entered with `frame`.
    pub(crate) fn new(
        ut: &UserThread,
        frame: &TrapFrame,
        stack: u64,
        tls: Option<u64>,
        clear_child_tid: u64,
    ) -> ChildStart {
        let mut regs = *frame;
        regs.rax = 0;
        if stack != 0 {
            regs.rsp = stack;
        }
        ChildStart {
            regs,
            fs_base: tls.unwrap_or_else(|| ut.fs_base.load(Ordering::Relaxed)),
            gs_base: ut.gs_base.load(Ordering::Relaxed),
            sigmask: ut.sigmask.load(Ordering::Relaxed),
            clear_child_tid,
        }
    }

    /// Sets it up on the new thread `me`, running; returns the frame to enter ring 3 with.
    pub(crate) fn apply(self, me: &UserThread) -> TrapFrame {
        me.set_fs_base(self.fs_base);
        me.set_gs_base(self.gs_base);
        me.clear_child_tid
            .store(self.clear_child_tid, Ordering::Relaxed);
        me.sigmask.store(self.sigmask, Ordering::Relaxed);
        self.regs
    }
}

/// The calling thread's user side (`None` in a kernel thread).
fn current() -> Option<Arc<UserThread>> {
    sched::with_current(|t| {
        let ctx: Arc<dyn UserContext> = t.user()?.clone();
        let any: Arc<dyn core::any::Any + Send + Sync> = ctx;
        any.downcast::<UserThread>().ok()
    })
}

/// Starts a user thread of `process` that enters ring 3 with `frame` (built by `make_frame` on
/// the new thread, so a program can be loaded there first).
fn start_thread(
    process: &Arc<UserProcess>,
    tid: u64,
    fpu: FpuState,
    setup: impl FnOnce(&UserThread) -> Result<TrapFrame, ()> + Send + 'static,
) -> Result<(), crate::memory::stack::StackError> {
    let ut = UserThread::new(process.clone(), tid, fpu);
    let mut setup = Some(setup);
    let me = ut.clone();
    process.live.fetch_add(1, Ordering::Relaxed);
    // Like a new Linux task, the thread inherits the affinity of the thread that starts it.
    let allowed = sched::with_current(|t| t.allowed());
    let started = sched::start(
        alloc::format!("{}/{tid}", process.name),
        allowed,
        Some(process.mm().clone()),
        Some(ut),
        alloc::boxed::Box::new(move || {
            let setup = setup.take().expect("a thread starts once");
            let thread = sched::current();
            interrupts::without_interrupts(|| me.process.threads.lock().push(thread));
            let frame = match setup(&me) {
                Ok(frame) => frame,
                Err(()) => exit_thread(127),
            };
            if me.process.is_killed() {
                exit_thread(0);
            }
            let top = sched::with_current(|t| t.stack_top());
            // The scheduler loaded `top` into the TSS and `kernel_rsp` at the switch to us.
            // SAFETY: `top` is our kernel stack's top; a ring-3 frame; nothing below returns.
            unsafe { crate::arch::trap::enter_user(&frame, top) }
        }),
    );
    match started {
        // User threads are never joined: their process is waited on.
        Ok(handle) => {
            drop(handle.detach());
            Ok(())
        }
        Err(e) => {
            process.live.fetch_sub(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Ends the calling user thread (Linux's `do_exit` for one thread): the `clear_child_tid` word
/// is zeroed and then futex-woken, in that order (a joiner waits on it), and the process ends if
/// this was its last thread.
fn exit_thread(code: i32) -> ! {
    interrupts::enable();
    let ut = current().expect("exit_thread in a user thread");
    let ctid = ut.clear_child_tid.load(Ordering::Relaxed);
    if ctid != 0 && crate::arch::uaccess::write_user(ctid, &0u32).is_ok() {
        futex::wake(ut.process.mm(), ctid, 1, u32::MAX);
    }
    let p = ut.process.clone();
    let me = sched::current();
    let now = crate::arch::apic::now_ns();
    interrupts::without_interrupts(|| {
        let mut threads = p.threads.lock();
        threads.retain(|t| !Arc::ptr_eq(t, &me));
        p.exited.lock().add(Usage::of(&me, now));
    });
    let last = p.live.fetch_sub(1, Ordering::AcqRel) == 1;
    drop(me);
    drop(ut);
    if last {
        // Linux's `exit_mm`: the memory goes now, not when the parent reaps the process (a
        // zombie keeps only this record and the empty address space's root, which this CPU
        // runs on until it switches away). Before `finish`, so a parent woken by it sees the
        // memory gone.
        p.mm().exit_mmap();
        p.finish(code);
    }
    drop(p);
    sched::exit(i64::from(code))
}

/// Ends the calling thread's process by signal `sig`'s default action, after logging `what`.
fn die(frame: &TrapFrame, sig: i32, what: core::fmt::Arguments<'_>) -> ! {
    let ut = current().expect("a ring-3 fault in a user thread");
    crate::warn!(
        "pid {} tid {}: {what}, rip {:#x}; process killed",
        ut.process.pid,
        ut.tid,
        frame.rip
    );
    ut.process.kill(Status::Killed(sig));
    drop(ut);
    exit_thread(128 + sig)
}

/// A page fault in ring 3 that `mm` could not resolve (or a ring-3 access to the kernel half):
/// the process ends as SIGSEGV's default action would, with one log line.
pub(crate) fn segv(frame: &TrapFrame, addr: u64, why: &str, access: Access) -> ! {
    die(
        frame,
        signal::SIGSEGV,
        format_args!(
            "segmentation fault at {addr:#x} ({} access, {why})",
            match access.kind {
                mm::fault::AccessKind::Read => "read",
                mm::fault::AccessKind::Write => "write",
                mm::fault::AccessKind::Exec => "exec",
            }
        ),
    )
}

/// Any other exception in ring 3: the signal Linux would send, and its default action.
fn exception(frame: &mut TrapFrame, e: Exception) -> ! {
    let sig = match e.vector {
        0 | 16 | 19 => signal::SIGFPE,
        1 | 3 => signal::SIGTRAP,
        6 => signal::SIGILL,
        17 => signal::SIGBUS,
        _ => signal::SIGSEGV,
    };
    die(
        frame,
        sig,
        format_args!("{} (error {:#x}) in user mode", e.name, e.error),
    )
}

/// Before every return to ring 3: a killed process's threads leave here.
fn return_to_user(_frame: &mut TrapFrame) {
    let killed = sched::with_current(|t| {
        let u: &dyn core::any::Any = &**t.user()?;
        Some(u.downcast_ref::<UserThread>()?.process.is_killed())
    });
    if killed == Some(true) {
        exit_thread(0)
    }
}

/// Installs the ring-3 entry points.
pub fn init() {
    static ENTRY: UserEntry = UserEntry {
        syscall: syscall::dispatch,
        exception,
        return_to_user,
    };
    crate::arch::idt::set_user_entry(&ENTRY);
    crate::process::set_user_segv(segv);
}
