//! The disks of a vault: one directory each under `ferry/v1/disks/`.

use anyhow::{Context, Result};
use ferry_format::names::ROOT;
use ferry_storage::ObjectStorage;
use uuid::Uuid;

/// The ids of every disk with objects in the vault, in name order.
pub async fn ids(storage: &dyn ObjectStorage) -> Result<Vec<Uuid>> {
    let prefix = format!("{ROOT}disks/");
    let directories = storage
        .list_directories(&prefix)
        .await
        .context("cannot list the vault's disks")?;
    Ok(directories
        .iter()
        .filter_map(|d| d.strip_prefix(&prefix)?.strip_suffix('/'))
        .filter_map(ferry_format::ids::parse_canonical_uuid)
        .collect())
}
