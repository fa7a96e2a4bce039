//! Base images (FORMATS.md section 4): a disk after batch `seq`, in chunks. Listing them,
//! reading and checking a manifest, filling an image from one (restore), and writing a new
//! one from an older base plus the log replayed into a scratch file (consolidation).
//!
//! A new base writes only the chunks the replayed log touched (a chunk only partly written is
//! completed from the older base's chunk); untouched chunks are named from the older manifest,
//! all-zero chunks are left out, and the manifest goes last: a base without a manifest does
//! not exist. Memory: about `parallel` chunks at once, plus the touched ranges of each chunk.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{BaseManifest, PLAINTEXT_FORMAT};
use ferry_format::ObjectKey;
use ferry_storage::{list_all, ObjectMeta, ObjectStorage};
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use uuid::Uuid;

use crate::log::RecordSink;

/// zstd level of base chunks: as the pipeline's default (the measured sweet spot).
const CHUNK_LEVEL: i32 = 1;

/// What `base/` of a disk holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bases {
    /// Seqs of the bases that exist (their manifest is in storage).
    pub manifests: BTreeSet<u64>,
    /// Every chunk object, by name, with the seq of the directory it sits in.
    pub chunks: BTreeMap<String, u64>,
}

impl Bases {
    /// The newest base at or below `seq`.
    pub fn newest_at_or_below(&self, seq: u64) -> Option<u64> {
        self.manifests.range(..=seq).next_back().copied()
    }
}

pub async fn list(storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<Bases> {
    let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "base/"))
        .await
        .context("cannot list the bases")?;
    Ok(from_listing(&listed))
}

/// The bases in a listing of one disk's objects (of `base/` or of the whole disk).
pub fn from_listing(listed: &[ObjectMeta]) -> Bases {
    let mut bases = Bases::default();
    for meta in listed {
        match ObjectName::parse(&meta.name) {
            Ok(ObjectName::BaseManifest { seq, .. }) => {
                bases.manifests.insert(seq);
            }
            Ok(ObjectName::BaseChunk { seq, .. }) => {
                bases.chunks.insert(meta.name.clone(), seq);
            }
            _ => {}
        }
    }
    bases
}

/// The manifest of the base at `seq`, checked: its disk, seq and size, and every chunk named
/// by a chunk object of this disk with the index it stands for.
pub async fn read_manifest(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    disk_id: Uuid,
    seq: u64,
    size_bytes: u64,
) -> Result<BaseManifest> {
    let name = ObjectName::BaseManifest { disk_id, seq }.to_string();
    let manifest: BaseManifest = crate::sealed::read_json(storage, key, &name).await?;
    check_manifest(&manifest, disk_id, seq, size_bytes).with_context(|| format!("base manifest {name}"))?;
    Ok(manifest)
}

fn check_manifest(manifest: &BaseManifest, disk_id: Uuid, seq: u64, size_bytes: u64) -> Result<()> {
    if manifest.format != PLAINTEXT_FORMAT || manifest.disk_id != disk_id || manifest.seq != seq {
        bail!("names another disk, seq or format");
    }
    // A disk only grows (PROTOCOL.md refuses a shrink): a base of the smaller disk stays
    // valid, the grown part reading zeros until written.
    if manifest.size_bytes > size_bytes {
        bail!(
            "is for a disk of {} bytes, larger than the disk's {size_bytes}",
            manifest.size_bytes
        );
    }
    if manifest.chunk_size == 0 || !manifest.chunk_size.is_multiple_of(512) {
        bail!("has a chunk size of {}", manifest.chunk_size);
    }
    let count = manifest.size_bytes.div_ceil(manifest.chunk_size);
    for (index, name) in &manifest.chunks {
        let index: u64 = index.parse().with_context(|| format!("chunk index {index:?}"))?;
        match ObjectName::parse(name) {
            Ok(ObjectName::BaseChunk {
                disk_id: owner,
                index: named,
                ..
            }) if owner == disk_id && named == index && index < count => {}
            _ => bail!("chunk {index} is named {name:?}, not a chunk of this disk at that index"),
        }
    }
    Ok(())
}

