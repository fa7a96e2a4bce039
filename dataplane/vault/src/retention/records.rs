//! The retention records a disk keeps in storage beside its points (FORMATS.md section 4):
//! pins (`pins/`, retention keeps the point) and pruned-point records (`pruned/`, why a point
//! is gone). Both are small sealed JSON objects whose names carry the seq and bookmark id, so
//! listing alone answers "is it pinned" and "was it pruned".

use anyhow::{Context, Result};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{Pin, PrunedPoint};
use ferry_format::{BookmarkId, ObjectKey};
use ferry_storage::{list_all, ObjectMeta, ObjectStorage};
use std::collections::HashSet;
use uuid::Uuid;

/// `(seq, bookmark_id)` of a point.
pub type PointId = (u64, String);

/// The points of `disk_id` that are pinned.
pub async fn pins(storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<HashSet<PointId>> {
    let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "pins/"))
        .await
        .context("cannot list the pins")?;
    Ok(pins_from_listing(&listed))
}

/// The pinned points in a listing of one disk's objects (of `pins/` or of the whole disk).
pub fn pins_from_listing(listed: &[ObjectMeta]) -> HashSet<PointId> {
    let mut found = HashSet::new();
    for meta in listed {
        if let Ok(ObjectName::Pin { seq, bookmark_id, .. }) = ObjectName::parse(&meta.name) {
            found.insert((seq, bookmark_id.as_str().to_string()));
        }
    }
    found
}

/// A pruned-point record as its name gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedName {
    pub name: String,
    pub pruned_unix_ms: u64,
    pub seq: u64,
    pub bookmark_id: String,
}

/// Every pruned-point record of `disk_id`, from the listing alone.
pub async fn pruned_names(storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<Vec<PrunedName>> {
    let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "pruned/"))
        .await
        .context("cannot list the pruned-point records")?;
    Ok(pruned_from_listing(&listed))
}

/// The pruned-point records in a listing of one disk's objects (of `pruned/` or of the whole
/// disk).
pub fn pruned_from_listing(listed: &[ObjectMeta]) -> Vec<PrunedName> {
    let mut found = Vec::new();
    for meta in listed {
        if let Ok(ObjectName::Pruned {
            pruned_unix_ms,
            seq,
            bookmark_id,
            ..
        }) = ObjectName::parse(&meta.name)
        {
            found.push(PrunedName {
                name: meta.name.clone(),
                pruned_unix_ms,
                seq,
                bookmark_id: bookmark_id.as_str().to_string(),
            });
        }
    }
    found
}

/// Pins a point (writing the pin again is harmless).
pub async fn pin(storage: &dyn ObjectStorage, key: &ObjectKey, pin: &Pin) -> Result<()> {
    let bookmark_id = BookmarkId::new(&pin.bookmark_id).map_err(anyhow::Error::msg)?;
    let name = ObjectName::Pin {
        disk_id: pin.disk_id,
        seq: pin.seq,
        bookmark_id,
    };
    crate::sealed::write_json(storage, key, &name.to_string(), pin)
        .await
        .map(drop)
}

/// Removes a pin; `false` when there was none.
pub async fn unpin(storage: &dyn ObjectStorage, disk_id: Uuid, seq: u64, bookmark_id: &BookmarkId) -> Result<bool> {
    let name = ObjectName::Pin {
        disk_id,
        seq,
        bookmark_id: bookmark_id.clone(),
    }
    .to_string();
    if !crate::sealed::exists(storage, &name).await? {
        return Ok(false);
    }
    storage
        .delete(&name)
        .await
        .with_context(|| format!("cannot delete {name}"))?;
    Ok(true)
}

/// Every pin of a disk, read.
pub async fn read_pins(storage: &dyn ObjectStorage, key: &ObjectKey, disk_id: Uuid) -> Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for (seq, bookmark) in self::pins(storage, disk_id).await? {
        let bookmark_id = BookmarkId::new(&bookmark).map_err(anyhow::Error::msg)?;
        let name = ObjectName::Pin {
            disk_id,
            seq,
            bookmark_id,
        };
        pins.push(crate::sealed::read_json(storage, key, &name.to_string()).await?);
    }
    pins.sort_by_key(|p: &Pin| p.seq);
    Ok(pins)
}

/// Records that retention pruned a point (before the point is deleted).
pub async fn record_pruned(storage: &dyn ObjectStorage, key: &ObjectKey, pruned: &PrunedPoint) -> Result<()> {
    let bookmark_id = BookmarkId::new(&pruned.bookmark_id).map_err(anyhow::Error::msg)?;
    let name = ObjectName::Pruned {
        disk_id: pruned.disk_id,
        pruned_unix_ms: pruned.pruned_unix_ms,
        seq: pruned.seq,
        bookmark_id,
    };
    crate::sealed::write_json(storage, key, &name.to_string(), pruned)
        .await
        .map(drop)
}

/// The pruned-point records of `bookmark_id` on a disk, read, oldest seq first.
pub async fn find_pruned(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    disk_id: Uuid,
    bookmark_id: &str,
) -> Result<Vec<PrunedPoint>> {
    let mut found = Vec::new();
    for record in pruned_names(storage, disk_id).await? {
        if record.bookmark_id == bookmark_id {
            found.push(crate::sealed::read_json(storage, key, &record.name).await?);
        }
    }
    found.sort_by_key(|p: &PrunedPoint| p.seq);
    Ok(found)
}
