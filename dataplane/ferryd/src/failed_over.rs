//! Disks failed over for good. When a failover is committed (`ferryctl failover commit`), the
//! failed-over copy is the disk: ferryd refuses the disk's new batches (`409 failed_over`,
//! docs/PROTOCOL.md) so nothing the old machine still writes is mistaken for replication.
//!
//! The mark is kept with the disk's definition in the cache (durable, across restarts). ferryd
//! learns it from the control socket at commit time, and at each connection to the target
//! from the vault's committed failover records, so a commit made while ferryd was down, or
//! from another machine with the vault key alone, still takes effect. Disks ferryd does not
//! hold are left alone (another process server, or a disk never seen here).
//!
//! `ferryctl failback` lifts the mark of the disk it wrote back (the record says
//! `failed_back_unix_ms`), the same two ways: the control socket, and the vault's records at
//! each connection.

use ferry_client::control::{FailbackLifted, FailoverCommit, FailoverCommitted};
use ferry_format::plaintexts::FailoverState;
use std::sync::Arc;

use crate::cache::{Cache, CacheError};

/// Marks the disks of `commit` that this ferryd holds as failed over (fsynced before it
/// returns), and says which it held.
pub fn mark(cache: &Cache, commit: &FailoverCommit) -> Result<FailoverCommitted, CacheError> {
    let mut answer = FailoverCommitted::default();
    for disk_id in &commit.disk_ids {
        match cache.set_failed_over(*disk_id, commit.failover_id) {
            Ok(_) => {
                tracing::warn!(%disk_id, failover_id = %commit.failover_id, "disk failed over: its new batches are refused");
                answer.marked.push(*disk_id);
            }
            Err(CacheError::UnknownDisk(_)) => answer.unknown.push(*disk_id),
            Err(e) => return Err(e),
        }
    }
    Ok(answer)
}

/// Lifts the mark of `done.failover_id` from its disks (failed back), fsynced before it returns.
pub fn lift(cache: &Cache, done: &FailoverCommit) -> Result<FailbackLifted, CacheError> {
    let mut answer = FailbackLifted::default();
    for disk_id in &done.disk_ids {
        match cache.clear_failed_over(*disk_id, done.failover_id) {
            Ok(_) => {
                tracing::info!(%disk_id, failover_id = %done.failover_id, "disk failed back: its batches are accepted again");
                answer.lifted.push(*disk_id);
            }
            Err(CacheError::UnknownDisk(_)) => answer.unknown.push(*disk_id),
            Err(e) => return Err(e),
        }
    }
    Ok(answer)
}

/// Applies every committed failover recorded in the vault (see the header). Errors are logged:
/// a vault that cannot be read now leaves the marks as they were.
pub async fn apply_committed(
    cache: Cache,
    storage: Arc<dyn ferry_storage::ObjectStorage>,
    keyring: ferry_format::Keyring,
) {
    let records = match ferry_vault::failover::list_records(&*storage, &keyring).await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the vault's failover records; committed failovers apply when ferryctl failover commit is run again");
            return;
        }
    };
    let committed = records
        .into_iter()
        .filter(|r| r.state == FailoverState::Committed && !r.test);
    let (mut commits, mut failbacks) = (Vec::new(), Vec::new());
    for record in committed {
        let (back, still): (Vec<_>, Vec<_>) = record.disks.iter().partition(|d| d.failed_back_unix_ms.is_some());
        commits.push(FailoverCommit {
            failover_id: record.failover_id,
            disk_ids: still.iter().map(|d| d.disk_id).collect(),
        });
        failbacks.push(FailoverCommit {
            failover_id: record.failover_id,
            disk_ids: back.iter().map(|d| d.disk_id).collect(),
        });
    }
    if commits.is_empty() {
        return;
    }
    let marked = tokio::task::spawn_blocking(move || {
        for commit in &commits {
            mark(&cache, commit)?;
        }
        for failback in &failbacks {
            lift(&cache, failback)?;
        }
        Ok::<_, CacheError>(())
    })
    .await;
    match marked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot record a committed failover in the cache"),
        Err(e) => tracing::error!(error = %e, "the failover marking task failed"),
    }
}
