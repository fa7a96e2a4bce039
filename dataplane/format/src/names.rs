//! FORMATS.md section 1: every object name, built and parsed back.
//!
//! ```text
//! ferry/v1/vault.json
//! ferry/v1/disks/{disk_id}/disk.fseal
//! ferry/v1/disks/{disk_id}/log/{first_seq:020}-{last_seq:020}.fseal             (epoch 0)
//! ferry/v1/disks/{disk_id}/log/e{epoch:010}/{first_seq:020}-{last_seq:020}.fseal
//! ferry/v1/disks/{disk_id}/points/{seq:020}-{bookmark_id}.fseal                  (epoch 0)
//! ferry/v1/disks/{disk_id}/points/e{epoch:010}/{seq:020}-{bookmark_id}.fseal
//! ferry/v1/disks/{disk_id}/owners/{epoch:010}.fseal
//! ferry/v1/disks/{disk_id}/lease
//! ferry/v1/disks/{disk_id}/base/{seq:020}/manifest.fseal
//! ferry/v1/disks/{disk_id}/base/{seq:020}/chunk-{index:010}.fseal
//! ferry/v1/disks/{disk_id}/pins/{seq:020}-{bookmark_id}.fseal
//! ferry/v1/disks/{disk_id}/pruned/{pruned_unix_ms:016}-{seq:020}-{bookmark_id}.fseal
//! ferry/v1/groups/{group_id}/points/{created_unix_ms:016}-{bookmark_id}.fseal
//! ferry/v1/failovers/{failover_id}.fseal
//! ferry/v1/failovers/{failover_id}/digests/{disk_id}/{segment:010}.fseal
//! ```
//! Log objects and points written by a disk's owner of epoch 1 or later carry the epoch as a
//! directory (format 2, docs/FORMATS.md "Ownership"); epoch 0's keep format 1's names.
//! Parsing is strict: exactly the digit counts above, canonical lowercase UUIDs, valid
//! bookmark ids, `first_seq <= last_seq`. `parse(name.to_string()) == name` for every name, and
//! a string that parses prints back to itself, so each object has exactly one name.

use std::fmt;
use uuid::Uuid;

use crate::bookmark::BookmarkId;
use crate::ids::parse_canonical_uuid;

pub const ROOT: &str = "ferry/v1/";
pub const VAULT_JSON: &str = "ferry/v1/vault.json";
const SEAL_SUFFIX: &str = ".fseal";
/// Largest base chunk index that fits the 10-digit field.
pub const CHUNK_INDEX_MAX: u64 = 9_999_999_999;
/// Largest owner epoch that fits the 10-digit field.
pub const EPOCH_MAX: u64 = 9_999_999_999;
/// Largest creation time that fits the 16-digit field.
pub const GROUP_TIME_MAX_MS: u64 = 9_999_999_999_999_999;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectName {
    VaultJson,
    DiskMeta {
        disk_id: Uuid,
    },
    Log {
        disk_id: Uuid,
        /// The owner epoch that wrote it (0: format 1's name).
        epoch: u64,
        first_seq: u64,
        last_seq: u64,
    },
    Point {
        disk_id: Uuid,
        epoch: u64,
        seq: u64,
        bookmark_id: BookmarkId,
    },
    /// The record of the disk's owner of one epoch (sealed with the disk key).
    Owner {
        disk_id: Uuid,
        epoch: u64,
    },
    /// The object whose lease the disk's owner holds (empty on Azure; the local target keeps
    /// the lease in it). Not sealed: it holds no data.
    DiskLease {
        disk_id: Uuid,
    },
    BaseManifest {
        disk_id: Uuid,
        seq: u64,
    },
    BaseChunk {
        disk_id: Uuid,
        seq: u64,
        index: u64,
    },
    /// A pinned recovery point: retention never prunes it while this object exists.
    Pin {
        disk_id: Uuid,
        seq: u64,
        bookmark_id: BookmarkId,
    },
    /// The record that retention pruned a recovery point (kept for 15 days, so a restore of
    /// it can say why it is gone; the time in the name says when it expires).
    Pruned {
        disk_id: Uuid,
        pruned_unix_ms: u64,
        seq: u64,
        bookmark_id: BookmarkId,
    },
    GroupPoint {
        group_id: Uuid,
        created_unix_ms: u64,
        bookmark_id: BookmarkId,
    },
    /// The record of a failover or test failover (sealed with the vault-wide key).
    Failover {
        failover_id: Uuid,
    },
    /// The 64 KiB-block digests of a failed-over disk at its failover point, 65,536 blocks per
    /// segment (sealed with the vault-wide key, as everything outside `disks/`).
    FailoverDigests {
        failover_id: Uuid,
        disk_id: Uuid,
        segment: u64,
    },
}

