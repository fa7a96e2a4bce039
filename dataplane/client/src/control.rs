//! ferryd's control API: typed requests and answers shared by ferryd and ferryctl (STYLE.md
//! 14), served as HTTP/1.1 JSON on an owner-only Unix socket (`server.control_socket` in
//! ferry.toml; the socket's permissions are its access control). The same types can be
//! served over HTTPS later.
//!
//! - `GET /v1/status` -> [`Status`]: health, cache, throughput, upload errors, disks.
//! - `GET /v1/machines` -> `Vec<`[`MachineInfo`]`>`.
//! - `GET /v1/tune` -> [`TuneState`]; `PUT /v1/tune` with [`TuneRequest`] -> [`TuneState`].
//! - `POST /v1/drain`, `POST /v1/resume` -> [`Status`]: stop accepting data (for maintenance;
//!   uploads go on until the cache is empty), or accept it again.
//! - `POST /v1/machines/{id}/commands` with `commands::CommandRequest` -> `commands::Command`
//!   (queued for the machine's agent); `GET` the same path -> `commands::CommandLog`.
//! - `GET /v1/groups`, `POST /v1/groups`, `DELETE /v1/groups/{name or id}`: consistency
//!   groups (`groups`).
//! - `POST /v1/failovers/commit` with [`FailoverCommit`] -> [`FailoverCommitted`]: the disks
//!   of a committed failover; ferryd refuses their new batches from then on (`409 failed_over`).
//! - `POST /v1/failovers/failback` with [`FailoverCommit`] -> [`FailbackLifted`]: those disks
//!   were failed back (`ferryctl failback`); ferryd accepts their batches again.
//! - `POST /v1/retention/run` with `ferry_vault::retention::RunRequest` -> one
//!   `DiskSummary` per disk (a consolidation now, after any in progress);
//!   `PUT /v1/retention/policy` with `PolicyChange` -> the resulting `[retention]`. Those
//!   types live in `ferry_vault` beside the work; [`ControlClient::send`] carries them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

use crate::client::ClientError;
/// The HTTP method of a [`ControlClient::send`].
pub use hyper::Method;

/// Throughput over the last 10 s and the last minute (MB/s, 10^6 B/s of batch bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub last_10s_mb_per_s: f64,
    pub last_60s_mb_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Space the cache's segment files take.
    pub used_bytes: u64,
    /// The configured limit (cache.limit_percent / cache.limit_bytes).
    pub limit_bytes: u64,
    pub free_bytes: u64,
    /// Batches acknowledged but not yet uploaded (all disks).
    pub backlog_bytes: u64,
    /// `backlog_bytes` over the last minute's upload rate; none while nothing uploads.
    pub drain_eta_secs: Option<f64>,
    /// The write engine chosen at start: `io_uring`, or `pwritev` where io_uring is not
    /// available (DESIGN.md).
    pub engine: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub disk_id: Uuid,
    pub machine_id: Uuid,
    pub name: String,
    pub size_bytes: u64,
    pub durable_seq: u64,
    pub uploaded_seq: u64,
    /// Batches through this seq have left the cache: uploaded, and every recovery point among
    /// them written to storage.
    #[serde(default)]
    pub released_seq: u64,
    /// Bytes of this disk's batches still in the cache.
    pub backlog_bytes: u64,
    /// Now minus the source time of the newest write in the latest restorable point.
    pub rpo_secs: Option<f64>,
    pub latest_point: Option<String>,
    pub state: crate::api::DiskState,
    pub error: Option<String>,
}

/// How busy the pipeline's workers are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Utilisation {
    pub seal_workers: usize,
    /// Share of the seal workers' time spent sealing over the last 10 s (0..1).
    pub seal_busy_10s: f64,
    pub upload_concurrency: usize,
    pub uploads_in_flight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

crate::api::text_enum!(Severity {
    Warning => "warning",
    Critical => "critical",
});

/// ferryd's health: the worst alert's severity, or ok.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Warning,
    Critical,
}

crate::api::text_enum!(Health {
    Ok => "ok",
    Warning => "warning",
    Critical => "critical",
});

