//! Raw Linux system calls through the `syscall` instruction, with no C library in between: the
//! programs that probe argument checks (bad pointers, bad flags) must see exactly what the kernel
//! returns, not what a wrapper makes of it. All `unsafe` of the crate is here.
//!
//! Every call returns `Err(Errno)` for a return value in `-4095..=-1`, as Linux encodes errors.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::AtomicU64;

/// Linux x86-64 system call numbers used by the programs.
pub mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const MMAP: usize = 9;
    pub const MPROTECT: usize = 10;
    pub const MUNMAP: usize = 11;
    pub const BRK: usize = 12;
    pub const MREMAP: usize = 25;
    pub const WRITEV: usize = 20;
    pub const NANOSLEEP: usize = 35;
    pub const GETRUSAGE: usize = 98;
    pub const UNAME: usize = 63;
    pub const CLOCK_GETTIME: usize = 228;
    pub const GETRANDOM: usize = 318;
    pub const GETPID: usize = 39;
    pub const FORK: usize = 57;
    pub const WAIT4: usize = 61;
    pub const GETPPID: usize = 110;
    pub const EXIT_GROUP: usize = 231;
    pub const WAITID: usize = 247;
}

pub const PROT_READ: usize = 1;
pub const PROT_WRITE: usize = 2;
pub const PROT_EXEC: usize = 4;
pub const MAP_SHARED: usize = 0x01;
pub const MAP_PRIVATE: usize = 0x02;
pub const MAP_FIXED: usize = 0x10;
pub const MAP_ANONYMOUS: usize = 0x20;
pub const MAP_GROWSDOWN: usize = 0x100;
pub const MAP_NORESERVE: usize = 0x4000;
pub const MAP_POPULATE: usize = 0x8000;
pub const MAP_FIXED_NOREPLACE: usize = 0x10_0000;
pub const CLOCK_MONOTONIC: usize = 1;
pub const PAGE_SIZE: usize = 4096;

/// The lowest address of the kernel half: nothing at or above it is ever user-accessible.
pub const KERNEL_HALF: usize = 0xffff_8000_0000_0000;
/// A user-half address that no program here maps (far above where Linux and the kernel place
/// anything by default, far below the top of the user half).
pub const UNMAPPED_USER: usize = 0x1000_0000_0000;

/// A Linux error number, as a failed system call returns it (negated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The symbolic name of the numbers the programs can meet; `E?` for others (the number is
    /// printed beside it anyway).
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            4 => "EINTR",
            9 => "EBADF",
            10 => "ECHILD",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            19 => "ENODEV",
            22 => "EINVAL",
            25 => "ENOTTY",
            38 => "ENOSYS",
            75 => "EOVERFLOW",
            95 => "EOPNOTSUPP",
            110 => "ETIMEDOUT",
            _ => "E?",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// Formats a call's result the way every program prints it: `ok` or `ERRNAME(n)`; the value of a