/// The bytes of a chunk of `length` bytes held by `name` (zeros when None), checked for
/// length; a shorter chunk (the last of a base from before the disk grew) is completed with
/// zeros. Takes what it needs by value, so the futures that call it own their captures.
async fn chunk_plaintext(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    name: Option<String>,
    length: u64,
) -> Result<Vec<u8>> {
    let Some(name) = name else {
        return Ok(vec![0; length as usize]);
    };
    let sealed = storage
        .get(&name)
        .await
        .with_context(|| format!("cannot read {name}"))?;
    // Unsealed on a blocking thread: several chunks at once use every core.
    let (plain, name) = tokio::task::spawn_blocking(move || {
        let plain =
            ferry_format::seal::unseal(&key, &name, &sealed).with_context(|| format!("object {name} is corrupt"));
        (plain, name)
    })
    .await
    .context("the unsealing task failed")?;
    let plain = plain?;
    if plain.len() as u64 > length {
        bail!("object {name} holds {} bytes, its chunk is {length}", plain.len());
    }
    let mut plain = plain;
    plain.resize(length as usize, 0);
    Ok(plain)
}

fn chunk_len(size_bytes: u64, chunk_size: u64, index: u64) -> u64 {
    chunk_size.min(size_bytes.saturating_sub(index * chunk_size))
}

/// Writes every chunk of `manifest` into `image` at its offset (absent chunks stay as the
/// image has them: a fresh sparse file reads zeros). Returns the bytes written. `past_cache`:
/// chunks go past the page cache (a restore's output, written once; see
/// [`crate::image::DirectWriter`]) rather than through it (a consolidation's scratch, read
/// back at once). `extras`: chunks outside `only` are skipped; each chunk written is hashed
/// into `digests`.
pub async fn fill(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    manifest: &BaseManifest,
    image: &File,
    parallel: usize,
    past_cache: bool,
    extras: crate::restore::Extras<'_>,
) -> Result<u64> {
    let (size, chunk_size) = (manifest.size_bytes, manifest.chunk_size);
    let chunks: Vec<(u64, String)> = manifest
        .chunks
        .iter()
        .filter_map(|(index, name)| Some((index.parse().ok()?, name.clone())))
        .filter(|(index, _)| {
            extras
                .only
                .is_none_or(|only| only.any_marked(index * chunk_size, chunk_len(size, chunk_size, *index)))
        })
        .collect();
    let mut digests = extras.digests;
    let mut chunks = futures::stream::iter(chunks.into_iter().map(move |(index, name)| {
        let (storage, key) = (storage.clone(), key.clone());
        let length = chunk_len(size, chunk_size, index);
        async move {
            chunk_plaintext(storage, key, Some(name), length)
                .await
                .map(|data| (index, data))
        }
    }))
    .buffer_unordered(parallel.max(1));
    let mut written = 0;
    let mut direct = past_cache.then(|| crate::image::DirectWriter::new(image));
    while let Some((index, data)) = chunks.try_next().await? {
        match direct.as_mut() {
            Some(writer) => writer.write_at(&data, index * chunk_size),
            None => image.write_all_at(&data, index * chunk_size),
        }
        .context("cannot write the image")?;
        if let Some(table) = digests.as_deref_mut() {
            table
                .written(index * chunk_size, &data)
                .context("cannot write the digest table")?;
        }
        written += data.len() as u64;
    }
    Ok(written)
}

/// A sparse scratch file that replayed records land in, remembering which bytes of which chunk
/// they touched.
pub struct Scratch {
    file: Arc<File>,
    chunk_size: u64,
    /// Per touched chunk, its touched ranges (chunk-relative, merged, sorted).
    touched: BTreeMap<u64, Vec<(u64, u64)>>,
}

impl Scratch {
    /// `file` should be new and empty (sized to the disk by the caller); it is read back by
    /// [`write_base`].
    pub fn new(file: File, chunk_size: u64) -> Self {
        Self {
            file: Arc::new(file),
            chunk_size,
            touched: BTreeMap::new(),
        }
    }

