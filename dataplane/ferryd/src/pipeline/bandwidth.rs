//! A token bucket for the upload bandwidth cap (bytes per second; 0 = unlimited). The cap can
//! change at run time. Bursts are limited to one second's worth of tokens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