/// The listing prefix of every failover record.
pub const FAILOVERS_PREFIX: &str = "ferry/v1/failovers/";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a Ferry v1 object name: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

impl ObjectName {
    /// The disk whose key seals this object, if it lives under `disks/{disk_id}/`.
    pub fn disk_id(&self) -> Option<Uuid> {
        match self {
            ObjectName::DiskMeta { disk_id }
            | ObjectName::Log { disk_id, .. }
            | ObjectName::Point { disk_id, .. }
            | ObjectName::Owner { disk_id, .. }
            | ObjectName::DiskLease { disk_id }
            | ObjectName::BaseManifest { disk_id, .. }
            | ObjectName::BaseChunk { disk_id, .. }
            | ObjectName::Pin { disk_id, .. }
            | ObjectName::Pruned { disk_id, .. } => Some(*disk_id),
            ObjectName::VaultJson
            | ObjectName::GroupPoint { .. }
            | ObjectName::Failover { .. }
            | ObjectName::FailoverDigests { .. } => None,
        }
    }

    /// The listing prefix of one disk's objects of one kind (`log/`, `points/`, `base/`,
    /// `pins/`, `pruned/`).
    pub fn disk_prefix(disk_id: Uuid, kind: &str) -> String {
        format!("{ROOT}disks/{}/{kind}", disk_id.hyphenated())
    }

    /// Where group `group_id`'s points are listed.
    pub fn group_points_prefix(group_id: Uuid) -> String {
        format!("{ROOT}groups/{}/points/", group_id.hyphenated())
    }

