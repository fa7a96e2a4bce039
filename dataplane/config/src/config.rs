//! `ferry.toml`: the appliance configuration. One file, every default written out by
//! `ferryctl init` with a comment, every value checked on load with an error that names the
//! key. Unknown keys are errors (a typo must not silently fall back to a default).

use ferry_storage::{RetryPolicy, TargetConfig};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const CONFIG_FORMAT: u32 = 1;
const MIB: u64 = 1024 * 1024;

/// For a ferry.toml that is not where it was looked for: what `--config` expects.
fn appliance_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => {
            " (--config takes the appliance directory that `ferryctl init` made, or its ferry.toml)"
        }
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason is in the message (not a `source`), so a printed error chain says it once.
    #[error("cannot read {path}: {error}{}", appliance_hint(error))]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheEngine {
    /// io_uring when the kernel allows it, else psync.
    Auto,
    IoUring,
    /// pwritev + fdatasync.
    Psync,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub data_listen: String,
    pub management_listen: String,
    /// host:port agents are told to send data to (returned by registration).
    pub advertised_data_endpoint: String,
    pub metrics_listen: String,
    pub control_socket: PathBuf,
    /// A scale-out process server: the management endpoint (host:port) of the configuration
    /// server it joined (`ferryctl init --join`). Absent: this appliance is the configuration
    /// server (it registers agents and runs retention).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_server: Option<String>,
    /// How long a disk's storage lease lasts (15..=60 s; renewed every third of it). A dead
    /// process server's disks move after it runs out (docs/SCALE-OUT.md).
    pub lease_secs: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_listen: "0.0.0.0:9443".into(),
            management_listen: "0.0.0.0:443".into(),
            advertised_data_endpoint: "localhost:9443".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            control_socket: "ferryd.sock".into(),
            config_server: None,
            lease_secs: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub directory: PathBuf,
    /// Share of the cache file system the cache may fill.
    pub limit_percent: u8,
    /// An absolute limit in bytes instead of `limit_percent` (0: use the percentage).
    pub limit_bytes: u64,
    pub engine: CacheEngine,
    pub segment_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            directory: "cache".into(),
            limit_percent: 80,
            limit_bytes: 0,
            engine: CacheEngine::Auto,
            segment_bytes: 256 * MIB,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub window: u32,
    pub max_batch_bytes: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            window: 16,
            max_batch_bytes: 16 * MIB as u32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub compression_level: i32,
    /// 0: one per core.
    pub worker_threads: u32,
    pub change_set_bytes: u64,
    pub flush_delay_ms: u64,
    /// A disk that writes little waits up to this long between objects (doubling from
    /// `flush_delay_ms` while its change sets stay small); bookmarks are never held back.
    pub idle_flush_delay_max_ms: u64,
    pub upload_concurrency: u32,
    pub memory_budget_bytes: u64,
    /// 0: unlimited.
    pub bandwidth_cap_bytes_per_sec: u64,
    /// Other caps during given hours and days (local time), like ASR's throttling schedule;
    /// the first window that matches wins, `bandwidth_cap_bytes_per_sec` applies outside them.
    pub bandwidth_schedule: Vec<BandwidthWindow>,
}

/// A bandwidth cap for some hours of some days.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// mon, tue, wed, thu, fri, sat, sun.
    pub days: Vec<String>,
    /// From `start_hour` (inclusive) to `end_hour` (exclusive), 0-24.
    pub start_hour: u32,
    pub end_hour: u32,
    /// 0: unlimited.
    pub cap_bytes_per_sec: u64,
}

/// A numeric setting with fixed bounds. Validation checks the table and the documented
/// template prints each range from it, so the two cannot drift apart (bounds that depend on
/// another setting, such as a critical threshold above its warning, stay in `validate`).
struct Bounded {
    key: &'static str,
    low: i128,
    high: i128,
    /// Printed in KiB/MiB/GiB in the template.
    bytes: bool,
    value: fn(&ApplianceConfig) -> i128,
}

const KIB: i128 = 1024;
const MIB_I: i128 = 1024 * 1024;