/// One health alert: a stable code, a severity and a plain message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub code: String,
    pub severity: Severity,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    /// The worst alert.
    pub health: Health,
    pub alerts: Vec<Alert>,
    /// Refusing new data (ferryctl drain, or stopping).
    pub draining: bool,
    pub cache: CacheStatus,
    pub ingest: Rates,
    pub upload: Rates,
    /// Batch bytes acknowledged, and stored in the target, since ferryd started.
    pub ingested_bytes: u64,
    pub uploaded_bytes: u64,
    /// Objects written to the target since start (each at least one billed PUT).
    #[serde(default)]
    pub storage_puts: u64,
    /// The rate of those over the last minute, per hour.
    #[serde(default)]
    pub storage_puts_per_hour: f64,
    pub utilisation: Utilisation,
    /// Failed uploads since start, by reason (each is retried; the data stays cached).
    pub upload_errors: BTreeMap<String, u64>,
    /// Why the pipeline cannot use the target, while it cannot.
    pub target_error: Option<String>,
    pub disks: Vec<DiskStatus>,
    /// Retention: stored bytes and the oldest restorable point per disk.
    #[serde(default)]
    pub retention: RetentionStatus,
    /// `configuration_server` (it registers agents and places them) or `process_server` (it
    /// joined the site of `config_server`).
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub config_server: Option<String>,
    /// On a configuration server: the process servers that joined its site, with the machines
    /// placed on each.
    #[serde(default)]
    pub process_servers: Vec<SiteServer>,
    /// Disks whose storage lease this process server holds (it alone writes them to storage).
    #[serde(default)]
    pub leases_held: usize,
    /// Disks other process servers took over from this one since it started.
    #[serde(default)]
    pub disks_lost: usize,
}

/// A process server of the site, as its configuration server knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteServer {
    pub name: String,
    pub data_endpoint: String,
    /// Machines registration placed there.
    pub machines: usize,
}

/// `ferryctl ps move`: move machine `machine_id` to process server `to` (a name from `ps list`,
/// or a data endpoint of the site).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub machine_id: Uuid,
    pub to: String,
}

/// `ferryctl ps drain`: move every machine off process server `name` (and place no new one
/// there), or with `undo`, take new machines there again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub name: String,
    #[serde(default)]
    pub undo: bool,
}

/// A machine being moved: its `move` command is queued for its agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moving {
    pub machine_id: Uuid,
    pub machine_name: String,
    pub from: String,
    pub to: String,
    pub command_id: Uuid,
}

/// What retention's last run found for one disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDisk {
    pub disk_id: Uuid,
    /// The base every kept point starts from.
    pub base_seq: Option<u64>,
    /// Bytes the disk's objects take in the target.
    pub stored_bytes: u64,
    /// The oldest restorable point (bookmark id) and its source time.
    pub oldest_point: Option<String>,
    pub oldest_point_source_unix_ms: Option<u64>,
    /// Pinned points older than the window (the policy cannot be met while they stay).
    pub pinned_beyond_window: Vec<String>,
    /// Why its last run failed.
    pub error: Option<String>,
}

/// Retention (consolidation) as ferryd last ran it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionStatus {
    pub running: bool,
    /// The run in progress: disks done, and disks it covers (both 0 when none runs).
    #[serde(default)]
    pub run_disks_done: u64,
    #[serde(default)]
    pub run_disks_total: u64,
    pub last_run_unix_ms: Option<u64>,
    pub last_run_secs: f64,
    pub runs: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub disks: Vec<RetentionDisk>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub machine_id: Uuid,
    pub machine_name: String,
    pub registered_unix_ms: u64,
    pub registered_from: String,
    /// Disks of the machine this ferryd holds (a machine placed on another process server of
    /// the site has its disks there).
    pub disks: usize,
    /// The process server's data endpoint the machine was given at registration.
    #[serde(default)]
    pub data_endpoint: Option<String>,
}

/// The tunables `ferryctl tune` shows and changes (ferry.toml keys of `[pipeline]`, and the
/// cache limit of `[cache]`), as ferry.toml says them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tunables {
    pub upload_concurrency: u32,
    pub compression_level: i32,
    pub worker_threads: u32,
    pub change_set_bytes: u64,
    pub flush_delay_ms: u64,
    /// Longest a quiet disk's flush delay grows to.
    #[serde(default)]
    pub idle_flush_delay_max_ms: u64,
    pub memory_budget_bytes: u64,
    pub bandwidth_cap_bytes_per_sec: u64,
    /// `[{days, start_hour, end_hour, cap_bytes_per_sec}]`, local time.
    pub bandwidth_schedule: serde_json::Value,
    pub cache_limit_percent: u32,
    pub cache_limit_bytes: u64,
}

