//! The upload bandwidth cap: a token bucket that every byte sent to the target is charged to,
//! and the slice size that keeps what a single request sends within a second of the rate.
//!
//! The promise (what users plan a WAN link around): over any stretch of wall-clock time `t`,
//! the bytes sent are at most `rate × t` plus one second's worth (the bucket's depth). Two
//! things make that true:
//! - every byte is charged: [`TokenBucket::take`] waits until the bucket holds the piece it
//!   grants (or a whole second's worth, for a piece larger than that), then charges all of
//!   it, going into debt if it must; later callers wait for the debt to be paid;
//! - nothing is sent in a bigger piece than a slice: [`crate::ObjectStorage::put_paced`]
//!   writes an object piece by piece, each no larger than [`TokenBucket::slice_bytes`] (a
//!   second of the rate) *at the moment it is granted*, so a large object cannot go out at
//!   line speed on one admission, and a lower rate (the schedule's hour turning) shrinks the
//!   very next piece.
//!
//! Callers are admitted first come, first served (a fair async lock is held while waiting),
//! so many concurrent uploads share the rate without starving one another. The rate can change
//! at any time (`ferryctl tune`, or the schedule's hours); a waiter re-reads it at least every
//! `RECHECK`, so lifting the cap releases waiters promptly. It runs on tokio's clock, so unit
//! tests check it in paused time; an end-to-end test checks the real binary in wall-clock time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A waiter re-reads the rate at least this often.
const RECHECK: Duration = Duration::from_millis(200);
/// Smallest slice: below this, per-request overhead would dominate (a cap under 64 KB/s
/// still holds on average; the bucket goes into debt for the rest of the slice).
const MIN_SLICE_BYTES: u64 = 64 * 1024;
/// Largest slice: one request's worth when the cap is high.
const MAX_SLICE_BYTES: u64 = 8 * 1024 * 1024;

/// A second of `rate` (non-zero), within the slice bounds.
fn slice_for(rate: u64) -> u64 {
    rate.clamp(MIN_SLICE_BYTES, MAX_SLICE_BYTES)
}

#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: AtomicU64,
    /// (tokens, last refill). Tokens may be negative: a debt later callers wait out.
    state: tokio::sync::Mutex<(f64, Instant)>,
    /// Bytes sent without waiting ([`TokenBucket::charge`]), taken from the tokens by the next
    /// admission.
    charged: AtomicU64,
}

impl TokenBucket {
    /// A bucket that starts full (one second's worth).
    pub fn new(rate_bytes_per_sec: u64) -> Self {
        Self {
            rate: AtomicU64::new(rate_bytes_per_sec),
            state: tokio::sync::Mutex::new((rate_bytes_per_sec as f64, Instant::now())),
            charged: AtomicU64::new(0),
        }
    }

    /// An unlimited bucket (admits everything at once).
    pub fn unlimited() -> Self {
        Self::new(0)
    }

