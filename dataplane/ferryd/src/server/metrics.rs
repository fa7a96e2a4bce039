//! Prometheus metrics: the counters ([`crate::counters`]) and ferryd's state rendered in the
//! text exposition format (0.0.4) on `server.metrics_listen` (plain
//! HTTP, loopback by default: the numbers are not secret, but the endpoint is not meant to be
//! exposed). No label carries a secret: disk ids and names only.

use ferry_client::histogram::Histogram;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// The exposition text of everything ferryd measures.
pub fn render(state: &super::AppState) -> String {
    let mut out = String::new();
    let role = super::role_of(state);
    let _ = writeln!(
        out,
        "# HELP ferry_role This appliance's role in its site (1 for the role it has).\n# TYPE ferry_role gauge\nferry_role{{role=\"{role}\"}} 1"
    );
    if role == super::ROLE_CONFIGURATION_SERVER {
        metric(
            &mut out,
            "ferry_site_process_servers",
            "gauge",
            "Process servers that joined this configuration server's site.",
            ferry_config::site::servers(state.layout.root()).map_or(0, |s| s.len()),
        );
    }
    metric(
        &mut out,
        "ferry_disk_leases_held",
        "gauge",
        "Disks whose storage lease this process server holds (it alone writes them to storage).",
        state.ownership.held_count(),
    );
    metric(
        &mut out,
        "ferry_disks_lost_to_other_process_servers",
        "gauge",
        "Disks another process server took over from this one since start (their agents are sent on).",
        state.ownership.lost_count(),
    );
    let ingested = state.ingested_bytes.load(Ordering::Relaxed);
    let uploaded = state.pipeline.uploaded_bytes();
    let sealed = state.pipeline.sealed_bytes();
    metric(
        &mut out,
        "ferry_ingest_batches_total",
        "counter",
        "Batches acknowledged (durable in the cache).",
        state.metrics.batches.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "ferry_storage_puts_total",
        "counter",
        "Objects written to the target (change sets, points, descriptors): each at least one billed PUT.",
        state.pipeline.storage_puts(),
    );
    let (reserved, _, refused) = state.ingest_memory.usage();
    metric(
        &mut out,
        "ferry_ingest_body_bytes",
        "gauge",
        "Bytes reserved by batch bodies being received now (at most a quarter of the memory budget).",
        reserved,
    );
    metric(
        &mut out,
        "ferry_resident_batch_bytes",
        "gauge",
        "Bytes of received batches kept in memory for the seal workers (at most half the memory budget).",
        state.cache.usage().resident_bytes,
    );
    metric(
        &mut out,
        "ferry_change_set_bytes_in_flight",
        "gauge",
        "Bytes of change sets between cut and stored: plaintext while queued, sealed bytes after (at most a quarter of the memory budget).",
        state.pipeline.change_set_bytes_in_flight(),
    );
    metric(
        &mut out,
        "ferry_ingest_busy_total",
        "counter",
        "Batches refused with 503 busy because their bodies would not fit the memory budget.",
        refused,
    );
    metric(
        &mut out,
        "ferry_ingest_bytes_total",
        "counter",
        "Batch bytes acknowledged.",
        ingested,
    );
    metric(
        &mut out,
        "ferry_upload_bytes_total",
        "counter",
        "Batch bytes stored in the target (before compression).",
        uploaded,
    );
    metric(
        &mut out,
        "ferry_upload_sealed_bytes_total",
        "counter",
        "Sealed (compressed, encrypted) bytes stored in the target.",
        sealed,
    );
    let ratio = if sealed > 0 {
        uploaded as f64 / sealed as f64
    } else {
        0.0
    };
    metric(
        &mut out,
        "ferry_compression_ratio",
        "gauge",
        "Batch bytes over sealed bytes stored since start.",
        ratio,
    );
    render_histogram(
        &state.metrics.ack_latency,
        &mut out,
        "ferry_ack_latency_seconds",
        "Batch arrival to acknowledgement.",
    );
    render_histogram(
        state.pipeline.upload_latency(),
        &mut out,
        "ferry_upload_latency_seconds",
        "One change set's upload, retries included.",
    );
    let _ = writeln!(
        out,
        "# HELP ferry_upload_errors_total Failed uploads by reason (each is retried).\n# TYPE ferry_upload_errors_total counter"
    );
    for (reason, count) in state.pipeline.upload_errors() {
        let _ = writeln!(
            out,
            "ferry_upload_errors_total{{reason=\"{}\"}} {count}",
            label(&reason)
        );
    }
    let usage = state.cache.usage();
    metric(
        &mut out,
        "ferry_cache_used_bytes",
        "gauge",
        "Space the cache's segments take.",
        usage.segment_bytes_total,
    );
    metric(
        &mut out,
        "ferry_cache_limit_bytes",
        "gauge",
        "The cache's configured limit.",
        usage.limit_bytes,
    );
    let now_ms = ferry_client::clock::now_unix_ms();
    let disks = state.cache.disks();
    let _ = writeln!(out, "# HELP ferry_cache_backlog_bytes Batch bytes of a disk not yet uploaded.\n# TYPE ferry_cache_backlog_bytes gauge");
    for view in &disks {
        let _ = writeln!(
            out,
            "ferry_cache_backlog_bytes{{disk_id=\"{}\",name=\"{}\"}} {}",
            view.meta.disk_id,
            label(&view.meta.name),
            state.cache.backlog_bytes(view.meta.disk_id)
        );
    }
    let _ = writeln!(out, "# HELP ferry_disk_rpo_seconds Now minus the source time of the newest write in the disk's latest restorable point.\n# TYPE ferry_disk_rpo_seconds gauge");
    for view in &disks {
        if let Some(point) = state.pipeline.disk(view.meta.disk_id).and_then(|d| d.latest_point) {
            let rpo = now_ms.saturating_sub(point.source_time_unix_ms) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "ferry_disk_rpo_seconds{{disk_id=\"{}\",name=\"{}\"}} {rpo}",
                view.meta.disk_id,
                label(&view.meta.name)
            );
        }
    }
    render_retention(&mut out, &state.retention.status(), now_ms);
    out
}

