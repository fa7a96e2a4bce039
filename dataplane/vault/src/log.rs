//! A disk's log in storage (FORMATS.md section 5, step 3): listing its change sets, choosing
//! the chain that covers a range of seqs, and replaying the batches of that range in order,
//! each exactly once, into a [`RecordSink`] (a restore's image file, a consolidation's scratch).
//!
//! Up to `parallel` objects are downloaded ahead while batches are applied strictly in seq
//! order; a missing seq stops the replay and is named. Memory: about `parallel` sealed
//! objects plus their plaintexts.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ferry_format::batch::{self, DiskGeometry, Record};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::split_change_set;
use ferry_format::ObjectKey;
use ferry_storage::{list_all, ObjectMeta, ObjectStorage};
use futures::StreamExt;
use std::sync::Arc;
use uuid::Uuid;

/// One change set object: its name and the seqs it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogObject {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Every change set of `disk_id` in storage that may be used: names of other formats are
/// skipped, and so are objects of an owner epoch that does not own their seqs ([`crate::owners`]).
pub async fn list(storage: &dyn ObjectStorage, key: &ObjectKey, disk_id: Uuid) -> Result<Vec<LogObject>> {
    let history = crate::owners::History::read(storage, key, disk_id).await?;
    list_with(storage, &history, disk_id).await
}

/// [`list`] with the owner history already read.
pub async fn list_with(
    storage: &dyn ObjectStorage,
    history: &crate::owners::History,
    disk_id: Uuid,
) -> Result<Vec<LogObject>> {
    let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "log/"))
        .await
        .context("cannot list the log")?;
    Ok(from_listing(&listed, history))
}

/// The change sets in a listing of one disk's objects (of `log/` or of the whole disk) that
/// `history` lets count.
pub fn from_listing(listed: &[ObjectMeta], history: &crate::owners::History) -> Vec<LogObject> {
    let mut objects = Vec::new();
    for meta in listed {
        if let Ok(ObjectName::Log {
            epoch,
            first_seq,
            last_seq,
            ..
        }) = ObjectName::parse(&meta.name)
        {
            if !history.counts(epoch, first_seq, last_seq) {
                continue; // written by a stale owner after a takeover: never used
            }
            objects.push(LogObject {
                name: meta.name.clone(),
                first_seq,
                last_seq,
            });
        }
    }
    objects
}

/// Every change set of `disk_id` in storage, of every owner epoch, used or not (for deleting
/// what a base replaced).
pub async fn list_every_epoch(storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<Vec<LogObject>> {
    let everything = crate::owners::History::every_epoch();
    list_with(storage, &everything, disk_id).await
}

/// The last seq of the contiguous prefix of `disk_id`'s state in storage: its newest base,
/// then every batch the usable log holds without a gap after it (0 when nothing is stored).
/// A new owner of the disk starts after it.
pub async fn stored_prefix(
    storage: &dyn ObjectStorage,
    history: &crate::owners::History,
    disk_id: Uuid,
) -> Result<u64> {
    let bases = crate::base::list(storage, disk_id).await?;
    let mut next = bases.manifests.last().copied().unwrap_or(0) + 1;
    let mut objects = list_with(storage, history, disk_id).await?;
    objects.sort_by_key(|o| o.first_seq);
    for object in objects {
        if object.first_seq > next {
            break;
        }
        next = next.max(object.last_seq + 1);
    }
    Ok(next - 1)
}

/// The chain of objects that covers `after + 1 ..= target`: at each step the object that
/// starts at or before the next needed seq and reaches furthest, so objects that overlap after
/// a crash are read once.
pub fn cover(mut objects: Vec<LogObject>, after: u64, target: u64) -> Result<Vec<LogObject>> {
    objects.sort_by_key(|o| (o.first_seq, std::cmp::Reverse(o.last_seq)));
    let mut chain = Vec::new();
    let mut next = after + 1;
    let mut candidates = objects.into_iter().peekable();
    while next <= target {
        let mut best: Option<LogObject> = None;
        while let Some(object) = candidates.next_if(|o| o.first_seq <= next) {
            if object.last_seq >= next && best.as_ref().is_none_or(|b| object.last_seq > b.last_seq) {
                best = Some(object);
            }
        }
        match best {
            Some(object) => {
                next = object.last_seq + 1;
                chain.push(object);
            }
            None => {
                bail!("seq {next} is missing from storage: no log object holds it (the vault is incomplete or damaged)")
            }
        }
    }
    Ok(chain)
}

/// Where replayed records go.
pub trait RecordSink {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()>;
    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()>;
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub objects_read: usize,
    pub batches_applied: u64,
    pub bytes_written: u64,
    /// The source time of the last batch applied (0 when none was).
    pub last_source_time_ms: u64,
}

/// What to replay: the batches `after + 1 ..= target` of a disk, from `chain` (see [`cover`]).
pub struct Replay<'a> {
    pub storage: Arc<dyn ObjectStorage>,
    pub key: Arc<ObjectKey>,
    pub geometry: DiskGeometry,
    pub chain: &'a [LogObject],
    pub after: u64,
    pub target: u64,
    /// Objects downloaded ahead at most.
    pub parallel: usize,
}

