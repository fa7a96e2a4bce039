//! The local-directory target's writer thread: whole-object puts are queued to one thread,
//! which takes every put waiting, writes each one's temporary file, makes them all durable
//! with one `syncfs` round, renames (or links) them all, and answers each once a later round
//! has made the names durable too: the next group's round when more puts are queued (so a
//! steady flow costs one round per group), a round of its own when none are.
//!
//! Why a thread of its own: with hundreds of small disks (asr-sizing, issue 11 part 6) each
//! put ran as a tokio blocking-pool task that waited on [`crate::group_sync`]'s rounds, so the
//! pool grew to hundreds of threads woken together after every round, and context switches
//! were a tenth of ferryd's CPU. Here a group of puts costs one or two `syncfs` calls and no
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
    // Puts whose names are in place but not yet durable: the next round covers them.
    let mut unsynced_names: Vec<PutJob> = Vec::new();
    loop {
        let group = if unsynced_names.is_empty() {
            match queue.blocking_recv() {
                Some(first) => take_group(first, &mut queue),
                None => return,
            }
        } else {
            // Puts are waiting for their answers: take what is queued, but never wait.
            match queue.try_recv() {
                Ok(first) => take_group(first, &mut queue),
                Err(_) => Vec::new(),
            }
        };
        unsynced_names = write_group(root, root_dir, sync, unsynced_names, group);
    }
}

/// `first` and the puts queued behind it, within a group's limits.
fn take_group(first: PutJob, queue: &mut mpsc::Receiver<PutJob>) -> Vec<PutJob> {
    let mut bytes = first.data.len();
    let mut group = vec![first];
    while group.len() < GROUP_MAX_PUTS && bytes < GROUP_MAX_BYTES {
        match queue.try_recv() {
            Ok(job) => {
                bytes += job.data.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
    group
}

/// One round: write every temporary file of `group`, one `syncfs` that makes them and the
/// previous group's names (`unsynced_names`) durable, answer the previous group, then rename
/// (or link) this group's objects into place. Returns the puts whose names now wait for the
/// next round. Under a steady flow of puts that is one `syncfs` per group instead of two: a
/// round makes one group's bytes and the group before's names durable at once. A put that
/// failed on its own is answered at once; a failed round fails every put it was to cover.
fn write_group(
    root: &std::path::Path,
    root_dir: &fs::File,
    sync: &GroupSync,
    unsynced_names: Vec<PutJob>,
    group: Vec<PutJob>,
) -> Vec<PutJob> {
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
    if written.is_empty() && unsynced_names.is_empty() {
        return Vec::new();
    }
    if let Err(e) = sync.sync(root_dir) {
        fail_all(unsynced_names.into_iter(), &e);
        fail_all(written.into_iter().map(|(job, _)| job), &e);
        return Vec::new();
    }
    unsynced_names.into_iter().for_each(|job| answer(job, Ok(true)));
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
    named
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

    fn job(path: PathBuf, data: &'static [u8]) -> (PutJob, oneshot::Receiver<io::Result<bool>>) {
        let (answer, answered) = oneshot::channel();
        let data = Bytes::from_static(data);
        (
            PutJob {
                path,
                data,
                mode: PutMode::Replace,
                answer,
            },
            answered,
        )
    }

    #[test]
    fn a_put_is_answered_only_after_a_round_that_followed_its_rename_one_round_per_group_in_a_flow() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = fs::File::open(dir.path()).unwrap();
        let sync = GroupSync::default();
        let (a, mut a_answer) = job(dir.path().join("d/a"), b"a");
        let (b, mut b_answer) = job(dir.path().join("d/b"), b"b");

        // First group: its bytes are made durable, its name is in place, not yet answered.
        let unsynced = write_group(dir.path(), &root_dir, &sync, Vec::new(), vec![a]);
        assert_eq!(sync.rounds(), 1);
        assert_eq!(unsynced.len(), 1);
        assert!(a_answer.try_recv().is_err(), "answered before its name was durable");
        assert_eq!(fs::read(dir.path().join("d/a")).unwrap(), b"a");

        // The next group's round covers the first group's name: one round, and `a` answered.
        let unsynced = write_group(dir.path(), &root_dir, &sync, unsynced, vec![b]);
        assert_eq!(sync.rounds(), 2);
        assert!(a_answer.try_recv().unwrap().unwrap());
        assert!(b_answer.try_recv().is_err());

        // No more puts: a round of its own for the last names.
        let unsynced = write_group(dir.path(), &root_dir, &sync, unsynced, Vec::new());
        assert!(unsynced.is_empty());
        assert_eq!(sync.rounds(), 3);
        assert!(b_answer.try_recv().unwrap().unwrap());
        assert_eq!(fs::read(dir.path().join("d/b")).unwrap(), b"b");

        // Nothing waiting, nothing to write: no round at all.
        assert!(write_group(dir.path(), &root_dir, &sync, Vec::new(), Vec::new()).is_empty());
        assert_eq!(sync.rounds(), 3);
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
