//! FORMATS.md section 4: the JSON plaintexts of `disk.fseal`, recovery points, base manifests,
//! pins, pruned-point records and failover records, and splitting a change set (concatenated batches) back
//! into its batches.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::batch::{BatchError, BatchHeader};

pub const PLAINTEXT_FORMAT: u32 = 1;

/// The `format` of a reprotected disk's descriptor: its restore starts from another disk's
/// state ([`ReprotectFrom`]), which a reader of format 1 would not know and would restore from
/// zeros. A reader that does not know format 2 must refuse the disk rather than guess.
pub const REPROTECTED_DISK_FORMAT: u32 = 2;

/// `disks/{disk_id}/disk.fseal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDescriptor {
    pub format: u32,
    pub disk_id: Uuid,
    pub machine_id: Uuid,
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub write_ordered: bool,
    pub created_unix_ms: u64,
    /// A reprotected disk (descriptor format 2): the disk's batches apply on top of
    /// `disk_id`'s state at `seq`, the failover point of `failover_id`, not on zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprotect_from: Option<ReprotectFrom>,
}

/// Where a reprotected disk starts: the disk that failover `failover_id` failed over, at the
/// seq it used. The replication back from the failed-over machine sends only the blocks that
/// differ from that state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReprotectFrom {
    pub failover_id: Uuid,
    pub disk_id: Uuid,
    pub seq: u64,
}

/// `disks/{disk_id}/owners/{epoch:010}.fseal`: the process server that owns the disk from
/// `since_seq` on, until the next epoch's record (docs/FORMATS.md "Ownership"). Created once
/// (never replaced) by the owner holding the disk's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub format: u32,
    pub disk_id: Uuid,
    pub epoch: u64,
    /// The owner's lease id: a UUID that names the process server.
    pub owner_id: Uuid,
    pub owner_name: String,
    /// The first seq this epoch may write; the batches before it are the earlier epochs'.
    pub since_seq: u64,
    pub claimed_unix_ms: u64,
}

/// `disks/{disk_id}/points/{seq:020}-{bookmark_id}.fseal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    pub format: u32,
    pub disk_id: Uuid,
    pub seq: u64,
    pub bookmark_id: String,
    pub kind: String,
    pub tag: Option<String>,
    pub group_id: Option<Uuid>,
    pub source_time_unix_ms: u64,
    pub created_unix_ms: u64,
}

/// `disks/{disk_id}/base/{seq:020}/manifest.fseal`: the disk after batch `seq`, in chunks of
/// `chunk_size` bytes. `chunks` maps a chunk's index (decimal text) to the object holding it,
/// which may belong to an older base of the same disk; an index absent from it is all zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseManifest {
    pub format: u32,
    pub disk_id: Uuid,
    pub seq: u64,
    pub size_bytes: u64,
    pub chunk_size: u64,
    pub chunks: std::collections::BTreeMap<String, String>,
}

/// `disks/{disk_id}/pins/{seq:020}-{bookmark_id}.fseal`: retention keeps this point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub format: u32,
    pub disk_id: Uuid,
    pub seq: u64,
    pub bookmark_id: String,
    pub reason: Option<String>,
    pub pinned_unix_ms: u64,
}

/// `disks/{disk_id}/pruned/{seq:020}-{bookmark_id}.fseal`: retention removed this point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedPoint {
    pub format: u32,
    pub disk_id: Uuid,
    pub seq: u64,
    pub bookmark_id: String,
    pub kind: String,
    pub source_time_unix_ms: u64,
    pub pruned_unix_ms: u64,
}

/// `groups/{group_id}/points/{created:016}-{bookmark_id}.fseal` (FORMATS.md section 4,
/// sealed with the vault-wide key): a consistency group's point, written after every
/// member's point exists. A member is restored at its `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPoint {
    pub format: u32,
    pub group_id: Uuid,
    pub bookmark_id: String,
    pub kind: String,
    pub tag: Option<String>,
    pub members: Vec<GroupMember>,
}

/// One disk of a group point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub disk_id: Uuid,
    pub seq: u64,
}

/// `failovers/{failover_id}.fseal`: a failover or test failover, written before its outputs
/// (`running`) and again when they are done (`done`) or one failed (`failed`), while
/// `change-point` rewrites them (`changing_point`) and when it is committed (`committed`); a
/// test failover's cleanup deletes it last. Pins it created are listed so cleanup releases
/// those and no others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub format: u32,
    pub failover_id: Uuid,
    pub test: bool,
    pub state: FailoverState,
    pub created_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    /// When `ferryctl failover commit` made it final (absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_unix_ms: Option<u64>,
    pub disks: Vec<FailoverDisk>,
}

