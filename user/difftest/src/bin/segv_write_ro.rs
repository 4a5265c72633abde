//! A write to a read-only page kills the process with SIGSEGV: maps one page `PROT_READ`, reads it
//! (fine, zero), prints "before", then writes it. Nothing may be printed after.

use difftest::sys::{self, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ};

fn main() {
    // SAFETY: without MAP_FIXED the kernel picks a range that holds nothing.
    let page =
        match unsafe { sys::mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) } {
            Ok(p) => p,
            Err(e) => {
                println!("mmap failed: {e}");
                std::process::exit(1);
            }
        };
    // SAFETY: the page is readable and nothing else uses it.
    println!("read-only page reads {}", unsafe { sys::load_byte(page) });
    println!("before");
    // SAFETY: the page is ours alone; the write faults, which ends the process here.
    unsafe { sys::store_byte(page, 1) };
    println!("after: the write to a read-only page succeeded");
}
