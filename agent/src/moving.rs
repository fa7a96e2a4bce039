//! A planned move to another process server: the `move` command (`ferryctl ps move`, `ferryctl
//! ps drain`, docs/SCALE-OUT.md).
//!
//! Between rounds (no pass runs), every disk set up here is released at the current process
//! server (`POST /v1/disks/{id}/release`: it refuses the disk's batches from then on, uploads
//! what it holds and releases the disk's lease, answering `503 busy` while it uploads), then
//! the agent runs against the new process server, which claims each disk with everything in
//! storage already, so nothing is resent. The outcome is reported once the disks are set up
//! there, with the time from the first release to then: the RPO the move added.
//!
//! Limits: at most [`RELEASE_TIMEOUT`] per disk (a process server that cannot upload its
//! backlog in that time fails the move; the disks stay where they were).

use ferry_client::api::ErrorCode;
use ferry_client::commands::{Command, CommandOutcome};
use ferry_client::{ClientError, DataClient};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest one disk's release may take (its backlog uploading).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

/// A move under way: reported once the disks are set up at the new process server.
pub struct PendingMove {
    pub command: Command,
    pub started: Instant,
    pub from: String,
    pub disks: usize,
}

/// Releases `disks` at `client`'s process server for their move to `to`.
pub async fn release_all(client: &DataClient, disks: &[Uuid], to: &str) -> Result<(), String> {
    for disk_id in disks {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            match client.release_disk(*disk_id, to).await {
                Ok(info) => {
                    tracing::info!(%disk_id, uploaded_seq = info.uploaded_seq, %to, "disk released for the move");
                    break;
                }
                // Released by an earlier attempt whose answer was lost.
                Err(e) if e.code() == Some(ErrorCode::NotOwner) => break,
                Err(e @ ClientError::Status { .. }) if e.is_retryable() && Instant::now() < deadline => {
                    let pause = match &e {
                        ClientError::Status {
                            retry_after_secs: Some(secs),
                            ..
                        } => Duration::from_secs(*secs).min(Duration::from_secs(10)),
                        _ => Duration::from_secs(1),
                    };
                    tracing::info!(%disk_id, error = %e, "the process server is still uploading the disk before its move");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(format!("disk {disk_id}: cannot release it for the move: {e}")),
            }
        }
    }
    Ok(())
}

/// The outcome of a move, once the disks were set up at the new process server (`errors`: the
/// disks that could not be).
pub fn outcome(pending: &PendingMove, to: &str, errors: &[String]) -> CommandOutcome {
    let move_ms = pending.started.elapsed().as_secs_f64() * 1000.0;
    let ok = errors.is_empty();
    let message = if ok {
        format!(
            "moved {} disk(s) from {} to {to}; no data was taken for {move_ms:.0} ms",
            pending.disks, pending.from,
        )
    } else {
        format!("moved to {to}, but: {}", errors.join("; "))
    };
    CommandOutcome {
        move_ms: Some(move_ms),
        ok,
        message: message.chars().take(4096).collect(),
        bookmarks: Vec::new(),
        hold_ms: None,
    }
}
