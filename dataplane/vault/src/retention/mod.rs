//! Retention: the rules of the `[retention]` policy ([`plan`]), the records it keeps in
//! storage, pins and pruned points ([`records`]), and consolidating a disk ([`consolidate`]).

pub mod consolidate;
pub mod plan;
pub mod records;

use ferry_config::retention::{DiskPolicyOverride, RetentionConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /v1/retention/run` on ferryd's control socket (`ferryctl retention run`); the answer
/// is one [`consolidate::DiskSummary`] per disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub dry_run: bool,
    /// Only this disk.
    pub disk: Option<Uuid>,
    /// Storage calls in flight at once (ferryd's default when absent).
    pub parallel: Option<usize>,
}

/// `PUT /v1/retention/policy` (`ferryctl retention set`): one disk's overrides, or none (the
/// disk follows `[retention]` again); the answer is the resulting `[retention]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub disk_id: Uuid,
    pub overrides: DiskPolicyOverride,
}

impl PolicyChange {
    /// Applies the change to `retention`, refusing (and leaving it unchanged) when the
    /// disk's resulting policy is invalid; the error names the key.
    pub fn apply(&self, retention: &mut RetentionConfig) -> anyhow::Result<()> {
        let mut changed = retention.clone();
        if self.overrides.is_empty() {
            changed.disks.remove(&self.disk_id);
        } else {
            changed.disks.insert(self.disk_id, self.overrides);
        }
        changed
            .validate()
            .map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
        *retention = changed;
        Ok(())
    }
}
