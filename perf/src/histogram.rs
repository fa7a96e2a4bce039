//! A bounded latency histogram: microseconds in log-linear buckets (16 per power of two, so a
//! percentile is within 1/16 of the true value), a fixed 976 counters whatever the count.
//! Lock-free: each record is one atomic add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB: u64 = 16;
/// Exponents 4..=63 of 16 sub-buckets each after the first 16 exact values.
const BUCKETS: usize = 16 + 60 * 16;

pub struct Histogram {
    counts: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
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
    }
}