/// What the running pipeline is doing now, read from its own state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InEffect {
    pub compression_level: i32,
    pub seal_workers: usize,
    pub upload_concurrency: usize,
    pub change_set_bytes: u64,
    pub flush_delay_ms: u64,
    #[serde(default)]
    pub idle_flush_delay_max_ms: u64,
    pub memory_budget_bytes: u64,
    /// The cap in force now (schedule applied); 0 = unlimited.
    pub bandwidth_cap_bytes_per_sec: u64,
    pub cache_limit_bytes: u64,
}

/// `GET /v1/tune` and the answer to `PUT /v1/tune`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneState {
    pub values: Tunables,
    pub defaults: Tunables,
    pub in_effect: InEffect,
}

/// The settings `PUT /v1/tune` may change while ferryd runs, by the names the request uses
/// (the ferry.toml key; the cache's two carry a `cache_` prefix). ferryd parses each value
/// with its field's type; anything else in ferry.toml needs a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunable {
    UploadConcurrency,
    CompressionLevel,
    WorkerThreads,
    ChangeSetBytes,
    FlushDelayMs,
    IdleFlushDelayMaxMs,
    MemoryBudgetBytes,
    BandwidthCapBytesPerSec,
    BandwidthSchedule,
    CacheLimitPercent,
    CacheLimitBytes,
}

crate::api::text_enum!(Tunable {
    UploadConcurrency => "upload_concurrency",
    CompressionLevel => "compression_level",
    WorkerThreads => "worker_threads",
    ChangeSetBytes => "change_set_bytes",
    FlushDelayMs => "flush_delay_ms",
    IdleFlushDelayMaxMs => "idle_flush_delay_max_ms",
    MemoryBudgetBytes => "memory_budget_bytes",
    BandwidthCapBytesPerSec => "bandwidth_cap_bytes_per_sec",
    BandwidthSchedule => "bandwidth_schedule",
    CacheLimitPercent => "cache_limit_percent",
    CacheLimitBytes => "cache_limit_bytes",
});

/// `PUT /v1/tune`: `key=value` changes (values as in ferry.toml, JSON for the schedule), or
/// every tunable back to its default. Keys travel as text so that ferryd can answer a key it
/// does not tune (a restart-only setting, or a typo) with an error that names it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneRequest {
    pub set: Vec<(String, String)>,
    pub reset: bool,
}

impl TuneRequest {
    /// A request that changes one tunable.
    pub fn one(key: Tunable, value: impl std::fmt::Display) -> Self {
        Self {
            set: vec![(key.as_str().to_string(), value.to_string())],
            reset: false,
        }
    }
}

/// `POST /v1/failovers/commit`: these disks were failed over by `failover_id`, committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverCommit {
    pub failover_id: Uuid,
    pub disk_ids: Vec<Uuid>,
}

/// The answer: which of the disks this ferryd holds (now refused) and which it does not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverCommitted {
    pub marked: Vec<Uuid>,
    pub unknown: Vec<Uuid>,
}

/// The answer to `POST /v1/failovers/failback`: the disks whose failed-over mark was lifted,
/// and those this ferryd does not hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackLifted {
    pub lifted: Vec<Uuid>,
    pub unknown: Vec<Uuid>,
}

/// Talks to ferryd's control socket.
pub struct ControlClient {
    socket: PathBuf,
}