impl Replay<'_> {
    /// Applies every batch in order into `sink`; `progress` is called after each object with
    /// the last seq applied.
    pub async fn run(
        &self,
        sink: &mut (dyn RecordSink + Send),
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<Replayed> {
        // The stream owns what it captures (names, an Arc), so the future stays Send for
        // callers that spawn it.
        // Each object is downloaded and unsealed (AES-GCM, zstd) on a blocking thread of its
        // own while the batches before it are applied here, so a restore uses every core.
        let (storage, key) = (self.storage.clone(), self.key.clone());
        let names: Vec<String> = self.chain.iter().map(|o| o.name.clone()).collect();
        let mut downloads = futures::stream::iter(names.into_iter().map(move |name| {
            let (storage, key) = (storage.clone(), key.clone());
            async move {
                let sealed = storage
                    .get(&name)
                    .await
                    .with_context(|| format!("cannot download {name}"))?;
                tokio::task::spawn_blocking(move || {
                    let plain = ferry_format::seal::unseal(&key, &name, &sealed)
                        .with_context(|| format!("object {name} is corrupt"))?;
                    Ok::<_, anyhow::Error>((name, Bytes::from(plain)))
                })
                .await
                .context("the unsealing task failed")?
            }
        }))
        .buffered(self.parallel.max(1));
        let mut done = Replayed::default();
        let mut next = self.after + 1;
        while let Some(download) = downloads.next().await {
            let (name, plain) = download?;
            done.objects_read += 1;
            for item in split_change_set(&plain) {
                let (header, bytes) = item.with_context(|| format!("object {name} holds a damaged batch"))?;
                if header.seq < next || header.seq > self.target {
                    continue; // already applied from an overlapping object, or past the target
                }
                if header.seq > next {
                    bail!(
                        "seq {next} is missing from storage (object {name} jumps to {})",
                        header.seq
                    );
                }
                let decoded = batch::decode(bytes, header.seq, self.geometry, u32::MAX - 40)
                    .with_context(|| format!("object {name}: batch {}", header.seq))?;
                for record in &decoded.records {
                    match record {
                        Record::Write { offset, data } => {
                            sink.write(*offset, data).context("cannot write the replayed data")?;
                            done.bytes_written += data.len() as u64;
                        }
                        Record::Zero { offset, length } => {
                            sink.zero(*offset, u64::from(*length))
                                .context("cannot write the replayed data")?;
                        }
                        Record::Bookmark(_) => {}
                    }
                }
                done.batches_applied += 1;
                done.last_source_time_ms = decoded.header.source_time_ms;
                next += 1;
            }
            progress(next - 1);
        }
        if next <= self.target {
            bail!(
                "seq {next} is missing from storage: the log ends before seq {}",
                self.target
            );
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(first: u64, last: u64) -> LogObject {
        LogObject {
            name: format!("{first}-{last}"),
            first_seq: first,
            last_seq: last,
        }
    }

    #[test]
    fn cover_reads_overlaps_once_and_names_gaps() {
        let chain = cover(vec![object(1, 4), object(5, 9), object(3, 12), object(13, 13)], 0, 13).unwrap();
        let names: Vec<&str> = chain.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["1-4", "3-12", "13-13"]);
        assert!(cover(vec![object(1, 4), object(6, 9)], 0, 9)
            .unwrap_err()
            .to_string()
            .contains("seq 5 is missing"));
        assert!(cover(vec![object(2, 4)], 0, 3)
            .unwrap_err()
            .to_string()
            .contains("seq 1 is missing"));
        assert_eq!(cover(vec![object(1, 4), object(5, 9)], 0, 3).unwrap().len(), 1);
        // After a base at seq 6: objects ending at or before it are not needed.
        let after_base = cover(vec![object(1, 4), object(5, 9), object(10, 12)], 6, 12).unwrap();
        let names: Vec<&str> = after_base.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["5-9", "10-12"]);
        assert!(
            cover(vec![], 6, 6).unwrap().is_empty(),
            "nothing to replay at the base itself"
        );
    }
}
