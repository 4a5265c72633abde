//! Unbounded recursion on the main thread runs into the end of its stack and kills the process
//! (only it: the next program runs). Prints "before", then recurses with 4 KiB frames.

use std::hint::black_box;

/// Recurses for as long as `black_box` says so, which it always does, with a frame of a page the
/// compiler cannot elide.
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[depth as usize % 4096] = depth as u8;
    black_box(&mut frame);
    if black_box(true) {
        recurse(depth + 1) + u64::from(frame[7])
    } else {
        depth
    }
}

fn main() {
    println!("before");
    let depth = recurse(0);
    println!("after: recursion ended at depth {depth}");
}
