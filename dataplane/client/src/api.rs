//! Request and response bodies of PROTOCOL.md, shared by ferryd and its clients.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A wire enum's snake_case text, for tables and messages (the JSON uses the same strings).
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

/// Where a disk's replication stands, as `GET /v1/disks/{id}` and `ferryctl disks` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Replicating,
    /// Uploads fail (the data stays in the cache); `error` says why.
    UploadError,
    /// The agent must re-read the disk; `resync_reason` says why.
    ResyncRequired,
    /// ferryd refuses new data (ferryctl drain, or stopping).
    Draining,
}

text_enum!(DiskState {
    Replicating => "replicating",
    UploadError => "upload_error",
    ResyncRequired => "resync_required",
    Draining => "draining",
});

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
    pub state: DiskState,
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

/// Every `"error"` code ferryd answers with (PROTOCOL.md section 3, the management endpoint and
/// the control socket), each with the one HTTP status it comes with. Serialised as the
/// snake_case strings of the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    BadId,
    BadCsr,
    BadTunable,
    MalformedBatch,
    CrcMismatch,
    OutOfRange,
    BadBookmark,
    BadPassphrase,
    Unauthenticated,
    Forbidden,
    NotFound,
    UnknownDisk,
    DiskConflict,
    SizeShrink,
    OutOfWindow,
    SeqConflict,
    TooLarge,
    Internal,
    Busy,
    CacheFull,
    Draining,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::BadRequest,
        ErrorCode::BadId,
        ErrorCode::BadCsr,
        ErrorCode::BadTunable,
        ErrorCode::MalformedBatch,
        ErrorCode::CrcMismatch,
        ErrorCode::OutOfRange,
        ErrorCode::BadBookmark,
        ErrorCode::BadPassphrase,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::UnknownDisk,
        ErrorCode::DiskConflict,
        ErrorCode::SizeShrink,
        ErrorCode::OutOfWindow,
        ErrorCode::SeqConflict,
        ErrorCode::TooLarge,
        ErrorCode::Internal,
        ErrorCode::Busy,
        ErrorCode::CacheFull,
        ErrorCode::Draining,
    ];

    /// The `"error"` string of the JSON error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadId => "bad_id",
            ErrorCode::BadCsr => "bad_csr",
            ErrorCode::BadTunable => "bad_tunable",
            ErrorCode::MalformedBatch => "malformed_batch",
            ErrorCode::CrcMismatch => "crc_mismatch",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::BadBookmark => "bad_bookmark",
            ErrorCode::BadPassphrase => "bad_passphrase",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownDisk => "unknown_disk",
            ErrorCode::DiskConflict => "disk_conflict",
            ErrorCode::SizeShrink => "size_shrink",
            ErrorCode::OutOfWindow => "out_of_window",
            ErrorCode::SeqConflict => "seq_conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::CacheFull => "cache_full",
            ErrorCode::Draining => "draining",
        }
    }

    /// The code a wire string names, if ferryd has it.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::BadId
            | ErrorCode::BadCsr
            | ErrorCode::BadTunable
            | ErrorCode::MalformedBatch
            | ErrorCode::CrcMismatch
            | ErrorCode::OutOfRange
            | ErrorCode::BadBookmark => 400,
            ErrorCode::BadPassphrase | ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::UnknownDisk => 404,
            ErrorCode::DiskConflict | ErrorCode::SizeShrink | ErrorCode::OutOfWindow | ErrorCode::SeqConflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Busy | ErrorCode::CacheFull | ErrorCode::Draining => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ferry_format::batch::BatchErrorCode> for ErrorCode {
    fn from(code: ferry_format::batch::BatchErrorCode) -> Self {
        use ferry_format::batch::BatchErrorCode as Batch;
        match code {
            Batch::MalformedBatch => ErrorCode::MalformedBatch,
            Batch::CrcMismatch => ErrorCode::CrcMismatch,
            Batch::OutOfRange => ErrorCode::OutOfRange,
            Batch::BadBookmark => ErrorCode::BadBookmark,
            Batch::TooLarge => ErrorCode::TooLarge,
        }
    }
}

/// Every non-2xx answer: `{"error": code, "message": text, ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// An [`ErrorCode`]'s string (kept as text: a newer ferryd may send codes this build
    /// does not know; [`ErrorCode::parse`] reads it).
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u64>,
}

#[cfg(test)]
mod error_code_tests {
    use super::*;

    #[test]
    fn codes_serialise_as_their_wire_strings_and_batch_codes_keep_their_status() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
        use ferry_format::batch::BatchErrorCode as Batch;
        for batch in [
            Batch::MalformedBatch,
            Batch::CrcMismatch,
            Batch::OutOfRange,
            Batch::BadBookmark,
            Batch::TooLarge,
        ] {
            let code = ErrorCode::from(batch);
            assert_eq!(
                (code.as_str(), code.http_status()),
                (batch.as_str(), batch.http_status())
            );
        }
    }
}
