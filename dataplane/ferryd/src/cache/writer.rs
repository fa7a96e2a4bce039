//! The cache thread: group commit (STYLE.md 4). It takes every batch queued (up to
//! [`super::GROUP_MAX_BYTES`]), places them one after another in the active segment (rolling
//! to a new preallocated segment when it is full), writes them through the engine, fdatasyncs,
//! and only then makes them visible and answers. A failed write fails the whole group and
//! retires the active segment: later batches go to a fresh one, never over bytes of unknown
//! state.

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use uuid::Uuid;

use super::aligned::{AlignedBuf, ALIGNMENT};
use super::engine::WriteEngine;
use super::record::{self, SEGMENT_HEADER_LEN};
use super::{AppendError, Entry, SegmentInfo, Shared, GROUP_MAX_BYTES, WRITE_QUEUE_DEPTH};

pub(super) struct WriteRequest {
    pub disk_id: Uuid,
    pub seq: u64,
    pub record: Bytes,
    pub batch_len: u32,
    pub header_crc: u32,
    pub reply: tokio::sync::oneshot::Sender<Result<u64, AppendError>>,
}

/// Why a write was not queued.
pub(super) enum QueueRefusal {
    /// [`WRITE_QUEUE_DEPTH`] writes are waiting already.
    Full,
    /// The cache thread has stopped.
    Stopped,
}

enum Message {
    Write(WriteRequest),
    Shutdown,
}

#[derive(Clone)]
pub(super) struct WriterHandle {
    sender: Sender<Message>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl WriterHandle {
    /// Queues a write without ever blocking the caller (a tokio worker): a full queue is
    /// refused, and the caller answers `503 busy` so the client retries a moment later.
    pub fn try_send(&self, request: WriteRequest) -> Result<(), QueueRefusal> {
        match self.sender.try_send(Message::Write(request)) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(QueueRefusal::Full),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(QueueRefusal::Stopped),
        }
    }

    /// Lets the thread finish what is queued, then waits for it.
    pub fn shutdown(&self) {
        let _ = self.sender.send(Message::Shutdown);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

struct ActiveSegment {
    id: u64,
    file: File,
    used: u64,
}

struct Writer {
    shared: Arc<Shared>,
    engine: Box<dyn WriteEngine>,
    next_segment_id: u64,
    active: Option<ActiveSegment>,
    /// Segments filled during the current group, still to be written and synced.
    retired: Vec<ActiveSegment>,
    /// Held for the cache's lifetime: the advisory lock on `LOCK`.
    _lock: File,
}

pub(super) fn start(
    shared: Arc<Shared>,
    engine: Box<dyn WriteEngine>,
    next_segment_id: u64,
    lock: File,
) -> WriterHandle {
    let (sender, receiver) = crossbeam_channel::bounded(WRITE_QUEUE_DEPTH);
    let writer = Writer {
        shared,
        engine,
        next_segment_id,
        active: None,
        retired: Vec::new(),
        _lock: lock,
    };
    let thread = std::thread::Builder::new()
        .name("ferry-cache".into())
        .spawn(move || writer.run(receiver))
        .ok();
    WriterHandle {
        sender,
        thread: Arc::new(Mutex::new(thread)),
    }
}

/// Opens a new segment file for O_DIRECT writes (plain writes where the file system has no
/// O_DIRECT, such as tmpfs).
fn open_segment_file(path: &PathBuf) -> io::Result<File> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let _ = std::fs::remove_file(path);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        }
        other => other,
    }
}

enum PlaceError {
    Full,
    Io(String),
}

