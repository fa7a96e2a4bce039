//! A consistency group's points in the vault (FORMATS.md section 4,
//! `groups/{group_id}/points/…`, sealed with the vault-wide key): listing them and finding
//! one by its bookmark id. Each member disk of a group point restores at its `seq`.

use anyhow::{bail, Context, Result};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::GroupPoint;
use ferry_format::Keyring;
use ferry_storage::{list_all, ObjectStorage};
use uuid::Uuid;

/// Every point of group `group_id`, oldest first.
pub async fn list(storage: &dyn ObjectStorage, keyring: &Keyring, group_id: Uuid) -> Result<Vec<GroupPoint>> {
    let prefix = ObjectName::group_points_prefix(group_id);
    let mut names: Vec<(u64, String, ObjectName)> = Vec::new();
    for meta in list_all(storage, &prefix)
        .await
        .context("cannot list the group's points")?
    {
        if let Ok(name @ ObjectName::GroupPoint { created_unix_ms, .. }) = ObjectName::parse(&meta.name) {
            names.push((created_unix_ms, meta.name, name));
        }
    }
    names.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut points = Vec::with_capacity(names.len());
    for (_, text, name) in names {
        let point: GroupPoint = crate::sealed::read_json(storage, &keyring.key_for(&name), &text).await?;
        if point.group_id != group_id {
            bail!("object {text} holds a point of group {}", point.group_id);
        }
        points.push(point);
    }
    Ok(points)
}

/// The point of group `group_id` with bookmark `bookmark_id`; a clear error when there is none.
pub async fn find(
    storage: &dyn ObjectStorage,
    keyring: &Keyring,
    group_id: Uuid,
    bookmark_id: &str,
) -> Result<GroupPoint> {
    let points = list(storage, keyring, group_id).await?;
    if points.is_empty() {
        bail!("group {group_id} has no points in this vault");
    }
    match points.into_iter().find(|p| p.bookmark_id == bookmark_id) {
        Some(point) => Ok(point),
        None => bail!("group {group_id} has no point {bookmark_id:?} (ferryctl points --group lists them)"),
    }
}
