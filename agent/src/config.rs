//! `ferry-agent run --config FILE`: which disks to replicate and how (TOML, every key
//! optional except `[[disks]]`). Unknown keys are refused with their name; every value is
//! checked here, before anything is opened, so a bad config changes nothing.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where the agent keeps its identity, block maps and progress when no config says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry-agent";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub scan: ScanConfig,
    #[serde(default)]
    pub bookmarks: BookmarkPolicy,
    #[serde(default)]
    pub quiesce: QuiesceConfig,
    #[serde(default)]
    pub transfer: TransferConfig,
}

/// One protected disk: a block device or an image file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Shown by ferryd and ferryctl; the file name by default.
    pub name: Option<String>,
    /// What makes the disk_id stable; by default the device's /dev/disk/by-id name (block
    /// devices) or the canonical path (files). Set it to keep the id when a path changes.
    pub identity: Option<String>,
    /// 512 or 4096; detected for block devices, 512 for files by default.
    pub sector_size: Option<u32>,
    /// How a pass captures the disk at one instant (snapshot.rs): auto, reflink, lvm, none.
    #[serde(default)]
    pub snapshot: crate::snapshot::SnapshotMode,
    /// Reprotect after a failover: this disk (on the failed-over machine) replicates back,
    /// starting from the failover's block digests, so its first pass sends only the blocks
    /// changed since the failover. `FAILOVER_ID`, or `FAILOVER_ID/DISK_ID` when the failover
    /// has several disks and names do not match.
    pub reprotect_from: Option<String>,
}

impl DiskConfig {
    /// `reprotect_from` parsed (checked by [`AgentConfig::validate`]).
    pub fn reprotect_request(&self) -> Result<Option<ferry_client::api::ReprotectRequest>, String> {
        let Some(text) = &self.reprotect_from else {
            return Ok(None);
        };
        let (failover, disk) = match text.split_once('/') {
            Some((failover, disk)) => (failover, Some(disk)),
            None => (text.as_str(), None),
        };
        let uuid = |t: &str| ferry_format::ids::parse_canonical_uuid(t.trim());
        let failover_id = uuid(failover)
            .ok_or_else(|| format!("{text:?}: the failover id must be a lowercase UUID (ferryctl failover list)"))?;
        let disk_id = match disk {
            Some(disk) => {
                Some(uuid(disk).ok_or_else(|| format!("{text:?}: the disk id after '/' must be a lowercase UUID"))?)
            }
            None => None,
        };
        Ok(Some(ferry_client::api::ReprotectRequest { failover_id, disk_id }))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    /// Change-tracking granularity: one BLAKE3 hash per block.
    pub block_bytes: u32,
    /// Size of each sequential read.
    pub read_bytes: u32,
    /// Cap on the pass's read rate, to spare the production disk (0 = none).
    pub read_rate_bytes_per_sec: u64,
    /// Keep what a pass reads in the page cache (by default it is dropped after hashing).
    pub keep_page_cache: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            block_bytes: 64 * 1024,
            read_bytes: 1 << 20,
            read_rate_bytes_per_sec: 0,
            keep_page_cache: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BookmarkPolicy {
    /// A pass, and a crash-consistent bookmark after it, this often.
    pub crash_interval_secs: u64,
    /// Quiesce around a pass and make the bookmark `app` this often (0 = never).
    pub app_interval_secs: u64,
}

impl Default for BookmarkPolicy {
    fn default() -> Self {
        Self {
            crash_interval_secs: 300,
            app_interval_secs: 3600,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuiesceConfig {
    /// Mount points frozen (FIFREEZE) while an app-consistent pass reads; needs root.
    pub freeze: Vec<PathBuf>,
    /// Run with `--pre` before freezing; a non-zero exit makes the bookmark `crash`.
    pub pre_script: Option<PathBuf>,
    /// Run with `--post` after thawing, whenever the pre script ran.
    pub post_script: Option<PathBuf>,
    /// Longest a freeze (and each script) may last; past it the agent thaws and the bookmark
    /// is `crash`. Default 60 s.
    pub timeout_secs: Option<u64>,
}

impl QuiesceConfig {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.unwrap_or(60))
    }

    pub fn is_configured(&self) -> bool {
        !self.freeze.is_empty() || self.pre_script.is_some() || self.post_script.is_some()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// Batches in flight per disk (capped by the server's window).
    pub window: u32,
    /// Target batch payload (capped by the server's max_batch_bytes).
    pub batch_bytes: u32,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            window: 8,
            batch_bytes: 8 << 20,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason is in the message (not a `source`), so a printed error chain says it once.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
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

    /// Every rule, with the key it is about.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.disks.is_empty() {
            return Err(("disks", "at least one [[disks]] entry is needed".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for disk in &self.disks {
            if !seen.insert(&disk.path) {
                return Err(("disks.path", format!("{} is listed twice", disk.path.display())));
            }
            if let Some(sector) = disk.sector_size {
                if !matches!(sector, 512 | 4096) {
                    return Err(("disks.sector_size", format!("must be 512 or 4096, got {sector}")));
                }
            }
            if let Some(name) = &disk.name {
                if name.is_empty() || name.chars().count() > 256 {
                    return Err(("disks.name", "must be 1 to 256 characters".into()));
                }
            }
            disk.reprotect_request()
                .map_err(|message| ("disks.reprotect_from", message))?;
        }
        let block = self.scan.block_bytes;
        if !block.is_power_of_two() || !(4096..=4 << 20).contains(&block) {
            return Err((
                "scan.block_bytes",
                format!("must be a power of two from 4096 to 4 MiB, got {block}"),
            ));
        }
        let read = self.scan.read_bytes;
        if read < block || !read.is_multiple_of(block) || read > 64 << 20 {
            return Err((
                "scan.read_bytes",
                format!("must be a multiple of scan.block_bytes ({block}) up to 64 MiB, got {read}"),
            ));
        }
        if self.bookmarks.crash_interval_secs == 0 {
            return Err(("bookmarks.crash_interval_secs", "must be at least 1".into()));
        }
        let app = self.bookmarks.app_interval_secs;
        if app != 0 && app < self.bookmarks.crash_interval_secs {
            return Err((
                "bookmarks.app_interval_secs",
                "must be 0 (never) or at least bookmarks.crash_interval_secs".into(),
            ));
        }
        if !(1..=64).contains(&self.transfer.window) {
            return Err((
                "transfer.window",
                format!("must be 1 to 64, got {}", self.transfer.window),
            ));
        }
        let batch = self.transfer.batch_bytes;
        if batch < read + 4096 || batch > 64 << 20 {
            return Err((
                "transfer.batch_bytes",
                format!(
                    "must be at least scan.read_bytes + 4096 ({}) and at most 64 MiB, got {batch}",
                    read + 4096
                ),
            ));
        }
        if self.quiesce.timeout_secs == Some(0) {
            return Err(("quiesce.timeout_secs", "must be at least 1".into()));
        }
        Ok(())
    }
}
