//! The local-directory target's writer thread: whole-object puts are queued to one thread,
//! which takes every put waiting, writes each one's temporary file, makes them all durable
//! with one `syncfs` round, renames (or links) them all, and answers each once a later round
//! has made the names durable too: the next group's round when more puts are queued (so a
//! steady flow costs one round per group), a round of its own when none are. Lease calls
//! ([`crate::lease`]'s local emulation) go through the same queue: each is decided and its
//! record rewritten in the group, and a rewritten one is answered after the group's round.
//!
//! Why a thread of its own: with hundreds of small disks (asr-sizing, issue 11 part 6) each
//! put ran as a tokio blocking-pool task that waited on [`crate::group_sync`]'s rounds, so the
//! pool grew to hundreds of threads woken together after every round, and context switches
//! were a tenth of ferryd's CPU. Here a group of puts costs one or two `syncfs` calls and no
//! handoffs but the answers. Leases ran the same way, one blocking-pool thread and one
//! `fdatasync` per call: ferryd renews every disk's lease every 20 s, which for 675 disks kept
//! some 190 pool threads and about 360 context switches a second (docs/BENCHMARKS.md,
//! sixteenth step).
//!
//! Durability is [`crate::local`]'s: nothing is renamed before its bytes are durable, no put is
//! answered before its name is, and no lease is granted before its record is. Errors are per
//! call (one put's full disk fails that put), except a failed round, which fails every put and
//! lease it was to cover. Limits: at most [`QUEUE_DEPTH`] puts and leases wait (a caller past
//! that waits, asynchronously, for room) and a group takes at most [`GROUP_MAX_PUTS`] calls or
//! [`GROUP_MAX_BYTES`] bytes; the bytes waiting are the callers' own buffers, not copies. The
//! thread ends when the last handle is dropped.

use bytes::Bytes;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::group_sync::GroupSync;
use crate::lease::{LeaseAnswer, LeaseOp, LocalLeaseOutcome};
use crate::local::PendingObject;

/// Puts and leases waiting for the writer at most.
pub const QUEUE_DEPTH: usize = 256;
/// Puts and leases in one group at most.
pub const GROUP_MAX_PUTS: usize = 128;
/// Bytes in one group at most (a group may pass it by its last put).
pub const GROUP_MAX_BYTES: usize = 64 << 20;
/// Directories remembered as existing at most (about 100 bytes each); past it the set starts
/// over. A site's disks each have a few (FORMATS.md names), so 16,384 covers thousands.
pub const KNOWN_DIRECTORIES_MAX: usize = 16_384;

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

struct LeaseJob {
    path: PathBuf,
    op: LeaseOp,
    answer: oneshot::Sender<io::Result<LeaseAnswer>>,
}

#[derive(Debug)]
enum Job {
    Put(PutJob),
    Lease(LeaseJob),
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Put(put) => put.data.len(),
            Job::Lease(_) => 0,
        }
    }
}

