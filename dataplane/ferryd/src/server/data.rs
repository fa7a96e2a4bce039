//! The data endpoint (PROTOCOL.md sections 2 and 3): health, disks, batches.
//!
//! A batch body is copied once, chunk by chunk as it arrives, into the aligned record buffer
//! the cache writes with O_DIRECT; it is validated there (a view of the same memory) and
//! answered 200 only after the cache says it is durable. A rejected batch is dropped before
//! anything touches the cache. Limits: a body above `max_batch_bytes + 40` is refused from its
//! Content-Length before it is read (413), or as soon as it grows past it.

use crate::admission::Refusal;
use bytes::Bytes;
use ferry_client::api::{AbandonAnswer, DiskInfo, DiskSpec, ResyncState};
use ferry_client::api::{DiskState, ErrorCode};
use ferry_format::batch::{self, DiskGeometry, BATCH_HEADER_LEN};
use ferry_format::ids::parse_canonical_uuid;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::atomic::Ordering;
use uuid::Uuid;

use super::http::{json, ApiError, Body};
use super::AppState;
use crate::cache::{Admission, AppendError, CacheError, DiskMeta, DiskView, RecordBuffer};

/// Longest disk name accepted, in characters.
const DISK_NAME_MAX_CHARS: usize = 256;
/// Longest resync reason, in characters.
const RESYNC_REASON_MAX_CHARS: usize = 256;
/// Largest disk definition body.
const DISK_SPEC_MAX_BYTES: usize = 64 * 1024;

pub async fn handle(state: &AppState, machine: Option<Uuid>, request: Request<Incoming>) -> Response<Body> {
    match route(state, machine, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn route(
    state: &AppState,
    machine: Option<Uuid>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    match segments.as_slice() {
        ["v1", "health"] if method == Method::GET => Ok(health(state)),
        ["v1", "disks", disk, rest @ ..] => {
            let disk_id = parse_canonical_uuid(disk)
                .ok_or_else(|| ApiError::new(ErrorCode::BadId, "disk_id must be a lowercase UUID"))?;
            let machine = machine.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "a client certificate issued by this appliance is required",
                )
            })?;
            match (rest, method) {
                ([], Method::PUT) => put_disk(state, machine, disk_id, request.into_body()).await,
                ([], Method::GET) => get_disk(state, machine, disk_id),
                (["abandon"], Method::POST) => abandon(state, machine, disk_id),
                (["resync"], Method::PUT) => put_resync(state, machine, disk_id, request.into_body()).await,
                (["release"], Method::POST) => release(state, machine, disk_id, request.into_body()).await,
                (["reprotect-digests", segment], Method::GET) => {
                    let segment: u64 = segment
                        .parse()
                        .map_err(|_| ApiError::new(ErrorCode::BadId, "segment must be a decimal number"))?;
                    let view = owned_disk(state, machine, disk_id)?;
                    crate::reprotect::digests(state, &view, segment).await
                }
                (["batches", seq], Method::PUT) => {
                    let seq: u64 = seq
                        .parse()
                        .map_err(|_| ApiError::new(ErrorCode::BadId, "seq must be a decimal number"))?;
                    put_batch(state, machine, disk_id, seq, request).await
                }
                _ => Err(ApiError::new(ErrorCode::NotFound, format!("no such endpoint: {path}"))),
            }
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, format!("no such endpoint: {path}"))),
    }
}

