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

/// The descriptor of `disk_id` (`disk.fseal`), with a clear error when the disk is not in the
/// vault or its descriptor has a format this build does not know.
pub async fn read_descriptor(
    storage: &dyn ObjectStorage,
    keyring: &ferry_format::Keyring,
    disk_id: Uuid,
) -> Result<ferry_format::plaintexts::DiskDescriptor> {
    use ferry_format::plaintexts::{DiskDescriptor, PLAINTEXT_FORMAT, REPROTECTED_DISK_FORMAT};
    let name = ferry_format::names::ObjectName::DiskMeta { disk_id }.to_string();
    let descriptor: DiskDescriptor = crate::sealed::read_json(storage, &keyring.disk_key(disk_id), &name)
        .await
        .map_err(|e| match e.downcast_ref::<ferry_storage::StorageError>() {
            Some(ferry_storage::StorageError::NotFound { .. }) => {
                anyhow::anyhow!("disk {disk_id} is not in this vault (no {name})")
            }
            _ => e,
        })?;
    let known = match descriptor.format {
        PLAINTEXT_FORMAT => descriptor.reprotect_from.is_none(),
        REPROTECTED_DISK_FORMAT => descriptor.reprotect_from.is_some(),
        _ => false,
    };
    if !known {
        anyhow::bail!(
            "{name} has descriptor format {} (with{} reprotect_from), which this build cannot restore",
            descriptor.format,
            if descriptor.reprotect_from.is_some() { "" } else { "out" }
        );
    }
    Ok(descriptor)
}
