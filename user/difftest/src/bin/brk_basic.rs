//! The program break: `brk(0)` reports it, growing by two pages returns the new break and gives
//! zeroed writable memory, shrinking gives it back (grown again it reads zero again), and absurd
//! requests (below the start, into the kernel half, the top of the address space) leave the break
//! where it was. The results are kept in an array and printed only after the break is back where
//! it started: printing may allocate, and musl's allocator keeps its own metadata at the break.

use difftest::sys::{self, KERNEL_HALF, PAGE_SIZE};

const GROW: usize = 2 * PAGE_SIZE;

/// Whether the bytes `0, 61, 122, ...` of `from..from + GROW` hold `v`.
fn holds(from: usize, v: u8) -> bool {
    // Nothing in the program allocates between the calls.
    let load = |i| {
        // SAFETY: the callers pass the range they just grew the break over: readable, unshared.
        unsafe { sys::load_byte(from + i) }
    };
    (0..GROW).step_by(61).all(|i| load(i) == v)
}

fn fill(from: usize, v: u8) {
    for i in (0..GROW).step_by(61) {
        // SAFETY: as for `holds`: the freshly grown range is writable and ours alone.
        unsafe { sys::store_byte(from + i, v) };
    }
}

fn main() {
    let mut facts: [(&str, bool); 11] = [("", false); 11];
    let mut n = 0;
    let mut fact = |what: &'static str, v: bool| {
        facts[n] = (what, v);
        n += 1;
    };
    // SAFETY: the break only ever goes back down to `cur`, where it was when the program started
    // looking: nothing above it is in use (every brk call below).
    unsafe {
        let cur = sys::brk(0);
        fact("brk(0) is not 0", cur != 0);
        fact(
            "grow by 2 pages returns the new break",
            sys::brk(cur + GROW) == cur + GROW,
        );
        fact("grown memory reads 0", holds(cur, 0));
        fill(cur, 0x77);
        fact("grown memory is writable", holds(cur, 0x77));
        fact("shrink back returns the old break", sys::brk(cur) == cur);
        fact("brk(0) after shrink is the old break", sys::brk(0) == cur);
        fact(
            "grow again returns the new break",
            sys::brk(cur + GROW) == cur + GROW,
        );
        fact("memory grown again reads 0", holds(cur, 0));
        fact("shrink again returns the old break", sys::brk(cur) == cur);
        fact(
            "brk(1) below the start leaves the break",
            sys::brk(1) == cur,
        );
        let high = sys::brk(KERNEL_HALF) == cur && sys::brk(usize::MAX - PAGE_SIZE + 1) == cur;
        fact("brk into the kernel half or the top leaves the break", high);
    }
    for (what, v) in &facts[..n] {
        println!("{what}={v}");
    }
}