fn health(state: &AppState) -> Response<Body> {
    let status = if state.admission.refusal().is_some() {
        "draining"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The load the configuration server places machines by (no secret: counts and rates).
    let (used, limit) = state.cache.space();
    let load = ferry_client::api::Health {
        status: status.to_string(),
        disks: Some(state.cache.disks().len()),
        ingest_mb_per_s: Some(super::control::ingest_mb_per_s_60s(state)),
        cache_free_fraction: Some(if limit == 0 {
            0.0
        } else {
            1.0 - used as f64 / limit as f64
        }),
    };
    json(code, &load)
}

fn draining(state: &AppState) -> Result<(), ApiError> {
    if let Some(refusal) = state.admission.refusal() {
        return Err(ApiError::new(ErrorCode::Draining, refusal.message()).retry_after(5));
    }
    Ok(())
}

/// `409 not_owner`: another process server owns the disk (docs/SCALE-OUT.md).
fn not_owner(disk_id: Uuid, owner: String) -> ApiError {
    ApiError::new(
        ErrorCode::NotOwner,
        format!(
            "disk {disk_id} is written by process server {owner} now; ask the configuration server where to send              (ferry-agent does by itself)"
        ),
    )
    .owner(Some(owner))
    .retry_after(5)
}

/// The disk, if it exists, belongs to `machine` and is held by this process server.
fn owned_disk(state: &AppState, machine: Uuid, disk_id: Uuid) -> Result<DiskView, ApiError> {
    if let Some(owner) = state.ownership.lost_to(disk_id) {
        return Err(not_owner(disk_id, owner));
    }
    let view = state
        .cache
        .disk(disk_id)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownDisk, format!("disk {disk_id} does not exist")))?;
    if view.meta.machine_id != machine {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("disk {disk_id} belongs to another machine"),
        ));
    }
    Ok(view)
}

pub(super) fn disk_info(state: &AppState, view: &DiskView) -> DiskInfo {
    let upload = state.pipeline.disk(view.meta.disk_id).unwrap_or_default();
    let error = upload.error.clone().or_else(|| state.pipeline.target_error());
    DiskInfo {
        disk_id: view.meta.disk_id,
        machine_id: view.meta.machine_id,
        name: view.meta.name.clone(),
        size_bytes: view.meta.size_bytes,
        sector_size: view.meta.sector_size,
        write_ordered: view.meta.write_ordered,
        durable_seq: view.durable_seq,
        uploaded_seq: upload.uploaded_seq.max(view.released_through),
        window: state.config.ingest.window,
        max_batch_bytes: state.config.ingest.max_batch_bytes,
        latest_point: upload.latest_point.map(|p| ferry_client::api::LatestPoint {
            seq: p.seq,
            bookmark_id: p.bookmark_id,
            kind: p.kind,
            source_time_unix_ms: p.source_time_unix_ms,
        }),
        state: if view.meta.failed_over.is_some() {
            DiskState::FailedOver
        } else if view.meta.resync_reason.is_some() {
            DiskState::ResyncRequired
        } else if error.is_some() {
            DiskState::UploadError
        } else if state.admission.refusal().is_some() {
            DiskState::Draining
        } else {
            DiskState::Replicating
        },
        error,
        resync_reason: view.meta.resync_reason.clone(),
        failover_id: view.meta.failed_over,
        reprotect_from: view.meta.reprotect_from,
    }
}

/// `POST /v1/disks/{id}/abandon`: gives up the batches stored past `durable_seq` (void.rs).
fn abandon(state: &AppState, machine: Uuid, disk_id: Uuid) -> Result<Response<Body>, ApiError> {
    owned_disk(state, machine, disk_id)?;
    let (view, abandoned) = state.cache.abandon_past_durable(disk_id).map_err(|e| match e {
        CacheError::Busy(_, why) => ApiError::new(ErrorCode::Busy, format!("cannot abandon now: {why}")).retry_after(1),
        other => internal(other),
    })?;
    if abandoned > 0 {
        tracing::info!(%disk_id, abandoned, durable_seq = view.durable_seq, "batches past a gap given up by their sender");
    }
    Ok(json(
        StatusCode::OK,
        &AbandonAnswer {
            abandoned: abandoned as u64,
            disk: disk_info(state, &view),
        },
    ))
}

/// `PUT /v1/disks/{id}/resync`: the sender starts (or has finished) re-reading the disk.
async fn put_resync(
    state: &AppState,
    machine: Uuid,
    disk_id: Uuid,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    owned_disk(state, machine, disk_id)?;
    let bytes = http_body_util::Limited::new(body, DISK_SPEC_MAX_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the resync state is missing or too large"))?
        .to_bytes();
    let resync: ResyncState = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("resync state: {e}")))?;
    let reason = match (resync.required, resync.reason) {
        (false, _) => None,
        (true, Some(reason)) if !reason.is_empty() && reason.chars().count() <= RESYNC_REASON_MAX_CHARS => Some(reason),
        (true, _) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("a resync needs a reason of 1 to {RESYNC_REASON_MAX_CHARS} characters"),
            ))
        }
    };
    let view = state.cache.set_resync(disk_id, reason).map_err(internal)?;
    Ok(json(StatusCode::OK, &disk_info(state, &view)))
}

