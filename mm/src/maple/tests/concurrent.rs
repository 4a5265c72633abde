//! Lockless readers on emulated CPUs against a writer that churns the tree.

extern crate std;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::maple::MapleTree;
use crate::platform::emulated::Emulated;
use crate::rcu::Rcu;
use crate::testutil::SetOnDrop;

const LIVE: u64 = 0x600d_600d;
const DEAD: u64 = 0xdead_dead;
const CELLS: u64 = 300;
const CELL: u64 = 100;
/// In each cell, `[0, 10)` is a home range that is never removed; `[20, 90)` is churned.
const CHURN: (u64, u64) = (20, 90);

/// A value that records the range it was stored for, and is poisoned when dropped.
#[derive(Debug)]
struct Tag {
    start: u64,
    end: u64,
    magic: AtomicU64,
}

impl Drop for Tag {
    fn drop(&mut self) {
        self.magic.store(DEAD, Ordering::Relaxed);
    }
}

fn tag(start: u64, end: u64) -> Arc<Tag> {
    Arc::new(Tag {
        start,
        end,
        magic: AtomicU64::new(LIVE),
    })
}

/// Tiny deterministic generator (xorshift), one per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn readers_see_consistent_ranges_while_a_writer_churns() {
    const READERS: usize = 2;
    let run_for = Duration::from_millis(3000);
    let p = Arc::new(Emulated::new(1, READERS + 1));
    p.bind_cpu(0);
    let t: MapleTree<Arc<Tag>, Emulated> = MapleTree::new(Arc::new(Rcu::new(p.clone())));
    for c in 0..CELLS {
        t.insert(c * CELL..c * CELL + 10, tag(c * CELL, c * CELL + 10))
            .unwrap();
    }
    let stop = AtomicBool::new(false);
    let (lookups, writes) = (AtomicUsize::new(0), AtomicUsize::new(0));
    thread::scope(|s| {
        for cpu in 1..=READERS {
            let (t, stop, lookups) = (&t, &stop, &lookups);
            p.spawn_cpu(s, cpu, move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ cpu as u64);
                let rcu = t.rcu().clone();
                while !stop.load(Ordering::Relaxed) {
                    let g = rcu.read_lock();
                    for _ in 0..64 {
                        let addr = rng.next((CELLS - 1) * CELL);
                        let home = addr % CELL < 10;
                        match t.walk(&g, addr) {
                            Some((r, v)) => {
                                assert_eq!(
                                    v.magic.load(Ordering::Relaxed),
                                    LIVE,
                                    "freed value at {addr}"
                                );
                                assert_eq!((r.start, r.end), (v.start, v.end), "bounds of {addr}");
                                assert!(r.contains(&addr));
                            }
                            None => assert!(!home, "home range at {addr} lost"),
                        }
                        // The next range from a cell start is always that cell's home range or
                        // a churned one inside the cell.
                        let cell = addr - addr % CELL;
                        let (r, _) = t
                            .find(&g, cell + 10)
                            .expect("the next cell has a home range");
                        assert!(r.start < cell + CELL + 10 && r.start >= cell + CHURN.0.min(CELL));
                    }
                    let mut homes = 0;
                    let from = rng.next(CELLS - 4) * CELL;
                    for (r, v) in t.iter(&g, from..from + 4 * CELL) {
                        assert_eq!((r.start, r.end), (v.start, v.end));
                        homes += usize::from(r.start % CELL == 0);
                    }
                    assert_eq!(homes, 4, "iteration lost a home range");
                    drop(g);
                    lookups.fetch_add(64, Ordering::Relaxed);
                    rcu.quiescent_state();
                }
            });
        }
        // Stops the readers however this thread leaves the scope: a failure below must fail
        // the test, not leave them spinning.
        let stop_readers = SetOnDrop(&stop);
        let mut rng = Rng(42);
        let start = Instant::now();
        while start.elapsed() < run_for {
            for _ in 0..100 {
                let cell = rng.next(CELLS) * CELL;
                let a = cell + CHURN.0 + rng.next(CHURN.1 - CHURN.0);
                match rng.next(4) {
                    0 | 1 => {
                        let len = 1 + rng.next(cell + CHURN.1 - a);
                        let _ = t.insert(a..a + len, tag(a, a + len));
                    }
                    2 => {
                        t.erase(a);
                    }
                    _ => {
                        let (lo, hi) = (cell + CHURN.0, cell + CHURN.1);
                        t.store(lo..hi, tag(lo, hi)).unwrap();
                    }
                }
                writes.fetch_add(1, Ordering::Relaxed);
            }
            t.rcu().quiescent_state();
        }
        drop(stop_readers);
    });
    t.validate().unwrap();
    assert!(lookups.load(Ordering::Relaxed) > 1000 && writes.load(Ordering::Relaxed) > 1000);
    // Empty the tree: once the grace periods pass, every node ever allocated is freed.
    for c in 0..CELLS {
        t.store(c * CELL..c * CELL + CELL, tag(0, 0)).unwrap();
        t.erase(c * CELL);
    }
    assert!(t.is_empty());
    t.rcu().barrier();
    assert_eq!(t.allocated_nodes(), 0);
}
