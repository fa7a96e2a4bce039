//! One pass over a disk: read it sequentially, hash each block, send the blocks whose digest
//! differs from the block map (WRITE for data, ZERO for runs of zeros), then a bookmark.
//!
//! Two threads of work: a reader thread (blocking reads, BLAKE3, batch building; one memcpy
//! of changed data into the batch) and the async sender, which keeps up to `window` batches in
//! flight on one HTTP/2 connection. Memory is bounded by `window + 2` batches of at most
//! `batch_bytes` each plus one read buffer.
//!
//! Ordering rules that make a crash at any point safe (see blockmap.rs):
//! - a batch's previously known blocks are marked unknown (durably) before it is sent;
//! - digests are recorded only once `durable_seq` covers their batch;
//! - the bookmark is sent alone, after every data batch of the pass is durable, so a
//!   bookmark can never sit past a gap that a restart would give up.

use bytes::Bytes;
use ferry_client::{BatchSender, ClientError, DataClient, RetryPolicy};

/// A batch is retried for about 30 s (12 attempts, backoff doubling from 50 ms to 5 s): long
/// enough to ride out a ferryd restart; then the pass fails, and the disk's set-up asks the
/// configuration server where to send when its process server stays unreachable (scale-out).
const SEND_RETRIES: RetryPolicy = RetryPolicy {
    max_attempts: 12,
    initial_backoff: std::time::Duration::from_millis(50),
    max_backoff: std::time::Duration::from_secs(5),
};
use ferry_format::batch::{BatchEncoder, RECORD_HEADER_LEN};
use ferry_format::bookmark::{Bookmark, BookmarkId, BookmarkKind};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::blockmap::{digest, BlockMap, Digest, UNKNOWN};
use crate::device::Device;

/// How a pass reads and sends.
#[derive(Clone, Copy, Debug)]
pub struct PassSettings {
    pub block_bytes: u32,
    pub read_bytes: u32,
    /// Target payload per batch (already capped by the server's `max_batch_bytes`).
    pub batch_bytes: u32,
    /// Batches in flight (already capped by the server's window).
    pub window: u32,
    pub read_rate_bytes_per_sec: u64,
    pub keep_page_cache: bool,
}

/// Progress counters, read by the status writer while the pass runs.
#[derive(Debug, Default)]
pub struct PassCounters {
    pub scanned_bytes: AtomicU64,
    pub changed_blocks: AtomicU64,
    pub sent_bytes: AtomicU64,
}

/// What the pass's bookmark says, decided by the caller once the reads are done (the
/// quiesce outcome is known only then).
#[derive(Clone, Debug)]
pub struct BookmarkChoice {
    pub kind: BookmarkKind,
    pub source_time_unix_ms: u64,
    /// The consistency group the bookmark belongs to (a `bookmark` command's).
    pub group_id: Option<Uuid>,
}

#[derive(Clone, Debug)]
pub struct PassOutcome {
    pub bookmark_id: String,
    pub bookmark_kind: BookmarkKind,
    pub bookmark_seq: u64,
    pub source_time_unix_ms: u64,
    pub data_batches: u64,
    pub scanned_bytes: u64,
    pub changed_blocks: u64,
    /// Batch bytes sent and acknowledged (payload plus framing).
    pub sent_bytes: u64,
    pub read_seconds: f64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("block map: {0}")]
    Map(std::io::Error),
    #[error(transparent)]
    Send(#[from] ClientError),
    #[error("{0}")]
    Other(String),
}

pub struct PassRequest {
    pub client: DataClient,
    pub disk_id: Uuid,
    pub device: Arc<Device>,
    pub map: Arc<BlockMap>,
    /// The blocks of acknowledged batches not known to be uploaded yet.
    pub unconfirmed: Arc<crate::unconfirmed::Unconfirmed>,
    /// `durable_seq + 1` on the server.
    pub first_seq: u64,
    pub settings: PassSettings,
    pub counters: Arc<PassCounters>,
    pub bookmark_id: BookmarkId,
    pub bookmark_tag: String,
    /// Fired once every block has been read (the caller may thaw the file systems).
    pub reads_done: oneshot::Sender<()>,
    pub bookmark: oneshot::Receiver<BookmarkChoice>,
}