fn internal(error: CacheError) -> ApiError {
    tracing::error!(%error, "cache error");
    ApiError::new(
        ErrorCode::Internal,
        "the cache could not complete the request; it was not stored",
    )
}

/// Runs a cache call that fsyncs (a disk's definition) on the blocking pool, so a slow disk
/// never stalls the tokio workers that serve every other stream.
async fn off_the_runtime<T: Send + 'static>(
    state: &AppState,
    call: impl FnOnce(&crate::cache::Cache) -> Result<T, CacheError> + Send + 'static,
) -> Result<T, ApiError> {
    let cache = state.cache.clone();
    match tokio::task::spawn_blocking(move || call(&cache)).await {
        Ok(result) => result.map_err(internal),
        Err(e) => {
            tracing::error!(error = %e, "a cache task failed");
            Err(ApiError::new(
                ErrorCode::Internal,
                "the cache could not complete the request",
            ))
        }
    }
}

async fn put_disk(state: &AppState, machine: Uuid, disk_id: Uuid, body: Incoming) -> Result<Response<Body>, ApiError> {
    draining(state)?;
    let bytes = http_body_util::Limited::new(body, DISK_SPEC_MAX_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the disk definition is missing or too large"))?
        .to_bytes();
    let spec: DiskSpec = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("disk definition: {e}")))?;
    if !matches!(spec.sector_size, 512 | 4096) {
        return Err(ApiError::new(ErrorCode::BadRequest, "sector_size must be 512 or 4096"));
    }
    if spec.size_bytes == 0 || !spec.size_bytes.is_multiple_of(u64::from(spec.sector_size)) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "size_bytes must be a positive multiple of sector_size",
        ));
    }
    if spec.name.is_empty() || spec.name.chars().count() > DISK_NAME_MAX_CHARS {
        return Err(ApiError::new(ErrorCode::BadRequest, "name must be 1 to 256 characters"));
    }
    let held = state.ownership.holds(disk_id) && state.cache.disk(disk_id).is_some();
    let created = if held {
        false
    } else {
        claim(state, machine, disk_id, &spec).await?
    };
    let existing = owned_disk(state, machine, disk_id)?;
    if !created && spec.reprotect_from.is_some() && existing.meta.reprotect_from.is_none() {
        return Err(ApiError::new(
            ErrorCode::DiskConflict,
            format!("disk {disk_id} exists already: reprotect_from applies only when a disk is created"),
        ));
    }
    if existing.meta.sector_size != spec.sector_size || existing.meta.write_ordered != spec.write_ordered {
        return Err(ApiError::new(
            ErrorCode::DiskConflict,
            "sector_size and write_ordered cannot change",
        ));
    }
    if spec.size_bytes < existing.meta.size_bytes {
        return Err(ApiError::new(
            ErrorCode::SizeShrink,
            format!("a disk cannot shrink below {} bytes", existing.meta.size_bytes),
        ));
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    if spec.size_bytes == existing.meta.size_bytes && spec.name == existing.meta.name {
        return Ok(json(status, &disk_info(state, &existing)));
    }
    let meta = DiskMeta {
        size_bytes: spec.size_bytes,
        name: spec.name,
        ..existing.meta
    };
    let view = off_the_runtime(state, move |cache| cache.update_disk(meta)).await?;
    Ok(json(status, &disk_info(state, &view)))
}

