//! The control API (ferry_client::control): HTTP/1.1 JSON on an owner-only Unix socket.
//! The socket file is created mode 0600 inside the appliance directory (itself owner-only),
//! so only ferryd's user (and root) can use it; a stale socket from a crash is replaced, a live
//! one (another ferryd) is refused. Status and machines; tune (tune.rs); drain and resume;
//! retention: a consolidation run now, and a disk's policy overrides.
//!
//! Rates come from [`RateSampler`]: once a second it records the ingested and uploaded byte
//! counters, keeping 61 samples (one minute); "last 10 s" and "last minute" are the counters
//! now minus the oldest sample inside the window.

use ferry_client::api::ErrorCode;
use ferry_client::control::{CacheStatus, DiskStatus, MachineInfo, Rates, Status, Utilisation};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;

use super::http::{json, ApiError, Body};
use super::AppState;

const SAMPLES: usize = 61;

/// Counters sampled together: ingested bytes, uploaded bytes, seal-busy nanoseconds.
/// (ingested bytes, uploaded bytes, seal-busy nanoseconds, objects written to the target).
type Counters = (u64, u64, u64, u64);

/// One sample a second of the counters, seeded with ferryd's start (all zero), so rates are
/// right during the first minute too.
pub struct RateSampler {
    samples: Mutex<VecDeque<(Instant, Counters)>>,
}

impl Default for RateSampler {
    fn default() -> Self {
        Self {
            samples: Mutex::new(VecDeque::from([(Instant::now(), (0, 0, 0, 0))])),
        }
    }
}

impl RateSampler {
    fn push(&self, counters: Counters) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((Instant::now(), counters));
        while samples.len() > SAMPLES {
            samples.pop_front();
        }
    }

    /// (ingest MB/s, upload MB/s, seal-busy seconds per second, objects written per second)
    /// from the oldest sample within the last `seconds` to the counters `now`.
    fn rates(&self, seconds: u64, now: Counters) -> (f64, f64, f64, f64) {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        let since = at.checked_sub(Duration::from_secs(seconds)).unwrap_or(at);
        let Some(&(then, before)) = samples
            .iter()
            .find(|(when, _)| *when >= since)
            .or_else(|| samples.back())
        else {
            return (0.0, 0.0, 0.0, 0.0);
        };
        let span = at.duration_since(then).as_secs_f64().max(1e-3);
        (
            now.0.saturating_sub(before.0) as f64 / 1e6 / span,
            now.1.saturating_sub(before.1) as f64 / 1e6 / span,
            now.2.saturating_sub(before.2) as f64 / 1e9 / span,
            now.3.saturating_sub(before.3) as f64 / span,
        )
    }
}

/// Once a second: the byte counters; every 5 s: the machine's CPU and memory (alerts.rs).
pub async fn sample_rates(state: Arc<AppState>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        if ticks.is_multiple_of(5) {
            state.system.sample_proc();
        }
        ticks += 1;
        state.rates.push(counters(&state));
    }
}

/// Binds the control socket owner-only, replacing a stale one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another ferryd answers on the control socket {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} owner-only", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, state: Arc<AppState>, stopped: tokio::sync::watch::Receiver<bool>) {
    super::http::serve_http1(
        listener,
        "control socket",
        state,
        |state, request| async move { handle(&state, request).await },
        stopped,
    )
    .await
}

