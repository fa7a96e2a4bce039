//! Reprotect: a disk created with `reprotect_from` replicates a failed-over machine's disk back
//! into the vault, starting from the failover point instead of zeros (docs/PROTOCOL.md,
//! docs/FORMATS.md `reprotect_from`). ferryd checks the request against the vault's failover
//! record when the disk is created (a committed, non-test failover with stored digests, the
//! disk at a recovery point, sizes that fit), pins that point so retention keeps what the new
//! disk's restores start from, and serves the stored digests to the disk's own agent only.
//!
//! Limits: each answer is one stored segment (65,536 digests, 1 MiB); the vault is read on
//! each request (nothing is cached here).

use bytes::Bytes;
use ferry_client::api::{ErrorCode, ReprotectRequest};
use ferry_format::plaintexts::{FailoverState, Pin, ReprotectFrom, PLAINTEXT_FORMAT};
use hyper::{Response, StatusCode};
use std::sync::Arc;

use crate::cache::DiskView;
use crate::server::http::{ApiError, Body};
use crate::server::AppState;

fn refused(message: String) -> ApiError {
    ApiError::new(ErrorCode::ReprotectRefused, message)
}

/// The vault, or `503 busy` while ferryd has not reached its target yet.
fn vault(state: &AppState) -> Result<(Arc<dyn ferry_storage::ObjectStorage>, ferry_format::Keyring), ApiError> {
    state.retention.vault.get().cloned().ok_or_else(|| {
        let mut busy = ApiError::new(
            ErrorCode::Busy,
            "ferryd has not reached its target yet: the failover record cannot be read",
        );
        busy.retry_after_secs = Some(5);
        busy
    })
}

/// Checks `request` for a new disk named `name` of `size_bytes` and pins the failover point.
pub async fn resolve(
    state: &AppState,
    request: &ReprotectRequest,
    name: &str,
    size_bytes: u64,
) -> Result<ReprotectFrom, ApiError> {
    let (storage, keyring) = vault(state)?;
    let failover_id = request.failover_id;
    let record = ferry_vault::failover::read_record(&*storage, &keyring, failover_id)
        .await
        .map_err(|e| refused(format!("{e:#}")))?;
    if record.test {
        return Err(refused(format!(
            "failover {failover_id} is a test failover: replication goes on from the original machine, there is nothing to reprotect"
        )));
    }
    if record.state != FailoverState::Committed {
        return Err(refused(format!(
            "failover {failover_id} is {}: commit it first (ferryctl failover commit {failover_id})",
            record.state.as_str()
        )));
    }
    let disk = match request.disk_id {
        Some(disk_id) => record.disks.iter().find(|d| d.disk_id == disk_id),
        None => record
            .disks
            .iter()
            .find(|d| d.name == name)
            .or(if record.disks.len() == 1 {
                record.disks.first()
            } else {
                None
            }),
    };
    let Some(disk) = disk else {
        let names: Vec<String> = record
            .disks
            .iter()
            .map(|d| format!("{} ({})", d.disk_id, d.name))
            .collect();
        return Err(refused(format!(
            "failover {failover_id} has no disk {}; its disks: {}",
            request
                .disk_id
                .map(|d| d.to_string())
                .unwrap_or_else(|| format!("named {name:?}")),
            names.join(", ")
        )));
    };
    if disk.failed_back_unix_ms.is_some() {
        return Err(refused(format!(
            "disk {} of failover {failover_id} was failed back already",
            disk.disk_id
        )));
    }
    if disk.digest_blocks.is_none() {
        return Err(refused(format!(
            "failover {failover_id} stored no block digests for disk {} (it was made by an older ferryctl): \
             replicate it as a new disk instead",
            disk.disk_id
        )));
    }
    let Some(point) = &disk.point else {
        return Err(refused(format!(
            "failover {failover_id} used seq {} of disk {}, not a recovery point, so retention could remove it: \
             fail over to a recovery point to reprotect",
            disk.seq, disk.disk_id
        )));
    };
    let original = ferry_vault::disks::read_descriptor(&*storage, &keyring, disk.disk_id)
        .await
        .map_err(|e| refused(format!("{e:#}")))?;
    if size_bytes < original.size_bytes {
        return Err(refused(format!(
            "this disk holds {size_bytes} bytes, less than the failed-over disk's {}",
            original.size_bytes
        )));
    }
    // The new disk's restores start from this point: retention must keep it.
    let pin = Pin {
        format: PLAINTEXT_FORMAT,
        disk_id: disk.disk_id,
        seq: disk.seq,
        bookmark_id: point.clone(),
        reason: Some(format!("reprotect from failover {failover_id}")),
        pinned_unix_ms: ferry_client::clock::now_unix_ms(),
    };
    ferry_vault::retention::records::pin(&*storage, &keyring.disk_key(disk.disk_id), &pin)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot pin the failover point: {e:#}")))?;
    tracing::info!(%failover_id, original = %disk.disk_id, seq = disk.seq, "a disk replicates back from a failover");
    Ok(ReprotectFrom {
        failover_id,
        disk_id: disk.disk_id,
        seq: disk.seq,
    })
}

/// `GET /v1/disks/{id}/reprotect-digests/{segment}`: segment `segment` of the stored digests
/// the disk `view` (a reprotected disk of the asking machine) starts from.
pub async fn digests(state: &AppState, view: &DiskView, segment: u64) -> Result<Response<Body>, ApiError> {
    let Some(from) = view.meta.reprotect_from else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("disk {} was not created with reprotect_from", view.meta.disk_id),
        ));
    };
    let (storage, keyring) = vault(state)?;
    let original = ferry_vault::disks::read_descriptor(&*storage, &keyring, from.disk_id)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("{e:#}")))?;
    let blocks = ferry_vault::digests::blocks_of(original.size_bytes);
    if segment >= ferry_vault::digests::segments_of(blocks) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "the failed-over disk has {} digest segments",
                ferry_vault::digests::segments_of(blocks)
            ),
        ));
    }
    let entries =
        ferry_vault::digests::read_segment(&*storage, &keyring, from.failover_id, from.disk_id, segment, blocks)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("{e:#}")))?;
    let body: Vec<u8> = entries.iter().flatten().copied().collect();
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