/// Claims a disk this process server does not hold ([`crate::ownership`]): a new disk, one
/// cached from before a restart, or one another process server wrote. True when the disk is
/// new (nothing of it was cached here or stored).
async fn claim(state: &AppState, machine: Uuid, disk_id: Uuid, spec: &DiskSpec) -> Result<bool, ApiError> {
    use crate::ownership::ClaimError;
    let existed = state.cache.disk(disk_id);
    if let Some(existing) = &existed {
        if existing.meta.machine_id != machine {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("disk {disk_id} belongs to another machine"),
            ));
        }
    }
    let reprotect_from = match (&spec.reprotect_from, &existed) {
        (Some(request), None) => Some(crate::reprotect::resolve(state, request, &spec.name, spec.size_bytes).await?),
        _ => None,
    };
    let meta = DiskMeta {
        disk_id,
        machine_id: machine,
        name: spec.name.clone(),
        size_bytes: spec.size_bytes,
        sector_size: spec.sector_size,
        write_ordered: spec.write_ordered,
        created_unix_ms: ferry_client::clock::now_unix_ms(),
        resync_reason: None,
        failed_over: None,
        reprotect_from,
        owner_epoch: 0,
    };
    match state.ownership.claim(&state.cache, meta).await {
        Ok(claimed) => {
            tracing::info!(disk = %disk_id, ?claimed, "holding the disk");
            let fresh = matches!(claimed, crate::ownership::Claimed::TookOver(h) if h.since_seq == 1);
            Ok(existed.is_none() && fresh)
        }
        Err(ClaimError::OwnedElsewhere { owner, .. }) => Err(not_owner(disk_id, owner)),
        Err(ClaimError::OtherMachine { .. }) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("disk {disk_id} belongs to another machine"),
        )),
        Err(e @ (ClaimError::NotConnected | ClaimError::Busy(_))) => {
            Err(ApiError::new(ErrorCode::Busy, e.to_string()).retry_after(2))
        }
        Err(e @ ClaimError::Failed { .. }) => {
            tracing::warn!(disk = %disk_id, error = %e, "cannot claim the disk");
            Err(ApiError::new(ErrorCode::Busy, e.to_string()).retry_after(5))
        }
    }
}

/// Longest `POST /v1/disks/{id}/release` waits for the disk's cached batches to be uploaded
/// before answering `503 busy` (the sender asks again).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `POST /v1/disks/{id}/release` with `{"to": "host:port"}` (a planned move, docs/SCALE-OUT.md):
/// refuses the disk's new batches (`not_owner` naming `to`), waits until every cached batch
/// and point is in storage, then releases the disk's lease and forgets it.
async fn release(state: &AppState, machine: Uuid, disk_id: Uuid, body: Incoming) -> Result<Response<Body>, ApiError> {
    #[derive(serde::Deserialize)]
    struct ReleaseRequest {
        to: String,
    }
    let bytes = http_body_util::Limited::new(body, DISK_SPEC_MAX_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the release request is missing or too large"))?
        .to_bytes();
    let request: ReleaseRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("release: {e}")))?;
    if request.to.is_empty() || request.to.len() > 256 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "to is a host:port of 1 to 256 characters",
        ));
    }
    if state.ownership.moving_to(disk_id).is_none() {
        let view = owned_disk(state, machine, disk_id)?;
        if !state.ownership.holds(disk_id) {
            return Err(ApiError::new(ErrorCode::Busy, "the disk is not claimed here yet").retry_after(2));
        }
        tracing::info!(disk = %disk_id, to = %request.to, durable_seq = view.durable_seq, "moving the disk: uploading what the cache holds, then releasing its lease");
        state.ownership.begin_move(disk_id, request.to.clone());
        state.tuning.changed.notify_one();
    }
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    // No disk in the cache any more: released already (a retried request).
    while let Some(view) = state.cache.disk(disk_id) {
        if view.meta.machine_id != machine {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("disk {disk_id} belongs to another machine"),
            ));
        }
        if view.released_through >= view.durable_seq {
            state.ownership.give_up(disk_id, request.to.clone()).await;
            let info = disk_info(state, &view);
            off_the_runtime(state, move |cache| cache.forget_disk(disk_id)).await?;
            tracing::info!(disk = %disk_id, to = %request.to, uploaded_seq = info.uploaded_seq, "disk released for its move");
            return Ok(json(StatusCode::OK, &info));
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                ErrorCode::Busy,
                format!(
                    "disk {disk_id} is still uploading before its move: {} of {} batches in storage",
                    view.released_through, view.durable_seq
                ),
            )
            .retry_after(1));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let to = request.to;
    Err(not_owner(disk_id, to))
}

fn get_disk(state: &AppState, machine: Uuid, disk_id: Uuid) -> Result<Response<Body>, ApiError> {
    let view = owned_disk(state, machine, disk_id)?;
    Ok(json(StatusCode::OK, &disk_info(state, &view)))
}