/// Batches sent but not yet covered by `durable_seq`: seq → (their blocks' digests, bytes).
type Pending = BTreeMap<u64, (Vec<(u64, Digest)>, u64)>;

enum ReadItem {
    Batch {
        seq: u64,
        bytes: Bytes,
        blocks: Vec<(u64, Digest)>,
    },
    Done {
        next_seq: u64,
    },
    Failed(PassError),
}

pub async fn run_pass(request: PassRequest) -> Result<PassOutcome, PassError> {
    let started = Instant::now();
    let PassRequest {
        client,
        disk_id,
        device,
        map,
        unconfirmed,
        first_seq,
        settings,
        counters,
        bookmark_id,
        bookmark_tag,
        reads_done,
        bookmark,
    } = request;
    let (tx, mut rx) = mpsc::channel::<ReadItem>(2);
    let reader = Reader {
        device: device.clone(),
        map: map.clone(),
        settings,
        counters: counters.clone(),
    };
    let reader_thread = std::thread::Builder::new()
        .name("ferry-agent-read".into())
        .spawn(move || reader.run(first_seq, tx))
        .map_err(|e| PassError::Other(format!("cannot start the reader thread: {e}")))?;

    let sender = BatchSender::new(client.clone(), disk_id, settings.window as usize, SEND_RETRIES);
    let mut in_flight = FuturesUnordered::new();
    // Slides over seqs, as ferryd's window does (see ferry_client::SendWindow).
    let mut window = ferry_client::SendWindow::new(settings.window as usize);
    let mut pending = Pending::new();
    let mut durable = first_seq - 1;
    let mut next_seq = None;
    let mut read_seconds = 0.0;
    let mut data_batches = 0;
    let mut reads_done = Some(reads_done);
    let result: Result<(), PassError> = async {
        loop {
            // The reader numbers batches consecutively from first_seq.
            let can_take = next_seq.is_none() && window.may_send(first_seq + data_batches);
            tokio::select! {
                item = rx.recv(), if can_take => match item {
                    Some(ReadItem::Batch { seq, bytes, blocks }) => {
                        data_batches += 1;
                        window.sent(seq);
                        pending.insert(seq, (blocks, bytes.len() as u64));
                        let sender = &sender;
                        in_flight.push(async move { sender.send_one(seq, bytes).await.map(|d| (seq, d)) });
                    }
                    Some(ReadItem::Done { next_seq: next }) => {
                        next_seq = Some(next);
                        read_seconds = started.elapsed().as_secs_f64();
                        if let Some(done) = reads_done.take() {
                            let _ = done.send(());
                        }
                    }
                    Some(ReadItem::Failed(error)) => return Err(error),
                    None => return Err(PassError::Other("the reader stopped without finishing".into())),
                },
                Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                    let (seq, durable_now) = answer?;
                    window.answered(seq);
                    durable = durable.max(durable_now);
                    record_durable(&map, &unconfirmed, &mut pending, durable, &counters)?;
                }
                else => {
                    if next_seq.is_some() && in_flight.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    drop(rx);
    let _ = reader_thread.join();
    result?;
    let bookmark_seq = next_seq.unwrap_or(first_seq);
    if durable < bookmark_seq - 1 {
        // Each answer reports durable_seq as it was then; ask once everything is answered.
        durable = durable.max(client.get_disk(disk_id).await?.durable_seq);
        record_durable(&map, &unconfirmed, &mut pending, durable, &counters)?;
    }
    if !pending.is_empty() {
        return Err(PassError::Other(format!(
            "the server acknowledged every batch but its durable_seq is {durable}, not {}",
            bookmark_seq - 1
        )));
    }
    let choice = bookmark
        .await
        .map_err(|_| PassError::Other("the pass was cancelled before its bookmark".into()))?;
    let mut encoder = BatchEncoder::new(bookmark_seq, choice.source_time_unix_ms);
    let tag: String = bookmark_tag
        .chars()
        .take(ferry_format::bookmark::BOOKMARK_TAG_MAX_CHARS)
        .collect();
    encoder.bookmark(&Bookmark {
        id: bookmark_id.clone(),
        kind: choice.kind,
        tag: Some(tag),
        group_id: choice.group_id,
    });
    let bookmark_batch = encoder.finish();
    let bookmark_len = bookmark_batch.len() as u64;
    sender.send_one(bookmark_seq, bookmark_batch).await?;
    counters.sent_bytes.fetch_add(bookmark_len, Ordering::Relaxed);
    map.sync().map_err(PassError::Map)?;
    // What storage holds now: those batches' blocks need no journal any more (a failed ask
    // only keeps them a pass longer).
    if let Ok(info) = client.get_disk(disk_id).await {
        unconfirmed.uploaded(info.uploaded_seq);
    }
    Ok(PassOutcome {
        bookmark_id: bookmark_id.to_string(),
        bookmark_kind: choice.kind,
        bookmark_seq,
        source_time_unix_ms: choice.source_time_unix_ms,
        data_batches,
        scanned_bytes: counters.scanned_bytes.load(Ordering::Relaxed),
        changed_blocks: counters.changed_blocks.load(Ordering::Relaxed),
        sent_bytes: counters.sent_bytes.load(Ordering::Relaxed),
        read_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Records the digests of every pending batch at or below `durable`.
fn record_durable(
    map: &BlockMap,
    unconfirmed: &crate::unconfirmed::Unconfirmed,
    pending: &mut Pending,
    durable: u64,
    counters: &PassCounters,
) -> Result<(), PassError> {
    let still_pending = pending.split_off(&(durable + 1));
    for (seq, (blocks, bytes)) in std::mem::replace(pending, still_pending) {
        map.record(&blocks).map_err(PassError::Map)?;
        unconfirmed.acked(seq, blocks.iter().map(|(block, _)| *block));
        counters.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    Ok(())
}

struct Reader {
    device: Arc<Device>,
    map: Arc<BlockMap>,
    settings: PassSettings,
    counters: Arc<PassCounters>,
}

/// The batch being built.
struct Building {
    encoder: Option<BatchEncoder>,
    blocks: Vec<(u64, Digest)>,
    /// Blocks whose known digest must be forgotten before the batch leaves.
    forget: Vec<u64>,
    /// A run of zero blocks not yet encoded: (offset, length).
    zero_run: Option<(u64, u64)>,
    seq: u64,
}

impl Building {
    fn encoder(&mut self, capacity: usize) -> &mut BatchEncoder {
        let seq = self.seq;
        self.encoder
            .get_or_insert_with(|| BatchEncoder::with_capacity(seq, 0, capacity))
    }

    fn flush_zero_run(&mut self, capacity: usize) {
        if let Some((offset, length)) = self.zero_run.take() {
            self.encoder(capacity).zero(offset, length);
        }
    }

    fn payload_len(&self) -> usize {
        self.encoder.as_ref().map_or(0, |e| e.payload_len())
    }
}

impl Reader {
    fn run(self, first_seq: u64, tx: mpsc::Sender<ReadItem>) {
        let item = match self.scan(first_seq, &tx) {
            Ok(next_seq) => ReadItem::Done { next_seq },
            Err(error) => ReadItem::Failed(error),
        };
        let _ = tx.blocking_send(item);
    }

    /// Reads the whole disk; returns the seq after the last batch sent.
    fn scan(&self, first_seq: u64, tx: &mpsc::Sender<ReadItem>) -> Result<u64, PassError> {
        let block = self.settings.block_bytes as u64;
        let read = self.settings.read_bytes as usize;
        let chunk_blocks = read / block as usize;
        let size = self.device.size_bytes;
        let total_blocks = size.div_ceil(block);
        let capacity = self.settings.batch_bytes as usize;
        // The worst case one chunk adds: all its data and two record headers per block.
        let chunk_worst = read + (2 * chunk_blocks + 2) * RECORD_HEADER_LEN;
        let zero_digest = digest(&vec![0u8; block as usize]);
        let mut buf = self.device.read_buffer(read);
        let mut building = Building {
            encoder: None,
            blocks: Vec::new(),
            forget: Vec::new(),
            zero_run: None,
            seq: first_seq,
        };
        let started = Instant::now();
        self.device.advise_sequential();
        let mut first_block = 0u64;
        while first_block < total_blocks {
            if building.payload_len() + chunk_worst > capacity && !self.send(&mut building, tx, capacity)? {
                return Err(PassError::Other("the pass was cancelled".into()));
            }
            let count = chunk_blocks.min((total_blocks - first_block) as usize);
            let offset = first_block * block;
            let len = ((count as u64) * block).min(size - offset) as usize;
            self.device
                .read_exact_at(&mut buf[..len], offset)
                .map_err(|e| PassError::Read {
                    path: self.device.path.display().to_string(),
                    message: format!("at offset {offset}: {e}"),
                })?;
            if !self.settings.keep_page_cache && !self.device.is_block_device {
                self.device.drop_cached(offset, len as u64);
            }
            let known = self.map.entries(first_block, count).map_err(PassError::Map)?;
            let mut write_run: Option<(usize, usize)> = None; // byte range of buf
            for (i, known_digest) in known.iter().enumerate() {
                let start = i * block as usize;
                let end = (start + block as usize).min(len);
                let data = &buf[start..end];
                let zero = is_zero(data);
                let now = match (zero, data.len() as u64 == block) {
                    (true, true) => zero_digest,
                    _ => digest(data),
                };
                let index = first_block + i as u64;
                let changed = now != *known_digest;
                if !changed || !zero {
                    building.flush_zero_run(capacity);
                }
                if !changed || zero {
                    if let Some((a, b)) = write_run.take() {
                        building.encoder(capacity).write(offset + a as u64, &buf[a..b]);
                    }
                }
                if !changed {
                    continue;
                }
                self.counters.changed_blocks.fetch_add(1, Ordering::Relaxed);
                if *known_digest != UNKNOWN {
                    building.forget.push(index);
                }
                building.blocks.push((index, now));
                let block_offset = offset + start as u64;
                if zero {
                    building.zero_run = Some(match building.zero_run {
                        Some((run_offset, run_len)) => (run_offset, run_len + data.len() as u64),
                        None => (block_offset, data.len() as u64),
                    });
                } else {
                    write_run = Some(match write_run {
                        Some((a, _)) => (a, end),
                        None => (start, end),
                    });
                }
            }
            if let Some((a, b)) = write_run.take() {
                building.encoder(capacity).write(offset + a as u64, &buf[a..b]);
            }
            first_block += count as u64;
            let scanned = self.counters.scanned_bytes.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
            self.pace(scanned, started);
        }
        if !self.send(&mut building, tx, capacity)? {
            return Err(PassError::Other("the pass was cancelled".into()));
        }
        Ok(building.seq)
    }

    /// Finishes and hands over the batch being built (if it has records). `false` when the
    /// sender has gone away.
    fn send(&self, building: &mut Building, tx: &mpsc::Sender<ReadItem>, capacity: usize) -> Result<bool, PassError> {
        building.flush_zero_run(capacity);
        let Some(encoder) = building.encoder.take() else {
            return Ok(true);
        };
        self.map.mark_unknown(&building.forget).map_err(PassError::Map)?;
        building.forget.clear();
        let mut encoder = encoder;
        encoder.source_time_ms(ferry_client::clock::now_unix_ms());
        let bytes = encoder.finish();
        let item = ReadItem::Batch {
            seq: building.seq,
            bytes,
            blocks: std::mem::take(&mut building.blocks),
        };
        building.seq += 1;
        Ok(tx.blocking_send(item).is_ok())
    }

    /// Sleeps as needed to keep the read rate at or under the configured cap.
    fn pace(&self, scanned: u64, started: Instant) {
        let rate = self.settings.read_rate_bytes_per_sec;
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(scanned as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn is_zero(data: &[u8]) -> bool {
    // 64 bytes per step, OR-folded so the compiler can vectorise the inner loop.
    let mut chunks = data.chunks_exact(64);
    let all_zero = chunks
        .by_ref()
        .all(|chunk| chunk.iter().fold(0u8, |acc, b| acc | b) == 0);
    all_zero && chunks.remainder().iter().all(|b| *b == 0)
}
