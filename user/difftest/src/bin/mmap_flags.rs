//! mmap flags: `MAP_FIXED_NOREPLACE` (`EEXIST` over any mapped page, placed exactly on a free
//! range, `EINVAL` unaligned), `MAP_POPULATE` (the pages are there before the first touch: no
//! page faults, where an unpopulated mapping takes one per page), `MAP_NORESERVE` (accepted),
//! and how hints are rounded (down to their page; a hint in page 0 is no hint; one below
//! `mmap_min_addr` is raised to it, a low address on both systems although the minimum differs).
//! `MAP_SHARED | MAP_ANONYMOUS` has a program of its own, `shared_anon`.

use difftest::sys::{
    self, Errno, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE,
    PAGE_SIZE, PROT_READ, PROT_WRITE, outcome,
};

const RW: usize = PROT_READ | PROT_WRITE;
const ANON: usize = MAP_PRIVATE | MAP_ANONYMOUS;
const NOREPLACE: usize = ANON | MAP_FIXED_NOREPLACE;

fn show(what: &str, r: Result<usize, Errno>) {
    println!("{what}: {}", outcome(&r));
}

/// Writes a byte to each of `pages` pages from `at`; returns the minor faults that took.
///
/// # Safety
/// The pages must be a writable mapping of this program that nothing else uses.
unsafe fn touch(at: usize, pages: usize) -> u64 {
    let before = sys::minor_faults().expect("getrusage");
    for i in 0..pages {
        // SAFETY: the caller vouches for the pages.
        unsafe { sys::store_byte(at + i * PAGE_SIZE, 1) };
    }
    sys::minor_faults().expect("getrusage") - before
}

fn main() {
    // SAFETY: every range touched or unmapped below was mapped here and is used by nothing else;
    // MAP_FIXED_NOREPLACE never replaces anything.
    unsafe {
        let a = sys::mmap(0, 4 * PAGE_SIZE, RW, ANON, -1, 0).expect("mmap");
        show(
            "noreplace over a mapping",
            sys::mmap(a, PAGE_SIZE, RW, NOREPLACE, -1, 0),
        );
        show(
            "noreplace overlapping its end",
            sys::mmap(a + 3 * PAGE_SIZE, 2 * PAGE_SIZE, RW, NOREPLACE, -1, 0),
        );
        show(
            "noreplace unaligned",
            sys::mmap(a + 1, PAGE_SIZE, RW, NOREPLACE, -1, 0),
        );
        let _ = sys::munmap(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE);
        let r = sys::mmap(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE, RW, NOREPLACE, -1, 0);
        show("noreplace on a free range", r);
        println!("noreplace placed exactly={}", r == Ok(a + 2 * PAGE_SIZE));
        let _ = sys::munmap(a, 4 * PAGE_SIZE);

        let pages = 16;
        let p = sys::mmap(0, pages * PAGE_SIZE, RW, ANON | MAP_POPULATE, -1, 0);
        show("populate", p);
        let p = p.expect("populate");
        println!(
            "populated pages read 0={}",
            sys::load_byte(p + 5 * PAGE_SIZE) == 0
        );
        println!("populated pages take no faults={}", touch(p, pages) == 0);
        let u = sys::mmap(0, pages * PAGE_SIZE, RW, ANON, -1, 0).expect("mmap");
        println!(
            "unpopulated pages fault each={}",
            touch(u, pages) >= pages as u64
        );
        let ro = sys::mmap(0, 2 * PAGE_SIZE, PROT_READ, ANON | MAP_POPULATE, -1, 0);
        show("populate read-only", ro);
        let ro = ro.expect("populate read-only");
        println!(
            "read-only populated reads 0={}",
            sys::load_byte(ro + PAGE_SIZE) == 0
        );
        let _ = sys::munmap(ro, 2 * PAGE_SIZE);
        let _ = sys::munmap(u, pages * PAGE_SIZE);
        let _ = sys::munmap(p, pages * PAGE_SIZE);

        let nr = sys::mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_NORESERVE, -1, 0);
        show("noreserve", nr);
        let nr = nr.expect("noreserve");
        sys::store_byte(nr + PAGE_SIZE, 7);
        println!("noreserve writable={}", sys::load_byte(nr + PAGE_SIZE) == 7);
        let _ = sys::munmap(nr, 4 * PAGE_SIZE);

        // Nothing may be mapped between the munmap and the hinted mmap: no printing there.
        let h = sys::mmap(0, 2 * PAGE_SIZE, RW, ANON, -1, 0).expect("mmap");
        let _ = sys::munmap(h, 2 * PAGE_SIZE);
        let r = sys::mmap(h + 123, PAGE_SIZE, RW, ANON, -1, 0).expect("hint");
        let _ = sys::munmap(r, PAGE_SIZE);
        let z = sys::mmap(0x800, PAGE_SIZE, RW, ANON, -1, 0).expect("page 0 hint");
        let _ = sys::munmap(z, PAGE_SIZE);
        let low = sys::mmap(PAGE_SIZE, PAGE_SIZE, RW, ANON, -1, 0).expect("low hint");
        let _ = sys::munmap(low, PAGE_SIZE);
        println!("unaligned hint rounded down to its page={}", r == h);
        println!("hint in page 0 is no hint (placed high)={}", z >= 1 << 30);
        println!(
            "hint below mmap_min_addr raised to a low page={}",
            (PAGE_SIZE..1 << 20).contains(&low) && low.is_multiple_of(PAGE_SIZE)
        );
    }
}
