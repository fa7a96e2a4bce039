//! Ferry's one wall clock (ferryd, ferry-agent, ferryctl, ferry-perf): milliseconds since the
//! Unix epoch, as stored in recovery points, disk descriptors, registrations, segment headers
//! and the agent's status. A clock before 1970 reads as 0
//! rather than failing (the values are informational; ordering uses seqs, never times).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
