//! What the agent remembers about each disk between runs (`<state>/disks/<disk_id>/progress.json`,
//! written durably at the start and end of each pass), and what it shows while running
//! (`<state>/status.json`, rewritten every second by `run`, read by `ferry-agent status`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use uuid::Uuid;

use ferry_durable::read_optional;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The first full copy; no recovery point exists yet.
    Initial,
    /// Passes send what changed since the last one.
    Continuous,
    /// The agent's record of the server's content was lost or untrusted: a pass re-reads the
    /// whole disk and sends what differs; the server shows `resync_required` meanwhile.
    Resync,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initial => "initial",
            Phase::Continuous => "continuous",
            Phase::Resync => "resync",
        }
    }
}

/// A bookmark the server acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookmarkRecord {
    pub id: String,
    pub kind: String,
    pub seq: u64,
    /// The state it names is at least this recent (the pass's start, or the freeze).
    pub source_time_unix_ms: u64,
    pub acked_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskProgress {
    pub disk_id: Uuid,
    pub path: PathBuf,
    pub size_bytes: u64,
    /// Highest seq the server acknowledged as durable (contiguously) that this agent saw.
    pub acked_seq: u64,
    pub passes_completed: u64,
    pub initial_done: bool,
    pub pass_in_progress: bool,
    #[serde(default)]
    pub resync_reason: Option<String>,
    #[serde(default)]
    pub last_bookmark: Option<BookmarkRecord>,
    #[serde(default)]
    pub last_app_unix_ms: Option<u64>,
}

impl DiskProgress {
    pub fn new(disk_id: Uuid, path: PathBuf, size_bytes: u64) -> Self {
        Self {
            disk_id,
            path,
            size_bytes,
            acked_seq: 0,
            passes_completed: 0,
            initial_done: false,
            pass_in_progress: false,
            resync_reason: None,
            last_bookmark: None,
            last_app_unix_ms: None,
        }
    }

    pub fn phase(&self) -> Phase {
        if !self.initial_done {
            Phase::Initial
        } else if self.resync_reason.is_some() {
            Phase::Resync
        } else {
            Phase::Continuous
        }
    }
}

pub fn disk_dir(state_dir: &Path, disk_id: Uuid) -> PathBuf {
    state_dir.join("disks").join(disk_id.to_string())
}

/// `Ok(None)` when there is none; `Err` text when it exists but does not parse.
pub fn load(state_dir: &Path, disk_id: Uuid) -> std::io::Result<Result<Option<DiskProgress>, String>> {
    let path = disk_dir(state_dir, disk_id).join("progress.json");
    Ok(match read_optional(&path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is damaged: {e}", path.display())),
    })
}

pub fn save(state_dir: &Path, progress: &DiskProgress) -> std::io::Result<()> {
    let path = disk_dir(state_dir, progress.disk_id).join("progress.json");
    let json = serde_json::to_vec_pretty(progress).map_err(std::io::Error::other)?;
    ferry_durable::replace(&path, &json)
}

/// One disk in `status.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DiskStatus {
    pub disk_id: Option<Uuid>,
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    /// starting | initial | continuous | resync | waiting (set-up failed; retried, the error
    /// says why) | error (set-up failed for good) | failed_over (the disk's failover was
    /// committed: not replicated any more)
    pub phase: String,
    pub resync_reason: Option<String>,
    /// The pass running now, or the last one.
    pub pass: Option<PassStatus>,
    pub last_bookmark: Option<BookmarkRecord>,
    pub last_error: Option<String>,
    /// The snapshot provider the last pass used (`reflink`, `lvm`, `none`) and, under `auto`,
    /// why it fell back to the live disk.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PassStatus {
    pub number: u64,
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub scanned_bytes: u64,
    pub size_bytes: u64,
    pub changed_blocks: u64,
    /// Batch bytes the server acknowledged in this pass.
    pub sent_bytes: u64,
    pub quiesced: Option<bool>,
    /// How long the disk's writers were held while its snapshot was taken (none: the pass
    /// read the live disk).
    #[serde(default)]
    pub hold_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub machine_id: Option<Uuid>,
    pub updated_unix_ms: u64,
    pub disks: Vec<DiskStatus>,
}

pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}
