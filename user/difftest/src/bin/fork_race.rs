//! The shape of Linux 6.4's per-VMA lock reproducer (bugzilla 217624): threads keep filling
//! their chunks of one private buffer with a pattern and checking it back, while the main
//! thread forks children that exit at once, over and over. A write lost to the parent (a fault
//! copying a page during the fork while another thread still writes to it through an old
//! writable TLB entry) shows up as a mismatch. Argument: the number of forks.

use difftest::sys::{self, Mapping};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

const THREADS: usize = 4;
const CHUNK_PAGES: usize = 4;
const WORDS: usize = CHUNK_PAGES * 512;

fn main() {
    let forks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let buf = Arc::new(Mapping::anonymous(THREADS * CHUNK_PAGES).expect("mmap"));
    let stop = Arc::new(AtomicBool::new(false));
    let mismatches = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (buf, stop, bad) = (buf.clone(), stop.clone(), mismatches.clone());
            thread::spawn(move || {
                let chunk = &buf.words()[t * WORDS..(t + 1) * WORDS];
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let pattern = (t as u64) << 48 | round;
                    // One word per 64 bytes: every page, many times.
                    for w in chunk.iter().step_by(8) {
                        w.store(pattern, Ordering::Relaxed);
                    }
                    for w in chunk.iter().step_by(8) {
                        if w.load(Ordering::Relaxed) != pattern {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                round
            })
        })
        .collect();
    let mut forked = 0;
    for _ in 0..forks {
        // SAFETY: the child makes raw system calls only.
        match unsafe { sys::fork() } {
            Ok(0) => sys::exit_group(0),
            Ok(pid) => {
                let (_, status) = sys::wait4(pid as isize, 0).expect("wait4");
                assert_eq!(status, 0);
                forked += 1;
            }
            Err(e) => panic!("fork: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    println!("forks: {forked}");
    println!("threads made progress: {}", rounds > 0);
    println!("mismatches: {}", mismatches.load(Ordering::Relaxed));
}