/// Retention's last run: stored bytes and the age of the oldest restorable point per disk,
/// runs and failed runs.
fn render_retention(out: &mut String, retention: &ferry_client::control::RetentionStatus, now_ms: u64) {
    metric(
        out,
        "ferry_retention_runs_total",
        "counter",
        "Consolidation runs since start (background and ferryctl retention run).",
        retention.runs,
    );
    metric(
        out,
        "ferry_retention_failures_total",
        "counter",
        "Consolidation runs that failed for at least one disk.",
        retention.failures,
    );
    let _ = writeln!(out, "# HELP ferry_disk_stored_bytes Bytes a disk's objects take in the target, as the last consolidation measured.\n# TYPE ferry_disk_stored_bytes gauge");
    for disk in &retention.disks {
        let _ = writeln!(
            out,
            "ferry_disk_stored_bytes{{disk_id=\"{}\"}} {}",
            disk.disk_id, disk.stored_bytes
        );
    }
    let _ = writeln!(out, "# HELP ferry_disk_oldest_point_age_seconds Now minus the source time of the disk's oldest restorable point.\n# TYPE ferry_disk_oldest_point_age_seconds gauge");
    for disk in &retention.disks {
        if let Some(source_ms) = disk.oldest_point_source_unix_ms {
            let age = now_ms.saturating_sub(source_ms) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "ferry_disk_oldest_point_age_seconds{{disk_id=\"{}\"}} {age}",
                disk.disk_id
            );
        }
    }
}

/// Serves `GET /metrics` until `stopped`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: std::sync::Arc<super::AppState>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    super::http::serve_http1(listener, "metrics", state, answer, stopped).await
}

async fn answer(
    state: std::sync::Arc<super::AppState>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<super::http::Body> {
    let response = if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
        hyper::Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(super::http::Body::from(render(&state)))
    } else {
        hyper::Response::builder()
            .status(404)
            .body(super::http::Body::from("only /metrics here\n"))
    };
    response.unwrap_or_default()
}

/// Upper bounds of the Prometheus latency buckets, seconds.
const BOUNDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Writes `histogram` in the Prometheus text format: cumulative counts at `BOUNDS` (each
/// within 1/16 of its bound, the histogram's resolution), the sum and the count.
pub fn render_histogram(histogram: &Histogram, out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for bound in BOUNDS {
        let at_most = histogram.count_at_most(Duration::from_secs_f64(bound));
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {at_most}");
    }
    let count = histogram.count();
    let sum = histogram.sum().as_secs_f64();
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
    );
}