    pub fn set_rate(&self, rate_bytes_per_sec: u64) {
        self.rate.store(rate_bytes_per_sec, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// The most one request may send on one admission: a second of the rate, within
    /// [64 KiB, 8 MiB]; `None` when unlimited (send whole objects).
    pub fn slice_bytes(&self) -> Option<usize> {
        match self.rate() {
            0 => None,
            rate => Some(slice_for(rate) as usize),
        }
    }

    /// Counts `bytes` already sent without waiting (small metadata objects that must not queue
    /// behind uploads): later admissions wait them out, so the long-run rate still holds.
    pub fn charge(&self, bytes: u64) {
        if self.rate() != 0 {
            self.charged.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Waits until up to `wanted` bytes may be sent; charges and returns how many: `wanted`
    /// when unlimited, else at most a slice of the rate in force when granted (never 0 for a
    /// non-zero `wanted`).
    pub async fn take(&self, wanted: u64) -> u64 {
        if self.rate() == 0 || wanted == 0 {
            return wanted;
        }
        // Held while waiting: admissions are served in arrival order (tokio's lock is fair).
        let mut state = self.state.lock().await;
        loop {
            let rate = self.rate();
            if rate == 0 {
                return wanted;
            }
            let bytes = wanted.min(slice_for(rate));
            let (tokens, last) = &mut *state;
            let now = Instant::now();
            let depth = rate as f64;
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * depth).min(depth);
            *tokens -= self.charged.swap(0, Ordering::Relaxed) as f64;
            *last = now;
            // A slice bigger than the bucket waits for a full bucket, then leaves a debt.
            let need = (bytes as f64).min(depth);
            if *tokens >= need {
                *tokens -= bytes as f64;
                return bytes;
            }
            let wait = Duration::from_secs_f64((need - *tokens) / depth);
            tokio::time::sleep(wait.min(RECHECK)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In paused time the clock only moves by the bucket's own sleeps: the elapsed virtual
    /// time is exactly what the cap demands.
    #[tokio::test(start_paused = true)]
    async fn every_byte_is_charged_and_bursts_stay_within_a_second() {
        let bucket = TokenBucket::new(1_000_000);
        let start = Instant::now();
        assert_eq!(bucket.take(1_000_000).await, 1_000_000); // the first second's worth at once
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            assert_eq!(bucket.take(500_000).await, 500_000);
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.99..=2.01).contains(&elapsed), "2 MB more at 1 MB/s took {elapsed} s");

        // More than a slice is granted a slice at a time.
        let bucket = TokenBucket::new(1_000_000);
        assert_eq!(bucket.take(3_000_000).await, 1_000_000);

        // Below the smallest slice a piece is charged whole: the debt delays what follows.
        let bucket = TokenBucket::new(10_000);
        let start = Instant::now();
        assert_eq!(bucket.take(1 << 20).await, 64 * 1024);
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.take(10_000).await;
        let elapsed = start.elapsed().as_secs_f64();
        let expected = 64.0 * 1024.0 / 10_000.0; // the debt, then a full bucket
        assert!(
            (elapsed - expected).abs() < 0.01,
            "took {elapsed} s, expected {expected}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_changes_reach_waiters() {
        let bucket = std::sync::Arc::new(TokenBucket::new(1_000));
        bucket.take(1_000).await;
        let waiter = {
            let bucket = bucket.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let granted = bucket.take(1_000_000).await; // 65 s at this rate
                (start.elapsed(), granted)
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        bucket.set_rate(0);
        let (waited, granted) = waiter.await.unwrap_or_default();
        assert!(
            waited <= Duration::from_millis(1_300),
            "lifting the cap released the waiter after {waited:?}"
        );
        assert_eq!(granted, 1_000_000, "unlimited grants everything asked");
        assert_eq!(bucket.slice_bytes(), None, "0 means unlimited");
        let before = Instant::now();
        assert_eq!(bucket.take(u64::MAX).await, u64::MAX);
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    /// A lower rate shrinks the very next piece.
    #[tokio::test(start_paused = true)]
    async fn a_lower_rate_shrinks_the_next_piece() {
        let bucket = TokenBucket::new(3_000_000);
        assert_eq!(bucket.take(10_000_000).await, 3_000_000);
        bucket.set_rate(1_000_000);
        assert_eq!(bucket.take(10_000_000).await, 1_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn charged_bytes_delay_later_admissions() {
        let bucket = TokenBucket::new(1_000_000);
        bucket.charge(2_000_000);
        let start = Instant::now();
        bucket.take(1_000_000).await;
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (1.99..=2.01).contains(&elapsed),
            "2 MB of debt at 1 MB/s took {elapsed} s to repay"
        );
    }

    #[test]
    fn slices_are_a_second_of_the_rate_within_bounds() {
        assert_eq!(TokenBucket::new(1_000_000).slice_bytes(), Some(1_000_000));
        assert_eq!(TokenBucket::new(1_000).slice_bytes(), Some(64 * 1024));
        assert_eq!(TokenBucket::new(1 << 40).slice_bytes(), Some(8 << 20));
    }
}
