//! Retries transient storage errors: exponential backoff with full jitter, bounded by a
//! number of attempts and a total time budget. Permanent errors and `NotFound` pass through
//! at once: a wrong key or a missing container must stop the caller, not spin.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{LeaseAnswer, LeaseOp, ObjectMeta, ObjectStorage, StorageError, TokenBucket};

/// Bounds of the retry loop. Defaults: 8 attempts, 100 ms doubling to at most 10 s, within
/// 120 s in all (an object PUT is retried for about two minutes before the caller hears).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub total_budget_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
            total_budget_ms: 120_000,
        }
    }
}

impl RetryPolicy {
    /// Checks the bounds; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be 1..=100, got {}", self.max_attempts));
        }
        if self.initial_backoff_ms == 0 || self.initial_backoff_ms > self.max_backoff_ms {
            return Err("initial_backoff_ms must be > 0 and <= max_backoff_ms".into());
        }
        if self.max_backoff_ms > 600_000 {
            return Err(format!("max_backoff_ms must be <= 600000, got {}", self.max_backoff_ms));
        }
        Ok(())
    }

    /// The sleep before retry number `retry` (1-based): uniform in [0, min(max, initial * 2^(retry-1))].
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let ceiling_ms = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_backoff_ms);
        Duration::from_millis(random_below(ceiling_ms + 1))
    }
}

fn random_below(bound: u64) -> u64 {
    let mut raw = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut raw).is_err() {
        return bound / 2; // no randomness: still back off, just without jitter
    }
    u64::from_le_bytes(raw) % bound.max(1)
}

/// Wraps a backend with bounded retries of transient errors.
#[derive(Debug)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
    retries: AtomicU64,
}

impl<S: ObjectStorage> Retrying<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            retries: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Retries made since start (for status and tests).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let started = Instant::now();
        let budget = Duration::from_millis(self.policy.total_budget_ms);
        let mut made = 0u32;
        loop {
            made += 1;
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !error.is_transient() || made >= self.policy.max_attempts {
                return Err(error);
            }
            let pause = self.policy.backoff(made);
            if started.elapsed() + pause > budget {
                return Err(error);
            }
            tracing::debug!(attempt = made, pause_ms = pause.as_millis() as u64, %error, "retrying storage request");
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
    }
}

#[async_trait]
impl<S: ObjectStorage> ObjectStorage for Retrying<S> {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.with_retries(|| self.inner.put(name, data.clone())).await
    }

    /// A retried attempt is paced again: its bytes cross the link again.
    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError> {
        self.with_retries(|| self.inner.put_paced(name, data.clone(), pace))
            .await
    }

    async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        self.with_retries(|| self.inner.get(name)).await
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.with_retries(|| self.inner.get_range(name, range.clone())).await
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError> {
        self.with_retries(|| self.inner.head(name)).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.with_retries(|| self.inner.list_page(prefix, start_after, max_results))
            .await
    }

    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.with_retries(|| self.inner.list_directories(prefix)).await
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.with_retries(|| self.inner.delete(name)).await
    }

    /// A retry after a lost answer may find the object its own first attempt created: the
    /// caller reads it back to tell (ownership records carry their writer).
    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError> {
        self.with_retries(|| self.inner.put_new(name, data.clone())).await
    }

    /// Lease calls are idempotent for their own lease id, so retrying them is safe.
    async fn lease(&self, name: &str, op: LeaseOp) -> Result<LeaseAnswer, StorageError> {
        self.with_retries(|| self.inner.lease(name, op.clone())).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            total_budget_ms: 10_000,
        };
        for retry in 1..40 {
            let ceiling = (100u64 << (retry - 1).min(30)).min(1000);
            assert!(policy.backoff(retry) <= Duration::from_millis(ceiling));
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(10)).collect();
        assert!(samples.len() > 1, "jitter varies the pause");
        assert!(policy.validate().is_ok());
        assert!(RetryPolicy {
            max_attempts: 0,
            ..policy
        }
        .validate()
        .unwrap_err()
        .contains("max_attempts"));
        assert!(RetryPolicy {
            initial_backoff_ms: 2000,
            ..policy
        }
        .validate()
        .is_err());
    }
}
