//! A token bucket for the upload bandwidth cap (bytes per second; 0 = unlimited). The cap can
//! change at run time. Bursts are limited to one second's worth of tokens. It runs on tokio's
//! clock, so tests can check it in paused (virtual) time rather than against the wall clock.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct TokenBucket {
    state: Mutex<(u64, f64, Instant)>, // (rate bytes/s, tokens, last refill)
}

impl TokenBucket {
    pub fn new(rate_bytes_per_sec: u64) -> Self {
        Self {
            state: Mutex::new((rate_bytes_per_sec, rate_bytes_per_sec as f64, Instant::now())),
        }
    }

    pub fn set_rate(&self, rate_bytes_per_sec: u64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = rate_bytes_per_sec;
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let (rate, tokens, last) = &mut *state;
                if *rate == 0 {
                    return;
                }
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * *rate as f64).min(*rate as f64);
                *last = now;
                // An object larger than a second's worth goes out once the bucket is full.
                let need = (bytes as f64).min(*rate as f64);
                if *tokens >= need {
                    *tokens -= need;
                    return;
                }
                Duration::from_secs_f64((need - *tokens) / *rate as f64)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In paused time the clock only moves by the bucket's own sleeps: the elapsed virtual
    /// time is exactly what the cap demands.
    #[tokio::test(start_paused = true)]
    async fn the_cap_paces_sends_and_can_change() {
        let bucket = TokenBucket::new(1_000_000);
        let start = Instant::now();
        bucket.take(1_000_000).await; // the first second's worth is there at once
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            bucket.take(500_000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (1.99..=2.01).contains(&elapsed),
            "2 MB more at 1 MB/s took {elapsed} s of virtual time"
        );
        bucket.set_rate(0);
        let before = Instant::now();
        bucket.take(u64::MAX).await;
        assert_eq!(before.elapsed(), Duration::ZERO, "0 means unlimited");
    }
}