impl Writer {
    fn run(mut self, receiver: Receiver<Message>) {
        loop {
            let first = match receiver.recv() {
                Ok(Message::Write(request)) => request,
                Ok(Message::Shutdown) | Err(_) => return,
            };
            let mut group_bytes = first.record.len();
            let mut group = vec![first];
            let mut stop = false;
            while group_bytes < GROUP_MAX_BYTES {
                match receiver.try_recv() {
                    Ok(Message::Write(request)) => {
                        group_bytes += request.record.len();
                        group.push(request);
                    }
                    Ok(Message::Shutdown) => {
                        stop = true;
                        break;
                    }
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            self.commit(group);
            if stop {
                return;
            }
        }
    }

    fn create_segment(&mut self) -> Result<ActiveSegment, PlaceError> {
        let segment_bytes = self.shared.options.segment_bytes;
        {
            let state = self.shared.state();
            if (state.segments.len() as u64 + 1) * segment_bytes > self.shared.limit_bytes() {
                return Err(PlaceError::Full);
            }
        }
        let id = self.next_segment_id;
        self.next_segment_id += 1;
        let dir = self.shared.segments_dir();
        let path = dir.join(format!("{id:016}.seg"));
        let io_error = |e: io::Error| PlaceError::Io(format!("{}: {e}", path.display()));
        let file = open_segment_file(&path).map_err(io_error)?;
        if let Err(errno) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, segment_bytes) {
            let _ = std::fs::remove_file(&path);
            return Err(match errno {
                rustix::io::Errno::NOSPC => PlaceError::Full,
                errno => io_error(errno.into()),
            });
        }
        let mut header = AlignedBuf::zeroed(SEGMENT_HEADER_LEN);
        header.as_mut_slice()[..44].copy_from_slice(&record::encode_segment_header(
            id,
            ferry_client::clock::now_unix_ms(),
            segment_bytes,
        ));
        let written = file
            .write_all_at(header.as_slice(), 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| ferry_durable::fsync_dir(&dir));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(io_error(e));
        }
        let mut state = self.shared.state();
        state.segments.insert(
            id,
            SegmentInfo {
                path,
                live_records: 0,
                live_bytes: 0,
            },
        );
        state.active_segment = Some(id);
        state.active_used = SEGMENT_HEADER_LEN as u64;
        Ok(ActiveSegment {
            id,
            file,
            used: SEGMENT_HEADER_LEN as u64,
        })
    }

    /// Finds room for `len` bytes: (segment id, offset).
    fn place(&mut self, len: u64) -> Result<(u64, u64), PlaceError> {
        let segment_bytes = self.shared.options.segment_bytes;
        if let Some(active) = &mut self.active {
            if active.used + len <= segment_bytes {
                let offset = active.used;
                active.used += len;
                self.shared.state().active_used = active.used;
                return Ok((active.id, offset));
            }
        }
        let mut fresh = self.create_segment()?;
        if let Some(old) = self.active.take() {
            self.retired.push(old);
        }
        let offset = fresh.used;
        fresh.used += len;
        self.shared.state().active_used = fresh.used;
        let id = fresh.id;
        self.active = Some(fresh);
        Ok((id, offset))
    }

    fn commit(&mut self, group: Vec<WriteRequest>) {
        let mut placed = Vec::with_capacity(group.len());
        let mut refused = Vec::new();
        for mut request in group {
            if !(request.record.as_ptr() as usize).is_multiple_of(ALIGNMENT) || request.record.len() % ALIGNMENT != 0 {
                // Callers build records in aligned buffers; copy anything else rather than fail.
                let mut aligned = AlignedBuf::zeroed(request.record.len());
                aligned.as_mut_slice()[..request.record.len()].copy_from_slice(&request.record);
                request.record = aligned.freeze();
            }
            match self.place(request.record.len() as u64) {
                Ok((segment, offset)) => placed.push((request, segment, offset)),
                Err(PlaceError::Full) => refused.push((request, AppendError::CacheFull)),
                Err(PlaceError::Io(message)) => refused.push((request, AppendError::Io(message))),
            }
        }
        let mut outcome = Ok(());
        let mut index = 0;
        while index < placed.len() && outcome.is_ok() {
            let segment = placed[index].1;
            let run_end = placed[index..]
                .iter()
                .position(|(_, s, _)| *s != segment)
                .map_or(placed.len(), |n| index + n);
            let writes: Vec<(u64, &[u8])> = placed[index..run_end]
                .iter()
                .map(|(r, _, offset)| (*offset, &r.record[..]))
                .collect();
            // Field by field, so the engine can be borrowed mutably beside the file.
            let file = self
                .active
                .iter()
                .chain(self.retired.iter())
                .find(|s| s.id == segment)
                .map(|s| &s.file);
            outcome = match file {
                Some(file) => self
                    .engine
                    .write_and_sync(file, &writes)
                    .map_err(|e| format!("segment {segment}: {e}")),
                None => Err(format!("segment {segment} is not open")),
            };
            index = run_end;
        }
        self.retired.clear();
        if let Err(message) = &outcome {
            tracing::error!(error = %message, "cache write failed; the batches of this group are refused and the segment retired");
            self.active = None;
            self.shared.state().active_segment = None;
        }
        self.apply(placed, refused, outcome);
    }

