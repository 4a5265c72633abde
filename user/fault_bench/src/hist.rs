//! A log-linear latency histogram (HDR-style): values below 32 have a bucket each; above, each
//! power of two is cut into 32 buckets, so a percentile is off by at most 1/64 of its value
//! (it reports the bucket's middle). One per thread and window, 15 KiB, merged at the end:
//! recording is an index computation and an increment, not a push of every sample.

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every `u64`: 32 exact ones, then 32 per power of two from 2^5 to 2^63.
const BUCKETS: usize = SUB * (64 - SUB_BITS as usize + 1);

/// # Invariants
/// `total` is the sum of `counts`; `max` is the largest value recorded (0 if none).
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    (shift as usize + 1) * SUB + ((v >> shift) as usize & (SUB - 1))
}

/// The smallest value of bucket `i`, and its width.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, 1);
    }
    let shift = (i / SUB - 1) as u32;
    let mantissa = (SUB + i % SUB) as u64;
    (mantissa << shift, 1 << shift)
}

impl Histogram {
    #[inline(always)]
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
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

    /// The value at quantile `q` (0..=1): the middle of the bucket holding the `ceil(q * n)`-th
    /// smallest value, never above the maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = bucket(v);
            assert!(b < BUCKETS && b >= last, "{v} -> {b}");
            let (low, width) = bucket_range(b);
            assert!(
                low <= v && v - low < width,
                "{v} not in bucket {b} = {low}+{width}"
            );
            last = b;
        }
    }

    #[test]
    fn quantiles_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                (got - exact).abs() <= exact / 64.0 + 1.0,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.max(), 10_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        for _ in 0..99 {
            a.record(10);
        }
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert_eq!(a.quantile(0.5), 10);
        assert_eq!(a.quantile(0.99), 10);
        assert_eq!(a.quantile(1.0), 1_000_000);
    }
}
