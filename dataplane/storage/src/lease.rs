//! Exclusive leases on one object, with Azure Blob lease semantics, for every backend: how
//! scale-out process servers agree on which of them writes a disk (docs/SCALE-OUT.md).
//!
//! A lease is held by a lease id (a lowercase UUID the caller proposes) for a duration of
//! 15..=60 s, and kept by renewing it before it runs out:
//! - **acquire** succeeds when nobody holds the object's lease, when the lease ran out, or when
//!   the caller already holds it (then it is renewed); otherwise it is [`LeaseAnswer::Refused`];
//! - **renew** succeeds while the lease id is the one held, even after it ran out, as long as
//!   nobody acquired it meanwhile; otherwise `Refused` (the lease is lost);
//! - **release** ends it at once for the next acquirer; `Refused` when another id holds it.
//!
//! The leased object is created empty when it does not exist. Azure keeps the lease on the blob
//! itself (Lease Blob, `azure.rs`); the local directory emulates it in the object's content, a
//! small JSON `{"lease_id", "expires_unix_ms"}` read and rewritten under an exclusive `flock`
//! (this module), and made durable before a grant by the local writer thread's `syncfs` round.
//! A local target shared by several process servers (NFS) relies on their clocks agreeing to
//! within a few seconds, as docs/SCALE-OUT.md says.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Shortest and longest lease, in seconds (Azure's bounds for a finite lease).
pub const LEASE_SECS_MIN: u32 = 15;
pub const LEASE_SECS_MAX: u32 = 60;

/// What to do with a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    Acquire { lease_id: String, duration_secs: u32 },
    Renew { lease_id: String },
    Release { lease_id: String },
}

impl LeaseOp {
    pub fn lease_id(&self) -> &str {
        match self {
            LeaseOp::Acquire { lease_id, .. } | LeaseOp::Renew { lease_id } | LeaseOp::Release { lease_id } => lease_id,
        }
    }

    /// [`LeaseOp::validate`] as the error a backend answers for the object `name`.
    pub fn check(&self, name: &str) -> Result<(), crate::StorageError> {
        self.validate().map_err(|message| crate::StorageError::Permanent {
            operation: crate::Operation::Lease,
            name: name.to_string(),
            kind: crate::PermanentKind::InvalidRequest,
            message,
        })
    }

    /// Checks the lease id (a lowercase UUID, as Azure wants a GUID) and the duration.
    pub fn validate(&self) -> Result<(), String> {
        let id = self.lease_id();
        let hyphens_at = [8, 13, 18, 23];
        let well_formed = id.len() == 36
            && id.bytes().enumerate().all(|(i, b)| {
                if hyphens_at.contains(&i) {
                    b == b'-'
                } else {
                    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                }
            });
        if !well_formed {
            return Err(format!("lease id {id:?} is not a lowercase UUID"));
        }
        if let LeaseOp::Acquire { duration_secs, .. } = self {
            if !(LEASE_SECS_MIN..=LEASE_SECS_MAX).contains(duration_secs) {
                return Err(format!(
                    "a lease lasts {LEASE_SECS_MIN}..={LEASE_SECS_MAX} s, not {duration_secs}"
                ));
            }
        }
        Ok(())
    }
}

/// The outcome of a [`LeaseOp`] that reached the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// Done: the caller holds the lease (acquire, renew) or no longer does (release).
    Granted,
    /// Another lease id holds the object (acquire), or the caller's lease is lost (renew,
    /// release).
    Refused,
}

/// The local emulation's record, the leased object's whole content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LocalLease {
    lease_id: String,
    expires_unix_ms: u64,
    /// The term asked for at acquire, restored by each renewal.
    duration_ms: u64,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What [`local_lease`] decided.
pub(crate) enum LocalLeaseOutcome {
    /// Nothing was rewritten (refused, or released already): the answer stands.
    Final(LeaseAnswer),
    /// The record was rewritten, not yet durably: `Granted` once a `syncfs` of its file
    /// system (or an fsync of the file) that started after this call has returned.
    GrantedOnceDurable,
}

