//! The local-directory target's writer thread: whole-object puts are queued to one thread,
//! which takes every put waiting, writes each one's temporary file, makes them all durable
//! with one `syncfs` round, renames (or links) them all, makes the names durable with a
//! second round, and then answers each.
//!
//! Why a thread of its own: with hundreds of small disks (asr-sizing, issue 11 part 6) each
//! put ran as a tokio blocking-pool task that waited on [`crate::group_sync`]'s rounds, so the
//! pool grew to hundreds of threads woken together after every round, and context switches
//! were a tenth of ferryd's CPU. Here a group of puts costs two `syncfs` calls and no
//! handoffs but the answers.
//!
//! Durability is [`crate::local`]'s: nothing is renamed before its bytes are durable, and no
//! put is answered before its name is. Errors are per put (one put's full disk fails that
//! put), except a failed round, which fails every put it was to cover. Limits: at most
//! [`QUEUE_DEPTH`] puts wait (a caller past that waits, asynchronously, for room) and a group
//! takes at most [`GROUP_MAX_PUTS`] puts or [`GROUP_MAX_BYTES`] bytes; the bytes waiting are
//! the callers' own buffers, not copies. The thread ends when the last handle is dropped.

use bytes::Bytes;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::group_sync::GroupSync;
use crate::local::PendingObject;

/// Puts waiting for the writer at most.
pub const QUEUE_DEPTH: usize = 256;
/// Puts in one group at most.
pub const GROUP_MAX_PUTS: usize = 128;
/// Bytes in one group at most (a group may pass it by its last put).
pub const GROUP_MAX_BYTES: usize = 64 << 20;

/// Whether a put may replace an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Rename over the name: the object is replaced.
    Replace,
    /// Hard-link to the name, which fails when it exists: answered `false`, nothing changed.
    CreateNew,
}

struct PutJob {
    path: PathBuf,
    data: Bytes,
    mode: PutMode,
    /// `Ok(true)` when the object was written, `Ok(false)` when `CreateNew` found it there.
    answer: oneshot::Sender<io::Result<bool>>,
}

/// A handle to the writer thread; clones share it.
#[derive(Clone, Debug)]
pub struct LocalWriter {
    jobs: mpsc::Sender<PutJob>,
}

impl std::fmt::Debug for PutJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "put {} ({} bytes)", self.path.display(), self.data.len())
    }
}

impl LocalWriter {
    /// Starts the thread for the target at `root`, sharing `sync`'s rounds with the target's
    /// other writes.
    pub fn start(root: PathBuf, sync: Arc<GroupSync>) -> io::Result<Self> {
        // Any file of the target's file system will do for `syncfs`: its root, opened once.
        let root_dir = fs::File::open(&root)?;
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("ferry-localput".into())
            .spawn(move || run(&root, &root_dir, &sync, queue))?;
        Ok(Self { jobs })
    }

    /// Writes `data` durably at `path` (below the root given to [`LocalWriter::start`]).
    pub async fn put(&self, path: PathBuf, data: Bytes, mode: PutMode) -> io::Result<bool> {
        let (answer, answered) = oneshot::channel();
        let job = PutJob {
            path,
            data,
            mode,
            answer,
        };
        let stopped = || io::Error::other("the local target's writer thread stopped");
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn run(root: &std::path::Path, root_dir: &fs::File, sync: &GroupSync, mut queue: mpsc::Receiver<PutJob>) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        let mut bytes = group[0].data.len();
        while group.len() < GROUP_MAX_PUTS && bytes < GROUP_MAX_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.data.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        write_group(root, root_dir, sync, group);
    }
}

