//! Opening a cache directory: lock it, then trust nothing (STYLE.md 6). Disk definitions are
//! read and checked; every segment is scanned record by record with every CRC checked; the
//! first record that does not check out ends its segment and is reported as [`Damage`] with
//! the segment and offset (a torn tail after a crash is the usual case); the index, each disk's
//! `durable_seq` and the space accounting are rebuilt from what is valid. Nothing here
//! panics or refuses to start on damaged data: damage is a value in the report.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use uuid::Uuid;

use super::record::{self, RecordStatus, BLOCK, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::{
    CacheError, CacheOptions, DiskMetaFile, DiskState, Entry, ReleaseRecord, SegmentInfo, DISK_META_MAGIC,
    DISK_META_VERSION, RELEASE_MAGIC, RELEASE_SLOT_BYTES, RELEASE_VERSION,
};
use ferry_durable::checked;

/// Something found wrong in the cache, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}: {}", self.file.display(), self.offset, self.reason)
    }
}

/// What opening the cache found.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub engine: &'static str,
    pub segments_scanned: usize,
    pub records_recovered: u64,
    pub disks: usize,
    pub damage: Vec<Damage>,
}

pub(super) struct Recovered {
    pub disks: HashMap<Uuid, DiskState>,
    pub segments: BTreeMap<u64, SegmentInfo>,
    pub next_segment_id: u64,
    pub lock: File,
    pub report: RecoveryReport,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn private_dir(path: &Path) -> Result<(), CacheError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_at(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_at(path))
}

fn take_lock(dir: &Path) -> Result<File, CacheError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_at(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(CacheError::Locked(dir.to_path_buf())),
        Err(errno) => {
            return Err(CacheError::Io {
                path,
                source: errno.into(),
            })
        }
    }
    Ok(file)
}

struct ScannedRecord {
    header: record::RecordHeader,
    offset: u64,
    record_len: u64,
    has_bookmark: bool,
}

/// A segment's id (None when its header is unreadable), its valid records, and the damage
/// that ended the scan, if any.
type Scan = (Option<u64>, Vec<ScannedRecord>, Option<Damage>);

/// Reads a segment's records until the first that does not check out.
fn scan_segment(path: &Path, max_batch_len: u32) -> Result<Scan, CacheError> {
    let file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    let damage = |offset: u64, reason: String| {
        Some(Damage {
            file: path.to_path_buf(),
            offset,
            reason,
        })
    };
    let mut block = vec![0u8; BLOCK];
    if len < SEGMENT_HEADER_LEN as u64 || file.read_exact_at(&mut block, 0).is_err() {
        return Ok((None, Vec::new(), damage(0, "segment is shorter than its header".into())));
    }
    let id = match record::parse_segment_header(&block) {
        Ok(id) => id,
        Err(reason) => return Ok((None, Vec::new(), damage(0, reason))),
    };
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN as u64;
    while offset + BLOCK as u64 <= len {
        file.read_exact_at(&mut block, offset).map_err(io_at(path))?;
        let header = match record::parse_record_header(&block, max_batch_len) {
            RecordStatus::End => break,
            RecordStatus::Corrupted(reason) => return Ok((Some(id), records, damage(offset, reason))),
            RecordStatus::Valid(header) => header,
        };
        let record_len = record::record_len(header.batch_len as usize) as u64;
        if offset + record_len > len {
            return Ok((
                Some(id),
                records,
                damage(offset, "record runs past the end of the segment".into()),
            ));
        }
        let mut batch = vec![0u8; header.batch_len as usize];
        file.read_exact_at(&mut batch, offset + RECORD_HEADER_LEN as u64)
            .map_err(io_at(path))?;
        if let Err(reason) = record::check_batch(&header, &batch) {
            return Ok((Some(id), records, damage(offset, reason)));
        }
        let has_bookmark = ferry_format::batch::has_bookmark(&batch);
        records.push(ScannedRecord {
            header,
            offset,
            record_len,
            has_bookmark,
        });
        offset += record_len;
    }
    if offset < len && len % BLOCK as u64 != 0 {
        // Segments are preallocated in whole blocks: a partial block means the file was cut.
        return Ok((
            Some(id),
            records,
            damage(offset, "segment ends inside a block (truncated)".into()),
        ));
    }
    Ok((Some(id), records, None))
}

