//! Failover outputs and records: a disk at a seq written as a file a machine can boot (a fixed
//! VHD, or a raw image), onto a block device, or into an Azure page blob, and the sealed record of each failover (`failovers/{id}.fseal`,
//! FORMATS.md sections 1 and 4) that `ferryctl failover list` and `cleanup` read.
//!
//! An output file is written as a restore is (the newest base, then the log after it; records
//! in place, zeros as holes, so the file is as sparse as the disk), then, for a VHD, the
//! footer after the virtual size. A failed output is removed: a half-written disk must not be
//! mistaken for a failover. Memory is the restore's: about `parallel` objects at once. Each
//! output's 64 KiB block digests are computed as it is written (`crate::digests`).

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_format::names::{ObjectName, FAILOVERS_PREFIX};
use ferry_format::plaintexts::{DiskDescriptor, FailoverRecord};
use ferry_format::{Keyring, ObjectKey};
use ferry_storage::{list_all, ObjectStorage, StorageError};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

use crate::digests::DigestTable;
use crate::restore::{Extras, Restored};
use crate::vhd;

/// How a disk is written to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// A fixed VHD: the disk rounded up to a whole MiB, then the 512-byte footer.
    Vhd,
    /// The disk's bytes, nothing else.
    Raw,
}

impl FileFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Vhd => "vhd",
            FileFormat::Raw => "raw",
        }
    }

    /// The disk's size in this format (for a VHD, without the footer).
    pub fn virtual_size(self, size_bytes: u64) -> u64 {
        match self {
            FileFormat::Vhd => vhd::virtual_size(size_bytes),
            FileFormat::Raw => size_bytes,
        }
    }
}

/// Writes `descriptor`'s disk at `seq` into the new file `path` (it must not exist) as
/// `format`, fsynced, and its block digests into `digests` (finished). `progress` gets the last
/// seq applied after each change set. On failure the file is removed.
#[allow(clippy::too_many_arguments)]
pub async fn write_file(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    digests: &mut DigestTable,
    descriptor: &DiskDescriptor,
    seq: u64,
    path: &Path,
    format: FileFormat,
    parallel: usize,
    now_unix_ms: u64,
    mut progress: impl FnMut(u64) + Send,
) -> Result<Restored> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    let written = async {
        let virtual_size = format.virtual_size(descriptor.size_bytes);
        let footer = match format {
            FileFormat::Vhd => {
                Some(vhd::Footer::for_disk(descriptor.size_bytes, now_unix_ms, Uuid::new_v4()).to_bytes())
            }
            FileFormat::Raw => None,
        };
        file.set_len(virtual_size + footer.map_or(0, |f| f.len() as u64))
            .with_context(|| format!("cannot size {}", path.display()))?;
        let extras = Extras::digests_into(&mut *digests);
        let restored = crate::restore::restore_with(
            storage,
            keyring,
            descriptor,
            seq,
            &file,
            parallel,
            &mut progress,
            extras,
        )
        .await?;
        digests.finish(&file)?;
        if let Some(footer) = footer {
            file.write_all_at(&footer, virtual_size)
                .with_context(|| format!("cannot write the VHD footer of {}", path.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", path.display()))?;
        Ok(restored)
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Opens block device `path` for a failover of a disk of `size_bytes`: refuses what is not a
/// block device, a device smaller than the disk, and a device in use (mounted, or a mounted
/// partition of it, or held by the kernel otherwise: the open is exclusive). The file is open
/// for reading and writing.
pub fn open_device(path: &Path, size_bytes: u64) -> Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot look at {}", path.display()))?;
    if !metadata.file_type().is_block_device() {
        anyhow::bail!("{} is not a block device (use --to-dir for files)", path.display());
    }
    if let Some(mount_point) = mounted_at(metadata.rdev())? {
        anyhow::bail!("{} is mounted at {mount_point}; unmount it first", path.display());
    }
    // O_EXCL on a block device: the kernel refuses while anything else holds it.
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::BUSY.raw_os_error() => {
                anyhow::anyhow!(
                    "{} is in use (mounted, a mounted partition, or held by the kernel)",
                    path.display()
                )
            }
            _ => anyhow::Error::new(e).context(format!("cannot open {}", path.display())),
        })?;
    let device_bytes = rustix::fs::seek(&device, rustix::fs::SeekFrom::End(0))
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot size {}", path.display()))?;
    if device_bytes < size_bytes {
        anyhow::bail!(
            "{} holds {device_bytes} bytes, smaller than the disk's {size_bytes}",
            path.display()
        );
    }
    Ok(device)
}

/// Where the device `rdev` (or a partition of it) is mounted, from /proc/self/mountinfo.
fn mounted_at(rdev: u64) -> Result<Option<String>> {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    // Partitions of this device: /sys/dev/block/M:m/<name>p1/dev or <name>1/dev, each "M:m".
    let mut devices = vec![format!("{major}:{minor}")];
    if let Ok(entries) = std::fs::read_dir(format!("/sys/dev/block/{major}:{minor}")) {
        for entry in entries.flatten() {
            if let Ok(dev) = std::fs::read_to_string(entry.path().join("dev")) {
                if entry.path().join("partition").exists() {
                    devices.push(dev.trim().to_string());
                }
            }
        }
    }
    for line in mountinfo.lines() {
        // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": field 3 is M:m.
        let fields: Vec<&str> = line.split(' ').collect();
        if let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) {
            if devices.iter().any(|d| d == dev) {
                return Ok(Some(mount_point.to_string()));
            }
        }
    }
    Ok(None)
}

