//! Consistency groups as the control socket shows and changes them (`ferryctl group`): the
//! machines whose points are taken at one instant together, and how often.
//!
//! - `GET /v1/groups` -> `Vec<`[`Group`]`>`.
//! - `POST /v1/groups` with [`GroupSpec`] -> [`Group`] (created).
//! - `DELETE /v1/groups/{name or id}` -> [`Group`] (the one removed).
//! - `POST /v1/groups/{name or id}/points` with [`PointRequest`] -> [`BarrierReport`] (a group
//!   point now; answered when it is written or has failed); `GET` the same path -> the last
//!   reports.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// At most this many machines in a group (as Azure Site Recovery's multi-VM consistency).
pub const GROUP_MACHINES_MAX: usize = 16;
/// Longest a barrier may hold the members' writes, in seconds.
pub const BARRIER_SECS_MAX: u64 = 60;
/// Shortest interval between a group's crash-consistent points, in seconds.
pub const CRASH_EVERY_SECS_MIN: u64 = 30;

/// A group to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// 1 to 64 characters: lowercase letters, digits, `-` and `_`.
    pub name: String,
    pub machines: Vec<Uuid>,
    /// A crash-consistent group point this often.
    pub crash_every_secs: u64,
    /// An app-consistent group point this often (0: never).
    pub app_every_secs: u64,
    /// How long the members' writes may be held while they prepare.
    pub barrier_secs: u64,
}

/// A group as ferryd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub group_id: Uuid,
    pub name: String,
    pub machines: Vec<Uuid>,
    pub crash_every_secs: u64,
    pub app_every_secs: u64,
    pub barrier_secs: u64,
    pub created_unix_ms: u64,
}

/// `POST /v1/groups/{name or id}/points`: a group point now, of this kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointRequest {
    pub kind: crate::commands::BookmarkAsk,
}

/// How one barrier went (`POST .../points` answers it; `GET .../points` lists the last ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BarrierReport {
    pub group_id: Uuid,
    pub bookmark_id: String,
    pub created_unix_ms: u64,
    /// The group point was written.
    pub ok: bool,
    pub message: String,
    /// From the prepare to the last member's answer, when all prepared.
    pub prepared_ms: Option<f64>,
    /// Each member's hold of its writes, in milliseconds.
    pub hold_ms: Vec<f64>,
    /// The members' (disk, seq).
    pub members: Vec<(Uuid, u64)>,
}

impl GroupSpec {
    /// What is wrong with the spec on its own (the machines' registration and membership of
    /// other groups are ferryd's to check).
    pub fn problem(&self) -> Option<String> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Some(format!(
                "group name {:?}: 1 to 64 characters of a-z, 0-9, - and _",
                self.name
            ));
        }
        if self.machines.is_empty() || self.machines.len() > GROUP_MACHINES_MAX {
            return Some(format!(
                "a group has 1 to {GROUP_MACHINES_MAX} machines, not {}",
                self.machines.len()
            ));
        }
        let mut unique = self.machines.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.machines.len() {
            return Some("a machine is named twice".into());
        }
        if self.crash_every_secs < CRASH_EVERY_SECS_MIN {
            return Some(format!(
                "crash points at most every {CRASH_EVERY_SECS_MIN} s, not every {} s",
                self.crash_every_secs
            ));
        }
        if self.app_every_secs != 0 && self.app_every_secs < self.crash_every_secs {
            return Some("app points cannot come more often than crash points".into());
        }
        if !(1..=BARRIER_SECS_MAX).contains(&self.barrier_secs) {
            return Some(format!(
                "the barrier holds writes 1 to {BARRIER_SECS_MAX} s, not {}",
                self.barrier_secs
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_field_by_field() {
        let good = GroupSpec {
            name: "erp-prod".into(),
            machines: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            crash_every_secs: 300,
            app_every_secs: 3600,
            barrier_secs: 10,
        };
        assert_eq!(good.problem(), None);
        let bad = |edit: fn(&mut GroupSpec)| {
            let mut spec = good.clone();
            edit(&mut spec);
            spec.problem().expect("refused")
        };
        assert!(bad(|s| s.name = "ERP".into()).contains("group name"));
        assert!(bad(|s| s.name = String::new()).contains("group name"));
        assert!(bad(|s| s.machines = (0..17).map(Uuid::from_u128).collect()).contains("1 to 16"));
        assert!(bad(|s| s.machines.clear()).contains("1 to 16"));
        assert!(bad(|s| s.machines = vec![Uuid::from_u128(1); 2]).contains("twice"));
        assert!(bad(|s| s.crash_every_secs = 5).contains("every 30 s"));
        assert!(bad(|s| s.app_every_secs = 60).contains("more often"));
        assert!(bad(|s| s.barrier_secs = 0).contains("1 to 60"));
        assert!(bad(|s| s.barrier_secs = 61).contains("1 to 60"));
    }
}
