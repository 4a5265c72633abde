//! Lookup cost of the maple tree's lockless `walk` (under an RCU guard) against
//! `BTreeMap::range(..=addr).next_back()`, for 10, 1k and 100k ranges.
//!
//! `cargo run -p mm --release --features emulated --example maple_bench`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use mm::maple::MapleTree;
use mm::platform::emulated::Emulated;
use mm::rcu::Rcu;

const PAGE: u64 = 0x1000;
const LOOKUPS: usize = 4_000_000;

fn main() {
    let p = Arc::new(Emulated::new(1, 1));
    p.bind_cpu(0);
    let rcu = Arc::new(Rcu::new(p));
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "ranges", "maple ns/op", "btree ns/op", "height"
    );
    for n in [10u64, 1_000, 100_000] {
        let tree: MapleTree<Arc<u64>, Emulated> = MapleTree::new(rcu.clone());
        let mut map = BTreeMap::new();
        // Ranges of 1..4 pages with 1-page holes, like a process's VMAs.
        let mut at = 0;
        for i in 0..n {
            let len = (1 + i % 4) * PAGE;
            tree.insert(at..at + len, Arc::new(i))
                .expect("fresh ranges");
            map.insert(at, (at + len, Arc::new(i)));
            at += len + PAGE;
        }
        // Random addresses, precomputed so both structures see the same ones.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let addrs: Vec<u64> = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % at
            })
            .collect();
        let g = rcu.read_lock();
        let t0 = Instant::now();
        let mut hits = 0u64;
        for i in 0..LOOKUPS {
            if let Some((_, v)) = tree.walk(&g, addrs[i & 0xffff]) {
                hits += **v & 1;
            }
        }
        let maple = t0.elapsed().as_nanos() as f64 / LOOKUPS as f64;
        drop(g);
        let t0 = Instant::now();
        let mut hits2 = 0u64;
        for i in 0..LOOKUPS {
            let a = addrs[i & 0xffff];
            if let Some((_, (end, v))) = map.range(..=a).next_back()
                && a < *end
            {
                hits2 += **v & 1;
            }
        }
        let btree = t0.elapsed().as_nanos() as f64 / LOOKUPS as f64;
        assert_eq!(hits, hits2, "both structures agree");
        black_box((hits, hits2));
        let height = tree.height();
        println!("{n:>8} {maple:>14.1} {btree:>14.1} {height:>8}");
    }
}
