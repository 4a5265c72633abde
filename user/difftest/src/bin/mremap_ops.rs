//! mremap through the raw system call: the argument checks (each result printed as `ok` or
//! `ERRNAME(n)`), shrinking, growing in place, moving (the data goes along, the old range is
//! gone), `MREMAP_FIXED` and `MREMAP_DONTUNMAP`. Only facts are printed, never addresses.

use difftest::sys::{
    self, Errno, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MREMAP_DONTUNMAP, MREMAP_FIXED,
    MREMAP_MAYMOVE, PAGE_SIZE, PROT_READ, PROT_WRITE, UNMAPPED_USER, outcome,
};

const RW: usize = PROT_READ | PROT_WRITE;
const ANON: usize = MAP_PRIVATE | MAP_ANONYMOUS;
const P: usize = PAGE_SIZE;
const MOVE_FIXED: usize = MREMAP_MAYMOVE | MREMAP_FIXED;

fn show(what: &str, r: Result<usize, Errno>) {
    println!("{what}: {}", outcome(&r));
}

fn check(what: &str, v: bool) {
    println!("{what}={v}");
}

/// A fresh mapping of `pages` pages; exits the program if there is none.
fn map(pages: usize) -> usize {
    // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
    match unsafe { sys::mmap(0, pages * P, RW, ANON, -1, 0) } {
        Ok(a) => a,
        Err(e) => {
            println!("mmap {pages} pages: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes `tag + i` into bytes `0, 97, 194, ...` of page `i` of `addr`, for `pages` pages.
fn fill(addr: usize, pages: usize, tag: u8) {
    for i in 0..pages {
        for b in (0..P).step_by(97) {
            // SAFETY: the callers pass writable pages that only this program's code uses.
            unsafe { sys::store_byte(addr + i * P + b, tag.wrapping_add(i as u8)) };
        }
    }
}

/// Whether `pages` pages of `addr` hold what `fill(addr, pages, tag)` wrote (`tag` 0: zeros).
fn holds(addr: usize, pages: usize, tag: u8) -> bool {
    (0..pages).all(|i| {
        let want = if tag == 0 {
            0
        } else {
            tag.wrapping_add(i as u8)
        };
        let load = |b| {
            // SAFETY: the callers pass readable pages that nothing writes meanwhile.
            unsafe { sys::load_byte(addr + i * P + b) }
        };
        (0..P).step_by(97).all(|b| load(b) == want)
    })
}

/// Whether nothing is mapped at `addr` (mprotect of an unmapped page is `ENOMEM`).
fn unmapped(addr: usize) -> bool {
    // SAFETY: PROT_READ|PROT_WRITE is what every mapping here has: nothing changes if mapped.
    let r = unsafe { sys::mprotect(addr, P, RW) };
    r == Err(Errno(12))
}

/// `mmap(addr, len, prot, MAP_FIXED)` inside the reserve; exits the program on failure.
fn map_fixed(addr: usize, pages: usize, prot: usize) {
    // SAFETY: the callers pass ranges of the reserve that hold nothing in use.
    if let Err(e) = unsafe { sys::mmap(addr, pages * P, prot, ANON | MAP_FIXED, -1, 0) } {
        println!("mmap fixed {pages} pages: {e}");
        std::process::exit(1);
    }
}

fn main() {
    // Everything happens inside a PROT_NONE reserve, so that no other mapping (the allocator's)
    // lands beside ours or in the holes the calls make, here or on Linux.
    // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
    let reserve = match unsafe { sys::mmap(0, 32 * P, 0, ANON, -1, 0) } {
        Ok(a) => a,
        Err(e) => return println!("mmap reserve: {e}"),
    };
    let at = |page: usize| reserve + page * P;
    let base = at(4);
    map_fixed(base, 4, RW);
    fill(base, 4, 0x10);
    // SAFETY: every call is refused before it changes anything (what is printed shows it).
    unsafe {
        show("unknown flag 8", sys::mremap(base, P, P, 8, 0));
        show(
            "fixed without maymove",
            sys::mremap(base, P, P, MREMAP_FIXED, at(20)),
        );
        show(
            "dontunmap without maymove",
            sys::mremap(base, P, P, MREMAP_DONTUNMAP, 0),
        );
        show(
            "dontunmap resizing",
            sys::mremap(base, P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0),
        );
        show("old unaligned", sys::mremap(base + 1, P, P, 0, 0));
        show("new length 0", sys::mremap(base, P, 0, 0, 0));
        show(
            "fixed new unaligned",
            sys::mremap(base, P, P, MOVE_FIXED, at(20) + 8),
        );
        show(
            "fixed overlapping",
            sys::mremap(base, 2 * P, 2 * P, MOVE_FIXED, base + P),
        );
        show(
            "old length 0 of a private mapping",
            sys::mremap(base, 0, P, MREMAP_MAYMOVE, 0),
        );
        show(
            "unmapped old range",
            sys::mremap(UNMAPPED_USER, P, 2 * P, 0, 0),
        );
        show(
            "old range past its mapping",
            sys::mremap(base, 5 * P, 6 * P, MREMAP_MAYMOVE, 0),
        );
    }
    check("refused calls kept the data", holds(base, 4, 0x10));

    // Shrink, then grow in place into the pages just freed (nothing is allocated in between).
    // SAFETY: pages 2 and 3 of `base` are not used until they are mapped again below.
    let shrunk = unsafe { sys::mremap(base, 4 * P, 2 * P, 0, 0) };
    let tail_gone = unmapped(base + 2 * P) && unmapped(base + 3 * P);
    let head_kept = holds(base, 2, 0x10);
    // SAFETY: pages 2..4 of `base` are free (just unmapped), inside the reserve.
    let grown = unsafe { sys::mremap(base, 2 * P, 4 * P, 0, 0) };
    show("shrink 4 -> 2", shrunk);
    check("shrink keeps the address", shrunk == Ok(base));
    check("shrink keeps the head", head_kept);
    check("shrink unmaps the tail", tail_gone);
    show("grow 2 -> 4 in place", grown);
    check("grow keeps the address", grown == Ok(base));
    check("grow keeps the data", holds(base, 2, 0x10));
    check("grown pages read zero", holds(base + 2 * P, 2, 0));

    // The reserve's PROT_NONE page after it: growing in place is impossible, MAYMOVE moves.
    // SAFETY: refused calls.
    unsafe {
        show("grow 4 -> 5 blocked", sys::mremap(base, 4 * P, 5 * P, 0, 0));
        show(
            "grow 2 -> 3 not at the end",
            sys::mremap(base, 2 * P, 3 * P, 0, 0),
        );
    }
    fill(base, 4, 0x20);
    // SAFETY: `base` moves; the program uses its pages only through `moved` afterwards.
    let r = unsafe { sys::mremap(base, 4 * P, 6 * P, MREMAP_MAYMOVE, 0) };
    let old_gone = (0..4).all(|i| unmapped(base + i * P));
    show("grow 4 -> 6 with maymove", r);
    let moved = r.unwrap_or(base);
    check("it moved", moved != base);
    check("the data moved along", holds(moved, 4, 0x20));
    check("the new pages read zero", holds(moved + 4 * P, 2, 0));
    check("the old range is gone", old_gone);

    // MREMAP_FIXED into another mapping: replaces what is there, shrinking on the way.
    let area = at(12);
    map_fixed(area, 8, RW);
    fill(area, 8, 0x40);
    // SAFETY: `moved` and `area`'s pages 2..6 are used afterwards only as checked below.
    let r = unsafe { sys::mremap(moved, 6 * P, 5 * P, MOVE_FIXED, area + 2 * P) };
    let old_gone = (0..6).all(|i| unmapped(moved + i * P));
    show("fixed 6 -> 5 into a mapping", r);
    check("fixed lands there", r == Ok(area + 2 * P));
    check("fixed carries the data", holds(area + 2 * P, 4, 0x20));
    check(
        "fixed: the fifth page reads zero",
        holds(area + 6 * P, 1, 0),
    );
    check(
        "fixed keeps the neighbours",
        holds(area, 2, 0x40) && holds(area + 7 * P, 1, 0x47),
    );
    check("fixed: the old range is gone", old_gone);
    // Growing on the way, over PROT_NONE pages.
    // SAFETY: `area`'s page 7 moves to reserve pages 24..27, which hold nothing in use.
    let r = unsafe { sys::mremap(area + 7 * P, P, 3 * P, MOVE_FIXED, at(24)) };
    show("fixed 1 -> 3 over PROT_NONE", r);
    check(
        "fixed grown: data, then zeros",
        holds(at(24), 1, 0x47) && holds(at(25), 2, 0),
    );

    // MREMAP_DONTUNMAP: the pages move, the old range stays mapped and reads zero.
    // SAFETY: `area`'s pages 0..2 move; the program reads them afterwards only to check zeros.
    let r = unsafe { sys::mremap(area, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0) };
    show("dontunmap 2 pages", r);
    let kept = r.unwrap_or(area);
    check("dontunmap moved", kept != area);
    check("dontunmap carries the data", holds(kept, 2, 0x40));
    check("dontunmap leaves zeros behind", holds(area, 2, 0));

    // Many pages across page-table boundaries.
    let big = map(1100);
    fill(big, 1100, 0x60);
    // SAFETY: `big` moves; the program uses it only through the result.
    let r = unsafe { sys::mremap(big, 1100 * P, 1300 * P, MREMAP_MAYMOVE, 0) };
    show("1100 -> 1300 pages", r);
    let to = r.unwrap_or(big);
    check(
        "all 1100 pages moved with their data",
        holds(to, 1100, 0x60),
    );
    check("the 200 new pages read zero", holds(to + 1100 * P, 200, 0));

    // SAFETY: nothing of these ranges is used any more.
    unsafe {
        for (a, len) in [(reserve, 32 * P), (kept, 2 * P), (to, 1300 * P)] {
            let _ = sys::munmap(a, len);
        }
    }
}
