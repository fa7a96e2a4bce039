//! Sends a disk's batches with a window of requests in flight, retrying what is worth
//! retrying: 503 (cache full, draining; Retry-After honoured), 5xx, lost connections, and
//! `out_of_window` (an earlier batch is still on its way). Each batch is retried at most
//! `max_attempts` times; the pause doubles from `initial_backoff` up to `max_backoff`.

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
            let retry = error.is_retryable() || error.code() == Some("out_of_window");
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

    /// Sends `batches` (seq, bytes) in order with up to `window` in flight; returns the
    /// highest `durable_seq` the server reported.
    pub async fn send_all(&self, batches: impl IntoIterator<Item = (u64, Bytes)>) -> Result<u64, ClientError> {
        let mut pending = batches.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut durable = 0;
        loop {
            while in_flight.len() < self.window {
                match pending.next() {
                    Some((seq, batch)) => in_flight.push(self.send_one(seq, batch)),
                    None => break,
                }
            }
            match in_flight.next().await {
                Some(result) => durable = durable.max(result?),
                None => return Ok(durable),
            }
        }
    }
}