async fn handle(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    // Bodies are small JSON (a tune request); anything past 64 KiB is refused.
    let body = match http_body_util::Limited::new(body, 64 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return ApiError::new(ErrorCode::TooLarge, "control requests are at most 64 KiB").into_response(),
    };
    let answer = match (parts.method, parts.uri.path()) {
        (Method::GET, "/v1/status") => Ok(json(StatusCode::OK, &status(state))),
        (Method::GET, "/v1/machines") => machines(state).map(|m| json(StatusCode::OK, &m)),
        (Method::GET, "/v1/tune") => Ok(json(StatusCode::OK, &super::tune::state(state))),
        (Method::PUT, "/v1/tune") => match serde_json::from_slice::<ferry_client::control::TuneRequest>(&body) {
            Ok(request) => super::tune::put(state, &request)
                .await
                .map(|s| json(StatusCode::OK, &s)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("tune request: {e}"))),
        },
        (Method::POST, "/v1/retention/run") => {
            match serde_json::from_slice::<ferry_vault::retention::RunRequest>(&body) {
                Ok(request) => retention_run(state, &request).await,
                Err(e) => Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("retention run request: {e}"),
                )),
            }
        }
        (Method::PUT, "/v1/retention/policy") => {
            match serde_json::from_slice::<ferry_vault::retention::PolicyChange>(&body) {
                Ok(change) => retention_policy(state, &change),
                Err(e) => Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("retention policy change: {e}"),
                )),
            }
        }
        (Method::POST, "/v1/failovers/commit") => {
            match serde_json::from_slice::<ferry_client::control::FailoverCommit>(&body) {
                Ok(commit) => {
                    let cache = state.cache.clone();
                    match tokio::task::spawn_blocking(move || crate::failed_over::mark(&cache, &commit)).await {
                        Ok(Ok(answer)) => Ok(json(StatusCode::OK, &answer)),
                        Ok(Err(e)) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
                        Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
                    }
                }
                Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("failover commit: {e}"))),
            }
        }
        (Method::POST, "/v1/failovers/failback") => {
            match serde_json::from_slice::<ferry_client::control::FailoverCommit>(&body) {
                Ok(done) => {
                    let cache = state.cache.clone();
                    match tokio::task::spawn_blocking(move || crate::failed_over::lift(&cache, &done)).await {
                        Ok(Ok(answer)) => Ok(json(StatusCode::OK, &answer)),
                        Ok(Err(e)) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
                        Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
                    }
                }
                Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("failback: {e}"))),
            }
        }
        (method @ (Method::GET | Method::POST), path)
            if path.starts_with("/v1/machines/") && path.ends_with("/commands") =>
        {
            let machine = path.trim_start_matches("/v1/machines/").trim_end_matches("/commands");
            super::commands::control(state, &method, machine, &body)
        }
        (Method::GET, "/v1/groups") => Ok(json(StatusCode::OK, &state.groups.list())),
        (Method::POST, "/v1/groups") => match serde_json::from_slice::<ferry_client::groups::GroupSpec>(&body) {
            Ok(spec) => create_group(state, spec),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("group: {e}"))),
        },
        (method @ (Method::GET | Method::POST), path)
            if path.starts_with("/v1/groups/") && path.ends_with("/points") =>
        {
            let which = path.trim_start_matches("/v1/groups/").trim_end_matches("/points");
            group_points(state, &method, which, &body).await
        }
        (Method::DELETE, path) if path.starts_with("/v1/groups/") => {
            let which = path.trim_start_matches("/v1/groups/");
            match state.groups.delete(which) {
                Ok(group) => {
                    tracing::info!(group = %group.name, "consistency group deleted");
                    Ok(json(StatusCode::OK, &group))
                }
                Err(e @ crate::groups::GroupError::Unknown(_)) => {
                    Err(ApiError::new(ErrorCode::NotFound, e.to_string()))
                }
                Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
            }
        }
        (Method::POST, "/v1/ps/move") => match serde_json::from_slice::<ferry_client::control::MoveRequest>(&body) {
            Ok(request) => super::moves::move_machine(state, request)
                .await
                .map(|moving| json(StatusCode::OK, &moving)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("move: {e}"))),
        },
        (Method::POST, "/v1/ps/drain") => match serde_json::from_slice::<ferry_client::control::DrainRequest>(&body) {
            Ok(request) => super::moves::drain(state, request)
                .await
                .map(|moved| json(StatusCode::OK, &moved)),
            Err(e) => Err(ApiError::new(ErrorCode::BadRequest, format!("drain: {e}"))),
        },
        (Method::POST, "/v1/drain") => {
            state.tuning.set_flush_all(true);
            if state.admission.set_maintenance(true) {
                tracing::info!("draining for maintenance: refusing new data, uploading the cache");
            }
            Ok(json(StatusCode::OK, &status(state)))
        }
        (Method::POST, "/v1/resume") => {
            if state.admission.set_maintenance(false) {
                state.tuning.set_flush_all(false); // not when shutting down: that drains to the end
                tracing::info!("accepting data again");
            }
            Ok(json(StatusCode::OK, &status(state)))
        }
        (_, path) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no such control endpoint: {path}"),
        )),
    };
    answer.unwrap_or_else(|e| e.into_response())
}

/// `POST /v1/groups/{which}/points` (a group point now) or `GET` (the last outcomes).
async fn group_points(state: &AppState, method: &Method, which: &str, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let Some(group) = state
        .groups
        .list()
        .into_iter()
        .find(|g| g.name == which || g.group_id.to_string() == which)
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no group is named or numbered {which:?}"),
        ));
    };
    if *method == Method::GET {
        return Ok(json(StatusCode::OK, &state.barriers.reports(group.group_id)));
    }
    let request: ferry_client::groups::PointRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("group point request: {e}")))?;
    match crate::group_points::take_point(state, &group, request.kind).await {
        Some(report) => Ok(json(StatusCode::OK, &report)),
        None => Err(ApiError::new(
            ErrorCode::Busy,
            format!("a point of group {} is being taken; retry", group.name),
        )
        .retry_after(5)),
    }
}