    pub fn parse(name: &str) -> Result<Self, NameError> {
        let fail = |reason| NameError {
            name: name.to_string(),
            reason,
        };
        if name == VAULT_JSON {
            return Ok(ObjectName::VaultJson);
        }
        let rest = name
            .strip_prefix(ROOT)
            .ok_or_else(|| fail("does not start with ferry/v1/"))?;
        if let Some(disk) = rest.strip_prefix("disks/").and_then(|r| r.strip_suffix("/lease")) {
            return Ok(ObjectName::DiskLease {
                disk_id: uuid(disk).ok_or_else(|| fail("bad disk id"))?,
            });
        }
        let rest = rest
            .strip_suffix(SEAL_SUFFIX)
            .ok_or_else(|| fail("does not end with .fseal"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["disks", disk, "disk"] => Ok(ObjectName::DiskMeta {
                disk_id: uuid(disk).ok_or_else(|| fail("bad disk id"))?,
            }),
            ["disks", disk, "owners", epoch] => Ok(ObjectName::Owner {
                disk_id: uuid(disk).ok_or_else(|| fail("bad disk id"))?,
                epoch: digits(epoch, 10).ok_or_else(|| fail("owner epoch is not 10 digits"))?,
            }),
            ["disks", disk, kind @ ("log" | "points"), epoch, rest] => {
                let epoch = epoch
                    .strip_prefix('e')
                    .and_then(|e| digits(e, 10))
                    .filter(|e| *e > 0)
                    .ok_or_else(|| fail("epoch directory is not e + 10 digits of an epoch above 0"))?;
                let inner = format!("{ROOT}disks/{disk}/{kind}/{rest}{SEAL_SUFFIX}");
                match ObjectName::parse(&inner).map_err(|e| fail(e.reason))? {
                    ObjectName::Log {
                        disk_id,
                        first_seq,
                        last_seq,
                        ..
                    } => Ok(ObjectName::Log {
                        disk_id,
                        epoch,
                        first_seq,
                        last_seq,
                    }),
                    ObjectName::Point {
                        disk_id,
                        seq,
                        bookmark_id,
                        ..
                    } => Ok(ObjectName::Point {
                        disk_id,
                        epoch,
                        seq,
                        bookmark_id,
                    }),
                    _ => Err(fail("unknown object kind")),
                }
            }
            ["disks", disk, "log", range] => {
                let disk_id = uuid(disk).ok_or_else(|| fail("bad disk id"))?;
                let (first, last) = range
                    .split_once('-')
                    .ok_or_else(|| fail("log name is not first-last"))?;
                let first_seq = digits(first, 20).ok_or_else(|| fail("first_seq is not 20 digits"))?;
                let last_seq = digits(last, 20).ok_or_else(|| fail("last_seq is not 20 digits"))?;
                if first_seq == 0 || first_seq > last_seq {
                    return Err(fail("log range must satisfy 1 <= first_seq <= last_seq"));
                }
                Ok(ObjectName::Log {
                    disk_id,
                    epoch: 0,
                    first_seq,
                    last_seq,
                })
            }
            ["disks", disk, kind @ ("points" | "pins"), point] => {
                let disk_id = uuid(disk).ok_or_else(|| fail("bad disk id"))?;
                let (seq, bookmark) =
                    split_number_dash(point, 20).ok_or_else(|| fail("point name is not seq-bookmark_id"))?;
                let bookmark_id = BookmarkId::new(bookmark).map_err(|_| fail("bad bookmark id"))?;
                Ok(if *kind == "points" {
                    ObjectName::Point {
                        disk_id,
                        epoch: 0,
                        seq,
                        bookmark_id,
                    }
                } else {
                    ObjectName::Pin {
                        disk_id,
                        seq,
                        bookmark_id,
                    }
                })
            }
            ["disks", disk, "pruned", record] => {
                let disk_id = uuid(disk).ok_or_else(|| fail("bad disk id"))?;
                let (pruned_unix_ms, point) =
                    split_number_dash(record, 16).ok_or_else(|| fail("pruned name is not time-seq-bookmark_id"))?;
                let (seq, bookmark) =
                    split_number_dash(point, 20).ok_or_else(|| fail("pruned name is not time-seq-bookmark_id"))?;
                let bookmark_id = BookmarkId::new(bookmark).map_err(|_| fail("bad bookmark id"))?;
                Ok(ObjectName::Pruned {
                    disk_id,
                    pruned_unix_ms,
                    seq,
                    bookmark_id,
                })
            }
            ["disks", disk, "base", seq, file] => {
                let disk_id = uuid(disk).ok_or_else(|| fail("bad disk id"))?;
                let seq = digits(seq, 20).ok_or_else(|| fail("base seq is not 20 digits"))?;
                if *file == "manifest" {
                    return Ok(ObjectName::BaseManifest { disk_id, seq });
                }
                let index = file
                    .strip_prefix("chunk-")
                    .and_then(|i| digits(i, 10))
                    .ok_or_else(|| fail("bad base file name"))?;
                Ok(ObjectName::BaseChunk { disk_id, seq, index })
            }
            ["groups", group, "points", point] => {
                let group_id = uuid(group).ok_or_else(|| fail("bad group id"))?;
                let (created_unix_ms, bookmark) =
                    split_number_dash(point, 16).ok_or_else(|| fail("group point name is not time-bookmark_id"))?;
                let bookmark_id = BookmarkId::new(bookmark).map_err(|_| fail("bad bookmark id"))?;
                Ok(ObjectName::GroupPoint {
                    group_id,
                    created_unix_ms,
                    bookmark_id,
                })
            }
            ["failovers", failover] => Ok(ObjectName::Failover {
                failover_id: uuid(failover).ok_or_else(|| fail("bad failover id"))?,
            }),
            ["failovers", failover, "digests", disk, segment] => Ok(ObjectName::FailoverDigests {
                failover_id: uuid(failover).ok_or_else(|| fail("bad failover id"))?,
                disk_id: uuid(disk).ok_or_else(|| fail("bad disk id"))?,
                segment: digits(segment, 10).ok_or_else(|| fail("digest segment is not 10 digits"))?,
            }),
            _ => Err(fail("unknown object kind")),
        }
    }
}

impl fmt::Display for ObjectName {
    /// Numbers wider than their field (a chunk index above [`CHUNK_INDEX_MAX`], a time above
    /// [`GROUP_TIME_MAX_MS`]) print wider and then fail to parse; callers keep them in range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectName::VaultJson => f.write_str(VAULT_JSON),
            ObjectName::DiskMeta { disk_id } => write!(f, "{ROOT}disks/{disk_id}/disk.fseal"),
            ObjectName::Log {
                disk_id,
                epoch,
                first_seq,
                last_seq,
            } => {
                write!(
                    f,
                    "{ROOT}disks/{disk_id}/log/{}{first_seq:020}-{last_seq:020}.fseal",
                    EpochDir(*epoch)
                )
            }
            ObjectName::Point {
                disk_id,
                epoch,
                seq,
                bookmark_id,
            } => {
                write!(
                    f,
                    "{ROOT}disks/{disk_id}/points/{}{seq:020}-{bookmark_id}.fseal",
                    EpochDir(*epoch)
                )
            }
            ObjectName::Owner { disk_id, epoch } => write!(f, "{ROOT}disks/{disk_id}/owners/{epoch:010}.fseal"),
            ObjectName::DiskLease { disk_id } => write!(f, "{ROOT}disks/{disk_id}/lease"),
            ObjectName::BaseManifest { disk_id, seq } => {
                write!(f, "{ROOT}disks/{disk_id}/base/{seq:020}/manifest.fseal")
            }
            ObjectName::BaseChunk { disk_id, seq, index } => {
                write!(f, "{ROOT}disks/{disk_id}/base/{seq:020}/chunk-{index:010}.fseal")
            }
            ObjectName::Pin {
                disk_id,
                seq,
                bookmark_id,
            } => {
                write!(f, "{ROOT}disks/{disk_id}/pins/{seq:020}-{bookmark_id}.fseal")
            }
            ObjectName::Pruned {
                disk_id,
                pruned_unix_ms,
                seq,
                bookmark_id,
            } => {
                write!(
                    f,
                    "{ROOT}disks/{disk_id}/pruned/{pruned_unix_ms:016}-{seq:020}-{bookmark_id}.fseal"
                )
            }
            ObjectName::Failover { failover_id } => write!(f, "{ROOT}failovers/{failover_id}.fseal"),
            ObjectName::FailoverDigests {
                failover_id,
                disk_id,
                segment,
            } => write!(f, "{ROOT}failovers/{failover_id}/digests/{disk_id}/{segment:010}.fseal"),
            ObjectName::GroupPoint {
                group_id,
                created_unix_ms,
                bookmark_id,
            } => {
                write!(
                    f,
                    "{ROOT}groups/{group_id}/points/{created_unix_ms:016}-{bookmark_id}.fseal"
                )
            }
        }
    }
}