    /// Publishes the group's outcome in the index, then answers every request.
    fn apply(
        &mut self,
        placed: Vec<(WriteRequest, u64, u64)>,
        refused: Vec<(WriteRequest, AppendError)>,
        outcome: Result<(), String>,
    ) {
        let budget = self.shared.resident_budget_bytes();
        let mut answers = Vec::with_capacity(placed.len() + refused.len());
        let mut guard = self.shared.state();
        let state = &mut *guard;
        for (request, error) in refused {
            state.pending_bytes = state.pending_bytes.saturating_sub(request.record.len() as u64);
            if let Some(disk) = state.disks.get_mut(&request.disk_id) {
                disk.in_flight.remove(&request.seq);
            }
            answers.push((request.reply, Err(error)));
        }
        let mut touched = Vec::new();
        for (request, segment_id, offset) in placed {
            let record_len = request.record.len() as u64;
            state.pending_bytes = state.pending_bytes.saturating_sub(record_len);
            let Some(disk) = state.disks.get_mut(&request.disk_id) else {
                answers.push((request.reply, Err(AppendError::Io("the disk disappeared".into()))));
                continue;
            };
            disk.in_flight.remove(&request.seq);
            if let Err(message) = &outcome {
                answers.push((request.reply, Err(AppendError::Io(message.clone()))));
                continue;
            }
            disk.entries.insert(
                request.seq,
                Entry {
                    segment_id,
                    offset,
                    record_len,
                    batch_len: request.batch_len,
                    header_crc: request.header_crc,
                    has_bookmark: ferry_format::batch::has_bookmark(
                        &request.record
                            [record::RECORD_HEADER_LEN..record::RECORD_HEADER_LEN + request.batch_len as usize],
                    ),
                    resident: Some(request.record),
                },
            );
            if let Some(segment) = state.segments.get_mut(&segment_id) {
                segment.live_records += 1;
                segment.live_bytes += record_len;
            }
            state.resident_bytes += record_len;
            state.resident_order.push_back((request.disk_id, request.seq));
            touched.push((request.disk_id, request.reply));
        }
        for (disk_id, reply) in touched {
            let durable = state.disks.get_mut(&disk_id).map(|disk| {
                let before = disk.durable_seq;
                disk.advance_durable();
                (disk.durable_seq, disk.durable_seq > before)
            });
            if let Some((_, true)) = durable {
                state.advanced.insert(disk_id);
            }
            let durable = durable.map(|(seq, _)| seq);
            answers.push((
                reply,
                durable.ok_or_else(|| AppendError::Io("the disk disappeared".into())),
            ));
        }
        // Keep at most `budget` bytes resident; older batches are read back from their segment.
        while state.resident_bytes > budget {
            let Some((disk_id, seq)) = state.resident_order.pop_front() else {
                break;
            };
            if let Some(entry) = state.disks.get_mut(&disk_id).and_then(|d| d.entries.get_mut(&seq)) {
                if let Some(resident) = entry.resident.take() {
                    state.resident_bytes = state.resident_bytes.saturating_sub(resident.len() as u64);
                }
            }
        }
        // Released batches leave stale (disk, seq) pairs behind; resident records are at least
        // one block each, so more pairs than twice budget / block means compaction is due.
        let most_resident = (budget / ALIGNMENT as u64) as usize;
        if state.resident_order.len() > 2 * most_resident + 1024 {
            let disks = &state.disks;
            state.resident_order.retain(|(disk_id, seq)| {
                disks
                    .get(disk_id)
                    .and_then(|d| d.entries.get(seq))
                    .is_some_and(|e| e.resident.is_some())
            });
        }
        drop(guard);
        self.shared.durable.notify_one();
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
    }
}