/// Writes `descriptor`'s disk at `seq` onto `device` (opened by [`open_device`]): first the
/// disk's range is zeroed (FALLOC_FL_ZERO_RANGE: the device's write-zeroes where it has one,
/// written zeros where not), since a restore writes only what is not zero; then the restore;
/// then fsync. Bytes past the disk's size are left as they were.
#[allow(clippy::too_many_arguments)]
pub async fn write_device(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    digests: &mut DigestTable,
    descriptor: &DiskDescriptor,
    seq: u64,
    device: &std::fs::File,
    path: &Path,
    parallel: usize,
    mut progress: impl FnMut(u64) + Send,
) -> Result<Restored> {
    let zero = rustix::fs::FallocateFlags::ZERO_RANGE | rustix::fs::FallocateFlags::KEEP_SIZE;
    if rustix::fs::fallocate(device, zero, 0, descriptor.size_bytes).is_err() {
        crate::image::zero_range(device, 0, descriptor.size_bytes)
            .with_context(|| format!("cannot zero {}", path.display()))?;
    }
    let extras = Extras::digests_into(&mut *digests);
    let restored = crate::restore::restore_with(
        storage,
        keyring,
        descriptor,
        seq,
        device,
        parallel,
        &mut progress,
        extras,
    )
    .await?;
    digests.finish(device)?;
    device
        .sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(restored)
}

/// Writes `descriptor`'s disk at `seq` as a fixed VHD into the page blob `blob` (created here;
/// an existing blob is refused): the disk is restored into a sparse scratch file in
/// `scratch_dir` first (a restore applies change sets in order, so the same range may be
/// written several times; the blob gets each sector once), then only its non-zero 512-byte
/// sectors are sent, in runs of at most 4 MiB, then the footer page. `parallel` is (objects
/// downloaded ahead, Put Page calls in flight). On failure the blob is deleted. Memory: the
/// restore's, then the runs in flight (at most 4 MiB each).
#[allow(clippy::too_many_arguments)]
pub async fn write_page_blob(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    digests: &mut DigestTable,
    descriptor: &DiskDescriptor,
    seq: u64,
    blob: &ferry_storage::page_blob::PageBlob,
    scratch_dir: &Path,
    parallel: (usize, usize),
    now_unix_ms: u64,
    progress: impl FnMut(u64) + Send,
) -> Result<Restored> {
    let (downloads, puts) = parallel;
    let extras = Extras::digests_into(&mut *digests);
    let (scratch, restored) = crate::restore::into_scratch(
        storage,
        keyring,
        descriptor,
        seq,
        scratch_dir,
        downloads,
        progress,
        extras,
    )
    .await?;
    digests.finish(&scratch)?;
    let virtual_size = vhd::virtual_size(descriptor.size_bytes);
    let footer = vhd::Footer::for_disk(descriptor.size_bytes, now_unix_ms, Uuid::new_v4()).to_bytes();
    blob.create(virtual_size + footer.len() as u64)
        .await
        .with_context(|| format!("cannot create the page blob {}", blob.url()))?;
    let uploaded = async {
        upload_non_zero(&scratch, descriptor.size_bytes, blob, puts).await?;
        blob.put_pages(virtual_size, Bytes::copy_from_slice(&footer))
            .await
            .context("cannot write the VHD footer")
    }
    .await;
    match uploaded {
        Ok(()) => Ok(restored),
        Err(e) => {
            let _ = blob.delete().await; // no half-written disk left to be mistaken for one
            Err(e)
        }
    }
}

