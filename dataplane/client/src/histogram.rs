//! The one latency histogram: microseconds in log-linear buckets (16 per power of two, so a
//! percentile is within 1/16 of the true value), a fixed 976 counters whatever the count.
//! Lock-free: a record is two atomic adds (its bucket and the sum). ferry-perf reads
//! percentiles from it; ferryd's `/metrics` renders it as a Prometheus histogram through
//! [`Histogram::count_at_most`], whose fixed bounds are exact to the same 1/16.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB: u64 = 16;
/// Exponents 4..=63 of 16 sub-buckets each after the first 16 exact values.
const BUCKETS: usize = 16 + 60 * 16;

pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }
}

fn bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let exponent = 63 - u64::from(micros.leading_zeros()); // >= 4
    let sub = (micros >> (exponent - 4)) & (SUB - 1);
    ((exponent - 3) * SUB + sub).min(BUCKETS as u64 - 1) as usize
}

/// The smallest value of a bucket.
fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let exponent = index / SUB + 3;
    let sub = index % SUB;
    (SUB + sub) << (exponent - 4)
}

impl Histogram {
    pub fn record(&self, value: Duration) {
        let micros = value.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The sum of every recorded value.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }

    /// How many values were at most `bound`, counting the buckets that lie wholly at or
    /// below it (so within 1/16 of `bound` of the exact count).
    pub fn count_at_most(&self, bound: Duration) -> u64 {
        let bound = bound.as_micros().min(u128::from(u64::MAX)) as u64;
        // Bucket i holds lower_bound(i) ..= lower_bound(i + 1) - 1; the last is open-ended.
        (0..BUCKETS - 1)
            .take_while(|&index| lower_bound(index + 1) - 1 <= bound)
            .map(|index| self.counts[index].load(Ordering::Relaxed))
            .sum()
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(Duration::from_micros(lower_bound(index)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_sixteenth() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for micros in 1..=100_000u64 {
            h.record(Duration::from_micros(micros));
        }
        for (q, exact) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q).unwrap().as_micros() as f64;
            assert!(
                got <= exact && got >= exact * (1.0 - 1.0 / 16.0),
                "q{q}: {got} vs {exact}"
            );
        }
        for index in 0..BUCKETS {
            assert_eq!(bucket(lower_bound(index)), index, "bucket {index}");
        }
        // 1..=100_000 µs: at most 500 µs are exactly 500 values, at most 10 ms 10,000; the
        // sum is n(n+1)/2.
        let at_most = |micros| h.count_at_most(Duration::from_micros(micros)) as f64;
        for (bound, exact) in [(500u64, 500.0), (10_000, 10_000.0), (1_000_000, 100_000.0)] {
            let got = at_most(bound);
            assert!(got <= exact && got >= exact * (1.0 - 1.0 / 16.0), "<= {bound}: {got}");
        }
        assert_eq!(h.sum(), Duration::from_micros(100_000 * 100_001 / 2));
    }
}
