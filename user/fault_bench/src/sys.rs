//! The system calls the workloads make, through `libc`: anonymous mappings (mmap, madvise,
//! mprotect, munmap), CPU affinity, per-thread fault counts, and what the header reports about
//! the machine. All `unsafe` of the program is here.

use std::fmt;
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};

/// A failed system call.
#[derive(Debug)]
pub struct SysError {
    pub call: &'static str,
    pub err: io::Error,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, self.err)
    }
}

fn check(call: &'static str, ret: libc::c_int) -> Result<(), SysError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(SysError {
            call,
            err: io::Error::last_os_error(),
        })
    }
}

/// The page size the workloads touch at.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; any name is allowed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// A private anonymous read-write mapping, without transparent huge pages, unmapped on drop.
///
/// # Invariants
/// `addr..addr + len` is mapped readable and writable by this value alone, until it is dropped
/// or [`Mapping::unmap`]ped; `len` is a non-zero multiple of the page size. The address is kept
/// as an integer: threads touch disjoint pages of one mapping through `&Mapping`.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes (rounded up to pages) and asks for small pages (`MADV_NOHUGEPAGE`), so
    /// that every page touched is one fault.
    pub fn anonymous(len: usize) -> Result<Mapping, SysError> {
        let page = page_size();
        let len = len.max(1).div_ceil(page) * page;
        // SAFETY: a new anonymous mapping at an address of the kernel's choice touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SysError {
                call: "mmap",
                err: io::Error::last_os_error(),
            });
        }
        // INVARIANT: mmap succeeded for `len` bytes, a multiple of the page size.
        let m = Mapping {
            addr: p as usize,
            len,
        };
        m.advise(0, len, libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)")?;
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes one byte at `offset`, faulting its page in if it is not present.
    ///
    /// # Panics
    /// If `offset` is outside the mapping (a bug of the caller, not of its input).
    #[inline(always)]
    pub fn touch(&self, offset: usize) {
        assert!(
            offset < self.len,
            "touch at {offset:#x} outside {:#x}",
            self.len
        );
        // A volatile write is what makes the fault happen.
        // SAFETY: by the invariant the byte is mapped writable while `self` lives, and nothing
        // else in the program holds a reference into the mapping.
        unsafe { ((self.addr + offset) as *mut u8).write_volatile(1) }
    }

    /// `madvise(MADV_DONTNEED)` on `offset..offset + len`: the pages go away, the next touch
    /// faults a zeroed page in again.
    pub fn dontneed(&self, offset: usize, len: usize) -> Result<(), SysError> {
        self.advise(offset, len, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)")
    }

    /// `mprotect` on `offset..offset + len` (page-aligned).
    pub fn protect(&self, offset: usize, len: usize, prot: libc::c_int) -> Result<(), SysError> {
        self.check_range(offset, len);
        // SAFETY: the range lies inside the mapping this value owns (checked above); no Rust
        // reference points into it, so changing its protection breaks nothing.
        let ret = unsafe { libc::mprotect((self.addr + offset) as *mut libc::c_void, len, prot) };
        check("mprotect", ret)
    }

    /// Unmaps, reporting a failure (a drop cannot).
    pub fn unmap(self) -> Result<(), SysError> {
        let this = ManuallyDrop::new(self);
        // SAFETY: the mapping is owned by `this`, which is never used again.
        let ret = unsafe { libc::munmap(this.addr as *mut libc::c_void, this.len) };
        check("munmap", ret)
    }

    fn advise(
        &self,
        offset: usize,
        len: usize,
        advice: libc::c_int,
        call: &'static str,
    ) -> Result<(), SysError> {
        self.check_range(offset, len);
        // The advice given here (MADV_NOHUGEPAGE, MADV_DONTNEED) only drops page contents.
        // SAFETY: the range lies inside the mapping this value owns, and nobody holds a
        // reference to its contents.
        let ret = unsafe { libc::madvise((self.addr + offset) as *mut libc::c_void, len, advice) };
        check(call, ret)
    }

    fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset:#x}+{len:#x} outside {:#x}",
            self.len
        );
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by `self`, which is going away.
        let ret = unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        debug_assert_eq!(ret, 0, "munmap of an owned mapping failed");
    }
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>, SysError> {
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), set.as_mut_ptr()) };
    check("sched_getaffinity", ret)?;
    // SAFETY: an all-zero cpu_set_t is valid, and the kernel filled it in.
    let set = unsafe { set.assume_init() };
    let cpus = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| {
            // SAFETY: CPU_ISSET reads bit `cpu` < CPU_SETSIZE of a valid set.
            unsafe { libc::CPU_ISSET(cpu, &set) }
        })
        .collect();
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<(), SysError> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: CPU_SET writes bit `cpu` of `set`; it checks the bound itself.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 names the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    check("sched_setaffinity", ret)
}

/// Minor faults the calling thread has taken so far (`getrusage(RUSAGE_THREAD)`).
pub fn thread_minor_faults() -> Result<u64, SysError> {
    let mut usage = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a writable rusage.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    check("getrusage", ret)?;
    // SAFETY: getrusage filled it in.
    let usage = unsafe { usage.assume_init() };
    Ok(u64::try_from(usage.ru_minflt).unwrap_or(0))
}

/// CPU time the calling thread has used so far, user and system, in ns.
pub fn thread_cpu_ns() -> Option<u64> {
    let mut ts = MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: `ts` is a writable timespec.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, ts.as_mut_ptr()) };
    if ret != 0 {
        return None;
    }
    // SAFETY: clock_gettime filled it in.
    let ts = unsafe { ts.assume_init() };
    Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?)
}

/// CPUs online.
pub fn online_cpus() -> Option<u64> {
    // SAFETY: sysconf reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).ok().filter(|&n| n > 0)
}

/// Total memory in MiB.
pub fn memory_mib() -> Option<u64> {
    let mut info = MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: `info` is a writable struct sysinfo.
    let ret = unsafe { libc::sysinfo(info.as_mut_ptr()) };
    if ret != 0 {
        return None;
    }
    // SAFETY: sysinfo filled it in.
    let info = unsafe { info.assume_init() };
    Some((info.totalram * u64::from(info.mem_unit.max(1))) >> 20)
}

/// What `uname` says about the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uname {
    pub sysname: String,
    pub nodename: String,
    pub release: String,
}

/// `uname()`, with fields that are not UTF-8 replaced lossily.
pub fn uname() -> Option<Uname> {
    let mut uts = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `uts` is a writable struct utsname.
    let ret = unsafe { libc::uname(uts.as_mut_ptr()) };
    if ret != 0 {
        return None;
    }
    // SAFETY: uname filled it in.
    let uts = unsafe { uts.assume_init() };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some(Uname {
        sysname: field(&uts.sysname),
        nodename: field(&uts.nodename),
        release: field(&uts.release),
    })
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> Option<String> {
    uname().map(|u| u.release)
}