/// Sends the non-zero sectors of `file`'s first `size` bytes to `blob`.
async fn upload_non_zero(
    file: &std::fs::File,
    size: u64,
    blob: &ferry_storage::page_blob::PageBlob,
    parallel: usize,
) -> Result<()> {
    use ferry_storage::page_blob::{PAGE, PUT_PAGE_MAX};
    use futures::TryStreamExt;
    // Pieces of at most 4 MiB of the file's data extents (holes are skipped without reading),
    // read one after another as the uploads take them.
    let pieces = futures::stream::try_unfold(0u64, move |at| async move {
        let Some((start, hole)) = crate::image::data_extent(file, at, size).context("cannot read the scratch file")?
        else {
            return Ok::<_, anyhow::Error>(None);
        };
        // Whole pages (a hole boundary inside a page still sends that page), 4 MiB at most.
        let start = start / PAGE * PAGE;
        let end = hole.div_ceil(PAGE).saturating_mul(PAGE).min(start + PUT_PAGE_MAX);
        let mut data = vec![0u8; (end - start) as usize];
        let readable = (end.min(size) - start) as usize;
        file.read_exact_at(&mut data[..readable], start)
            .context("cannot read the scratch file")?;
        Ok(Some(((start, Bytes::from(data)), end)))
    });
    let runs = pieces
        .map_ok(|(offset, data): (u64, Bytes)| futures::stream::iter(non_zero_runs(offset, &data).into_iter().map(Ok)))
        .try_flatten();
    runs.map_ok(|(offset, run): (u64, Bytes)| async move {
        blob.put_pages(offset, run)
            .await
            .with_context(|| format!("cannot write pages at {offset}"))
    })
    .try_buffer_unordered(parallel.max(1))
    .try_collect()
    .await
}

/// The runs of non-zero 512-byte sectors of `data` (which starts at `offset`), as slices.
pub(crate) fn non_zero_runs(offset: u64, data: &Bytes) -> Vec<(u64, Bytes)> {
    let page = ferry_storage::page_blob::PAGE as usize;
    let mut runs = Vec::new();
    let mut run_start: Option<usize> = None;
    for (index, sector) in data.chunks(page).enumerate() {
        let at = index * page;
        match (sector.iter().any(|&b| b != 0), run_start) {
            (true, None) => run_start = Some(at),
            (false, Some(start)) => {
                runs.push((offset + start as u64, data.slice(start..at)));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        runs.push((offset + start as u64, data.slice(start..)));
    }
    runs
}

fn record_name(failover_id: Uuid) -> String {
    ObjectName::Failover { failover_id }.to_string()
}

fn record_key(keyring: &Keyring, failover_id: Uuid) -> ObjectKey {
    keyring.key_for(&ObjectName::Failover { failover_id })
}

/// Writes (or rewrites) a failover's record.
pub async fn write_record(storage: &dyn ObjectStorage, keyring: &Keyring, record: &FailoverRecord) -> Result<()> {
    let id = record.failover_id;
    crate::sealed::write_json(storage, &record_key(keyring, id), &record_name(id), record).await?;
    Ok(())
}

/// The record of failover `failover_id`; a clear error when there is none.
pub async fn read_record(storage: &dyn ObjectStorage, keyring: &Keyring, failover_id: Uuid) -> Result<FailoverRecord> {
    let name = record_name(failover_id);
    if !crate::sealed::exists(storage, &name).await? {
        anyhow::bail!("no failover {failover_id} in this vault (ferryctl failover list shows them)");
    }
    let record: FailoverRecord = crate::sealed::read_json(storage, &record_key(keyring, failover_id), &name).await?;
    if record.failover_id != failover_id {
        anyhow::bail!("object {name} holds the record of failover {}", record.failover_id);
    }
    Ok(record)
}

/// Every failover record of the vault, oldest first.
pub async fn list_records(storage: &dyn ObjectStorage, keyring: &Keyring) -> Result<Vec<FailoverRecord>> {
    let mut records = Vec::new();
    for meta in list_all(storage, FAILOVERS_PREFIX)
        .await
        .context("cannot list the failovers")?
    {
        if let Ok(ObjectName::Failover { failover_id }) = ObjectName::parse(&meta.name) {
            records.push(read_record(storage, keyring, failover_id).await?);
        }
    }
    records.sort_by_key(|r| (r.created_unix_ms, r.failover_id));
    Ok(records)
}

/// Deletes a failover's record (a record already gone counts as deleted).
pub async fn delete_record(storage: &dyn ObjectStorage, failover_id: Uuid) -> Result<()> {
    match storage.delete(&record_name(failover_id)).await {
        Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e).context("cannot delete the failover record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_the_non_zero_sectors_exactly() {
        let mut data = vec![0u8; 512 * 8];
        data[0] = 1; // sector 0
        data[512 * 2 + 511] = 1; // sector 2
        data[512 * 3] = 1; // sector 3
        data[512 * 7 + 100] = 1; // sector 7 (the last)
        let runs = non_zero_runs(4096, &Bytes::from(data));
        let spans: Vec<(u64, usize)> = runs.iter().map(|(offset, run)| (*offset, run.len())).collect();
        assert_eq!(spans, [(4096, 512), (4096 + 1024, 1024), (4096 + 512 * 7, 512)]);
        assert!(non_zero_runs(0, &Bytes::from(vec![0u8; 4096])).is_empty());
    }
}
