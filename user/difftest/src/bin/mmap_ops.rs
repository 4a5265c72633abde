//! mmap/munmap/mprotect through raw system calls: the argument checks (each result printed as
//! `ok` or `ERRNAME(n)`, as Linux returns it) and what the calls do to data. fd 0 must be open
//! for reading and not mappable (`/dev/null` or a terminal on Linux, the kernel's empty stdin).
//! fd 1 is left out: Linux refuses a private mapping of a write-only fd (a pipe's write end) with
//! `EACCES` before it asks whether the file can be mapped at all.

use difftest::sys::{
    self, Errno, KERNEL_HALF, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE,
    PROT_EXEC, PROT_READ, PROT_WRITE, UNMAPPED_USER, outcome,
};

const RW: usize = PROT_READ | PROT_WRITE;
const ANON: usize = MAP_PRIVATE | MAP_ANONYMOUS;

fn show(what: &str, r: Result<usize, Errno>) {
    println!("{what}: {}", outcome(&r));
}

/// mmap calls without MAP_FIXED that probe the argument checks: (what, len, prot, flags, fd, off).
#[rustfmt::skip]
const PROBES: &[(&str, usize, usize, usize, isize, usize)] = &[
    ("mmap len 0",                      0,                      RW,        ANON,              -1, 0),
    ("mmap offset not page-aligned",    PAGE_SIZE,              RW,        ANON,              -1, 1),
    ("mmap neither shared nor private", PAGE_SIZE,              RW,        MAP_ANONYMOUS,     -1, 0),
    ("mmap shared and private",         PAGE_SIZE,              RW,        ANON | MAP_SHARED, -1, 0),
    ("mmap unknown prot bit 0x10",      PAGE_SIZE,              RW | 0x10, ANON,              -1, 0),
    ("mmap file, fd -1",                PAGE_SIZE,              PROT_READ, MAP_PRIVATE,       -1, 0),
    ("mmap file, fd 99 not open",       PAGE_SIZE,              PROT_READ, MAP_PRIVATE,       99, 0),
    ("mmap file, fd 0 not mappable",    PAGE_SIZE,              PROT_READ, MAP_PRIVATE,        0, 0),
    ("mmap len 2^47",                   1 << 47,                RW,        ANON,              -1, 0),
    ("mmap len near 2^64",              usize::MAX - PAGE_SIZE, RW,        ANON,              -1, 0),
];

/// Whether bytes `0, 97, 194, ...` of the page at `page` hold `v`.
fn page_holds(page: usize, v: u8) -> bool {
    let load = |i| {
        // SAFETY: the callers pass readable pages of `base` that nothing writes meanwhile.
        unsafe { sys::load_byte(page + i) }
    };
    (0..PAGE_SIZE).step_by(97).all(|i| load(i) == v)
}

fn fill(page: usize, v: u8) {
    for i in (0..PAGE_SIZE).step_by(97) {
        // SAFETY: the callers pass writable pages of `base`, used by nothing else.
        unsafe { sys::store_byte(page + i, v) };
    }
}

fn main() {
    for &(what, len, prot, flags, fd, off) in PROBES {
        // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
        let r = unsafe { sys::mmap(0, len, prot, flags, fd, off) };
        show(what, r);
        if let Ok(a) = r {
            // SAFETY: the mapping was just made and nothing uses it.
            let _ = unsafe { sys::munmap(a, len) };
        }
    }
    let (odd, far, fixed) = (PAGE_SIZE + 1, 16 * PAGE_SIZE, ANON | MAP_FIXED);
    // SAFETY: each range is unaligned, empty, in the kernel half or unmapped: the calls are
    // refused or change nothing of ours.
    unsafe {
        show(
            "mmap fixed unaligned",
            sys::mmap(odd, PAGE_SIZE, RW, fixed, -1, 0),
        );
        show(
            "mmap fixed in kernel half",
            sys::mmap(KERNEL_HALF, PAGE_SIZE, RW, fixed, -1, 0),
        );
        show("munmap unaligned", sys::munmap(odd, PAGE_SIZE));
        show("munmap len 0", sys::munmap(far, 0));
        show("munmap kernel half", sys::munmap(KERNEL_HALF, PAGE_SIZE));
        show(
            "mprotect unaligned",
            sys::mprotect(odd, PAGE_SIZE, PROT_READ),
        );
        show("mprotect len 0", sys::mprotect(far, 0, PROT_READ));
        show(
            "mprotect unmapped",
            sys::mprotect(UNMAPPED_USER, PAGE_SIZE, PROT_READ),
        );
    }

    // Three pages, filled, then protected, cut and patched.
    // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
    let base = match unsafe { sys::mmap(0, 3 * PAGE_SIZE, RW, ANON, -1, 0) } {
        Ok(b) => b,
        Err(e) => return println!("mmap 3 pages: {e}"),
    };
    let page = |i: usize| base + i * PAGE_SIZE;
    let all = 3 * PAGE_SIZE;
    println!(
        "fresh pages read zero={}",
        (0..3).all(|i| page_holds(page(i), 0))
    );
    (0..3).for_each(|i| fill(page(i), 0xa0 + i as u8));
    let check = |what: &str, v: bool| println!("{what}={v}");
    // SAFETY: every range below lies in `base`'s three pages, which only this function uses, and
    // is accessed afterwards only as its new protection allows.
    unsafe {
        show(
            "mprotect bad bit 0x10",
            sys::mprotect(base, PAGE_SIZE, PROT_READ | 0x10),
        );
        show(
            "mprotect page 0 read-only",
            sys::mprotect(base, PAGE_SIZE, PROT_READ),
        );
        check("page 0 keeps its data", page_holds(page(0), 0xa0));
        show(
            "mprotect page 2 read+exec",
            sys::mprotect(page(2), PAGE_SIZE, PROT_READ | PROT_EXEC),
        );
        check("page 2 keeps its data", page_holds(page(2), 0xa2));
        show("munmap middle page", sys::munmap(page(1), PAGE_SIZE));
        show("mprotect across the hole", sys::mprotect(base, all, RW));
        check(
            "page 0 intact after failed mprotect",
            page_holds(page(0), 0xa0),
        );
        let r = sys::mmap(page(1), PAGE_SIZE, RW, fixed, -1, 0);
        check("mmap fixed into the hole at its address", r == Ok(page(1)));
        check("refilled hole reads zero", page_holds(page(1), 0));
        let r = sys::mmap(page(2), PAGE_SIZE, RW, fixed, -1, 0);
        check("mmap fixed over page 2 at its address", r == Ok(page(2)));
        check("page 2 replaced by zeros", page_holds(page(2), 0));
        show("mprotect all 3 read-write", sys::mprotect(base, all, RW));
        fill(page(0), 0x5a);
        check("page 0 writable again", page_holds(page(0), 0x5a));
        show("munmap all 3", sys::munmap(base, all));
        show("munmap all 3 again", sys::munmap(base, all));
        show(
            "mprotect after munmap",
            sys::mprotect(base, PAGE_SIZE, PROT_READ),
        );
    }
}
