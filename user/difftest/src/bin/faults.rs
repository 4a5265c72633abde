//! Concurrent page faults with data checks. Eight threads first fill disjoint parts of one fresh
//! mapping with a pattern of their own and check it; then they race on one shared mapping: each
//! stores to its own interleaved words of every page (so every page's first touch races between
//! threads), and after a barrier all of them `fetch_add` into every word. The main thread checks
//! everything again after `join`. Prints the checks' results.

use std::sync::Barrier;
use std::sync::atomic::Ordering;
use std::thread;

use difftest::sys::{Mapping, PAGE_SIZE};

const THREADS: usize = 8;
/// Pages each thread fills in the disjoint phase (2 MiB).
const PAGES_PER_THREAD: usize = 512;
/// Pages of the shared region.
const SHARED_PAGES: usize = 64;
const ADD_ROUNDS: u64 = 4;

/// The byte thread `t` writes at offset `i` of its part: differs between neighbouring bytes,
/// pages and threads.
fn pattern(t: usize, i: usize) -> u8 {
    (t * 37 + i / PAGE_SIZE * 7 + i) as u8
}

fn main() {
    let mut region = match Mapping::anonymous(THREADS * PAGES_PER_THREAD) {
        Ok(m) => m,
        Err(e) => {
            println!("mmap failed: {e}");
            std::process::exit(1);
        }
    };
    let bytes = region.bytes_mut();
    println!(
        "fresh memory reads zero={}",
        bytes.iter().step_by(PAGE_SIZE).all(|&b| b == 0)
    );
    let barrier = Barrier::new(THREADS);
    let part = PAGES_PER_THREAD * PAGE_SIZE;
    let own_checks: Vec<bool> = thread::scope(|s| {
        let handles: Vec<_> = bytes
            .chunks_mut(part)
            .enumerate()
            .map(|(t, chunk)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for (i, b) in chunk.iter_mut().enumerate() {
                        *b = pattern(t, i);
                    }
                    chunk.iter().enumerate().all(|(i, &b)| b == pattern(t, i))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, ok) in own_checks.iter().enumerate() {
        println!("disjoint thread {t} own check={ok}");
    }
    let whole = bytes
        .chunks(part)
        .enumerate()
        .all(|(t, c)| c.iter().enumerate().all(|(i, &b)| b == pattern(t, i)));
    println!("disjoint whole check after join={whole}");
    drop(region);

    let shared = match Mapping::anonymous(SHARED_PAGES) {
        Ok(m) => m,
        Err(e) => {
            println!("mmap failed: {e}");
            std::process::exit(1);
        }
    };
    let words = shared.words();
    let sees_all: Vec<bool> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for (w, word) in words.iter().enumerate().skip(t).step_by(THREADS) {
                        word.store(w as u64 + 1, Ordering::Relaxed);
                    }
                    // Every thread's stores are visible to every thread after the barrier.
                    barrier.wait();
                    let stored = words
                        .iter()
                        .enumerate()
                        .all(|(w, x)| x.load(Ordering::Relaxed) == w as u64 + 1);
                    barrier.wait();
                    for _ in 0..ADD_ROUNDS {
                        for word in words {
                            word.fetch_add(t as u64 + 1, Ordering::Relaxed);
                        }
                    }
                    stored
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!(
        "interleaved stores seen by every thread={}",
        sees_all.iter().all(|&b| b)
    );
    let added = ADD_ROUNDS * (1..=THREADS as u64).sum::<u64>();
    let sums_ok = words
        .iter()
        .enumerate()
        .all(|(w, x)| x.load(Ordering::Relaxed) == w as u64 + 1 + added);
    println!("shared words={} fetch_add sums ok={sums_ok}", words.len());
    let total: u64 = words.iter().map(|x| x.load(Ordering::Relaxed)).sum();
    println!("shared total={total}");
}
