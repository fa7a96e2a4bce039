//! The memory of batch bodies being received: every batch reserves its bytes here before its
//! body is read, and gives them back when it is answered (by then the cache owns the record).
//! When the reservation does not fit, the batch is refused with `503 busy` and Retry-After
//! (its body read and dropped, see `server::data`), so no number of connections and streams
//! can make ferryd hold more than the limit in bodies. One batch is always admitted when
//! nothing is reserved, so a limit below one batch cannot stop ingest.
//!
//! The limit is the bodies' share of `pipeline.memory_budget_bytes` ([`crate::memory_budget`]:
//! a quarter, at least one largest batch), changed by `ferryctl tune` with the budget.
//!
//! Why not wait for room instead of refusing: a stream that waits does not read its body, and
//! its unread data holds the HTTP/2 connection's shared flow-control window, which stalls the
//! other disks' streams on that connection (tried: steady's ingest fell to a third).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct IngestMemory {
    reserved: AtomicU64,
    limit: AtomicU64,
    refused: AtomicU64,
}

/// Bytes held for one batch; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<IngestMemory>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// The limit for a configuration: the bodies' share of the memory budget.
pub fn limit_for(config: &ferry_config::config::ApplianceConfig) -> u64 {
    crate::memory_budget::shares(config).ingest_bodies
}

impl IngestMemory {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicU64::new(limit),
            ..Self::default()
        })
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    /// Reserves `bytes`, or `None` when they do not fit (counted as refused).
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let limit = self.limit.load(Ordering::SeqCst);
        let reserved = self.reserved.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
            (now == 0 || now + bytes <= limit).then_some(now + bytes)
        });
        match reserved {
            Ok(_) => Some(Reservation {
                memory: self.clone(),
                bytes,
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// (bytes reserved now, the limit, batches refused since start).
    pub fn usage(&self) -> (u64, u64, u64) {
        (
            self.reserved.load(Ordering::SeqCst),
            self.limit.load(Ordering::SeqCst),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_come_back() {
        let memory = IngestMemory::new(10);
        let a = memory.try_reserve(6).expect("fits");
        assert!(memory.try_reserve(5).is_none(), "6 + 5 > 10");
        let b = memory.try_reserve(4).expect("6 + 4 fits");
        assert_eq!(memory.usage(), (10, 10, 1));
        drop(a);
        drop(b);
        assert_eq!(memory.usage().0, 0);
        let big = memory
            .try_reserve(50)
            .expect("one batch always fits when nothing is reserved");
        assert!(memory.try_reserve(1).is_none());
        drop(big);
        memory.set_limit(100);
        assert!(memory.try_reserve(60).is_some());
        let mut config = ferry_config::config::ApplianceConfig::with_target(ferry_storage::TargetConfig::Local(
            ferry_storage::LocalTargetConfig {
                path: "target".into(),
                create: true,
            },
        ));
        config.pipeline.memory_budget_bytes = 512 << 20;
        config.ingest.max_batch_bytes = 16 << 20;
        assert_eq!(limit_for(&config), 128 << 20);
        config.pipeline.memory_budget_bytes = 20 << 20;
        assert_eq!(limit_for(&config), (16 << 20) + 40, "one largest batch with its header");
    }
}
