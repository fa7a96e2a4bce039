//! Request and response bodies of PROTOCOL.md, shared by ferryd and its clients.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `PUT /v1/disks/{disk_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub write_ordered: bool,
}

/// A recovery point as `GET /v1/disks/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatestPoint {
    pub seq: u64,
    pub bookmark_id: String,
    pub kind: String,
    pub source_time_unix_ms: u64,
}

/// `GET /v1/disks/{disk_id}` (and the body of `PUT`'s answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub disk_id: Uuid,
    pub machine_id: Uuid,
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub write_ordered: bool,
    pub durable_seq: u64,
    pub uploaded_seq: u64,
    pub window: u32,
    pub max_batch_bytes: u32,
    pub latest_point: Option<LatestPoint>,
    pub state: String,
    /// Why uploads are stalled, when `state` is `upload_error` (the data stays in the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the agent is re-reading the disk, when `state` is `resync_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_reason: Option<String>,
}

/// `PUT /v1/disks/{disk_id}/resync`: the sender starts (`required: true`, with a reason) or has
/// finished (`required: false`) re-reading the whole disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncState {
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `200` to `POST /v1/disks/{disk_id}/abandon`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbandonAnswer {
    /// Batches past `durable_seq` that were stored and are now given up.
    pub abandoned: u64,
    pub disk: DiskInfo,
}

/// `200` to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    pub seq: u64,
    pub durable_seq: u64,
}

/// `POST /v1/register`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub machine_name: String,
    pub passphrase: String,
    pub csr_pem: String,
}

/// `201` to a registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub machine_id: Uuid,
    pub cert_pem: String,
    pub ca_pem: String,
    pub data_endpoint: String,
}

/// Every non-2xx answer: `{"error": code, "message": text, ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u64>,
}
