//! Request and response bodies of PROTOCOL.md, shared by ferryd and its clients.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A wire enum's snake_case text (the same strings serde writes; a test checks each), the list
/// of its variants, and the variant a text names.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The variant `text` names, if this build has it.
            pub fn parse(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text)
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
    /// The disk was failed over and the failover committed: its new batches are refused
    /// (`409 failed_over`); `failover_id` says which failover.
    FailedOver,
}

text_enum!(DiskState {
    Replicating => "replicating",
    UploadError => "upload_error",
    ResyncRequired => "resync_required",
    Draining => "draining",
    FailedOver => "failed_over",
});

/// `PUT /v1/disks/{disk_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub write_ordered: bool,
    /// Only when the disk is created: it replicates a failed-over machine's disk back, starting
    /// from failover `failover_id`'s stored block digests (docs/PROTOCOL.md, reprotect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprotect_from: Option<ReprotectRequest>,
}

/// Which failed-over disk a new disk replicates back from: `disk_id`, or when absent the
/// failover's disk with the same name, or its only disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprotectRequest {
    pub failover_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<Uuid>,
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
    /// The committed failover of the disk, when `state` is `failed_over`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_id: Option<Uuid>,
    /// A reprotected disk: the failed-over disk and failover point it starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprotect_from: Option<ferry_format::plaintexts::ReprotectFrom>,
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

/// `POST /v1/join` on the configuration server's management endpoint: a scale-out process
/// server joining the site with a one-time token (`ferryctl ps token`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// The process server's name (unique in the site; `ferryctl ps list` shows it).
    pub name: String,
    /// DNS names or IP addresses agents reach it by (its certificate's names).
    pub server_names: Vec<String>,
    pub csr_pem: String,
    /// host:port of its data endpoint, as agents reach it.
    pub data_endpoint: String,
}

/// `201` to a join: what a process server of the site needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    /// The vault key, text form (`ferry-vault-key-v1:...`).
    pub vault_key: String,
    pub vault_id: Uuid,
    /// The site's target, as the configuration server's `[target]` (paths absolute).
    pub target: serde_json::Value,
}

/// `201` to a registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub machine_id: Uuid,
    pub cert_pem: String,
    pub ca_pem: String,
    pub data_endpoint: String,
}

/// `GET /v1/health` on the data endpoint: the status word and, from ferryd, its load (what
/// the configuration server places machines by).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// Disks in this process server's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<usize>,
    /// MB/s of batches received over the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_mb_per_s: Option<f64>,
    /// Share of the cache limit still free (0..=1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_free_fraction: Option<f64>,
}

/// Where a registered machine sends its data now (`GET /v1/machines/{id}/placement`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub data_endpoint: String,
    /// True when the configuration server just moved the machine (its process server was
    /// unreachable).
    #[serde(default)]
    pub moved: bool,
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
    BadToken,
    Unauthenticated,
    Forbidden,
    NotFound,
    UnknownDisk,
    DiskConflict,
    SizeShrink,
    OutOfWindow,
    SeqConflict,
    FailedOver,
    ReprotectRefused,
    NotOwner,
    TooLarge,
    Internal,
    Busy,
    CacheFull,
    Draining,
}

text_enum!(ErrorCode {
    BadRequest => "bad_request",
    BadId => "bad_id",
    BadCsr => "bad_csr",
    BadTunable => "bad_tunable",
    MalformedBatch => "malformed_batch",
    CrcMismatch => "crc_mismatch",
    OutOfRange => "out_of_range",
    BadBookmark => "bad_bookmark",
    BadPassphrase => "bad_passphrase",
    BadToken => "bad_token",
    Unauthenticated => "unauthenticated",
    Forbidden => "forbidden",
    NotFound => "not_found",
    UnknownDisk => "unknown_disk",
    DiskConflict => "disk_conflict",
    SizeShrink => "size_shrink",
    OutOfWindow => "out_of_window",
    SeqConflict => "seq_conflict",
    FailedOver => "failed_over",
    ReprotectRefused => "reprotect_refused",
    NotOwner => "not_owner",
    TooLarge => "too_large",
    Internal => "internal",
    Busy => "busy",
    CacheFull => "cache_full",
    Draining => "draining",
});

impl ErrorCode {
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
            ErrorCode::BadPassphrase | ErrorCode::BadToken | ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::UnknownDisk => 404,
            ErrorCode::DiskConflict
            | ErrorCode::SizeShrink
            | ErrorCode::OutOfWindow
            | ErrorCode::SeqConflict
            | ErrorCode::FailedOver
            | ErrorCode::ReprotectRefused
            | ErrorCode::NotOwner => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Busy | ErrorCode::CacheFull | ErrorCode::Draining => 503,
        }
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
    /// With `failed_over`: the committed failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_id: Option<Uuid>,
    /// With `not_owner`: the data endpoint of the process server that owns the disk now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[cfg(test)]
mod error_code_tests {
    use super::*;

    #[test]
    fn enums_serialise_as_their_wire_strings_and_batch_codes_keep_their_status() {
        fn wire_strings_agree<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
            all: &[T],
            text: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            for &value in all {
                assert_eq!(serde_json::to_value(value).unwrap(), serde_json::json!(text(value)));
                assert_eq!(parse(text(value)), Some(value));
            }
        }
        wire_strings_agree(ErrorCode::ALL, ErrorCode::as_str, ErrorCode::parse);
        wire_strings_agree(DiskState::ALL, DiskState::as_str, DiskState::parse);
        use crate::control::{Health, Severity};
        wire_strings_agree(Severity::ALL, Severity::as_str, Severity::parse);
        wire_strings_agree(Health::ALL, Health::as_str, Health::parse);
        assert_eq!(ErrorCode::parse("no_such_code"), None);
        // Every tunable's name is the field that shows it in `GET /v1/tune`.
        let shown = serde_json::to_value(crate::control::Tunables {
            upload_concurrency: 0,
            compression_level: 0,
            worker_threads: 0,
            change_set_bytes: 0,
            flush_delay_ms: 0,
            idle_flush_delay_max_ms: 0,
            memory_budget_bytes: 0,
            bandwidth_cap_bytes_per_sec: 0,
            bandwidth_schedule: serde_json::json!([]),
            cache_limit_percent: 0,
            cache_limit_bytes: 0,
        })
        .unwrap();
        let shown = shown.as_object().unwrap();
        assert_eq!(shown.len(), crate::control::Tunable::ALL.len());
        for tunable in crate::control::Tunable::ALL {
            assert!(shown.contains_key(tunable.as_str()), "{tunable}");
        }
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