/// The local directory's lease on the object at `path` (its directories made by the
/// caller), decided and rewritten under an exclusive `flock` of the file itself. An answer
/// that changed nothing (refused, or released already) is final; a rewritten record is
/// granted only once durable, by the caller (the local writer thread: one `syncfs` round for
/// the leases and puts of a group, see `local_writer.rs`). The lock is not held until then:
/// holding it across a round could deadlock two writers on one directory, each waiting for a
/// record the other holds. Another caller may so act on a record that a crash then loses:
/// refused by an acquire or renewal that never took effect (the caller asks again later), or
/// granted after a release, in which case its own record, written after, is what stays.
pub(crate) fn local_lease(path: &Path, op: &LeaseOp) -> io::Result<LocalLeaseOutcome> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(io::Error::from)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    // An empty or unreadable record holds no lease (a crash while rewriting it is covered by
    // the caller's sync: the record is rewritten whole before any answer is given).
    let held: LocalLease = serde_json::from_str(&text).unwrap_or_default();
    let now = now_unix_ms();
    let active = !held.lease_id.is_empty() && held.expires_unix_ms > now;
    let ours = held.lease_id == op.lease_id();
    let (answer, next) = match op {
        LeaseOp::Acquire {
            lease_id,
            duration_secs,
        } => {
            if active && !ours {
                (LeaseAnswer::Refused, None)
            } else {
                let duration_ms = u64::from(*duration_secs) * 1000;
                let next = LocalLease {
                    lease_id: lease_id.clone(),
                    expires_unix_ms: now + duration_ms,
                    duration_ms,
                };
                (LeaseAnswer::Granted, Some(next))
            }
        }
        LeaseOp::Renew { lease_id } => {
            if ours {
                let next = LocalLease {
                    lease_id: lease_id.clone(),
                    expires_unix_ms: now + held.duration_ms,
                    duration_ms: held.duration_ms,
                };
                (LeaseAnswer::Granted, Some(next))
            } else {
                (LeaseAnswer::Refused, None)
            }
        }
        LeaseOp::Release { .. } => {
            if ours {
                (LeaseAnswer::Granted, Some(LocalLease::default()))
            } else if !active {
                (LeaseAnswer::Granted, None) // nobody holds it: released already
            } else {
                (LeaseAnswer::Refused, None)
            }
        }
    };
    match next {
        Some(next) => {
            write_record(&file, &next, text.len() as u64)?;
            debug_assert_eq!(answer, LeaseAnswer::Granted);
            Ok(LocalLeaseOutcome::GrantedOnceDurable)
        }
        None => Ok(LocalLeaseOutcome::Final(answer)),
    }
}

/// Rewrites the record (now `old_len` bytes) in place. Why not truncate and write: a renewal
/// is the same length as the record it replaces, and overwriting its block frees and
/// allocates nothing (with 675 disks renewing every 20 s, the truncation alone was a fifth
/// of the lease calls' CPU, issue 11, and the block allocated again at writeback more). Before
/// a shorter record the file is emptied, so a crash between the two leaves an empty record
/// (no lease), as truncation did.
fn write_record(file: &File, record: &LocalLease, old_len: u64) -> io::Result<()> {
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    if (json.len() as u64) < old_len {
        file.set_len(0)?;
    }
    file.write_all_at(&json, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";

    fn record(path: &Path) -> LocalLease {
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("record {text:?} is not whole JSON: {e}"))
    }

    #[test]
    fn records_rewritten_in_place_stay_whole_as_they_grow_and_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        let granted =
            |outcome: io::Result<LocalLeaseOutcome>| matches!(outcome, Ok(LocalLeaseOutcome::GrantedOnceDurable));
        let acquire = |id: &str, duration_secs| LeaseOp::Acquire {
            lease_id: id.to_string(),
            duration_secs,
        };
        // Created empty, then the first record.
        assert!(granted(local_lease(&path, &acquire(A, 15))));
        let first = record(&path);
        assert_eq!((first.lease_id.as_str(), first.duration_ms), (A, 15_000));
        // A renewal of the same length, overwritten in place.
        assert!(granted(local_lease(
            &path,
            &LeaseOp::Renew {
                lease_id: A.to_string()
            }
        )));
        let renewed = record(&path);
        assert_eq!((renewed.lease_id.as_str(), renewed.duration_ms), (A, 15_000));
        assert!(renewed.expires_unix_ms >= first.expires_unix_ms);
        // A release: a shorter record, with nothing of the longer one left behind it.
        assert!(granted(local_lease(
            &path,
            &LeaseOp::Release {
                lease_id: A.to_string()
            }
        )));
        assert_eq!(record(&path), LocalLease::default());
        // Longer again: another holder, with a longer term.
        assert!(granted(local_lease(&path, &acquire(B, 60))));
        let taken = record(&path);
        assert_eq!((taken.lease_id.as_str(), taken.duration_ms), (B, 60_000));
        // Refused: nothing rewritten.
        assert!(matches!(
            local_lease(
                &path,
                &LeaseOp::Renew {
                    lease_id: A.to_string()
                }
            ),
            Ok(LocalLeaseOutcome::Final(LeaseAnswer::Refused))
        ));
        assert_eq!(record(&path), taken);
    }
}