/// Copies the body into a record buffer: exactly `len` bytes, or a clear error.
async fn read_body_into_record(mut body: Incoming, len: usize) -> Result<RecordBuffer, ApiError> {
    let mut record = RecordBuffer::new(len);
    let mut filled = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::new(ErrorCode::MalformedBatch, format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if filled + data.len() > len {
                return Err(ApiError::new(
                    ErrorCode::MalformedBatch,
                    "the body is longer than its Content-Length",
                ));
            }
            record.batch_mut()[filled..filled + data.len()].copy_from_slice(&data);
            filled += data.len();
        }
    }
    if filled != len {
        return Err(ApiError::new(
            ErrorCode::MalformedBatch,
            format!("the body is {filled} bytes, Content-Length said {len}"),
        ));
    }
    Ok(record)
}

/// A body without Content-Length: gathered up to the limit, then copied into a record.
async fn read_unsized_body(body: Incoming, limit: usize) -> Result<RecordBuffer, ApiError> {
    let collected = http_body_util::Limited::new(body, limit).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::new(ErrorCode::TooLarge, format!("the batch exceeds {limit} bytes"))
        } else {
            ApiError::new(ErrorCode::MalformedBatch, format!("the body could not be read: {e}"))
        }
    })?;
    let bytes: Bytes = collected.to_bytes();
    let mut record = RecordBuffer::new(bytes.len());
    record.batch_mut().copy_from_slice(&bytes);
    Ok(record)
}

async fn put_batch(
    state: &AppState,
    machine: Uuid,
    disk_id: Uuid,
    seq: u64,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let arrived = std::time::Instant::now();
    let max_batch_bytes = state.config.ingest.max_batch_bytes;
    let limit = max_batch_bytes as usize + BATCH_HEADER_LEN;
    let content_length = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let disk = match refuse_before_reading(state, machine, disk_id, seq, content_length, limit) {
        Ok(disk) => disk,
        Err(refusal) => {
            discard_body(request.into_body(), limit).await;
            return Err(refusal);
        }
    };
    // Reserved before the body is read, held until the answer (the cache then owns the record).
    let Some(_reserved) = state.ingest_memory.try_reserve(content_length.unwrap_or(limit) as u64) else {
        discard_body(request.into_body(), limit).await;
        return Err(ApiError::new(
            ErrorCode::Busy,
            "too many batch bodies are being received at once (memory budget); retry",
        )
        .retry_after(1));
    };
    let record = match content_length {
        Some(len) => read_body_into_record(request.into_body(), len).await?,
        None => read_unsized_body(request.into_body(), limit).await?,
    };
    let (record, batch_bytes, header_crc) = record.finish(disk_id, seq);
    let geometry = DiskGeometry {
        size_bytes: disk.meta.size_bytes,
        sector_size: disk.meta.sector_size,
    };
    let batch_len = batch_bytes.len() as u32;
    batch::decode(batch_bytes, seq, geometry, max_batch_bytes)
        .map_err(|e| ApiError::new(ErrorCode::from(e.code), e.message))?;
    let record_len = record.len() as u64;
    match state
        .cache
        .admit(disk_id, seq, header_crc, record_len)
        .map_err(internal)?
    {
        Admission::Accept => {
            if let Some(refusal) = throttled(state) {
                state.cache.abandon(disk_id, seq, record_len);
                return Err(refusal);
            }
        }
        Admission::AlreadyStored { durable_seq } => {
            return Ok(json(StatusCode::OK, &ferry_client::BatchAck { seq, durable_seq }))
        }
        Admission::Conflict { expected_seq } => {
            return Err(ApiError::new(
                ErrorCode::SeqConflict,
                format!("seq {seq} is already stored with other content"),
            )
            .expected(expected_seq))
        }
        Admission::OutOfWindow { expected_seq } => return Err(out_of_window(seq, expected_seq)),
        Admission::InFlight => {
            return Err(ApiError::new(ErrorCode::Busy, format!("seq {seq} is being stored right now")).retry_after(1))
        }
        Admission::CacheFull => return Err(cache_full()),
    }
    match state.cache.append(disk_id, seq, record, batch_len, header_crc).await {
        Ok(durable_seq) => {
            state.ingested_bytes.fetch_add(u64::from(batch_len), Ordering::Relaxed);
            state.metrics.batches.fetch_add(1, Ordering::Relaxed);
            state.metrics.ack_latency.record(arrived.elapsed());
            Ok(json(StatusCode::OK, &ferry_client::BatchAck { seq, durable_seq }))
        }
        Err(AppendError::CacheFull) => Err(cache_full()),
        Err(AppendError::QueueFull) => {
            Err(ApiError::new(ErrorCode::Busy, "the cache's write queue is full; retry in a moment").retry_after(1))
        }
        Err(AppendError::ShuttingDown) => {
            Err(ApiError::new(ErrorCode::Draining, Refusal::ShuttingDown.message()).retry_after(5))
        }
        Err(AppendError::Io(message)) => {
            tracing::error!(%message, "cache write failed");
            Err(ApiError::new(ErrorCode::Internal, "the cache could not store the batch; retry").retry_after(1))
        }
    }
}