#[rustfmt::skip]
const BOUNDED: &[Bounded] = &[
    Bounded { key: "cache.limit_percent", low: 1, high: 95, bytes: false, value: |c| c.cache.limit_percent.into() },
    Bounded { key: "cache.segment_bytes", low: 16 * MIB_I, high: 4096 * MIB_I, bytes: true, value: |c| c.cache.segment_bytes.into() },
    Bounded { key: "ingest.window", low: 1, high: 1024, bytes: false, value: |c| c.ingest.window.into() },
    Bounded { key: "ingest.max_batch_bytes", low: 64 * KIB, high: 64 * MIB_I, bytes: true, value: |c| c.ingest.max_batch_bytes.into() },
    Bounded { key: "pipeline.compression_level", low: -7, high: 22, bytes: false, value: |c| c.pipeline.compression_level.into() },
    Bounded { key: "pipeline.worker_threads", low: 0, high: 256, bytes: false, value: |c| c.pipeline.worker_threads.into() },
    Bounded { key: "pipeline.change_set_bytes", low: MIB_I, high: 256 * MIB_I, bytes: true, value: |c| c.pipeline.change_set_bytes.into() },
    Bounded { key: "pipeline.flush_delay_ms", low: 10, high: 600_000, bytes: false, value: |c| c.pipeline.flush_delay_ms.into() },
    Bounded { key: "pipeline.idle_flush_delay_max_ms", low: 10, high: 600_000, bytes: false, value: |c| c.pipeline.idle_flush_delay_max_ms.into() },
    Bounded { key: "pipeline.upload_concurrency", low: 1, high: 1024, bytes: false, value: |c| c.pipeline.upload_concurrency.into() },
    Bounded { key: "alerts.cpu_warning_percent", low: 1, high: 100, bytes: false, value: |c| c.alerts.cpu_warning_percent.into() },
    Bounded { key: "alerts.memory_warning_percent", low: 1, high: 100, bytes: false, value: |c| c.alerts.memory_warning_percent.into() },
    Bounded { key: "alerts.sustained_secs", low: 0, high: 86_400, bytes: false, value: |c| c.alerts.sustained_secs.into() },
    Bounded { key: "alerts.cache_free_warning_percent", low: 1, high: 99, bytes: false, value: |c| c.alerts.cache_free_warning_percent.into() },
    Bounded { key: "alerts.drain_warning_secs", low: 1, high: 7 * 86_400, bytes: false, value: |c| c.alerts.drain_warning_secs.into() },
    Bounded { key: "alerts.rpo_threshold_secs", low: 1, high: 30 * 86_400, bytes: false, value: |c| c.alerts.rpo_threshold_secs.into() },
    Bounded { key: "retention.parallel", low: 1, high: 64, bytes: false, value: |c| c.retention.parallel.into() },
    Bounded { key: "retention.nice", low: 0, high: 19, bytes: false, value: |c| c.retention.nice.into() },
    Bounded { key: "alerts.throttle_free_percent", low: 0, high: 90, bytes: false, value: |c| c.alerts.throttle_free_percent.into() },
];

/// The range of a [`BOUNDED`] setting as the template prints it: `1-95`, `16 MiB - 4 GiB`.
fn bounds(key: &str) -> String {
    let Some(b) = BOUNDED.iter().find(|b| b.key == key) else {
        return String::new();
    };
    if !b.bytes {
        // "-7 to 22" rather than "-7-22".
        let to = if b.low < 0 { " to " } else { "-" };
        return format!("{}{to}{}", b.low, b.high);
    }
    let size = |n: i128| match n {
        n if n >= 1024 * MIB_I && n % (1024 * MIB_I) == 0 => format!("{} GiB", n / (1024 * MIB_I)),
        n if n >= MIB_I && n % MIB_I == 0 => format!("{} MiB", n / MIB_I),
        n if n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    };
    format!("{} - {}", size(b.low), size(b.high))
}

pub const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl BandwidthWindow {
    /// Whether the window covers `weekday` (0 = Sunday) at `hour`.
    pub fn covers(&self, weekday: u32, hour: u32) -> bool {
        let day = WEEKDAYS.get(weekday as usize).copied().unwrap_or("");
        self.days.iter().any(|d| d == day) && hour >= self.start_hour && hour < self.end_hour
    }
}

