//! Consistency groups this appliance (the configuration server) keeps: which machines take
//! their points together and how often. One checked state file per group
//! (`state/groups/{group_id}.group`, fsynced with its directory), loaded at start; a damaged
//! file is skipped with a warning, as machine records are. The group points themselves (the
//! barrier across the members' agents) come next: this is where they will read the groups.
//!
//! Rules beyond the spec's own ([`GroupSpec::problem`]): names are unique, every machine is
//! registered here, and a machine belongs to one group at most (a point at one instant with
//! two groups' members would need one barrier across both).

use ferry_client::groups::{Group, GroupSpec};
use ferry_durable::checked;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use uuid::Uuid;

const GROUP_MAGIC: [u8; 8] = *b"FRGROUP1";
const GROUP_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{0}")]
    Invalid(String),
    #[error("no group is named or numbered {0:?}")]
    Unknown(String),
    #[error("group state at {path}: {message}")]
    Io { path: String, message: String },
}

pub struct Groups {
    dir: PathBuf,
    groups: Mutex<BTreeMap<Uuid, Group>>,
}

impl Groups {
    /// The groups kept under `dir` (created when missing).
    pub fn load(dir: &Path) -> Result<Groups, GroupError> {
        let io = |e: std::io::Error| GroupError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut groups = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("group") {
                continue;
            }
            match checked::read::<Group>(&path, GROUP_MAGIC, GROUP_VERSION) {
                Ok(group) => {
                    groups.insert(group.group_id, group);
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping a damaged group"),
            }
        }
        Ok(Groups {
            dir: dir.to_path_buf(),
            groups: Mutex::new(groups),
        })
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<Group> {
        let mut all: Vec<Group> = self.groups().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates a group of `registered` machines (durably) and returns it.
    pub fn create(&self, spec: GroupSpec, registered: &[Uuid], now_unix_ms: u64) -> Result<Group, GroupError> {
        if let Some(problem) = spec.problem() {
            return Err(GroupError::Invalid(problem));
        }
        let mut groups = self.groups();
        if groups.values().any(|g| g.name == spec.name) {
            return Err(GroupError::Invalid(format!("a group named {:?} exists", spec.name)));
        }
        for machine in &spec.machines {
            if !registered.contains(machine) {
                return Err(GroupError::Invalid(format!(
                    "machine {machine} is not registered with this appliance"
                )));
            }
            if let Some(other) = groups.values().find(|g| g.machines.contains(machine)) {
                return Err(GroupError::Invalid(format!(
                    "machine {machine} is in group {:?} already (a machine belongs to one group)",
                    other.name
                )));
            }
        }
        let group = Group {
            group_id: Uuid::new_v4(),
            name: spec.name,
            machines: spec.machines,
            crash_every_secs: spec.crash_every_secs,
            app_every_secs: spec.app_every_secs,
            barrier_secs: spec.barrier_secs,
            created_unix_ms: now_unix_ms,
        };
        let path = self.dir.join(format!("{}.group", group.group_id));
        // Durable and atomic, directory included (ferry_durable::replace).
        checked::write(&path, GROUP_MAGIC, GROUP_VERSION, &group).map_err(|e| GroupError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        groups.insert(group.group_id, group.clone());
        Ok(group)
    }

    /// Removes the group named or numbered `which` (durably) and returns it.
    pub fn delete(&self, which: &str) -> Result<Group, GroupError> {
        let mut groups = self.groups();
        let id = groups
            .values()
            .find(|g| g.name == which || g.group_id.to_string() == which)
            .map(|g| g.group_id)
            .ok_or_else(|| GroupError::Unknown(which.to_string()))?;
        let path = self.dir.join(format!("{id}.group"));
        std::fs::remove_file(&path)
            .and_then(|()| ferry_durable::fsync_dir(&self.dir))
            .map_err(|e| GroupError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        groups.remove(&id).ok_or_else(|| GroupError::Unknown(which.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, machines: &[u128]) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            machines: machines.iter().map(|m| Uuid::from_u128(*m)).collect(),
            crash_every_secs: 300,
            app_every_secs: 0,
            barrier_secs: 10,
        }
    }

    #[test]
    fn groups_are_kept_across_a_restart_and_their_rules_hold() {
        let dir = tempfile::tempdir().unwrap();
        let registered: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
        let groups = Groups::load(dir.path()).unwrap();
        let erp = groups.create(spec("erp", &[1, 2]), &registered, 7).unwrap();
        let refused = |result: Result<Group, GroupError>| result.unwrap_err().to_string();
        assert!(refused(groups.create(spec("erp", &[3]), &registered, 8)).contains("exists"));
        assert!(refused(groups.create(spec("web", &[2, 3]), &registered, 8)).contains("one group"));
        assert!(refused(groups.create(spec("web", &[9]), &registered, 8)).contains("not registered"));
        assert!(refused(groups.create(spec("Web", &[3]), &registered, 8)).contains("group name"));
        let web = groups.create(spec("web", &[3, 4]), &registered, 9).unwrap();

        let again = Groups::load(dir.path()).unwrap();
        assert_eq!(again.list(), [erp.clone(), web.clone()]);
        assert_eq!(again.delete("erp").unwrap(), erp);
        assert_eq!(again.delete(&web.group_id.to_string()).unwrap(), web);
        assert!(matches!(again.delete("erp"), Err(GroupError::Unknown(_))));
        assert!(Groups::load(dir.path()).unwrap().list().is_empty());
    }
}
