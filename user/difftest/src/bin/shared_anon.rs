//! `MAP_SHARED | MAP_ANONYMOUS`: a shared mapping written by a forked child is seen by the
//! parent after `wait4`, and a private one is not; a shared mapping split by `mprotect` keeps
//! both halves shared; `MADV_DONTNEED` on a shared mapping drops only the mapping (the next read
//! gives the data back, as Linux's shmem does), on a private one the data; a read of an untouched
//! shared page is zero; `MAP_SHARED_VALIDATE` of anonymous memory, and a shared stack
//! (`MAP_GROWSDOWN`), are `EINVAL`. Prints facts only (no addresses, no pids).

use difftest::sys::{
    self, Errno, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ,
    PROT_WRITE, outcome,
};
use std::sync::atomic::{AtomicU64, Ordering};

const PAGES: usize = 8;
const RW: usize = PROT_READ | PROT_WRITE;
const MADVISE: usize = 28;
const MADV_DONTNEED: usize = 4;
const MAP_SHARED_VALIDATE: usize = 0x03;

/// A mapping of `PAGES` pages made by this program and never unmapped while used.
struct Region(usize);

impl Region {
    fn new(flags: usize) -> Result<Region, Errno> {
        // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
        unsafe { sys::mmap(0, PAGES * PAGE_SIZE, RW, flags | MAP_ANONYMOUS, -1, 0) }.map(Region)
    }

    /// The first word of page `i`.
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < PAGES);
        // SAFETY: page `i` is mapped readable (while the program reads it) and page-aligned;
        // only atomics touch it.
        unsafe { &*((self.0 + i * PAGE_SIZE) as *const AtomicU64) }
    }

    fn fill(&self, base: u64) {
        for i in 0..PAGES {
            self.word(i).store(base + i as u64, Ordering::Relaxed);
        }
    }

    fn holds(&self, base: u64) -> bool {
        (0..PAGES).all(|i| self.word(i).load(Ordering::Relaxed) == base + i as u64)
    }

    fn madvise_dontneed(&self) -> Result<usize, Errno> {
        // SAFETY: the range is this region's; its contents may go.
        let r =
            unsafe { sys::syscall6(MADVISE, [self.0, PAGES * PAGE_SIZE, MADV_DONTNEED, 0, 0, 0]) };
        if (-4095..0).contains(&r) {
            Err(Errno(-r as i32))
        } else {
            Ok(r as usize)
        }
    }
}

/// Forks a child that runs `f` and exits with its result; returns the child's exit code.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: single-threaded.
    let pid = unsafe { sys::fork() }.expect("fork");
    if pid == 0 {
        sys::exit_group(f());
    }
    let (_, status) = sys::wait4(pid as isize, 0).expect("wait4");
    (status >> 8) & 0xff
}

fn main() {
    let shared = Region::new(MAP_SHARED).expect("mmap shared");
    let private = Region::new(MAP_PRIVATE).expect("mmap private");
    println!(
        "untouched shared page reads zero: {}",
        shared.word(3).load(Ordering::Relaxed) == 0
    );
    shared.fill(100);
    private.fill(100);

    let code = in_child(|| {
        let inherited = shared.holds(100) && private.holds(100);
        shared.fill(200);
        private.fill(200);
        i32::from(inherited)
    });
    println!("child inherited both mappings: {}", code == 1);
    println!(
        "parent sees the child's writes to the shared mapping: {}",
        shared.holds(200)
    );
    println!("parent keeps its own private data: {}", private.holds(100));

    // The child writes first, then the parent: both see the last write, on every page.
    let code = in_child(|| {
        shared.fill(300);
        0
    });
    shared.fill(400);
    println!(
        "child exited {code}; parent's write after it lands: {}",
        shared.holds(400)
    );

    // Split by mprotect: the lower half read-only, the upper half read-write; both stay shared.
    // SAFETY: the range is the shared region's; it stays mapped.
    let r = unsafe { sys::mprotect(shared.0, PAGES / 2 * PAGE_SIZE, PROT_READ) };
    println!("mprotect of the lower half: {}", outcome(&r));
    let code = in_child(|| {
        let seen = shared.holds(400);
        for i in PAGES / 2..PAGES {
            shared.word(i).store(500 + i as u64, Ordering::Relaxed);
        }
        i32::from(seen)
    });
    let upper =
        (PAGES / 2..PAGES).all(|i| shared.word(i).load(Ordering::Relaxed) == 500 + i as u64);
    let lower = (0..PAGES / 2).all(|i| shared.word(i).load(Ordering::Relaxed) == 400 + i as u64);
    println!("child saw both halves: {}", code == 1);
    println!("upper half written by the child seen: {upper}; lower half kept: {lower}");
    // SAFETY: as above.
    let r = unsafe { sys::mprotect(shared.0, PAGES / 2 * PAGE_SIZE, RW) };
    println!("mprotect back to read-write: {}", outcome(&r));
    let code = in_child(|| {
        for i in 0..PAGES / 2 {
            shared.word(i).store(600 + i as u64, Ordering::Relaxed);
        }
        0
    });
    let lower = (0..PAGES / 2).all(|i| shared.word(i).load(Ordering::Relaxed) == 600 + i as u64);
    println!("child exited {code}; its writes to the rejoined lower half seen: {lower}");

    // DONTNEED drops the mapping only: the shared data comes back; the private data is gone.
    shared.fill(700);
    println!(
        "madvise DONTNEED shared: {}",
        outcome(&shared.madvise_dontneed())
    );
    println!("shared data after DONTNEED: {}", shared.holds(700));
    println!(
        "madvise DONTNEED private: {}",
        outcome(&private.madvise_dontneed())
    );
    println!(
        "private data after DONTNEED is zero: {}",
        (0..PAGES).all(|i| private.word(i).load(Ordering::Relaxed) == 0)
    );
    // A child that forks after the DONTNEED sees the shared data too.
    let code = in_child(|| i32::from(shared.holds(700)));
    println!("a later child sees the shared data: {}", code == 1);

    // SAFETY: no MAP_FIXED; a success is unmapped right away.
    let bad = |flags: usize| unsafe {
        let r = sys::mmap(0, PAGE_SIZE, RW, flags, -1, 0);
        if let Ok(a) = r {
            let _ = sys::munmap(a, PAGE_SIZE);
        }
        r.map(|_| 0)
    };
    println!(
        "MAP_SHARED_VALIDATE anonymous: {}",
        outcome(&bad(MAP_SHARED_VALIDATE | MAP_ANONYMOUS))
    );
    println!(
        "MAP_SHARED | MAP_GROWSDOWN: {}",
        outcome(&bad(MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN))
    );
}