impl PipelineConfig {
    /// The cap in force at `weekday` (0 = Sunday) and `hour` (local time).
    pub fn bandwidth_cap_at(&self, weekday: u32, hour: u32) -> u64 {
        self.bandwidth_schedule
            .iter()
            .find(|w| w.covers(weekday, hour))
            .map_or(self.bandwidth_cap_bytes_per_sec, |w| w.cap_bytes_per_sec)
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            compression_level: 1,
            worker_threads: 0,
            change_set_bytes: 8 * MIB,
            flush_delay_ms: 1000,
            idle_flush_delay_max_ms: 60_000,
            upload_concurrency: 32,
            memory_budget_bytes: 512 * MIB,
            bandwidth_cap_bytes_per_sec: 0,
            bandwidth_schedule: Vec::new(),
        }
    }
}

/// Health alert thresholds (ASR's process-server alerts as defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub cpu_warning_percent: u32,
    pub cpu_critical_percent: u32,
    pub memory_warning_percent: u32,
    pub memory_critical_percent: u32,
    /// CPU and memory alerts fire when the level held this long.
    pub sustained_secs: u64,
    pub cache_free_warning_percent: u32,
    pub cache_free_critical_percent: u32,
    pub drain_warning_secs: u64,
    pub drain_critical_secs: u64,
    /// A disk whose RPO exceeds this is alerted.
    pub rpo_threshold_secs: u64,
    /// Below this share of free cache space, new batches get 503 with Retry-After (0: never).
    pub throttle_free_percent: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            cpu_warning_percent: 80,
            cpu_critical_percent: 95,
            memory_warning_percent: 80,
            memory_critical_percent: 95,
            sustained_secs: 900,
            cache_free_warning_percent: 30,
            cache_free_critical_percent: 25,
            drain_warning_secs: 1800,
            drain_critical_secs: 2700,
            rpo_threshold_secs: 900,
            throttle_free_percent: 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    pub format: u32,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub storage_retry: RetryPolicy,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub retention: crate::retention::RetentionConfig,
    pub target: TargetConfig,
}

impl ApplianceConfig {
    /// Defaults everywhere, with the given target.
    pub fn with_target(target: TargetConfig) -> Self {
        Self {
            format: CONFIG_FORMAT,
            server: ServerConfig::default(),
            cache: CacheConfig::default(),
            ingest: IngestConfig::default(),
            pipeline: PipelineConfig::default(),
            storage_retry: RetryPolicy::default(),
            alerts: AlertsConfig::default(),
            retention: Default::default(),
            target,
        }
    }