/// What can be refused from the headers alone: draining, a disk that is not the caller's, a
/// failed-over disk, a seq past the window, a declared length over the limit.
fn refuse_before_reading(
    state: &AppState,
    machine: Uuid,
    disk_id: Uuid,
    seq: u64,
    content_length: Option<usize>,
    limit: usize,
) -> Result<DiskView, ApiError> {
    draining(state)?;
    let disk = owned_disk(state, machine, disk_id)?;
    if let Some(to) = state.ownership.moving_to(disk_id) {
        return Err(not_owner(disk_id, to));
    }
    if !state.ownership.holds(disk_id) {
        // Cached from before a restart, not claimed yet: a PUT of the disk claims it.
        return Err(ApiError::new(
            ErrorCode::Busy,
            format!("disk {disk_id} is not claimed by this process server yet; PUT the disk, then retry"),
        )
        .retry_after(1));
    }
    if let Some(failover_id) = disk.meta.failed_over {
        return Err(failed_over(disk_id, failover_id));
    }
    if let Some(Admission::OutOfWindow { expected_seq }) = state.cache.window_check(disk_id, seq).map_err(internal)? {
        return Err(out_of_window(seq, expected_seq));
    }
    if let Some(len) = content_length.filter(|len| *len > limit) {
        let max_batch_bytes = limit - BATCH_HEADER_LEN;
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("the batch is {len} bytes; payload_len may be at most {max_batch_bytes}"),
        ));
    }
    Ok(disk)
}

/// Longest a refused body is read for.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and drops a refused body, at most `limit` bytes and [`DISCARD_TIMEOUT`], before the
/// answer goes out. Answering first and resetting the stream is allowed by RFC 9113 (8.1), but
/// curl 7.88 then reports error 92 with no answer, and a client that sends its whole body
/// before reading (httpx) stalls on flow control: neither would see the code or Retry-After.
/// Reading the rest is what the client sends anyway, and memory-free (frames are dropped).
async fn discard_body(mut body: Incoming, limit: usize) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > limit {
                    return; // more than any batch may be: stop reading, the stream is reset
                }
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// `409 failed_over`: the disk's committed failover made the failed-over copy the disk; what
/// this machine writes is no longer replicated.
fn failed_over(disk_id: Uuid, failover_id: Uuid) -> ApiError {
    ApiError::new(
        ErrorCode::FailedOver,
        format!(
            "disk {disk_id} was failed over (failover {failover_id}, committed): its new batches are refused; \
             nothing was stored"
        ),
    )
    .failover(failover_id)
}

fn out_of_window(seq: u64, expected_seq: u64) -> ApiError {
    ApiError::new(
        ErrorCode::OutOfWindow,
        format!("seq {seq} is beyond the window; send {expected_seq} first"),
    )
    .expected(expected_seq)
}

/// Below `alerts.throttle_free_percent` of free cache space, new batches wait (503 with
/// Retry-After; the agent keeps the data) so the cache never runs completely full.
fn throttled(state: &AppState) -> Option<ApiError> {
    let threshold = state.config.alerts.throttle_free_percent;
    let (used, limit) = state.cache.space();
    let free = crate::alerts::cache_free_percent(used, limit);
    (threshold > 0 && free < f64::from(threshold)).then(|| {
        ApiError::new(
            ErrorCode::CacheFull,
            format!("ingest is throttled: {free:.0}% of the cache is free (threshold {threshold}%); nothing was stored; retry later"),
        )
        .retry_after(2)
    })
}

fn cache_full() -> ApiError {
    ApiError::new(
        ErrorCode::CacheFull,
        "the cache is full; nothing was stored; retry later",
    )
    .retry_after(10)
}
