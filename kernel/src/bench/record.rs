//! What a worker records in the measured window: the latency of every faulting touch in a
//! log-linear histogram (fixed memory for any number of samples; a percentile is within 1/64 of
//! the true value), and, when the fault path is profiled, a bounded buffer of per-fault phase
//! lengths for exact medians. Each worker owns its records (no shared writes); the harness merges
//! them after the workers stopped.

use alloc::vec;
use alloc::vec::Vec;

use mm::fault::profile::PHASES;

/// Bits of sub-bucket resolution per power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values below this have a bucket each.
const LINEAR: u64 = 2 * SUB as u64;
const BUCKETS: usize = 2 * SUB + (64 - SUB_BITS as usize - 1) * SUB;

/// Cycle counts, bucketed.
pub struct Histogram {
    counts: Vec<u32>,
    total: u64,
    max: u64,
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    2 * SUB + (e - SUB_BITS - 1) as usize * SUB + sub
}

/// The smallest value of bucket `b`, and the bucket's width.
fn bucket_range(b: usize) -> (u64, u64) {
    if b < LINEAR as usize {
        return (b as u64, 1);
    }
    let k = (b - 2 * SUB) / SUB;
    let sub = ((b - 2 * SUB) % SUB) as u64;
    let shift = k as u32 + 1;
    ((SUB as u64 + sub) << shift, 1 << shift)
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `per_mille / 1000` quantile: the middle of the bucket holding the sample of that
    /// rank, never above the maximum (the maximum itself for the last rank); 0 without samples.
    pub fn quantile(&self, per_mille: u64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = (self.total * per_mille).div_ceil(1000).max(1);
        if rank >= self.total {
            return self.max;
        }
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                let (lo, width) = bucket_range(b);
                return (lo + width / 2).min(self.max);
            }
        }
        self.max
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Most phase samples a worker keeps.
pub const MAX_PHASE_SAMPLES: usize = 16_384;

/// Per-fault phase lengths (cycles), in [`PHASES`] order.
pub struct PhaseSamples(Vec<[u64; PHASES.len()]>);

/// The median and 99th percentile of one phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseSummary {
    pub samples: usize,
    pub median: u64,
    pub p99: u64,
}

impl PhaseSamples {
    pub fn new() -> Self {
        PhaseSamples(Vec::with_capacity(MAX_PHASE_SAMPLES))
    }

    /// Keeps `s` unless the buffer is full.
    pub fn push(&mut self, s: [u64; PHASES.len()]) {
        if self.0.len() < MAX_PHASE_SAMPLES {
            self.0.push(s);
        }
    }

    pub fn append(&mut self, other: &PhaseSamples) {
        self.0.extend_from_slice(&other.0);
    }

    /// Median and p99 of each phase.
    pub fn summary(&self) -> [PhaseSummary; PHASES.len()] {
        core::array::from_fn(|i| {
            let mut col: Vec<u64> = self.0.iter().map(|s| s[i]).collect();
            col.sort_unstable();
            let at = |per_mille: usize| {
                col.get((col.len() * per_mille).div_ceil(1000).max(1) - 1)
                    .copied()
                    .unwrap_or(0)
            };
            PhaseSummary {
                samples: col.len(),
                median: at(500),
                p99: at(990),
            }
        })
    }
}

impl Default for PhaseSamples {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test_case]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = (0, 1);
        for b in 1..BUCKETS {
            let r = bucket_range(b);
            assert_eq!(r.0, prev.0 + prev.1, "bucket {b} does not follow {}", b - 1);
            assert!(r.1 * SUB as u64 <= r.0.max(LINEAR), "bucket {b} too wide");
            prev = r;
        }
        for v in [0, 1, 63, 64, 65, 127, 128, 1_000, 123_456_789, u64::MAX] {
            let (lo, w) = bucket_range(bucket(v));
            assert!(lo <= v && v - lo < w, "{v} not in its bucket");
        }
    }

    #[test_case]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::new();
        for v in 1..=10_000 {
            h.record(v * 10);
        }
        let p50 = h.quantile(500);
        assert!(p50.abs_diff(50_000) <= 50_000 / SUB as u64, "p50 {p50}");
        let p99 = h.quantile(990);
        assert!(p99.abs_diff(99_000) <= 99_000 / SUB as u64, "p99 {p99}");
        assert_eq!(h.quantile(1000), 100_000);
        let mut g = Histogram::new();
        g.record(7);
        g.merge(&h);
        assert_eq!((g.count(), g.max()), (10_001, 100_000));
        assert_eq!(Histogram::new().quantile(500), 0);
    }

    #[test_case]
    fn phase_medians() {
        let mut s = PhaseSamples::new();
        for v in [5u64, 1, 3, 2, 4] {
            s.push([v; PHASES.len()]);
        }
        let sum = s.summary();
        assert_eq!(
            sum[0],
            PhaseSummary {
                samples: 5,
                median: 3,
                p99: 5
            }
        );
    }
}