    /// Reads, parses and validates `path`. Refuses a file others can read: it may hold
    /// storage credentials.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "(file mode)".into(),
                message: format!(
                    "is readable by others (mode {:o}); run chmod 600 on it",
                    metadata.permissions().mode() & 0o777
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text, path)
    }

    /// Writes the configuration (documented form) to `path` so a crash leaves the old or the
    /// new file ([`ferry_durable::replace`]).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        ferry_durable::replace(path, self.to_documented_toml().as_bytes())
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.validate_fixed_keys()
            .map_err(|(key, message)| (key.to_string(), message))?;
        self.retention.validate()
    }

    fn validate_fixed_keys(&self) -> Result<(), (&'static str, String)> {
        fn range<T: PartialOrd + std::fmt::Display>(
            key: &'static str,
            value: T,
            low: T,
            high: T,
        ) -> Result<(), (&'static str, String)> {
            if value < low || value > high {
                return Err((key, format!("must be between {low} and {high}, got {value}")));
            }
            Ok(())
        }
        fn address(key: &'static str, value: &str) -> Result<(), (&'static str, String)> {
            value.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
                (
                    key,
                    format!("{value:?} is not an IP address and port such as 0.0.0.0:9443"),
                )
            })
        }
        range(
            "server.lease_secs",
            self.server.lease_secs,
            ferry_storage::lease::LEASE_SECS_MIN,
            ferry_storage::lease::LEASE_SECS_MAX,
        )?;
        if self.format != CONFIG_FORMAT {
            return Err((
                "format",
                format!(
                    "this version reads format {CONFIG_FORMAT}, the file says {}",
                    self.format
                ),
            ));
        }
        for bounded in BOUNDED {
            range(bounded.key, (bounded.value)(self), bounded.low, bounded.high)?;
        }
        address("server.data_listen", &self.server.data_listen)?;
        address("server.management_listen", &self.server.management_listen)?;
        address("server.metrics_listen", &self.server.metrics_listen)?;
        let advertised = self
            .server
            .advertised_data_endpoint
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port));
        if advertised.and_then(|port| port.parse::<u16>().ok()).is_none() {
            return Err(("server.advertised_data_endpoint", "must be host:port".into()));
        }
        if self.cache.limit_bytes != 0 && self.cache.limit_bytes < 2 * self.cache.segment_bytes {
            return Err((
                "cache.limit_bytes",
                format!("must be 0 or at least two segments ({})", 2 * self.cache.segment_bytes),
            ));
        }
        if !self.cache.segment_bytes.is_multiple_of(MIB) {
            return Err(("cache.segment_bytes", "must be a multiple of 1 MiB (1048576)".into()));
        }
        if u64::from(self.ingest.max_batch_bytes) + 40 > self.cache.segment_bytes / 2 {
            return Err((
                "ingest.max_batch_bytes",
                "must be below half of cache.segment_bytes".into(),
            ));
        }
        let budget_floor = 2 * (self.pipeline.change_set_bytes + u64::from(self.ingest.max_batch_bytes));
        if self.pipeline.memory_budget_bytes < budget_floor {
            return Err((
                "pipeline.memory_budget_bytes",
                format!(
                    "must be at least 2 x (change_set_bytes + max_batch_bytes) = {budget_floor}, got {}",
                    self.pipeline.memory_budget_bytes
                ),
            ));
        }
        for window in &self.pipeline.bandwidth_schedule {
            if window.days.is_empty() || window.days.iter().any(|d| !WEEKDAYS.contains(&d.as_str())) {
                return Err((
                    "pipeline.bandwidth_schedule",
                    format!("days must be some of {}, got {:?}", WEEKDAYS.join(", "), window.days),
                ));
            }
            if window.start_hour >= window.end_hour || window.end_hour > 24 {
                return Err((
                    "pipeline.bandwidth_schedule",
                    format!(
                        "hours must satisfy 0 <= start_hour < end_hour <= 24, got {}-{}",
                        window.start_hour, window.end_hour
                    ),
                ));
            }
        }
        let a = &self.alerts;
        range(
            "alerts.cpu_critical_percent",
            a.cpu_critical_percent,
            a.cpu_warning_percent,
            100,
        )?;
        range(
            "alerts.memory_critical_percent",
            a.memory_critical_percent,
            a.memory_warning_percent,
            100,
        )?;
        range(
            "alerts.cache_free_critical_percent",
            a.cache_free_critical_percent,
            1,
            a.cache_free_warning_percent,
        )?;
        range(
            "alerts.drain_critical_secs",
            a.drain_critical_secs,
            a.drain_warning_secs,
            7 * 86_400,
        )?;
        self.storage_retry
            .validate()
            .map_err(|message| ("storage_retry", message))?;
        self.target.validate().map_err(|message| ("target", message))?;
        Ok(())
    }

    /// The target with a relative local path resolved against the appliance directory.
    pub fn resolved_target(&self, layout: &crate::ApplianceLayout) -> TargetConfig {
        match &self.target {
            TargetConfig::Local(local) => TargetConfig::Local(ferry_storage::LocalTargetConfig {
                path: layout.resolve(&local.path),
                create: local.create,
            }),
            TargetConfig::Discard(local) => TargetConfig::Discard(ferry_storage::LocalTargetConfig {
                path: layout.resolve(&local.path),
                create: local.create,
            }),
            other => other.clone(),
        }
    }

    /// The configuration as a documented TOML file: every key, its value, and what it means.
    pub fn to_documented_toml(&self) -> String {
        let mut out = String::new();
        let s = &self.server;
        let c = &self.cache;
        let p = &self.pipeline;
        let r = &self.storage_retry;
        let a = &self.alerts;
        let engine = match c.engine {
            CacheEngine::Auto => "auto",
            CacheEngine::IoUring => "io_uring",
            CacheEngine::Psync => "psync",
        };
        let _ = write!(
            out,
            r#"# Ferry appliance configuration, written by `ferryctl init`.
# Relative paths are relative to this directory. Unknown keys are errors.
# This file may hold storage credentials: keep it owner-only (ferryd refuses it otherwise).
format = {format}

[server]
# Agents' data endpoint (HTTPS, HTTP/2, client certificates required).
data_listen = {data_listen:?}
# Registration and agent commands (HTTPS).
management_listen = {management_listen:?}
# host:port given to agents at registration; must reach data_listen.
advertised_data_endpoint = {advertised:?}
# Prometheus /metrics (plain HTTP; keep it on loopback or a management network).
metrics_listen = {metrics_listen:?}
# Unix socket for ferryctl (owner-only).
control_socket = {control_socket:?}
# A disk's storage lease (15-60 s, renewed every third of it): one process server writes a
# disk at a time; a dead one's disks move to another after this.
lease_secs = {lease_secs}
{config_server_line}

[cache]
# The durable NVMe cache of received batches.
directory = {cache_dir:?}
# Share of the cache file system the cache may fill ({r_limit_percent}).
limit_percent = {limit_percent}
# An absolute limit in bytes instead (0: use limit_percent); at least two segments.
limit_bytes = {limit_bytes}
# auto (io_uring when available, else psync) | io_uring | psync (pwritev + fdatasync).
engine = "{engine}"
# Size of each preallocated cache segment file ({r_segment_bytes}, whole MiB).
segment_bytes = {segment_bytes}

[ingest]
# Batches a disk may have in flight past its durable_seq ({r_window}).
window = {window}
# Largest batch payload accepted ({r_max_batch_bytes}); larger gets 413 too_large.
max_batch_bytes = {max_batch_bytes}

[pipeline]
# zstd level for change sets ({r_level}: lower is faster, higher smaller; 1 is the measured
# sweet spot).
compression_level = {level}
# Compression and sealing threads ({r_workers}); 0 = one per core.
worker_threads = {workers}
# Target plaintext size of one change set object ({r_change_set_bytes}).
change_set_bytes = {change_set_bytes}
# Longest a durable batch waits before its change set is cut. A batch with a bookmark is cut at
# once, so recovery points (and their RPO) never wait for it ({r_flush_delay_ms}).
flush_delay_ms = {flush_delay_ms}
# A quiet disk (its change sets under a quarter of change_set_bytes) waits longer, doubling
# from flush_delay_ms up to this ({r_idle}; at or below flush_delay_ms: never longer):
# fewer, larger objects, so fewer billed PUTs; its recovery points still go at once, and a
# drain (ferryctl drain, or stopping ferryd) cuts everything at once.
idle_flush_delay_max_ms = {idle_flush_delay_max_ms}
# Uploads in flight at once ({r_upload_concurrency}).
upload_concurrency = {upload_concurrency}
# Memory bound, used three times: the cache keeps at most this much of received batches in
# memory for the seal workers (older ones are read back from disk), the pipeline has at most
# this much plaintext in flight (at the limit it waits), and batch bodies being received
# reserve at most a quarter of it (more get 503 busy with Retry-After). With sealed objects on
# top, ferryd's peak memory stays under about 2.5 x this value.
memory_budget_bytes = {memory_budget_bytes}
# Upload bandwidth cap in bytes per second; 0 = unlimited.
bandwidth_cap_bytes_per_sec = {bandwidth}
# Other caps for some hours of some days (local time; the first matching window wins), e.g.
# [{{ days = ["mon", "tue", "wed", "thu", "fri"], start_hour = 8, end_hour = 18, cap_bytes_per_sec = 50000000 }}]
bandwidth_schedule = {schedule}

[alerts]
# Health alerts (ferryctl status; ASR's process-server thresholds as defaults).
# CPU and memory use of the machine, warning ({r_cpu_w}) and critical (warning-100), when
# held for sustained_secs ({r_sustained}).
cpu_warning_percent = {cpu_w}
cpu_critical_percent = {cpu_c}
memory_warning_percent = {mem_w}
memory_critical_percent = {mem_c}
sustained_secs = {sustained}
# Free cache space below these shares of the limit (warning {r_free_w}, critical 1-warning).
cache_free_warning_percent = {free_w}
cache_free_critical_percent = {free_c}
# Estimated time to upload the cached backlog at the last minute's rate (warning
# {r_drain_w}, critical warning-604800).
drain_warning_secs = {drain_w}
drain_critical_secs = {drain_c}
# A disk's RPO (now minus the source time of its latest restorable point) above this
# ({r_rpo}).
rpo_threshold_secs = {rpo}
# Below this share of free cache space new batches get 503 cache_full with Retry-After
# (agents keep their data and retry) before the cache is actually full; 0 = never ({r_throttle}).
throttle_free_percent = {throttle}

[retention]
# Which recovery points are kept, and consolidation of older changes into base images, which
# lets old change sets go (durations: 0, 90s, 10m, 24h, 15d). A disk's newest point and pinned
# points (ferryctl points pin) are always kept. Per-disk overrides: ferryctl retention set.
# Points older than this (by their source time) are pruned; at most 15d.
window = "{ret_window}"
# Every point younger than this is kept (for a write-ordered disk, every seq).
keep_all = "{r_keep_all}"
# Between keep_all and window: the newest crash point of each interval (0: all).
crash_every = "{r_crash_every}"
# App points inside the window: all (0), or the newest of each interval.
app_every = "{r_app_every}"
# Plaintext size of a base chunk (64 KiB - 256 MiB, a multiple of 4096).
chunk_bytes = {r_chunk_bytes}
# How often ferryd consolidates in the background (0: only by ferryctl retention run; at
# least 1m otherwise).
run_every = "{r_run_every}"
# Storage calls (and chunks being sealed) in flight at once in a run ({r_parallel}): its share
# of the uplink and the CPU beside the upload pipeline.
parallel = {ret_parallel}
# The nice value of ferryd's consolidation threads ({r_nice}): under load ingest and uploads
# get the CPU first, and consolidation the CPU they leave (0: an equal share).
nice = {ret_nice}
{r_disks}
[storage_retry]
# Transient storage errors (timeouts, resets, 500, 503, 429) are retried with exponential
# backoff and full jitter, within these bounds; permanent ones (403, 404) are not.
max_attempts = {max_attempts}
initial_backoff_ms = {initial_backoff_ms}
max_backoff_ms = {max_backoff_ms}
total_budget_ms = {total_budget_ms}

"#,
            format = self.format,
            data_listen = s.data_listen,
            management_listen = s.management_listen,
            advertised = s.advertised_data_endpoint,
            metrics_listen = s.metrics_listen,
            control_socket = s.control_socket.display().to_string(),
            lease_secs = s.lease_secs,
            config_server_line = match &s.config_server {
                Some(server) => format!(
                    "# This is a scale-out process server of the configuration server at this management\n\
                     # endpoint (ferryctl init --join): agents register there, retention runs there.\n\
                     config_server = {server:?}\n"
                ),
                None => "# (no config_server: this appliance is its site's configuration server)\n".to_string(),
            },
            cache_dir = c.directory.display().to_string(),
            limit_percent = c.limit_percent,
            limit_bytes = c.limit_bytes,
            segment_bytes = c.segment_bytes,
            window = self.ingest.window,
            max_batch_bytes = self.ingest.max_batch_bytes,
            level = p.compression_level,
            workers = p.worker_threads,
            change_set_bytes = p.change_set_bytes,
            flush_delay_ms = p.flush_delay_ms,
            idle_flush_delay_max_ms = p.idle_flush_delay_max_ms,
            upload_concurrency = p.upload_concurrency,
            memory_budget_bytes = p.memory_budget_bytes,
            bandwidth = p.bandwidth_cap_bytes_per_sec,
            schedule = render_schedule(&p.bandwidth_schedule),
            max_attempts = r.max_attempts,
            initial_backoff_ms = r.initial_backoff_ms,
            max_backoff_ms = r.max_backoff_ms,
            total_budget_ms = r.total_budget_ms,
            cpu_w = a.cpu_warning_percent,
            cpu_c = a.cpu_critical_percent,
            mem_w = a.memory_warning_percent,
            mem_c = a.memory_critical_percent,
            sustained = a.sustained_secs,
            free_w = a.cache_free_warning_percent,
            free_c = a.cache_free_critical_percent,
            drain_w = a.drain_warning_secs,
            drain_c = a.drain_critical_secs,
            rpo = a.rpo_threshold_secs,
            throttle = a.throttle_free_percent,
            ret_window = self.retention.window,
            r_keep_all = self.retention.keep_all,
            r_crash_every = self.retention.crash_every,
            r_app_every = self.retention.app_every,
            r_chunk_bytes = self.retention.chunk_bytes,
            r_run_every = self.retention.run_every,
            ret_parallel = self.retention.parallel,
            r_parallel = bounds("retention.parallel"),
            ret_nice = self.retention.nice,
            r_nice = bounds("retention.nice"),
            r_disks = render_disk_overrides(&self.retention),
            r_limit_percent = bounds("cache.limit_percent"),
            r_segment_bytes = bounds("cache.segment_bytes"),
            r_window = bounds("ingest.window"),
            r_max_batch_bytes = bounds("ingest.max_batch_bytes"),
            r_level = bounds("pipeline.compression_level"),
            r_workers = bounds("pipeline.worker_threads"),
            r_change_set_bytes = bounds("pipeline.change_set_bytes"),
            r_flush_delay_ms = bounds("pipeline.flush_delay_ms"),
            r_idle = bounds("pipeline.idle_flush_delay_max_ms"),
            r_upload_concurrency = bounds("pipeline.upload_concurrency"),
            r_cpu_w = bounds("alerts.cpu_warning_percent"),
            r_sustained = bounds("alerts.sustained_secs"),
            r_free_w = bounds("alerts.cache_free_warning_percent"),
            r_drain_w = bounds("alerts.drain_warning_secs"),
            r_rpo = bounds("alerts.rpo_threshold_secs"),
            r_throttle = bounds("alerts.throttle_free_percent"),
        );
        out.push_str(
            "# Where sealed objects go (FORMATS.md). kind = \"local\" (a directory) or \"azure\" (Blob Storage).\n",
        );
        out.push_str(&render_target(&self.target));
        out
    }
}