/// success is left out, since it may be an address.
pub fn outcome<T>(r: &Result<T, Errno>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// Issues system call `nr` with six arguments and returns its raw result.
///
/// # Safety
/// The arguments must be valid for the call: whatever memory the kernel writes or unmaps through
/// them must not be memory the program still uses as something else.
pub unsafe fn syscall6(nr: usize, args: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments. The kernel clobbers rcx (return address) and
    // r11 (flags) only, and does not touch the user stack.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Splits a raw result into a value or the error Linux encodes in `-4095..=-1`.
fn result(ret: isize) -> Result<usize, Errno> {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// `mmap(addr, len, prot, flags, fd, off)`.
///
/// # Safety
/// With `MAP_FIXED`, `addr..addr + len` must hold nothing the program still uses.
pub unsafe fn mmap(
    addr: usize,
    len: usize,
    prot: usize,
    flags: usize,
    fd: isize,
    off: usize,
) -> Result<usize, Errno> {
    // SAFETY: the caller vouches for a MAP_FIXED range; otherwise the kernel picks a free one.
    result(unsafe { syscall6(nr::MMAP, [addr, len, prot, flags, fd as usize, off]) })
}

/// `munmap(addr, len)`.
///
/// # Safety
/// `addr..addr + len` must hold nothing the program still uses.
pub unsafe fn munmap(addr: usize, len: usize) -> Result<usize, Errno> {
    // SAFETY: the caller vouches for the range.
    result(unsafe { syscall6(nr::MUNMAP, [addr, len, 0, 0, 0, 0]) })
}

/// `mprotect(addr, len, prot)`.
///
/// # Safety
/// Nothing the program still uses in `addr..addr + len` may lose an access it relies on.
pub unsafe fn mprotect(addr: usize, len: usize, prot: usize) -> Result<usize, Errno> {
    // SAFETY: the caller vouches for the range.
    result(unsafe { syscall6(nr::MPROTECT, [addr, len, prot, 0, 0, 0]) })
}

pub const MREMAP_MAYMOVE: usize = 1;
pub const MREMAP_FIXED: usize = 2;
pub const MREMAP_DONTUNMAP: usize = 4;

/// `mremap(old, old_len, new_len, flags, new)`: the mapping's (new) address.
///
/// # Safety
/// Nothing the program still uses may be in `old..old + old_len` (it may move away or be cut),
/// nor with `MREMAP_FIXED` in `new..new + new_len` (it is replaced).
pub unsafe fn mremap(
    old: usize,
    old_len: usize,
    new_len: usize,
    flags: usize,
    new: usize,
) -> Result<usize, Errno> {
    // SAFETY: the caller vouches for both ranges.
    result(unsafe { syscall6(nr::MREMAP, [old, old_len, new_len, flags, new, 0]) })
}

/// `brk(addr)`: the new break, or the old one when the kernel refuses (Linux's raw `brk` never
/// returns an error number).
///
/// # Safety
/// Lowering the break must not drop memory the program (or its allocator) still uses.
pub unsafe fn brk(addr: usize) -> usize {
    // SAFETY: the caller vouches for what a lower break unmaps.
    unsafe { syscall6(nr::BRK, [addr, 0, 0, 0, 0, 0]) as usize }
}

/// The calling process's minor page faults so far (`getrusage(RUSAGE_SELF).ru_minflt`).
pub fn minor_faults() -> Result<u64, Errno> {
    // `struct rusage`: two `timeval`s, then 14 longs; `ru_minflt` is the fifth of those.
    let mut ru = [0u64; 18];
    // SAFETY: the kernel writes the 144 bytes of `ru`, which nothing else uses.
    result(unsafe { syscall6(nr::GETRUSAGE, [0, ru.as_mut_ptr() as usize, 0, 0, 0, 0]) })?;
    Ok(ru[8])
}

/// `write(fd, addr, len)` with a raw address: the kernel only reads `addr..addr + len`, and a bad
/// range gets `EFAULT`, so no address can harm the program.
pub fn write_raw(fd: usize, addr: usize, len: usize) -> Result<usize, Errno> {
    // SAFETY: write(2) reads user memory and writes none.
    result(unsafe { syscall6(nr::WRITE, [fd, addr, len, 0, 0, 0]) })
}

/// `writev(fd, iov, count)` with a raw `iovec` array address: the kernel only reads memory.
pub fn writev_raw(fd: usize, iov: usize, count: usize) -> Result<usize, Errno> {
    // SAFETY: writev(2) reads user memory and writes none.
    result(unsafe { syscall6(nr::WRITEV, [fd, iov, count, 0, 0, 0]) })
}

/// A system call whose only pointer argument is written by the kernel, aimed at an address the
/// program never maps (the kernel half, or [`UNMAPPED_USER`]): `nr` with `args`.
///
/// # Safety
/// Every address in `args` that the kernel writes to must be outside the program's own memory.
pub unsafe fn call_into_unmapped(nr: usize, args: [usize; 6]) -> Result<usize, Errno> {
    // SAFETY: the caller vouches that what the kernel may write is no memory of ours.
    result(unsafe { syscall6(nr, args) })
}

/// A private anonymous read-write mapping of whole pages, owned by this value and unmapped on
/// drop: memory that starts unpopulated, so that every first touch is a page fault.
///
/// # Invariants
/// `addr..addr + len` is mapped readable and writable, is used through this value only, and
/// `len` is a non-zero multiple of [`PAGE_SIZE`].
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Maps `pages` pages at an address of the kernel's choice.
    pub fn anonymous(pages: usize) -> Result<Mapping, Errno> {
        let len = pages.max(1) * PAGE_SIZE;
        // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
        let addr = unsafe {
            mmap(
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            )
        }?;
        // INVARIANT: the mapping succeeded, is new and is readable and writable.
        Ok(Mapping { addr, len })
    }

    /// The mapping's bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: by the invariant the range is mapped read-write and used only through `self`,
        // which this borrows exclusively.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    /// The mapping as 64-bit words that threads may share.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: by the invariant the range is mapped read-write, used only through `self`, and
        // page-aligned, so aligned for `AtomicU64`; atomics make shared access sound.
        unsafe {
            core::slice::from_raw_parts(self.addr as *const AtomicU64, self.len / size_of::<u64>())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is ours alone (invariant) and no borrow of it outlives `self`.
        // Nothing can be done about a failure at this point; the program's checks are done.
        let _ = unsafe { munmap(self.addr, self.len) };
    }
}

/// Reads the byte at `addr` with one `mov`, outside the compiler's view of memory: an address
/// the program may not read ends it with SIGSEGV right at that instruction.
///
/// # Safety
/// If `addr` is readable, no one may be writing it non-atomically at the same time.
pub unsafe fn load_byte(addr: usize) -> u8 {
    let v: u8;
    // SAFETY: the caller vouches for concurrent use; the instruction reads one byte and nothing
    // else, and an unreadable address ends the process before anything else happens.
    unsafe {
        asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr, v = out(reg_byte) v, options(nostack, readonly));
    }
    v
}

/// Writes `v` to the byte at `addr` with one `mov`: an address the program may not write ends it
/// with SIGSEGV right at that instruction.
///
/// # Safety
/// If `addr` is writable, the byte must not be in use by anything else of the program.
pub unsafe fn store_byte(addr: usize, v: u8) {
    // SAFETY: the caller vouches that the byte is free to change; the instruction writes it and
    // nothing else.
    unsafe {
        asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) v, options(nostack));
    }
}