/// One group: write every temporary file, one round, every rename or link, one round,
/// answers. A put that failed on its own is answered at once; a failed round fails the puts
/// it was to make durable.
fn write_group(root: &std::path::Path, root_dir: &fs::File, sync: &GroupSync, group: Vec<PutJob>) {
    let mut written = Vec::with_capacity(group.len());
    for job in group {
        let pending = PendingObject::create(root, &job.path).and_then(|mut object| {
            object.write_whole(&job.data)?;
            Ok(object)
        });
        match pending {
            Ok(object) => written.push((job, object)),
            Err(e) => answer(job, Err(e)),
        }
    }
    if written.is_empty() {
        return;
    }
    if let Err(e) = sync.sync(root_dir) {
        return fail_all(written.into_iter().map(|(job, _)| job), &e);
    }
    // Renames and links, in queue order (two puts of one name: the later one stays).
    let mut named = Vec::with_capacity(written.len());
    for (job, mut object) in written {
        let result = match job.mode {
            PutMode::Replace => object.rename_into_place().map(|()| true),
            // Dropping the object afterwards removes its temporary name.
            PutMode::CreateNew => match fs::hard_link(object.temporary(), &job.path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(true) => named.push(job),
            other => answer(job, other),
        }
    }
    if named.is_empty() {
        return;
    }
    match sync.sync(root_dir) {
        Ok(()) => named.into_iter().for_each(|job| answer(job, Ok(true))),
        Err(e) => fail_all(named.into_iter(), &e),
    }
}

fn fail_all(jobs: impl Iterator<Item = PutJob>, error: &io::Error) {
    for job in jobs {
        answer(job, Err(io::Error::new(error.kind(), error.to_string())));
    }
}

fn answer(job: PutJob, result: io::Result<bool>) {
    // A caller that stopped waiting (its future was dropped) needs no answer.
    let _ = job.answer.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &std::path::Path) -> LocalWriter {
        LocalWriter::start(dir.to_path_buf(), Arc::default()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_puts_each_land_whole_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        let puts: Vec<_> = (0..300usize)
            .map(|i| {
                let (writer, path) = (writer.clone(), dir.path().join(format!("d{}/o{i}", i % 7)));
                let data = Bytes::from(vec![i as u8; 1 + i * 37]);
                tokio::spawn(async move { writer.put(path, data, PutMode::Replace).await })
            })
            .collect();
        for put in puts {
            assert!(put.await.unwrap().unwrap());
        }
        for i in 0..300usize {
            let read = fs::read(dir.path().join(format!("d{}/o{i}", i % 7))).unwrap();
            assert_eq!(read, vec![i as u8; 1 + i * 37], "object {i}");
        }
        let temporaries = walk(dir.path()).into_iter().filter(|n| n.ends_with(".tmp")).count();
        assert_eq!(temporaries, 0);
    }

    #[tokio::test]
    async fn create_new_keeps_the_first_object_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        let path = dir.path().join("a/b");
        assert!(writer
            .put(path.clone(), Bytes::from_static(b"first"), PutMode::CreateNew)
            .await
            .unwrap());
        assert!(!writer
            .put(path.clone(), Bytes::from_static(b"second"), PutMode::CreateNew)
            .await
            .unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert!(writer
            .put(path.clone(), Bytes::from_static(b"third"), PutMode::Replace)
            .await
            .unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"third");
        assert_eq!(walk(dir.path()).len(), 1, "only the object: {:?}", walk(dir.path()));
    }

    #[tokio::test]
    async fn a_put_that_cannot_be_written_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        // A file where a directory of the path must be: that put fails, the others land.
        fs::write(dir.path().join("blocker"), b"x").unwrap();
        let bad = writer.put(dir.path().join("blocker/o"), Bytes::from_static(b"1"), PutMode::Replace);
        let good = writer.put(dir.path().join("ok/o"), Bytes::from_static(b"2"), PutMode::Replace);
        let (bad, good) = tokio::join!(bad, good);
        assert!(bad.is_err(), "{bad:?}");
        assert!(good.unwrap());
        assert_eq!(fs::read(dir.path().join("ok/o")).unwrap(), b"2");
        assert_eq!(fs::read(dir.path().join("blocker")).unwrap(), b"x");
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                names.extend(walk(&entry.path()));
            } else {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names
    }
}