impl ControlClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(hyper::Method::GET, path).await
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, method: hyper::Method, path: &str) -> Result<T, ClientError> {
        self.call_with(method, path, bytes::Bytes::new()).await
    }

    async fn call_with<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<T, ClientError> {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            ClientError::Transport(format!(
                "cannot reach ferryd's control socket {}: {e} (is ferryd running, and may this user open it?)",
                self.socket.display()
            ))
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(format!("control socket: {e}")))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "ferryd")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body))
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Transport(format!("control socket: {e}")))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| ClientError::Transport(format!("control socket: {e}")))?
            .to_bytes();
        if status != 200 {
            let parsed: Option<crate::api::ErrorBody> = serde_json::from_slice(&body).ok();
            return Err(ClientError::Status {
                status,
                code: parsed.as_ref().map(|b| b.error.clone()).unwrap_or_default(),
                message: parsed
                    .map(|b| b.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
                expected_seq: None,
                retry_after_secs: None,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Invalid(format!("unexpected answer: {e}")))
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    pub async fn machines(&self) -> Result<Vec<MachineInfo>, ClientError> {
        self.get("/v1/machines").await
    }

    /// Stops accepting data (503 draining) while uploads go on; answers the status.
    pub async fn drain(&self) -> Result<Status, ClientError> {
        self.call(hyper::Method::POST, "/v1/drain").await
    }

    pub async fn tune_state(&self) -> Result<TuneState, ClientError> {
        self.get("/v1/tune").await
    }

    /// Changes tunables at run time; ferryd validates, writes ferry.toml, then applies.
    pub async fn tune(&self, request: &TuneRequest) -> Result<TuneState, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.call_with(hyper::Method::PUT, "/v1/tune", body.into()).await
    }

    /// A request whose body and answer types the caller names (for endpoints whose types live
    /// beside the work they describe, such as retention's in `ferry_vault`).
    pub async fn send<T: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.call_with(method, path, body.into()).await
    }

    /// Whether a ferryd answers on the socket now (it accepts a connection).
    pub fn answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Tells ferryd the disks of a committed failover (it refuses their new batches).
    pub async fn commit_failover(&self, commit: &FailoverCommit) -> Result<FailoverCommitted, ClientError> {
        self.send(hyper::Method::POST, "/v1/failovers/commit", commit).await
    }

    /// Tells ferryd that these disks of a committed failover were failed back (it accepts their
    /// batches again).
    pub async fn failback_done(&self, done: &FailoverCommit) -> Result<FailbackLifted, ClientError> {
        self.send(hyper::Method::POST, "/v1/failovers/failback", done).await
    }

    /// Queues a management command for `machine`'s agent; answers it as queued.
    pub async fn queue_command(
        &self,
        machine: Uuid,
        request: &crate::commands::CommandRequest,
    ) -> Result<crate::commands::Command, ClientError> {
        self.send(
            hyper::Method::POST,
            &format!("/v1/machines/{machine}/commands"),
            request,
        )
        .await
    }

    /// Moves a machine to another process server (configuration server only).
    pub async fn move_machine(&self, request: &MoveRequest) -> Result<Moving, ClientError> {
        self.send(hyper::Method::POST, "/v1/ps/move", request).await
    }

    /// Moves every machine off a process server (configuration server only).
    pub async fn drain_server(&self, request: &DrainRequest) -> Result<Vec<Moving>, ClientError> {
        self.send(hyper::Method::POST, "/v1/ps/drain", request).await
    }

    /// `machine`'s commands: queued, delivered, done.
    pub async fn command_log(&self, machine: Uuid) -> Result<crate::commands::CommandLog, ClientError> {
        self.get(&format!("/v1/machines/{machine}/commands")).await
    }

    pub async fn groups(&self) -> Result<Vec<crate::groups::Group>, ClientError> {
        self.get("/v1/groups").await
    }

    pub async fn create_group(&self, spec: &crate::groups::GroupSpec) -> Result<crate::groups::Group, ClientError> {
        self.send(hyper::Method::POST, "/v1/groups", spec).await
    }

    /// A group point of `which` now (answered when written or failed).
    pub async fn group_point(
        &self,
        which: &str,
        kind: crate::commands::BookmarkAsk,
    ) -> Result<crate::groups::BarrierReport, ClientError> {
        let request = crate::groups::PointRequest { kind };
        self.send(hyper::Method::POST, &format!("/v1/groups/{which}/points"), &request)
            .await
    }

    /// The last barriers of group `which`.
    pub async fn group_reports(&self, which: &str) -> Result<Vec<crate::groups::BarrierReport>, ClientError> {
        self.get(&format!("/v1/groups/{which}/points")).await
    }

    /// Deletes the group named or numbered `which`; answers it.
    pub async fn delete_group(&self, which: &str) -> Result<crate::groups::Group, ClientError> {
        self.call(hyper::Method::DELETE, &format!("/v1/groups/{which}")).await
    }

    /// Accepts data again after a drain.
    pub async fn resume(&self) -> Result<Status, ClientError> {
        self.call(hyper::Method::POST, "/v1/resume").await
    }
}