/// Calls the code at `addr` as a function of no arguments (`call`): an address with no
/// executable mapping ends the process with SIGSEGV at the instruction fetch.
///
/// # Safety
/// If `addr` is executable, it must be a function that follows the C calling convention.
pub unsafe fn call_address(addr: usize) {
    // SAFETY: the caller vouches for what runs at `addr`; registers it may change are declared
    // clobbered by `clobber_abi`.
    unsafe {
        asm!("call {a}", a = in(reg) addr, clobber_abi("C"));
    }
}

/// `fork()`: the child's pid in the parent, 0 in the child.
///
/// # Safety
/// In a program with other threads the child must only make raw system calls (what the other
/// threads held locked stays locked in the child).
pub unsafe fn fork() -> Result<usize, Errno> {
    // SAFETY: no arguments; the caller keeps the child to what is safe after a fork.
    result(unsafe { syscall6(nr::FORK, [0; 6]) })
}

/// `wait4(pid, &status, options, NULL)`: the pid reaped and its wait status.
pub fn wait4(pid: isize, options: usize) -> Result<(usize, i32), Errno> {
    let mut status = 0i32;
    // SAFETY: the kernel writes the status word only, which lives for the call.
    let r = unsafe {
        syscall6(
            nr::WAIT4,
            [
                pid as usize,
                &mut status as *mut i32 as usize,
                options,
                0,
                0,
                0,
            ],
        )
    };
    result(r).map(|p| (p, status))
}

/// `waitid(idtype, id, &info, options)`: the 128-byte `siginfo_t` as 32 words.
pub fn waitid(idtype: usize, id: usize, options: usize) -> Result<[i32; 32], Errno> {
    let mut info = [0i32; 32];
    // SAFETY: the kernel writes the 128 bytes of `info`, which live for the call.
    let r = unsafe {
        syscall6(
            nr::WAITID,
            [idtype, id, info.as_mut_ptr() as usize, options, 0, 0],
        )
    };
    result(r).map(|_| info)
}

/// `getpid()`.
pub fn getpid() -> usize {
    // SAFETY: no arguments, no memory.
    unsafe { syscall6(nr::GETPID, [0; 6]) as usize }
}

/// `getppid()`.
pub fn getppid() -> usize {
    // SAFETY: no arguments, no memory.
    unsafe { syscall6(nr::GETPPID, [0; 6]) as usize }
}

/// `exit_group(code)` at once: no destructors, no buffered output flushed.
pub fn exit_group(code: i32) -> ! {
    // SAFETY: the call does not return.
    unsafe { syscall6(nr::EXIT_GROUP, [code as usize, 0, 0, 0, 0, 0]) };
    unreachable!("exit_group returned")
}
