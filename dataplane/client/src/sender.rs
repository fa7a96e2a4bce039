//! Sends a disk's batches with a window of requests in flight, retrying what is worth
//! retrying: 503 (cache full, draining; Retry-After honoured), 5xx, lost connections, and
//! `out_of_window` (an earlier batch is still on its way). Each batch is retried at most
//! `max_attempts` times; the pause doubles from `initial_backoff` up to `max_backoff`.
//!
//! The window slides over seqs, not over a count of requests ([`SendWindow`]): a batch goes
//! only while it is within `window` of the oldest one not yet acknowledged, which is exactly
//! what ferryd accepts (PROTOCOL.md: seq at most `durable_seq + window`). Counting requests
//! instead let later seqs run ahead of one waiting out a Retry-After; ferryd refused them
//! with `409 out_of_window` after reading their bodies, 6-9% of what a loaded steady
//! run sent.

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::time::Duration;
use uuid::Uuid;

use crate::client::{ClientError, DataClient};

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 30,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The seqs of one disk in flight, and whether another may go.
#[derive(Debug)]
pub struct SendWindow {
    window: u64,
    in_flight: std::collections::BTreeSet<u64>,
}

impl SendWindow {
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1) as u64,
            in_flight: Default::default(),
        }
    }

    /// Whether `seq` may be sent now: fewer than `window` in flight, and `seq` within
    /// `window` of the oldest one in flight.
    pub fn may_send(&self, seq: u64) -> bool {
        match self.in_flight.first() {
            None => true,
            Some(oldest) => (self.in_flight.len() as u64) < self.window && seq < oldest + self.window,
        }
    }

    pub fn sent(&mut self, seq: u64) {
        self.in_flight.insert(seq);
    }

    /// `seq` was answered (acknowledged, or failed for good).
    pub fn answered(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

pub struct BatchSender {
    client: DataClient,
    disk_id: Uuid,
    window: usize,
    retry: RetryPolicy,
}

impl BatchSender {
    pub fn new(client: DataClient, disk_id: Uuid, window: usize, retry: RetryPolicy) -> Self {
        Self {
            client,
            disk_id,
            window: window.max(1),
            retry,
        }
    }

    /// Where to resume: the server's `durable_seq`.
    pub async fn resume_point(&self) -> Result<u64, ClientError> {
        Ok(self.client.get_disk(self.disk_id).await?.durable_seq)
    }

    /// Sends one batch until it is durable or the error is final.
    pub async fn send_one(&self, seq: u64, batch: Bytes) -> Result<u64, ClientError> {
        let mut pause = self.retry.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.client.put_batch(self.disk_id, seq, batch.clone()).await {
                Ok(ack) => return Ok(ack.durable_seq),
                Err(error) => error,
            };
            let retry = error.is_retryable() || error.code() == Some(crate::api::ErrorCode::OutOfWindow);
            if !retry || attempt >= self.retry.max_attempts {
                return Err(error);
            }
            let hinted = match &error {
                ClientError::Status {
                    retry_after_secs: Some(secs),
                    ..
                } => Duration::from_secs(*secs).min(self.retry.max_backoff),
                _ => pause,
            };
            tokio::time::sleep(hinted).await;
            pause = (pause * 2).min(self.retry.max_backoff);
        }
    }

    /// Sends `batches` (seq, bytes) in order through a [`SendWindow`] of `window`; returns
    /// the highest `durable_seq` the server reported.
    pub async fn send_all(&self, batches: impl IntoIterator<Item = (u64, Bytes)>) -> Result<u64, ClientError> {
        let mut pending = batches.into_iter().peekable();
        let mut in_flight = FuturesUnordered::new();
        let mut window = SendWindow::new(self.window);
        let mut durable = 0;
        loop {
            while let Some((seq, _)) = pending.peek() {
                if !window.may_send(*seq) {
                    break;
                }
                let Some((seq, batch)) = pending.next() else {
                    break;
                };
                window.sent(seq);
                in_flight.push(async move { (seq, self.send_one(seq, batch).await) });
            }
            match in_flight.next().await {
                Some((seq, result)) => {
                    window.answered(seq);
                    durable = durable.max(result?);
                }
                None => return Ok(durable),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SendWindow;

    #[test]
    fn the_window_slides_over_seqs_not_over_a_count() {
        let mut window = SendWindow::new(4);
        for seq in 1..=4 {
            assert!(window.may_send(seq));
            window.sent(seq);
        }
        assert!(!window.may_send(5), "four in flight");
        for seq in 2..=4 {
            window.answered(seq);
        }
        assert_eq!(window.len(), 1);
        assert!(!window.may_send(5), "1 is still out: 5 is beyond 1 + window - 1");
        window.answered(1);
        assert!(window.is_empty() && window.may_send(5));
        window.sent(5);
        assert!(window.may_send(8) && !window.may_send(9));
    }
}