/// A handle to the writer thread; clones share it.
#[derive(Clone, Debug)]
pub struct LocalWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for LeaseJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease {} ({:?})", self.path.display(), self.op)
    }
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
        self.jobs.send(Job::Put(job)).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// Runs the lease call `op` on the lease record at `path` (below the root), durably.
    pub async fn lease(&self, path: PathBuf, op: LeaseOp) -> io::Result<LeaseAnswer> {
        let (answer, answered) = oneshot::channel();
        let job = LeaseJob { path, op, answer };
        let stopped = || io::Error::other("the local target's writer thread stopped");
        self.jobs.send(Job::Lease(job)).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The directories this thread has made or found in place, so that a put or lease
/// into one of them skips the `statx` of [`crate::local::create_directories`] (one
/// per object was 6% of this thread's CPU under asr-sizing, issue 11). Nothing in Ferry removes
/// a target directory; one removed behind its back is made again when a create in it finds
/// it missing.
#[derive(Default)]
struct KnownDirectories {
    dirs: HashSet<PathBuf>,
}

impl KnownDirectories {
    /// Makes sure the directory of `path` exists (durable with the caller's next round).
    fn ensure(&mut self, root: &Path, path: &Path) -> io::Result<()> {
        let dir = crate::local::parent_of(path)?;
        if self.dirs.contains(dir) {
            return Ok(());
        }
        crate::local::create_directories(root, dir)?;
        if self.dirs.len() >= KNOWN_DIRECTORIES_MAX {
            self.dirs.clear();
        }
        self.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    /// Runs `create` in the directory of `path`, made first if needed; when the directory was
    /// remembered but is gone, forgets it, makes it again and tries once more.
    fn create_in<T>(&mut self, root: &Path, path: &Path, create: impl Fn() -> io::Result<T>) -> io::Result<T> {
        self.ensure(root, path)?;
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.dirs.remove(crate::local::parent_of(path)?);
                self.ensure(root, path)?;
                create()
            }
            other => other,
        }
    }
}

fn run(root: &Path, root_dir: &fs::File, sync: &GroupSync, mut queue: mpsc::Receiver<Job>) {
    // Puts whose names are in place but not yet durable: the next round covers them.
    let mut unsynced_names: Vec<PutJob> = Vec::new();
    let mut known = KnownDirectories::default();
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
        unsynced_names = write_group(root, root_dir, sync, &mut known, unsynced_names, group);
    }
}