/// The epoch directory of a log object's or point's name: none for epoch 0 (format 1).
struct EpochDir(u64);

impl fmt::Display for EpochDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            epoch => write!(f, "e{epoch:010}/"),
        }
    }
}

fn uuid(text: &str) -> Option<Uuid> {
    parse_canonical_uuid(text)
}

/// Exactly `width` ASCII digits.
fn digits(text: &str, width: usize) -> Option<u64> {
    if text.len() != width || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `{number:0width}-{rest}`; the bookmark id may itself contain '-'.
fn split_number_dash(text: &str, width: usize) -> Option<(u64, &str)> {
    let number = digits(text.get(..width)?, width)?;
    let rest = text.get(width..)?.strip_prefix('-')?;
    Some((number, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Uuid {
        parse_canonical_uuid("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap()
    }

    #[test]
    fn every_kind_round_trips() {
        let bm = BookmarkId::new("nightly-2026.11_28").unwrap();
        let names = [
            ObjectName::VaultJson,
            ObjectName::DiskMeta { disk_id: disk() },
            ObjectName::Log {
                disk_id: disk(),
                epoch: 0,
                first_seq: 1,
                last_seq: u64::MAX,
            },
            ObjectName::Log {
                disk_id: disk(),
                epoch: 3,
                first_seq: 5,
                last_seq: 9,
            },
            ObjectName::Point {
                disk_id: disk(),
                epoch: 0,
                seq: 42,
                bookmark_id: bm.clone(),
            },
            ObjectName::Point {
                disk_id: disk(),
                epoch: EPOCH_MAX,
                seq: 42,
                bookmark_id: bm.clone(),
            },
            ObjectName::Owner {
                disk_id: disk(),
                epoch: 0,
            },
            ObjectName::DiskLease { disk_id: disk() },
            ObjectName::BaseManifest {
                disk_id: disk(),
                seq: 7,
            },
            ObjectName::BaseChunk {
                disk_id: disk(),
                seq: 7,
                index: CHUNK_INDEX_MAX,
            },
            ObjectName::Pin {
                disk_id: disk(),
                seq: 42,
                bookmark_id: bm.clone(),
            },
            ObjectName::Pruned {
                disk_id: disk(),
                pruned_unix_ms: 1_790_000_000_000,
                seq: 41,
                bookmark_id: bm.clone(),
            },
            ObjectName::GroupPoint {
                group_id: disk(),
                created_unix_ms: 1_790_000_000_000,
                bookmark_id: bm,
            },
            ObjectName::Failover { failover_id: disk() },
            ObjectName::FailoverDigests {
                failover_id: disk(),
                disk_id: disk(),
                segment: 3,
            },
        ];
        for name in names {
            let text = name.to_string();
            assert_eq!(ObjectName::parse(&text).unwrap(), name, "{text}");
        }
        assert_eq!(
            ObjectName::Log {
                disk_id: disk(),
                epoch: 0,
                first_seq: 1,
                last_seq: 12
            }
            .to_string(),
            "ferry/v1/disks/0f8fad5b-d9cb-469f-a165-70867728950e/log/00000000000000000001-00000000000000000012.fseal"
        );
        assert_eq!(
            ObjectName::Point {
                disk_id: disk(),
                epoch: 2,
                seq: 7,
                bookmark_id: BookmarkId::new("b").unwrap(),
            }
            .to_string(),
            "ferry/v1/disks/0f8fad5b-d9cb-469f-a165-70867728950e/points/e0000000002/00000000000000000007-b.fseal"
        );
    }

    #[test]
    fn rejects_near_misses() {
        let d = "0f8fad5b-d9cb-469f-a165-70867728950e";
        for bad in [
            "ferry/v2/vault.json".to_string(),
            format!("ferry/v1/disks/{}/disk.fseal", d.to_uppercase()),
            format!("ferry/v1/disks/{d}/disk.json"),
            format!("ferry/v1/disks/{d}/log/1-2.fseal"),
            format!("ferry/v1/disks/{d}/log/00000000000000000003-00000000000000000002.fseal"),
            format!("ferry/v1/disks/{d}/log/00000000000000000000-00000000000000000002.fseal"),
            format!("ferry/v1/disks/{d}/log/0000000000000000000a-00000000000000000002.fseal"),
            format!("ferry/v1/disks/{d}/points/00000000000000000003-.fseal"),
            format!("ferry/v1/disks/{d}/points/00000000000000000003-a b.fseal"),
            format!("ferry/v1/disks/{d}/pins/3-a.fseal"),
            format!("ferry/v1/disks/{d}/pinned/00000000000000000003-a.fseal"),
            format!("ferry/v1/disks/{d}/pruned/00000000000000000003-a.fseal"),
            format!("ferry/v1/disks/{d}/base/00000000000000000003/chunk-1.fseal"),
            format!("ferry/v1/disks/{d}/base/00000000000000000003/other.fseal"),
            format!("ferry/v1/disks/{d}/../../vault.json"),
            format!("ferry/v1/groups/{d}/points/123-x.fseal"),
            format!("/ferry/v1/disks/{d}/disk.fseal"),
            "ferry/v1/vault.json.fseal".to_string(),
            format!("ferry/v1/disks/{d}/log/e0000000000/00000000000000000001-00000000000000000002.fseal"),
            format!("ferry/v1/disks/{d}/log/e1/00000000000000000001-00000000000000000002.fseal"),
            format!("ferry/v1/disks/{d}/log/e0000000001/e0000000001/00000000000000000001-00000000000000000002.fseal"),
            format!("ferry/v1/disks/{d}/points/e0000000001/3-a.fseal"),
            format!("ferry/v1/disks/{d}/owners/1.fseal"),
            format!("ferry/v1/disks/{d}/lease.fseal"),
        ] {
            assert!(ObjectName::parse(&bad).is_err(), "{bad} should be rejected");
        }
    }
}
