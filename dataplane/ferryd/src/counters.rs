//! Counters updated on the hot path with an atomic add or two: the bottom layer that the
//! pipeline and the server both write and `server::metrics` renders (Prometheus text format).

use ferry_client::histogram::Histogram;
use std::sync::atomic::AtomicU64;

/// Metrics of the ingest path (the pipeline keeps its own in `PipelineStatus`).
#[derive(Default)]
pub struct IngestMetrics {
    pub batches: AtomicU64,
    /// From the request's arrival to its 200 (durable).
    pub ack_latency: Histogram,
}