fn load_disks(dir: &Path, report: &mut RecoveryReport) -> Result<HashMap<Uuid, DiskState>, CacheError> {
    let mut disks = HashMap::new();
    let mut release_files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let path = entry.map_err(io_at(dir))?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("tmp") => {
                let _ = fs::remove_file(&path); // an interrupted durable rename
            }
            Some("meta") => match checked::read::<DiskMetaFile>(&path, DISK_META_MAGIC, DISK_META_VERSION) {
                Ok(file) => {
                    let recent: VecDeque<(u64, u32)> = file.recent.into_iter().collect();
                    let mut disk = DiskState::new(file.meta, file.released_through, recent);
                    disk.voided = file.voided;
                    disk.release_generation = file.release_generation;
                    disks.insert(disk.meta.disk_id, disk);
                }
                Err(e) => report.damage.push(Damage {
                    file: path.clone(),
                    offset: 0,
                    reason: e.to_string(),
                }),
            },
            Some("release") => release_files.push(path),
            _ => {}
        }
    }
    for path in release_files {
        let disk = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| Uuid::parse_str(stem).ok())
            .and_then(|disk_id| disks.get_mut(&disk_id));
        let Some(disk) = disk else {
            // A forgotten disk's, whose `.meta` went first (or a stray file): nothing reads it.
            let _ = fs::remove_file(&path);
            continue;
        };
        let latest = ferry_durable::two_slots::read_latest::<ReleaseRecord>(
            &path,
            RELEASE_SLOT_BYTES,
            RELEASE_MAGIC,
            RELEASE_VERSION,
            |record| record.belongs_to(&disk.meta),
        );
        match latest {
            Ok(Some((generation, record))) if generation > disk.release_generation => {
                // Only ever forward: a release never lowers the watermark.
                if record.released_through >= disk.released_through {
                    disk.released_through = record.released_through;
                    disk.durable_seq = record.released_through;
                    disk.recent = record.recent.into_iter().collect();
                }
                disk.release_generation = generation;
            }
            Ok(_) => {}
            // The `.meta` file's watermark stands: the batches after it are uploaded again.
            Err(e) => report.damage.push(Damage {
                file: path.clone(),
                offset: 0,
                reason: e.to_string(),
            }),
        }
    }
    Ok(disks)
}

pub(super) fn recover(options: &CacheOptions) -> Result<Recovered, CacheError> {
    private_dir(&options.directory)?;
    let lock = take_lock(&options.directory)?;
    let segments_dir = options.directory.join("segments");
    let disks_dir = options.directory.join("disks");
    private_dir(&segments_dir)?;
    private_dir(&disks_dir)?;
    let mut report = RecoveryReport::default();
    let mut disks = load_disks(&disks_dir, &mut report)?;

    let mut paths: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(&segments_dir).map_err(io_at(&segments_dir))? {
        let path = entry.map_err(io_at(&segments_dir))?.path();
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok());
        match (id, path.extension().and_then(|e| e.to_str())) {
            (Some(id), Some("seg")) => paths.push((id, path)),
            _ => report.damage.push(Damage {
                file: path,
                offset: 0,
                reason: "unexpected file in segments/ (left alone)".into(),
            }),
        }
    }
    paths.sort();
    let max_batch_len = options.max_batch_bytes.max(64 << 20) + 40;
    let mut segments = BTreeMap::new();
    let mut next_segment_id = 1;
    for (named_id, path) in paths {
        next_segment_id = next_segment_id.max(named_id + 1);
        report.segments_scanned += 1;
        let (id, records, damage) = scan_segment(&path, max_batch_len)?;
        report.damage.extend(damage);
        if id != Some(named_id) {
            // An unreadable header: keep the file for inspection, but neither use nor count it.
            continue;
        }
        let mut info = SegmentInfo {
            path,
            live_records: 0,
            live_bytes: 0,
        };
        for scanned in records {
            let Some(disk) = disks.get_mut(&scanned.header.disk_id) else {
                continue;
            };
            if scanned.header.seq <= disk.released_through || disk.entries.contains_key(&scanned.header.seq) {
                continue;
            }
            let seq = scanned.header.seq;
            if disk.voided.iter().any(|mark| mark.voids(seq, named_id, scanned.offset)) {
                continue; // given up by its sender (void.rs)
            }
            disk.entries.insert(
                scanned.header.seq,
                Entry {
                    segment_id: named_id,
                    offset: scanned.offset,
                    record_len: scanned.record_len,
                    batch_len: scanned.header.batch_len,
                    header_crc: scanned.header.batch_header_crc,
                    has_bookmark: scanned.has_bookmark,
                    resident: None,
                },
            );
            info.live_records += 1;
            info.live_bytes += scanned.record_len;
            report.records_recovered += 1;
        }
        if info.live_records == 0 {
            fs::remove_file(&info.path).map_err(io_at(&info.path))?;
        } else {
            segments.insert(named_id, info);
        }
    }
    ferry_durable::fsync_dir(&segments_dir).map_err(io_at(&segments_dir))?;
    for disk in disks.values_mut() {
        disk.advance_durable();
    }
    report.disks = disks.len();
    for damage in &report.damage {
        tracing::warn!(%damage, "cache damage found while recovering");
    }
    Ok(Recovered {
        disks,
        segments,
        next_segment_id,
        lock,
        report,
    })
}
