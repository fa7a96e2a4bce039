//! `ferry-agent status`: what `run` last wrote to `status.json`, with whether it is still
//! running and each disk's lag (now minus the source time of its last acknowledged bookmark:
//! the RPO the agent side adds before ferryd uploads the point).

use anyhow::Context;
use std::path::Path;

use crate::progress::{status_path, AgentStatus};
use ferry_client::clock::now_unix_ms;
use ferry_durable::read_optional;

/// A status file older than this, or from a dead process, means the agent is not running.
const STALE_MS: u64 = 10_000;

pub fn load(state_dir: &Path) -> anyhow::Result<Option<AgentStatus>> {
    let path = status_path(state_dir);
    let Some(bytes) = read_optional(&path).with_context(|| format!("reading {}", path.display()))? else {
        return Ok(None);
    };
    let status = serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    Ok(Some(status))
}

pub fn is_running(status: &AgentStatus, now_ms: u64) -> bool {
    // kill(pid, 0): the process exists (and is ours to signal).
    let alive = i32::try_from(status.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
    alive && now_ms.saturating_sub(status.updated_unix_ms) < STALE_MS
}

/// The JSON `status --json` prints: the file plus `running` and per-disk `lag_seconds`.
pub fn to_json(status: &AgentStatus) -> serde_json::Value {
    let now = now_unix_ms();
    let mut value = serde_json::to_value(status).unwrap_or(serde_json::Value::Null);
    value["running"] = serde_json::Value::Bool(is_running(status, now));
    if let Some(disks) = value["disks"].as_array_mut() {
        for (disk, known) in disks.iter_mut().zip(&status.disks) {
            disk["lag_seconds"] = match &known.last_bookmark {
                Some(b) => serde_json::json!(now.saturating_sub(b.source_time_unix_ms) as f64 / 1000.0),
                None => serde_json::Value::Null,
            };
        }
    }
    value
}

pub fn render(status: &AgentStatus) -> String {
    let now = now_unix_ms();
    let mut out = String::new();
    let running = if is_running(status, now) {
        format!("running (pid {})", status.pid)
    } else {
        format!(
            "not running (last update {} s ago)",
            now.saturating_sub(status.updated_unix_ms) / 1000
        )
    };
    let machine = status.machine_id.map(|m| m.to_string()).unwrap_or_default();
    out.push_str(&format!("machine {machine}: agent {running}\n\n"));
    out.push_str(&format!(
        "{:<16} {:<11} {:<34} {:<34} {:>9}\n",
        "DISK", "PHASE", "PROGRESS", "LAST BOOKMARK", "LAG"
    ));
    for disk in &status.disks {
        let progress = match &disk.pass {
            Some(pass) if pass.running => format!(
                "pass {}: {:.0}% read, {} changed",
                pass.number,
                100.0 * pass.scanned_bytes as f64 / pass.size_bytes.max(1) as f64,
                pass.changed_blocks
            ),
            Some(pass) => format!("pass {} done, {} changed", pass.number, pass.changed_blocks),
            None => "-".into(),
        };
        let (bookmark, lag) = match &disk.last_bookmark {
            Some(b) => (
                format!("{} ({}, seq {})", b.id, b.kind, b.seq),
                format!("{:.0} s", now.saturating_sub(b.source_time_unix_ms) as f64 / 1000.0),
            ),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<16} {:<11} {:<34} {:<34} {:>9}\n",
            disk.name, disk.phase, progress, bookmark, lag
        ));
        if let Some(snapshot) = &disk.snapshot {
            let hold = match disk.pass.as_ref().and_then(|p| p.hold_ms) {
                Some(ms) => format!(", writes held {ms:.1} ms"),
                None => String::new(),
            };
            out.push_str(&format!("  snapshot: {snapshot}{hold}\n"));
        }
        if let Some(reason) = &disk.resync_reason {
            out.push_str(&format!("  resync: {reason}\n"));
        }
        if let Some(error) = &disk.last_error {
            out.push_str(&format!("  error: {error}\n"));
        }
    }
    out
}
