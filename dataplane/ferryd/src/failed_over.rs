//! Disks failed over for good. When a failover is committed (`ferryctl failover commit`), the
//! failed-over copy is the disk: ferryd refuses the disk's new batches (`409 failed_over`,
//! docs/PROTOCOL.md) so nothing the old machine still writes is mistaken for replication.
//!
//! The mark is kept with the disk's definition in the cache (durable, across restarts). ferryd
//! learns it from the control socket at commit time, and at each connection to the target
//! from the vault's committed failover records, so a commit made while ferryd was down, or
//! from another machine with the vault key alone, still takes effect. Disks ferryd does not
//! hold are left alone (another process server, or a disk never seen here).

use ferry_client::control::{FailoverCommit, FailoverCommitted};
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
    let commits: Vec<FailoverCommit> = records
        .into_iter()
        .filter(|r| r.state == FailoverState::Committed && !r.test)
        .map(|r| FailoverCommit {
            failover_id: r.failover_id,
            disk_ids: r.disks.iter().map(|d| d.disk_id).collect(),
        })
        .collect();
    if commits.is_empty() {
        return;
    }
    let marked = tokio::task::spawn_blocking(move || {
        for commit in &commits {
            mark(&cache, commit)?;
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