/// `POST /v1/groups`: a group of machines registered here.
fn create_group(state: &AppState, spec: ferry_client::groups::GroupSpec) -> Result<Response<Body>, ApiError> {
    let registered: Vec<uuid::Uuid> = super::register::machine_records(&state.layout)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the machine records: {e}")))?
        .iter()
        .map(|r| r.machine_id)
        .collect();
    match state
        .groups
        .create(spec, &registered, ferry_client::clock::now_unix_ms())
    {
        Ok(group) => {
            tracing::info!(group = %group.name, machines = group.machines.len(), "consistency group created");
            Ok(json(StatusCode::OK, &group))
        }
        Err(e @ crate::groups::GroupError::Invalid(_)) => Err(ApiError::new(ErrorCode::BadRequest, e.to_string())),
        Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
    }
}

/// MB/s ingested over the last minute (for the data endpoint's health answer: placement).
pub(super) fn ingest_mb_per_s_60s(state: &AppState) -> f64 {
    state.rates.rates(60, counters(state)).0
}

fn counters(state: &AppState) -> Counters {
    (
        state.ingested_bytes.load(Ordering::Relaxed),
        state.pipeline.uploaded_bytes(),
        state.pipeline.seal_work().1,
        state.pipeline.storage_puts(),
    )
}

/// This appliance's role, and on a configuration server the process servers of its site with
/// the machines placed on each (from the appliance directory; nothing is asked over the
/// network here).
pub(super) fn site_of(state: &AppState) -> (String, Vec<ferry_client::control::SiteServer>) {
    let role = super::role_of(state);
    if role == super::ROLE_PROCESS_SERVER {
        return (role.into(), Vec::new());
    }
    let servers = ferry_config::site::servers(state.layout.root()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the site's process servers");
        Vec::new()
    });
    if servers.is_empty() {
        // A single appliance: nothing to count. The machine records are files, one a machine,
        // read afresh per call; a scraper asking every second paid for all of them (5.6% of
        // the main runtime's samples under asr-sizing's 225 machines).
        return (role.into(), Vec::new());
    }
    let records = super::register::machine_records(&state.layout).unwrap_or_default();
    let listed = servers
        .into_iter()
        .map(|server| ferry_client::control::SiteServer {
            machines: records
                .iter()
                .filter(|r| r.data_endpoint.as_deref() == Some(server.data_endpoint.as_str()))
                .count(),
            name: server.name,
            data_endpoint: server.data_endpoint,
        })
        .collect();
    (role.into(), listed)
}