/// `[retention.disks."ID"]` tables, one per disk with overrides.
fn render_disk_overrides(retention: &crate::retention::RetentionConfig) -> String {
    let mut out = String::new();
    for (disk_id, overrides) in &retention.disks {
        let body = toml::to_string(overrides).unwrap_or_default();
        let _ = write!(out, "\n[retention.disks.\"{disk_id}\"]\n{body}");
    }
    out
}

fn render_schedule(windows: &[BandwidthWindow]) -> String {
    let rendered: Vec<String> = windows
        .iter()
        .map(|w| {
            format!(
                "{{ days = {:?}, start_hour = {}, end_hour = {}, cap_bytes_per_sec = {} }}",
                w.days, w.start_hour, w.end_hour, w.cap_bytes_per_sec
            )
        })
        .collect();
    format!("[{}]", rendered.join(", "))
}

fn render_target(target: &TargetConfig) -> String {
    #[derive(Serialize)]
    struct Wrapper<'a> {
        target: &'a TargetConfig,
    }
    // Serialising plain data to TOML cannot fail; an empty section would fail validation.
    toml::to_string(&Wrapper { target }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_storage::{AzureCredentialConfig, AzureTargetConfig, LocalTargetConfig, Secret};

    fn local() -> ApplianceConfig {
        ApplianceConfig::with_target(TargetConfig::Local(LocalTargetConfig {
            path: "target".into(),
            create: true,
        }))
    }

    #[test]
    fn documented_file_round_trips_for_both_targets() {
        let mut config = local();
        let text = config.to_documented_toml();
        assert_eq!(ApplianceConfig::parse(&text, Path::new("f")).unwrap(), config);
        config.retention.disks.insert(
            uuid::Uuid::from_u128(9),
            crate::retention::DiskPolicyOverride {
                window: Some(crate::retention::Span(7 * 86_400)),
                chunk_bytes: Some(1 << 20),
                ..Default::default()
            },
        );
        let text = config.to_documented_toml();
        assert_eq!(ApplianceConfig::parse(&text, Path::new("f")).unwrap(), config, "{text}");
        let azure = ApplianceConfig::with_target(TargetConfig::Azure(AzureTargetConfig {
            account: "acct1".into(),
            container: "ferry".into(),
            endpoint: Some("http://127.0.0.1:10000/acct1".into()),
            create_container: true,
            request_timeout_secs: 60,
            credential: AzureCredentialConfig::SharedKey {
                account_key: Secret::new("a2V5"),
            },
        }));
        assert_eq!(
            ApplianceConfig::parse(&azure.to_documented_toml(), Path::new("f")).unwrap(),
            azure
        );
    }

    #[test]
    fn a_bandwidth_schedule_round_trips_and_picks_the_first_matching_window() {
        let mut config = local();
        config.pipeline.bandwidth_cap_bytes_per_sec = 100;
        config.pipeline.bandwidth_schedule = vec![
            BandwidthWindow {
                days: vec!["mon".into(), "tue".into()],
                start_hour: 8,
                end_hour: 18,
                cap_bytes_per_sec: 10,
            },
            BandwidthWindow {
                days: vec!["mon".into()],
                start_hour: 0,
                end_hour: 24,
                cap_bytes_per_sec: 50,
            },
        ];
        let text = config.to_documented_toml();
        assert_eq!(ApplianceConfig::parse(&text, Path::new("f")).unwrap(), config);
        let p = &config.pipeline;
        assert_eq!(p.bandwidth_cap_at(1, 9), 10, "Monday 09:00: the first window");
        assert_eq!(p.bandwidth_cap_at(1, 18), 50, "Monday 18:00: end_hour is exclusive");
        assert_eq!(p.bandwidth_cap_at(2, 7), 100, "Tuesday 07:00: no window");
        assert_eq!(p.bandwidth_cap_at(0, 12), 100, "Sunday: no window");
        config.pipeline.bandwidth_schedule[0].start_hour = 18;
        assert_eq!(config.validate().unwrap_err().0, "pipeline.bandwidth_schedule");
    }

    #[test]
    fn every_bounded_setting_is_checked_and_documented_with_its_range() {
        let template = local().to_documented_toml();
        let base = toml::Value::try_from(local()).unwrap();
        let mut refused = 0;
        for bounded in BOUNDED {
            let (section, field) = bounded.key.split_once('.').unwrap();
            let range = bounds(bounded.key);
            assert!(
                template.contains(&format!("\n{field} = ")),
                "{} not in the template",
                bounded.key
            );
            assert!(
                template.contains(&range),
                "{}: range {range} not in the template",
                bounded.key
            );
            for outside in [bounded.low - 1, bounded.high + 1] {
                let mut value = base.clone();
                let Ok(number) = i64::try_from(outside) else { continue };
                value[section][field] = toml::Value::Integer(number);
                let text = toml::to_string(&value).unwrap();
                let Ok(config) = toml::from_str::<ApplianceConfig>(&text) else {
                    continue; // outside the field's type: serde refuses it, naming the key
                };
                let (key, message) = config.validate().unwrap_err();
                assert_eq!(key, bounded.key, "{outside}: {message}");
                assert!(message.contains(&format!("got {outside}")), "{message}");
                refused += 1;
            }
        }
        // Every setting but the unsigned ones whose low is 0 is checked on both sides.
        assert!(refused > BOUNDED.len(), "{refused}");
    }

    #[test]
    fn errors_name_the_key() {
        let text = local().to_documented_toml();
        let cases = [
            ("limit_percent = 80", "limit_percent = 120", "cache.limit_percent"),
            ("window = 16", "window = 0", "ingest.window"),
            (
                "compression_level = 1",
                "compression_level = 40",
                "pipeline.compression_level",
            ),
            (
                "data_listen = \"0.0.0.0:9443\"",
                "data_listen = \"nowhere\"",
                "server.data_listen",
            ),
            (
                "upload_concurrency = 32",
                "upload_concurrency = 0",
                "pipeline.upload_concurrency",
            ),
            ("max_attempts = 8", "max_attempts = 0", "max_attempts"),
            ("window = 16", "windw = 16", "windw"),
            ("engine = \"auto\"", "engine = \"spdk\"", "spdk"),
            ("format = 1", "format = 2", "format"),
        ];
        for (from, to, key) in cases {
            assert!(text.contains(from), "{from}");
            let error = ApplianceConfig::parse(&text.replace(from, to), Path::new("ferry.toml"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key) && error.starts_with("ferry.toml"), "{to}: {error}");
        }
    }

    #[test]
    fn refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, local().to_documented_toml()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ApplianceConfig::load(&path)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ApplianceConfig::load(&path).unwrap(), local());
    }
}