    /// Marks every chunk of a disk of `size_bytes` wholly touched (used when an older base has
    /// another chunk size and was filled into the scratch whole).
    pub fn touch_all(&mut self, size_bytes: u64) {
        for index in 0..size_bytes.div_ceil(self.chunk_size) {
            self.touched
                .insert(index, vec![(0, chunk_len(size_bytes, self.chunk_size, index))]);
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn touched_chunks(&self) -> usize {
        self.touched.len()
    }

    fn touch(&mut self, offset: u64, length: u64) {
        let end = offset + length;
        let mut at = offset;
        while at < end {
            let index = at / self.chunk_size;
            let chunk_start = index * self.chunk_size;
            let stop = end.min(chunk_start + self.chunk_size);
            merge(
                self.touched.entry(index).or_default(),
                (at - chunk_start, stop - chunk_start),
            );
            at = stop;
        }
    }
}

/// Adds `range` to sorted, disjoint `ranges`, joining what overlaps or touches it.
fn merge(ranges: &mut Vec<(u64, u64)>, range: (u64, u64)) {
    let (mut start, mut end) = range;
    let first = ranges.partition_point(|r| r.1 < start);
    let mut last = first;
    while last < ranges.len() && ranges[last].0 <= end {
        start = start.min(ranges[last].0);
        end = end.max(ranges[last].1);
        last += 1;
    }
    ranges.splice(first..last, [(start, end)]);
}

impl RecordSink for Scratch {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.touch(offset, data.len() as u64);
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        crate::image::zero_range(&self.file, offset, length)?;
        self.touch(offset, length);
        Ok(())
    }
}

/// Chunk-sized buffers handed back after use: a fresh 4 MiB allocation per chunk costs page
/// faults and the kernel zeroing every page (a third of a run's CPU in a profile of a
/// consolidation of 64 GiB disks with scattered writes), and at most `parallel` are in use.
#[derive(Default)]
struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// A buffer of `length` bytes (its contents are whatever it held: the caller overwrites it).
    fn take(&self, length: usize) -> Vec<u8> {
        let mut buffer = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        buffer.resize(length, 0);
        buffer
    }

    fn give_back(&self, buffer: Vec<u8>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
    }
}

/// Whether `file` holds data (not a hole) anywhere in `offset .. offset + length`.
fn has_data(file: &File, offset: u64, length: u64) -> Result<bool> {
    let extent =
        crate::image::data_extent(file, offset, offset + length).context("cannot look for data in the scratch file")?;
    Ok(extent.is_some())
}

/// What writing a base did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub chunks_written: u64,
    pub chunks_reused: u64,
    pub chunks_zero: u64,
    pub bytes_stored: u64,
}

