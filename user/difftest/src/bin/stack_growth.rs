//! Stack growth. The main thread's stack grows on demand up to `RLIMIT_STACK` (8 MiB): recursion
//! 6 MiB deep succeeds. A `MAP_GROWSDOWN` mapping grows when touched below its start: a page
//! below, 64 pages below, 2 MiB below (Linux has no distance limit, only the stack limit and the
//! guard gap), keeping its data and reading zero in between; it may grow until exactly
//! `stack_guard_gap` (256 pages) is left above a mapping below it; `mmap` does not use a hint
//! inside the guard gap below it. Touching inside the gap is `stack_guard_segv`.

use std::hint::black_box;

use difftest::sys::{
    self, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_PRIVATE, PAGE_SIZE, PROT_READ,
    PROT_WRITE,
};

const RW: usize = PROT_READ | PROT_WRITE;
const ANON: usize = MAP_PRIVATE | MAP_ANONYMOUS;
/// Linux's `stack_guard_gap`.
const GAP: usize = 256 * PAGE_SIZE;

/// Recurses `depth` times with a frame of a page the compiler cannot elide; returns the depth.
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[depth as usize % 4096] = depth as u8;
    black_box(&mut frame);
    if depth == 0 {
        0
    } else {
        let depth_below = recurse(depth - 1);
        // The frame stays live across the call: it cannot be elided or reused.
        black_box(&frame);
        depth_below + 1
    }
}

/// Writes `v` at `addr` and reads it back.
///
/// # Safety
/// `addr` must be in (or just below) a mapping of this program that nothing else uses.
unsafe fn store_load(addr: usize, v: u8) -> bool {
    // SAFETY: the caller vouches for the address.
    unsafe {
        sys::store_byte(addr, v);
        sys::load_byte(addr) == v
    }
}

fn main() {
    let mut facts: Vec<(&str, bool)> = Vec::with_capacity(16);
    let depth = 6 * 256;
    facts.push(("recursion 6 MiB deep returns", recurse(depth) == depth));

    // No allocation happens before the facts are printed, so no mapping lands below it meanwhile.
    // SAFETY: the mapping is new and unshared; every address touched is in it or below it.
    unsafe {
        let g = sys::mmap(0, PAGE_SIZE, RW, ANON | MAP_GROWSDOWN, -1, 0).expect("mmap");
        facts.push(("top page writable", store_load(g, 1)));
        facts.push(("touch 1 page below grows", store_load(g - PAGE_SIZE, 2)));
        facts.push((
            "touch 64 pages below grows",
            store_load(g - 64 * PAGE_SIZE, 3),
        ));
        facts.push(("touch 2 MiB below grows", store_load(g - (2 << 20), 4)));
        let kept = sys::load_byte(g) == 1 && sys::load_byte(g - PAGE_SIZE) == 2;
        facts.push((
            "data above kept",
            kept && sys::load_byte(g - 64 * PAGE_SIZE) == 3,
        ));
        facts.push((
            "pages in between read 0",
            sys::load_byte(g - (1 << 20)) == 0,
        ));
        let bottom = g - (2 << 20);

        // A hint inside the guard gap below the stack is not used.
        let hint = bottom - 16 * PAGE_SIZE;
        let r = sys::mmap(hint, PAGE_SIZE, RW, ANON, -1, 0).expect("mmap hint");
        facts.push(("hint inside the guard gap not used", r != hint));
        facts.push((
            "mapping placed outside the guard gap",
            r + PAGE_SIZE <= bottom - GAP || r >= g + PAGE_SIZE,
        ));
        let _ = sys::munmap(r, PAGE_SIZE);

        // A mapping 4 pages below the guard gap: the stack may grow until the gap is exactly
        // 256 pages, and not further (that would be a segfault).
        let low = bottom - GAP - 4 * PAGE_SIZE;
        let m = sys::mmap(low, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0);
        facts.push(("mapping below the gap", m == Ok(low)));
        let edge = low + PAGE_SIZE + GAP;
        facts.push(("grow to exactly the guard gap", store_load(edge, 5)));
        facts.push((
            "the grown part reads 0",
            sys::load_byte(edge + PAGE_SIZE) == 0,
        ));
        let _ = sys::munmap(low, PAGE_SIZE);
        let _ = sys::munmap(edge, g + PAGE_SIZE - edge);
    }
    for (what, v) in facts {
        println!("{what}={v}");
    }
}