/// One disk of a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverDisk {
    pub disk_id: Uuid,
    pub machine_id: Uuid,
    pub name: String,
    pub seq: u64,
    /// The recovery point used (None: a seq that is not a point).
    pub point: Option<String>,
    pub kind: Option<String>,
    pub source_time_unix_ms: Option<u64>,
    /// Where it went: a path, a device, or a blob URL (without any signature).
    pub output: String,
    pub output_format: FailoverOutput,
    pub virtual_size_bytes: u64,
    /// Whether this failover created the pin on `point` (cleanup removes only those).
    pub pinned_by_failover: bool,
    /// While `change-point` rewrites the output (or after it failed half way): the lowest and
    /// highest seq whose bytes the output may hold, block by block. The next change-point
    /// rewrites every block a batch in that range wrote, so an interrupted change is safe to
    /// run again towards any point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changing_seqs: Option<(u64, u64)>,
    /// How many block digests were stored for this disk (`failovers/{id}/digests/{disk_id}/`),
    /// absent for a failover from before digests (nothing to reprotect from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_blocks: Option<u64>,
    /// When `ferryctl failback` wrote this disk back onto the original: ferryd accepts its
    /// batches again (the failed-over mark is lifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_back_unix_ms: Option<u64>,
}

/// Where a failover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverState {
    Running,
    Done,
    Failed,
    /// `ferryctl failover change-point` is rewriting the outputs (or failed half way).
    ChangingPoint,
    /// Final: the machines run from the outputs; ferryd refuses the disks' new batches.
    Committed,
}

/// What a failover wrote a disk as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverOutput {
    /// A fixed VHD file.
    Vhd,
    /// A raw image file.
    Raw,
    /// A block device.
    Device,
    /// A fixed VHD page blob in Azure.
    PageBlob,
}

impl FailoverState {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverState::Running => "running",
            FailoverState::Done => "done",
            FailoverState::Failed => "failed",
            FailoverState::ChangingPoint => "changing_point",
            FailoverState::Committed => "committed",
        }
    }
}

impl FailoverOutput {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverOutput::Vhd => "vhd",
            FailoverOutput::Raw => "raw",
            FailoverOutput::Device => "device",
            FailoverOutput::PageBlob => "page_blob",
        }
    }
}

/// The batches of a change set, in order, each as a slice of `change_set` (no copy). Each
/// header is checked (magic, CRC, fields); payload CRCs are left to the full decoder.
pub fn split_change_set(change_set: &Bytes) -> impl Iterator<Item = Result<(BatchHeader, Bytes), BatchError>> + '_ {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= change_set.len() {
            return None;
        }
        let result = BatchHeader::parse(&change_set[at..]).and_then(|header| {
            let end = at as u64 + header.batch_len();
            if end > change_set.len() as u64 {
                return Err(BatchError {
                    code: crate::batch::BatchErrorCode::MalformedBatch,
                    message: format!("batch {} runs past the end of the change set", header.seq),
                });
            }
            let batch = change_set.slice(at..end as usize);
            at = end as usize;
            Ok((header, batch))
        });
        failed = result.is_err();
        Some(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_states_and_outputs_are_written_as_their_names() {
        for state in [
            FailoverState::Running,
            FailoverState::Done,
            FailoverState::Failed,
            FailoverState::ChangingPoint,
            FailoverState::Committed,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for output in [
            FailoverOutput::Vhd,
            FailoverOutput::Raw,
            FailoverOutput::Device,
            FailoverOutput::PageBlob,
        ] {
            assert_eq!(serde_json::to_value(output).unwrap(), output.as_str());
        }
    }
    use crate::BatchEncoder;

    #[test]
    fn splits_concatenated_batches_and_stops_at_damage() {
        let mut joined = Vec::new();
        for seq in 1..=3 {
            let mut enc = BatchEncoder::new(seq, 0);
            enc.write(0, &vec![seq as u8; 512 * seq as usize]);
            joined.extend_from_slice(&enc.finish());
        }
        let joined = Bytes::from(joined);
        let seqs: Vec<u64> = split_change_set(&joined).map(|r| r.unwrap().0.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let cut = joined.slice(..joined.len() - 10);
        let results: Vec<_> = split_change_set(&cut).collect();
        assert_eq!(results.len(), 3);
        assert!(results[2].is_err());
    }
}