/// Writes the base at `seq`: the chunks `scratch` touched (completed from `older` where only
/// partly touched), the older manifest's other chunks by name, then the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn write_base(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    disk_id: Uuid,
    seq: u64,
    size_bytes: u64,
    older: Option<&BaseManifest>,
    scratch: &Scratch,
    parallel: usize,
) -> Result<(BaseManifest, Written)> {
    let chunk_size = scratch.chunk_size;
    let mut chunks: BTreeMap<String, String> = BTreeMap::new();
    let mut written = Written::default();
    // The older base's last chunk, when it is short and the disk has grown past it: it must
    // be written again at full length (only a base's last chunk may be shorter).
    let grown_last = older
        .filter(|o| o.chunk_size == chunk_size && o.size_bytes < size_bytes && !o.size_bytes.is_multiple_of(chunk_size))
        .map(|o| o.size_bytes / chunk_size);
    // Untouched chunks keep the older base's objects (only when the chunking is the same).
    if let Some(older) = older.filter(|o| o.chunk_size == chunk_size) {
        for (index, name) in &older.chunks {
            let untouched = index
                .parse::<u64>()
                .is_ok_and(|i| !scratch.touched.contains_key(&i) && Some(i) != grown_last);
            if untouched {
                chunks.insert(index.clone(), name.clone());
                written.chunks_reused += 1;
            }
        }
    }
    let same_chunking = older.filter(|o| o.chunk_size == chunk_size);
    // Owned work items: (index, touched ranges, the older chunk's object if any).
    type Work = (u64, Vec<(u64, u64)>, Option<String>);
    let older_chunk = |index: u64| same_chunking.and_then(|o| o.chunks.get(&index.to_string()).cloned());
    let mut work: Vec<Work> = scratch
        .touched
        .iter()
        .map(|(&index, ranges)| (index, ranges.clone(), older_chunk(index)))
        .collect();
    if let Some(index) = grown_last.filter(|i| !scratch.touched.contains_key(i)) {
        work.push((index, Vec::new(), older_chunk(index))); // nothing new: the older bytes, padded
    }
    let file = scratch.file.clone();
    let (work_storage, work_key) = (storage.clone(), key.clone());
    let buffers = Arc::new(Buffers::default());
    let results: Vec<(u64, Option<(String, u64)>)> =
        futures::stream::iter(work.into_iter().map(move |(index, ranges, older_chunk)| {
            let (storage, key, file, buffers) = (work_storage.clone(), work_key.clone(), file.clone(), buffers.clone());
            async move {
                let length = chunk_len(size_bytes, chunk_size, index);
                let whole = ranges.len() == 1 && ranges[0] == (0, length);
                // Touched only by ZEROs (a trim) with nothing older under it: a zero chunk,
                // known without reading the hole back.
                if (whole || older_chunk.is_none()) && !has_data(&file, index * chunk_size, length)? {
                    return Ok((index, None));
                }
                let mut data = buffers.take(length as usize);
                file.read_exact_at(&mut data, index * chunk_size)
                    .context("cannot read the scratch file")?;
                if !whole {
                    // Only partly touched: the rest comes from the older base's chunk.
                    let mut completed = chunk_plaintext(storage.clone(), key.clone(), older_chunk, length).await?;
                    for &(start, end) in &ranges {
                        completed[start as usize..end as usize].copy_from_slice(&data[start as usize..end as usize]);
                    }
                    data = completed;
                }
                if data.iter().all(|&b| b == 0) {
                    buffers.give_back(data);
                    return Ok((index, None));
                }
                let name = ObjectName::BaseChunk { disk_id, seq, index }.to_string();
                let seal_key = key.clone();
                let (name, sealed, data) = tokio::task::spawn_blocking(move || {
                    let sealed = ferry_format::seal::seal(&seal_key, &name, &data, CHUNK_LEVEL);
                    (name, sealed, data)
                })
                .await
                .context("the sealing task failed")?;
                buffers.give_back(data);
                let sealed = sealed.context("cannot seal a chunk")?;
                let stored = sealed.len() as u64;
                storage
                    .put(&name, Bytes::from(sealed))
                    .await
                    .with_context(|| format!("cannot write {name}"))?;
                Ok::<_, anyhow::Error>((index, Some((name, stored))))
            }
        }))
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    for (index, stored) in results {
        match stored {
            Some((name, bytes)) => {
                chunks.insert(index.to_string(), name);
                written.chunks_written += 1;
                written.bytes_stored += bytes;
            }
            None => written.chunks_zero += 1,
        }
    }
    let manifest = BaseManifest {
        format: PLAINTEXT_FORMAT,
        disk_id,
        seq,
        size_bytes,
        chunk_size,
        chunks,
    };
    let name = ObjectName::BaseManifest { disk_id, seq }.to_string();
    written.bytes_stored += crate::sealed::write_json(&*storage, &key, &name, &manifest).await?;
    Ok((manifest, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_ranges_merge_and_split_at_chunk_edges() {
        let mut ranges = Vec::new();
        for range in [(10, 20), (30, 40), (20, 25), (0, 5), (35, 50), (5, 10)] {
            merge(&mut ranges, range);
        }
        assert_eq!(ranges, [(0, 25), (30, 50)]);
        merge(&mut ranges, (24, 31));
        assert_eq!(ranges, [(0, 50)]);

        let file = tempfile::tempfile().unwrap();
        let mut scratch = Scratch::new(file, 4096);
        scratch.write(4000, &[1u8; 200]).unwrap(); // spans chunks 0 and 1
        scratch.zero(8192 + 512, 512).unwrap();
        assert_eq!(scratch.touched[&0], [(4000, 4096)]);
        assert_eq!(scratch.touched[&1], [(0, 104)]);
        assert_eq!(scratch.touched[&2], [(512, 1024)]);
        assert_eq!(chunk_len(10_000, 4096, 2), 10_000 - 8192);
    }
}