fn status(state: &AppState) -> Status {
    let now_ms = ferry_client::clock::now_unix_ms();
    let mut disks: Vec<DiskStatus> = state
        .cache
        .disks()
        .iter()
        .map(|view| {
            let info = super::data::disk_info(state, view);
            DiskStatus {
                disk_id: info.disk_id,
                machine_id: info.machine_id,
                name: info.name,
                size_bytes: info.size_bytes,
                durable_seq: info.durable_seq,
                uploaded_seq: info.uploaded_seq,
                released_seq: view.released_through,
                backlog_bytes: state.cache.backlog_bytes(info.disk_id),
                rpo_secs: info
                    .latest_point
                    .as_ref()
                    .map(|p| now_ms.saturating_sub(p.source_time_unix_ms) as f64 / 1000.0),
                latest_point: info.latest_point.map(|p| p.bookmark_id),
                state: info.state,
                error: info.error.or(info.resync_reason),
            }
        })
        .collect();
    disks.sort_by(|a, b| (a.machine_id, &a.name).cmp(&(b.machine_id, &b.name)));
    let usage = state.cache.usage();
    let backlog: u64 = disks.iter().map(|d| d.backlog_bytes).sum();
    let now = counters(state);
    let (ingest_10, upload_10, busy_10, _) = state.rates.rates(10, now);
    let (ingest_60, upload_60, _, puts_60) = state.rates.rates(60, now);
    let (seal_workers, _) = state.pipeline.seal_work();
    let (uploads_in_flight, upload_concurrency) = state.pipeline.uploads();
    let draining = state.admission.refusal().is_some();
    let target_error = state.pipeline.target_error();
    let drain_eta_secs = (upload_60 > 0.0).then(|| backlog as f64 / 1e6 / upload_60);
    let (cpu, memory) = state.system.sustained(Instant::now());
    let retention = state.retention.status();
    let upload_failure = target_error.clone().or_else(|| {
        disks
            .iter()
            .find(|d| d.state == ferry_client::api::DiskState::UploadError)
            .and_then(|d| d.error.clone())
    });
    let alerts = crate::alerts::evaluate(
        &state.config.alerts,
        &crate::alerts::Inputs {
            cache_used_bytes: usage.segment_bytes_total,
            cache_limit_bytes: usage.limit_bytes,
            drain_eta_secs,
            disk_rpos: disks
                .iter()
                .filter_map(|d| d.rpo_secs.map(|r| (d.name.clone(), r)))
                .collect(),
            cpu_sustained_percent: cpu,
            memory_sustained_percent: memory,
            upload_failure,
            draining: state.admission.refusal(),
            pinned_beyond_window: retention
                .disks
                .iter()
                .filter(|d| !d.pinned_beyond_window.is_empty())
                .map(|d| (d.disk_id.to_string(), d.pinned_beyond_window.clone()))
                .collect(),
            retention_failure: retention.last_error.clone(),
        },
    );
    let (role, process_servers) = site_of(state);
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        health: crate::alerts::health(&alerts),
        alerts,
        draining,
        cache: CacheStatus {
            used_bytes: usage.segment_bytes_total,
            limit_bytes: usage.limit_bytes,
            free_bytes: usage.limit_bytes.saturating_sub(usage.segment_bytes_total),
            backlog_bytes: backlog,
            drain_eta_secs,
            engine: state.cache.engine_name().to_string(),
        },
        ingest: Rates {
            last_10s_mb_per_s: ingest_10,
            last_60s_mb_per_s: ingest_60,
        },
        upload: Rates {
            last_10s_mb_per_s: upload_10,
            last_60s_mb_per_s: upload_60,
        },
        ingested_bytes: now.0,
        uploaded_bytes: now.1,
        storage_puts: now.3,
        storage_puts_per_hour: puts_60 * 3600.0,
        role,
        config_server: state.config.server.config_server.clone(),
        process_servers,
        leases_held: state.ownership.held_count(),
        disks_lost: state.ownership.lost_count(),
        utilisation: Utilisation {
            seal_workers,
            seal_busy_10s: (busy_10 / seal_workers.max(1) as f64).min(1.0),
            upload_concurrency,
            uploads_in_flight,
        },
        upload_errors: state.pipeline.upload_errors(),
        target_error,
        disks,
        retention,
    }
}

/// `ferryctl retention run` with ferryd running: one run, after any run in progress.
async fn retention_run(
    state: &AppState,
    request: &ferry_vault::retention::RunRequest,
) -> Result<Response<Body>, ApiError> {
    let config = state.tuned.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match state.retention.run(&config, request).await {
        Ok(summaries) => Ok(json(StatusCode::OK, &summaries)),
        Err(e) => Err(ApiError::new(ErrorCode::Internal, format!("{e:#}"))),
    }
}

/// `ferryctl retention set` with ferryd running: ferryd owns ferry.toml while it runs, so the
/// change is made to its configuration and written from there (durably, before the answer).
fn retention_policy(
    state: &AppState,
    change: &ferry_vault::retention::PolicyChange,
) -> Result<Response<Body>, ApiError> {
    let mut tuned = state.tuned.lock().unwrap_or_else(|p| p.into_inner());
    let mut config = tuned.clone();
    change
        .apply(&mut config.retention)
        .map_err(|e| ApiError::new(ErrorCode::BadTunable, format!("{e:#}")))?;
    config.save(&state.layout.config_file()).map_err(|e| {
        tracing::error!(error = %e, "cannot write ferry.toml");
        ApiError::new(ErrorCode::Internal, format!("cannot write ferry.toml: {e}"))
    })?;
    tracing::info!(disk = %change.disk_id, overrides = ?change.overrides, "retention policy changed; ferry.toml written");
    *tuned = config;
    Ok(json(StatusCode::OK, &tuned.retention))
}

fn machines(state: &AppState) -> Result<Vec<MachineInfo>, ApiError> {
    let disks = state.cache.disks();
    let mut machines: Vec<MachineInfo> = super::register::machine_records(&state.layout)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the machine records: {e}")))?
        .into_iter()
        .map(|record| MachineInfo {
            disks: disks.iter().filter(|d| d.meta.machine_id == record.machine_id).count(),
            machine_id: record.machine_id,
            machine_name: record.machine_name,
            registered_unix_ms: record.registered_unix_ms,
            registered_from: record.registered_from,
            data_endpoint: record.data_endpoint,
        })
        .collect();
    machines.sort_by_key(|m| m.registered_unix_ms);
    Ok(machines)
}
