//! A disk image at seq S (FORMATS.md section 5): the newest base at or below S, then the
//! change sets after it replayed up to S (for a reprotected disk without a base, the failed-over
//! disk's state at the failover point first). Used by `ferryctl restore`, failover, failback and
//! by the tests that check consolidation against a model.

use anyhow::{bail, Context, Result};
use ferry_format::batch::DiskGeometry;
use ferry_format::plaintexts::DiskDescriptor;
use ferry_format::Keyring;
use ferry_storage::ObjectStorage;
use std::fs::File;
use std::sync::Arc;

use crate::change_point::{ChangedBlocks, BLOCK};
use crate::digests::DigestTable;
use crate::log::{RecordSink, Replayed};

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
#[allow(clippy::too_many_arguments)]
pub async fn into_scratch(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    descriptor: &DiskDescriptor,
    seq: u64,
    scratch_dir: &std::path::Path,
    parallel: usize,
    mut progress: impl FnMut(u64) + Send,
    extras: Extras<'_>,
) -> Result<(File, Restored)> {
    let scratch = tempfile::tempfile_in(scratch_dir)
        .with_context(|| format!("cannot make a scratch file in {}", scratch_dir.display()))?;
    scratch
        .set_len(descriptor.size_bytes)
        .context("cannot size the scratch file")?;
    let restored = restore_with(
        storage,
        keyring,
        descriptor,
        seq,
        &scratch,
        parallel,
        &mut progress,
        extras,
    )
    .await?;
    Ok((scratch, restored))
}

/// What a restore does besides writing the image.
#[derive(Default)]
pub struct Extras<'a> {
    /// Only these blocks have to come out right (a failback's): base chunks and record pieces
    /// outside them are skipped, so the other blocks may hold anything.
    pub only: Option<&'a ChangedBlocks>,
    /// With `only`, for a reprotected disk: the blocks whose content comes from the starting
    /// state (the others the disk's own batches write whole). None: all of `only`. When it
    /// marks nothing, the starting state is not read at all.
    pub start_only: Option<&'a ChangedBlocks>,
    /// Fed every base chunk and every block a record touches, for a failover's digests (the
    /// caller finishes the table once the image is whole).
    pub digests: Option<&'a mut DigestTable>,
}

impl<'a> Extras<'a> {
    /// A whole restore that also feeds `table` (a failover's digests).
    pub fn digests_into(table: &'a mut DigestTable) -> Self {
        Extras {
            only: None,
            start_only: None,
            digests: Some(table),
        }
    }
}

/// Writes the disk at `seq` into `image`, a new file already sized to the disk (it must read
/// zeros). `progress` gets the last seq applied after each change set.
pub async fn restore_into(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    descriptor: &DiskDescriptor,
    seq: u64,
    image: &File,
    parallel: usize,
    mut progress: impl FnMut(u64) + Send,
) -> Result<Restored> {
    restore_with(
        storage,
        keyring,
        descriptor,
        seq,
        image,
        parallel,
        &mut progress,
        Extras::default(),
    )
    .await
}

/// [`restore_into`] with [`Extras`]. A reprotected disk (FORMATS.md: `reprotect_from`) with no
/// base of its own at or below `seq` starts from the failed-over disk's state at the failover
/// point, restored first into the same image (recursively: that disk may be a reprotected one
/// too).
#[allow(clippy::too_many_arguments)]
pub async fn restore_with(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    descriptor: &DiskDescriptor,
    seq: u64,
    image: &File,
    parallel: usize,
    progress: &mut (dyn FnMut(u64) + Send),
    mut extras: Extras<'_>,
) -> Result<Restored> {
    let disk_id = descriptor.disk_id;
    let key = Arc::new(keyring.disk_key(disk_id));
    let bases = crate::base::list(&*storage, disk_id).await?;
    let base_seq = bases.newest_at_or_below(seq);
    let objects = crate::log::list(&*storage, &key, disk_id).await?;
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
        restored.base_bytes = crate::base::fill(
            storage.clone(),
            key.clone(),
            &manifest,
            image,
            parallel,
            true,
            Extras {
                only: extras.only,
                start_only: None,
                digests: extras.digests.as_deref_mut(),
            },
        )
        .await
        .with_context(|| format!("cannot restore the base at seq {base}"))?;
    } else if let (Some(from), false) = (
        descriptor.reprotect_from,
        extras.start_only.is_some_and(|start| start.count() == 0),
    ) {
        let original = crate::disks::read_descriptor(&*storage, keyring, from.disk_id).await?;
        if original.size_bytes > descriptor.size_bytes {
            bail!(
                "disk {disk_id} replicates back from disk {} ({} bytes), which is larger than it ({} bytes)",
                from.disk_id,
                original.size_bytes,
                descriptor.size_bytes
            );
        }
        let inner = Box::pin(restore_with(
            storage.clone(),
            keyring,
            &original,
            from.seq,
            image,
            parallel,
            &mut |_| {},
            Extras {
                only: extras.start_only.or(extras.only),
                start_only: None,
                digests: extras.digests.as_deref_mut(),
            },
        ))
        .await
        .with_context(|| {
            format!(
                "disk {disk_id} replicates back from failover {} of disk {} at seq {}, which cannot be restored",
                from.failover_id, from.disk_id, from.seq
            )
        })?;
        restored.base_bytes = inner.base_bytes;
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
    let mut file = crate::image::ImageFile(image);
    let mut only;
    let mut touching;
    let sink: &mut (dyn RecordSink + Send) = match (extras.only, extras.digests.as_deref_mut()) {
        (Some(blocks), _) => {
            only = OnlyBlocks { inner: file, blocks };
            &mut only
        }
        (None, Some(table)) => {
            touching = crate::digests::Touching { inner: file, table };
            &mut touching
        }
        (None, None) => &mut file,
    };
    restored.replayed = replay.run(sink, progress).await?;
    Ok(restored)
}

/// A sink that passes on only the pieces of records inside the marked blocks.
struct OnlyBlocks<'a, S: RecordSink> {
    inner: S,
    blocks: &'a ChangedBlocks,
}

impl<S: RecordSink> OnlyBlocks<'_, S> {
    /// The marked runs inside `offset .. offset + length`, clipped to it.
    fn pieces(&self, offset: u64, length: u64) -> Vec<(u64, u64)> {
        let end = offset.saturating_add(length);
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for block in offset / BLOCK..end.div_ceil(BLOCK) {
            if !self.blocks.is_marked(block) {
                continue;
            }
            let (start, stop) = ((block * BLOCK).max(offset), (block * BLOCK + BLOCK).min(end));
            match pieces.last_mut() {
                Some(last) if last.1 == start => last.1 = stop,
                _ => pieces.push((start, stop)),
            }
        }
        pieces
    }
}

impl<S: RecordSink> RecordSink for OnlyBlocks<'_, S> {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        for (start, stop) in self.pieces(offset, data.len() as u64) {
            self.inner
                .write(start, &data[(start - offset) as usize..(stop - offset) as usize])?;
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        for (start, stop) in self.pieces(offset, length) {
            self.inner.zero(start, stop - start)?;
        }
        Ok(())
    }
}
