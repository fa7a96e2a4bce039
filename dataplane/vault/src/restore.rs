//! A disk image at seq S (FORMATS.md section 5): the newest base at or below S, then the
//! change sets after it replayed up to S. Used by `ferryctl restore` and by the tests that
//! check consolidation against a model.

use anyhow::{bail, Context, Result};
use ferry_format::batch::DiskGeometry;
use ferry_format::plaintexts::DiskDescriptor;
use ferry_format::ObjectKey;
use ferry_storage::ObjectStorage;
use std::fs::File;
use std::sync::Arc;

use crate::log::Replayed;

/// What a restore read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The base the image started from (None: from zeros).
    pub base_seq: Option<u64>,
    pub base_bytes: u64,
    pub replayed: Replayed,
}

/// The disk at `seq` in a new sparse scratch file in `scratch_dir` (unlinked: it goes away
/// with the handle), for outputs that take the image once it is whole (a page blob, a
/// change of a failover's point).
pub async fn into_scratch(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    descriptor: &DiskDescriptor,
    seq: u64,
    scratch_dir: &std::path::Path,
    parallel: usize,
    progress: impl FnMut(u64) + Send,
) -> Result<(File, Restored)> {
    let scratch = tempfile::tempfile_in(scratch_dir)
        .with_context(|| format!("cannot make a scratch file in {}", scratch_dir.display()))?;
    scratch
        .set_len(descriptor.size_bytes)
        .context("cannot size the scratch file")?;
    let restored = restore_into(storage, key, descriptor, seq, &scratch, parallel, progress).await?;
    Ok((scratch, restored))
}

/// Writes the disk at `seq` into `image`, a new file already sized to the disk (it must read
/// zeros). `progress` gets the last seq applied after each change set.
pub async fn restore_into(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    descriptor: &DiskDescriptor,
    seq: u64,
    image: &File,
    parallel: usize,
    progress: impl FnMut(u64) + Send,
) -> Result<Restored> {
    let disk_id = descriptor.disk_id;
    let bases = crate::base::list(&*storage, disk_id).await?;
    let base_seq = bases.newest_at_or_below(seq);
    let objects = crate::log::list(&*storage, disk_id).await?;
    let chain = match crate::log::cover(objects, base_seq.unwrap_or(0), seq) {
        Ok(chain) => chain,
        // Below the oldest base, the log it replaced may be gone (or going: a consolidation
        // deletes it last, so while it is there the seq still restores from zeros).
        Err(_) if base_seq.is_none() && !bases.manifests.is_empty() => {
            let oldest = bases.manifests.first().copied().unwrap_or_default();
            bail!(
                "seq {seq} was pruned by retention: the oldest restorable state of disk {disk_id} is its base at seq {oldest}"
            );
        }
        Err(e) => return Err(e),
    };
    let mut restored = Restored {
        base_seq,
        ..Default::default()
    };
    if let Some(base) = base_seq {
        let manifest = crate::base::read_manifest(&*storage, &key, disk_id, base, descriptor.size_bytes).await?;
        restored.base_bytes = crate::base::fill(storage.clone(), key.clone(), &manifest, image, parallel, true)
            .await
            .with_context(|| format!("cannot restore the base at seq {base}"))?;
    }
    let replay = crate::log::Replay {
        storage,
        key: key.clone(),
        geometry: DiskGeometry {
            size_bytes: descriptor.size_bytes,
            sector_size: descriptor.sector_size,
        },
        chain: &chain,
        after: base_seq.unwrap_or(0),
        target: seq,
        parallel,
    };
    restored.replayed = replay.run(&mut crate::image::ImageFile(image), progress).await?;
    Ok(restored)
}
