//! A `MAP_GROWSDOWN` mapping that would have to grow into the guard gap (`stack_guard_gap`, 256
//! pages) above another mapping: the touch is a segfault, which ends the process (SIGSEGV). Prints
//! the facts before the touch, then "before"; "after" must never appear.

use difftest::sys::{
    self, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_PRIVATE, PAGE_SIZE, PROT_READ,
    PROT_WRITE,
};

const RW: usize = PROT_READ | PROT_WRITE;
const ANON: usize = MAP_PRIVATE | MAP_ANONYMOUS;
const GAP: usize = 256 * PAGE_SIZE;

fn main() {
    // SAFETY: the mappings are new and used by nothing else; the touched address is below the
    // stack mapping, which the kernel must refuse to grow into.
    unsafe {
        let g = sys::mmap(0, PAGE_SIZE, RW, ANON | MAP_GROWSDOWN, -1, 0).expect("mmap");
        // Its end is 255 pages below `g`, so growing down a page would leave only 254.
        let low = g - GAP;
        let m = sys::mmap(low, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0);
        println!(
            "mapping inside the guard gap with MAP_FIXED_NOREPLACE={}",
            m == Ok(low)
        );
        sys::store_byte(g, 1);
        println!("top page writable={}", sys::load_byte(g) == 1);
        println!("before");
        sys::store_byte(g - PAGE_SIZE, 2);
        println!("after");
    }
}
