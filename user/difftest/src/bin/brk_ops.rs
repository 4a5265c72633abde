//! The program break beyond `brk_basic`: unaligned breaks (recorded as asked, whole pages mapped
//! below them), moves within a page keep its data, shrinking a page away and growing again reads
//! zero, and requests it cannot satisfy return the old break unchanged: into a mapping, leaving
//! no free page below one, past the user half. Results are printed only after the break is back
//! where it started (printing may allocate, and musl's allocator keeps metadata at the break).

use difftest::sys::{self, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PAGE_SIZE, PROT_READ};

fn main() {
    let mut facts: [(&str, bool); 16] = [("", false); 16];
    let mut n = 0;
    let mut fact = |what: &'static str, v: bool| {
        facts[n] = (what, v);
        n += 1;
    };
    // SAFETY: the break only ever goes back down to `cur`, where it was when the program started
    // looking: nothing above it is in use; the mapping made above it is ours alone.
    unsafe {
        let cur = sys::brk(0);
        let base = (cur + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        fact(
            "unaligned break returned as asked",
            sys::brk(base + 100) == base + 100,
        );
        fact(
            "brk(0) returns the unaligned break",
            sys::brk(0) == base + 100,
        );
        sys::store_byte(base + PAGE_SIZE - 1, 0x5a);
        fact(
            "its whole page is writable",
            sys::load_byte(base + PAGE_SIZE - 1) == 0x5a,
        );
        fact("move within the page", sys::brk(base + 4000) == base + 4000);
        fact("shrink within the page", sys::brk(base + 10) == base + 10);
        fact(
            "the page keeps its data",
            sys::load_byte(base + PAGE_SIZE - 1) == 0x5a,
        );
        fact("shrink to the page start", sys::brk(base) == base);
        fact(
            "grow a page again",
            sys::brk(base + PAGE_SIZE) == base + PAGE_SIZE,
        );
        fact(
            "the page reads 0 again",
            sys::load_byte(base + PAGE_SIZE - 1) == 0,
        );

        let m = base + 8 * PAGE_SIZE;
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
        fact(
            "a mapping above the break",
            sys::mmap(m, PAGE_SIZE, PROT_READ, flags, -1, 0) == Ok(m),
        );
        let old = base + PAGE_SIZE;
        fact(
            "brk into the mapping refused",
            sys::brk(m + PAGE_SIZE) == old,
        );
        fact("brk to the mapping's start refused", sys::brk(m) == old);
        fact(
            "brk a byte below it refused (no free page left)",
            sys::brk(m - 1) == old,
        );
        fact(
            "brk leaving one free page below it",
            sys::brk(m - PAGE_SIZE) == m - PAGE_SIZE,
        );
        fact(
            "brk past the user half refused",
            sys::brk(1 << 47) == m - PAGE_SIZE,
        );
        let _ = sys::munmap(m, PAGE_SIZE);
        fact("shrink back to the start", sys::brk(cur) == cur);
    }
    for (what, v) in &facts[..n] {
        println!("{what}={v}");
    }
}