/// `first` and the calls queued behind it, within a group's limits.
fn take_group(first: Job, queue: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut bytes = first.bytes();
    let mut group = vec![first];
    while group.len() < GROUP_MAX_PUTS && bytes < GROUP_MAX_BYTES {
        match queue.try_recv() {
            Ok(job) => {
                bytes += job.bytes();
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
/// round makes one group's bytes and the group before's names durable at once. The group's
/// leases are decided and their records rewritten before the round and granted after it. A
/// call that failed on its own is answered at once; a failed round fails every call it was to
/// cover.
fn write_group(
    root: &Path,
    root_dir: &fs::File,
    sync: &GroupSync,
    known: &mut KnownDirectories,
    unsynced_names: Vec<PutJob>,
    group: Vec<Job>,
) -> Vec<PutJob> {
    let mut written = Vec::with_capacity(group.len());
    let mut leases_written = Vec::new();
    for job in group {
        match job {
            Job::Put(job) => {
                let pending = known
                    .create_in(root, &job.path, || {
                        PendingObject::create_in_existing_directory(&job.path)
                    })
                    .and_then(|mut object| {
                        object.write_whole(&job.data)?;
                        Ok(object)
                    });
                match pending {
                    Ok(object) => written.push((job, object)),
                    Err(e) => answer(job, Err(e)),
                }
            }
            Job::Lease(job) => match known.create_in(root, &job.path, || crate::lease::local_lease(&job.path, &job.op))
            {
                Ok(LocalLeaseOutcome::Final(decided)) => {
                    let _ = job.answer.send(Ok(decided));
                }
                Ok(LocalLeaseOutcome::GrantedOnceDurable) => leases_written.push(job),
                Err(e) => {
                    let _ = job.answer.send(Err(e));
                }
            },
        }
    }
    if written.is_empty() && unsynced_names.is_empty() && leases_written.is_empty() {
        return Vec::new();
    }
    if let Err(e) = sync.sync(root_dir) {
        fail_all(unsynced_names.into_iter(), &e);
        fail_all(written.into_iter().map(|(job, _)| job), &e);
        for job in leases_written {
            let _ = job.answer.send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        return Vec::new();
    }
    unsynced_names.into_iter().for_each(|job| answer(job, Ok(true)));
    for job in leases_written {
        let _ = job.answer.send(Ok(LeaseAnswer::Granted));
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

    #[tokio::test]
    async fn a_directory_removed_behind_the_writers_back_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        let record = dir.path().join("disks/d/lease");
        let acquire = LeaseOp::Acquire {
            lease_id: LEASE_A.to_string(),
            duration_secs: 60,
        };
        // The writer now remembers `d/` and `disks/d/` as there.
        assert!(writer
            .put(dir.path().join("d/o1"), Bytes::from_static(b"1"), PutMode::Replace)
            .await
            .unwrap());
        assert_eq!(
            writer.lease(record.clone(), acquire.clone()).await.unwrap(),
            LeaseAnswer::Granted
        );
        fs::remove_dir_all(dir.path().join("d")).unwrap();
        fs::remove_dir_all(dir.path().join("disks")).unwrap();
        assert!(writer
            .put(dir.path().join("d/o2"), Bytes::from_static(b"2"), PutMode::Replace)
            .await
            .unwrap());
        assert_eq!(fs::read(dir.path().join("d/o2")).unwrap(), b"2");
        assert_eq!(
            writer.lease(record.clone(), acquire).await.unwrap(),
            LeaseAnswer::Granted
        );
        assert!(record.is_file());
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
        let mut known = KnownDirectories::default();
        let (a, mut a_answer) = job(dir.path().join("d/a"), b"a");
        let (b, mut b_answer) = job(dir.path().join("d/b"), b"b");

        // First group: its bytes are made durable, its name is in place, not yet answered.
        let unsynced = write_group(dir.path(), &root_dir, &sync, &mut known, Vec::new(), vec![Job::Put(a)]);
        assert_eq!(sync.rounds(), 1);
        assert_eq!(unsynced.len(), 1);
        assert!(a_answer.try_recv().is_err(), "answered before its name was durable");
        assert_eq!(fs::read(dir.path().join("d/a")).unwrap(), b"a");

        // The next group's round covers the first group's name: one round, and `a` answered.
        let unsynced = write_group(dir.path(), &root_dir, &sync, &mut known, unsynced, vec![Job::Put(b)]);
        assert_eq!(sync.rounds(), 2);
        assert!(a_answer.try_recv().unwrap().unwrap());
        assert!(b_answer.try_recv().is_err());

        // No more puts: a round of its own for the last names.
        let unsynced = write_group(dir.path(), &root_dir, &sync, &mut known, unsynced, Vec::new());
        assert!(unsynced.is_empty());
        assert_eq!(sync.rounds(), 3);
        assert!(b_answer.try_recv().unwrap().unwrap());
        assert_eq!(fs::read(dir.path().join("d/b")).unwrap(), b"b");

        // Nothing waiting, nothing to write: no round at all.
        assert!(write_group(dir.path(), &root_dir, &sync, &mut known, Vec::new(), Vec::new()).is_empty());
        assert_eq!(sync.rounds(), 3);
    }

    const LEASE_A: &str = "00000000-0000-4000-8000-00000000000a";
    const LEASE_B: &str = "00000000-0000-4000-8000-00000000000b";

    fn lease_job(path: PathBuf, op: LeaseOp) -> (Job, oneshot::Receiver<io::Result<LeaseAnswer>>) {
        let (answer, answered) = oneshot::channel();
        (Job::Lease(LeaseJob { path, op, answer }), answered)
    }

    #[test]
    fn leases_are_decided_in_the_group_and_share_its_round() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = fs::File::open(dir.path()).unwrap();
        let sync = GroupSync::default();
        let mut known = KnownDirectories::default();
        let (a, b) = (LEASE_A.to_string(), LEASE_B.to_string());
        let acquire = |id: &String| LeaseOp::Acquire {
            lease_id: id.clone(),
            duration_secs: 60,
        };
        let record = dir.path().join("disks/d/lease");
        // One group: a put, a's acquire, b's acquire of the same record (refused: a holds it
        // now, though not yet durably), a's renewal of it, and an acquire of another record.
        let (put, mut put_answer) = job(dir.path().join("d/o"), b"o");
        let (first, mut first_answer) = lease_job(record.clone(), acquire(&a));
        let (other, mut other_answer) = lease_job(record.clone(), acquire(&b));
        let (renewal, mut renewal_answer) = lease_job(record.clone(), LeaseOp::Renew { lease_id: a.clone() });
        let (elsewhere, mut elsewhere_answer) = lease_job(dir.path().join("disks/e/lease"), acquire(&b));

        let unsynced = write_group(
            dir.path(),
            &root_dir,
            &sync,
            &mut known,
            Vec::new(),
            vec![Job::Put(put), first, other, renewal, elsewhere],
        );
        assert_eq!(sync.rounds(), 1, "one round for the put and every lease");
        assert_eq!(unsynced.len(), 1, "the put's name waits for the next round");
        assert!(put_answer.try_recv().is_err());
        assert_eq!(first_answer.try_recv().unwrap().unwrap(), LeaseAnswer::Granted);
        assert_eq!(other_answer.try_recv().unwrap().unwrap(), LeaseAnswer::Refused);
        assert_eq!(renewal_answer.try_recv().unwrap().unwrap(), LeaseAnswer::Granted);
        assert_eq!(elsewhere_answer.try_recv().unwrap().unwrap(), LeaseAnswer::Granted);
        let held = fs::read_to_string(&record).unwrap();
        assert!(held.contains(&a) && !held.contains(&b), "{held}");

        // A lease whose record changes nothing is answered without a round.
        let (again, mut again_answer) = lease_job(record.clone(), acquire(&b));
        let unsynced = write_group(dir.path(), &root_dir, &sync, &mut known, unsynced, vec![again]);
        assert!(unsynced.is_empty());
        assert_eq!(sync.rounds(), 2, "the round that names the put");
        assert_eq!(again_answer.try_recv().unwrap().unwrap(), LeaseAnswer::Refused);
        assert!(put_answer.try_recv().unwrap().unwrap());
        let (refused, mut refused_answer) = lease_job(record, acquire(&b));
        assert!(write_group(dir.path(), &root_dir, &sync, &mut known, Vec::new(), vec![refused]).is_empty());
        assert_eq!(sync.rounds(), 2, "no round for a refusal alone");
        assert_eq!(refused_answer.try_recv().unwrap().unwrap(), LeaseAnswer::Refused);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_leases_on_shared_records_through_two_writers_all_answer() {
        // Two writer threads on one directory (two process servers on one local target), each
        // with many calls on the same few records in flight: every call is answered (no lock
        // held across a round, so no writer waits on the other), and each record ends held
        // by exactly one of them.
        let dir = tempfile::tempdir().unwrap();
        let writers = [writer(dir.path()), writer(dir.path())];
        let ids = [LEASE_A.to_string(), LEASE_B.to_string()];
        let calls: Vec<_> = (0..200usize)
            .map(|i| {
                let writer = writers[i % 2].clone();
                let lease_id = ids[i % 2].clone();
                let path = dir.path().join(format!("disks/{}/lease", i % 5));
                tokio::spawn(async move {
                    let op = LeaseOp::Acquire {
                        lease_id,
                        duration_secs: 60,
                    };
                    writer.lease(path, op).await
                })
            })
            .collect();
        let mut granted = [0usize; 2];
        for (i, call) in calls.into_iter().enumerate() {
            if call.await.unwrap().unwrap() == LeaseAnswer::Granted {
                granted[i % 2] += 1;
            }
        }
        for record in 0..5 {
            let held = fs::read_to_string(dir.path().join(format!("disks/{record}/lease"))).unwrap();
            assert!(held.contains(&ids[0]) != held.contains(&ids[1]), "{held}");
        }
        assert!(granted[0] + granted[1] >= 5, "{granted:?}");
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
