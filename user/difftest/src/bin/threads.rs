//! 64 threads at once: atomics (`fetch_add` and a `compare_exchange` loop), a `Mutex<Vec>` every
//! thread pushes to, `join` with each thread's return value, then a bounded producer/consumer
//! queue on a `Mutex` and two `Condvar`s that must hand over every item exactly once. Prints the
//! totals, computed after every `join`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

const THREADS: u64 = 64;
const ROUNDS: u64 = 1000;
const PUSHES: u64 = 100;
const QUEUE_CAP: usize = 4;

fn main() {
    let sum = Arc::new(AtomicU64::new(0));
    let cas = Arc::new(AtomicU64::new(0));
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (sum, cas, pushed) = (sum.clone(), cas.clone(), pushed.clone());
            thread::spawn(move || {
                for _ in 0..ROUNDS {
                    sum.fetch_add(i + 1, Ordering::Relaxed);
                    let mut cur = cas.load(Ordering::Relaxed);
                    while let Err(now) = cas.compare_exchange_weak(
                        cur,
                        cur + 1,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        cur = now;
                    }
                }
                for k in 0..PUSHES {
                    pushed.lock().unwrap().push(i * PUSHES + k);
                }
                i * i
            })
        })
        .collect();
    let returned: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let mut v = std::mem::take(&mut *pushed.lock().unwrap());
    v.sort_unstable();
    println!("threads={THREADS}");
    println!("fetch_add total={}", sum.load(Ordering::Relaxed));
    println!("cas total={}", cas.load(Ordering::Relaxed));
    println!("join return sum={returned}");
    println!("mutex vec len={} sum={}", v.len(), v.iter().sum::<u64>());
    println!(
        "mutex vec each once={}",
        v.iter().copied().eq(0..THREADS * PUSHES)
    );
    producer_consumer();
}

/// The queue: items, and how many producers have not finished yet.
struct Queue {
    items: VecDeque<u64>,
    producers_left: u64,
}

/// Half the threads produce `PUSHES` items each into a queue of `QUEUE_CAP`, half consume until
/// the queue is empty and every producer is done; both sides block on a `Condvar`.
fn producer_consumer() {
    let q = Arc::new((
        Mutex::new(Queue {
            items: VecDeque::new(),
            producers_left: THREADS / 2,
        }),
        Condvar::new(),
        Condvar::new(),
    ));
    let producers: Vec<_> = (0..THREADS / 2)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                let (lock, not_full, not_empty) = &*q;
                for k in 0..PUSHES {
                    let mut g = not_full
                        .wait_while(lock.lock().unwrap(), |g| g.items.len() >= QUEUE_CAP)
                        .unwrap();
                    g.items.push_back(p * PUSHES + k);
                    not_empty.notify_one();
                }
                lock.lock().unwrap().producers_left -= 1;
                // Consumers waiting on an empty queue must see the last producer leave.
                not_empty.notify_all();
            })
        })
        .collect();
    let consumers: Vec<_> = (0..THREADS / 2)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || {
                let (lock, not_full, not_empty) = &*q;
                let mut got = Vec::new();
                loop {
                    let mut g = not_empty
                        .wait_while(lock.lock().unwrap(), |g| {
                            g.items.is_empty() && g.producers_left > 0
                        })
                        .unwrap();
                    match g.items.pop_front() {
                        Some(x) => got.push(x),
                        None => return got,
                    }
                    not_full.notify_one();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut all: Vec<u64> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    println!("condvar queue items={}", all.len());
    println!(
        "condvar queue each once={}",
        all.iter().copied().eq(0..THREADS / 2 * PUSHES)
    );
}
