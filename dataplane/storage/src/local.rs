//! The local-directory target: objects are files under a root directory, at the path their
//! name spells. The embedded default, so a newcomer needs no cloud account.
//!
//! Durability of `put`: write a temporary file `.{file}.{random}.tmp` beside the target,
//! make it durable, rename it over the target, make the rename durable (and with it the
//! directories created on the way). "Durable" is a `syncfs` round shared with the
//! puts running at the same time ([`crate::group_sync`]) rather than an fsync of the file and
//! of its directory each. After `put` returns, a power loss keeps the new object; before, the
//! old one (or none). Temporary files start with '.', which no valid object
//! name segment may (see [`crate::validate_name`]), so listings never see them and a crash
//! leaves at worst a stray temporary file, which [`LocalDirectory::remove_stray_temporaries`]
//! cleans.
//!
//! Whole objects are written by one writer thread that groups the puts waiting
//! ([`crate::local_writer`]), with O_DIRECT where the file system allows
//! ([`crate::direct_write`]); paced puts, written a granted piece at a time, go through the
//! page cache. Lease calls go through the same writer thread and share its `syncfs` rounds.
//! Other blocking file I/O runs on tokio's blocking pool. Listing walks the
//! directory tree below the prefix and sorts; it holds the names below that prefix in memory.

use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::local_writer::{LocalWriter, PutMode};
use crate::{
    pacing::TokenBucket, validate_name, validate_prefix, ObjectMeta, ObjectStorage, Operation, PermanentKind,
    StorageError, LIST_PAGE_MAX,
};

#[derive(Clone, Debug)]
pub struct LocalDirectory {
    root: PathBuf,
    /// Shared by every put through this target (and its clones).
    sync: std::sync::Arc<crate::group_sync::GroupSync>,
    /// Whole-object puts, grouped on one thread ([`crate::local_writer`]).
    writer: LocalWriter,
}

impl LocalDirectory {
    /// Opens `root`, creating it (mode 0700) when `create` is set. A missing root without
    /// `create` is [`PermanentKind::ContainerMissing`].
    pub fn open(root: impl Into<PathBuf>, create: bool) -> Result<Self, StorageError> {
        let root = root.into();
        let name = root.display().to_string();
        if create {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| map_io(Operation::CreateContainer, &name, e))?;
        }
        match fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {
                let sync = std::sync::Arc::<crate::group_sync::GroupSync>::default();
                let writer = LocalWriter::start(root.clone(), sync.clone())
                    .map_err(|e| map_io(Operation::CreateContainer, &name, e))?;
                Ok(Self { root, sync, writer })
            }
            Ok(_) => Err(StorageError::Permanent {
                operation: Operation::CreateContainer,
                name,
                kind: PermanentKind::ContainerMissing,
                message: "the target path is not a directory".into(),
            }),
            Err(e) => Err(map_io(Operation::CreateContainer, &name, e)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, StorageError> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }

    /// Whether the root still exists (to tell "object missing" from "target missing").
    fn root_missing(&self) -> bool {
        !self.root.is_dir()
    }

    fn not_found_or_missing_root(&self, operation: Operation, name: &str, e: io::Error) -> StorageError {
        if e.kind() == io::ErrorKind::NotFound && !self.root_missing() {
            StorageError::NotFound { name: name.to_string() }
        } else {
            map_io(operation, name, e)
        }
    }

    /// A listing needs a valid prefix and the root (a missing root is not an empty listing).
    fn check_listing(&self, prefix: &str) -> Result<(), StorageError> {
        validate_prefix(prefix)?;
        if self.root_missing() {
            return Err(map_io(
                Operation::List,
                prefix,
                io::Error::new(io::ErrorKind::NotFound, "target directory is missing"),
            ));
        }
        Ok(())
    }

    /// Deletes temporary files a crash left behind; returns how many.
    pub fn remove_stray_temporaries(&self) -> io::Result<usize> {
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let file_name = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else if file_name.starts_with('.') && file_name.ends_with(".tmp") {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn map_io(operation: Operation, name: &str, e: io::Error) -> StorageError {
    use io::ErrorKind::*;
    let permanent = |kind| StorageError::Permanent {
        operation,
        name: name.to_string(),
        kind,
        message: e.to_string(),
    };
    match e.kind() {
        NotFound => permanent(PermanentKind::ContainerMissing),
        PermissionDenied | ReadOnlyFilesystem => permanent(PermanentKind::PermissionDenied),
        StorageFull | QuotaExceeded => permanent(PermanentKind::NoSpace),
        Interrupted | TimedOut | WouldBlock => StorageError::Transient {
            operation,
            name: name.to_string(),
            message: e.to_string(),
        },
        _ => permanent(PermanentKind::Other),
    }
}

fn fsync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the missing directories between `root` and `dir` (mode 0700). They are durable once
/// a `syncfs` round of the target's file system has run after this call ([`crate::group_sync`]):
/// every caller waits for one after its object's rename (or its lease record's rewrite) before
/// it answers, and that round makes the directories' entries durable with the object's. Why
/// not an fsync of each new directory's parent: a new disk makes two or three directories, and
/// each fsync is a journal commit of its own (the local writer thread spent 6% of its CPU on
/// them in asr-sizing's first minute, issue 11).
pub(crate) fn create_directories(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cursor = dir;
    while !cursor.is_dir() {
        missing.push(cursor.to_path_buf());
        match cursor.parent() {
            Some(parent) if cursor != root => cursor = parent,
            _ => return Err(io::Error::new(io::ErrorKind::NotFound, "target directory is missing")),
        }
    }
    for new_dir in missing.iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(new_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The directory an object or record at `path` lies in.
pub(crate) fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other("object path has no parent"))
}

fn temporary_path(target: &Path) -> io::Result<PathBuf> {
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| io::Error::other("random generator failed"))?;
    let file_name = target
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(target.with_file_name(format!(".{file_name}.{}.tmp", hex::encode(random))))
}

/// An object being written: a temporary file beside its final path. Dropped before it is
/// renamed into place, it removes the temporary file.
pub(crate) struct PendingObject {
    file: File,
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PendingObject {
    pub(crate) fn create(root: &Path, path: &Path) -> io::Result<Self> {
        create_directories(root, parent_of(path)?)?;
        Self::create_in_existing_directory(path)
    }

    /// As [`PendingObject::create`], for a path whose directory the caller knows to exist;
    /// `NotFound` when it does not (any more).
    pub(crate) fn create_in_existing_directory(path: &Path) -> io::Result<Self> {
        let temporary = temporary_path(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        Ok(Self {
            file,
            temporary,
            path: path.to_path_buf(),
            committed: false,
        })
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    /// Writes the whole object into the empty temporary file, with O_DIRECT where the file
    /// system takes it ([`crate::direct_write`]: no page-cache copy), else buffered.
    pub(crate) fn write_whole(&mut self, data: &[u8]) -> io::Result<()> {
        crate::direct_write::write_object(&self.file, data).map(drop)
    }

    pub(crate) fn temporary(&self) -> &Path {
        &self.temporary
    }

    /// Renames the temporary file over the object; the caller has made its bytes durable.
    pub(crate) fn rename_into_place(&mut self) -> io::Result<()> {
        fs::rename(&self.temporary, &self.path)?;
        self.committed = true;
        Ok(())
    }

    /// Makes the data durable, renames over the object, makes the rename durable (each by a
    /// round of `sync`, shared with other puts).
    fn commit(mut self, sync: &crate::group_sync::GroupSync) -> io::Result<()> {
        sync.sync(&self.file)?;
        self.rename_into_place()?;
        sync.sync(&self.file)
    }
}

impl Drop for PendingObject {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

fn get_range_blocking(path: &Path, range: Range<u64>) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if range.start > range.end || range.end > size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {range:?} is outside the object's {size} bytes"),
        ));
    }
    file.seek(SeekFrom::Start(range.start))?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

fn list_blocking(root: &Path, prefix: &str) -> io::Result<Vec<ObjectMeta>> {
    let start = root.join(prefix);
    let mut found = Vec::new();
    if !start.is_dir() {
        return Ok(found);
    }
    let mut stack = vec![(start, prefix.to_string())];
    while let Some((dir, dir_name)) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if file_name.starts_with('.') {
                continue; // temporary files of a put in progress or interrupted
            }
            let name = format!("{dir_name}{file_name}");
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                stack.push((entry.path(), format!("{name}/")));
            } else if file_type.is_file() && validate_name(&name).is_ok() {
                found.push(ObjectMeta {
                    name,
                    size_bytes: entry.metadata()?.len(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

async fn blocking<T: Send + 'static>(
    operation: Operation,
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, (io::Error, String)> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| (e, name.to_string())),
        Err(join) => Err((
            io::Error::other(format!("{operation} task failed: {join}")),
            name.to_string(),
        )),
    }
}

#[async_trait]
impl ObjectStorage for LocalDirectory {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        let path = self.path_of(name)?;
        self.writer
            .put(path, data, PutMode::Replace)
            .await
            .map(drop)
            .map_err(|e| map_io(Operation::Put, name, e))
    }

    /// Writes the temporary file a piece at a time, each granted by the bucket first, then
    /// commits it as `put` does: the object appears whole, after its bytes were paced.
    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError> {
        let mut granted = pace.take(data.len() as u64).await as usize;
        if granted == data.len() {
            return self.put(name, data).await; // unlimited, or small enough: one piece
        }
        let path = self.path_of(name)?;
        let root = self.root.clone();
        let to_storage_error = |(e, n): (io::Error, String)| map_io(Operation::Put, &n, e);
        let mut object = blocking(Operation::Put, name, move || PendingObject::create(&root, &path))
            .await
            .map_err(to_storage_error)?;
        let mut at = 0;
        loop {
            let piece = data.slice(at..at + granted);
            at += granted;
            object = blocking(Operation::Put, name, move || object.append(&piece).map(|()| object))
                .await
                .map_err(to_storage_error)?;
            if at == data.len() {
                break;
            }
            granted = pace.take((data.len() - at) as u64).await as usize;
        }
        let sync = self.sync.clone();
        blocking(Operation::Put, name, move || object.commit(&sync))
            .await
            .map_err(to_storage_error)
    }

    async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        let path = self.path_of(name)?;
        match blocking(Operation::Get, name, move || fs::read(&path)).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err((e, n)) => Err(self.not_found_or_missing_root(Operation::Get, &n, e)),
        }
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let path = self.path_of(name)?;
        match blocking(Operation::Get, name, move || get_range_blocking(&path, range)).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err((e, n)) if e.kind() == io::ErrorKind::InvalidInput => Err(StorageError::Permanent {
                operation: Operation::Get,
                name: n,
                kind: PermanentKind::InvalidRequest,
                message: e.to_string(),
            }),
            Err((e, n)) => Err(self.not_found_or_missing_root(Operation::Get, &n, e)),
        }
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError> {
        let path = self.path_of(name)?;
        let owned = name.to_string();
        match blocking(Operation::Head, name, move || fs::metadata(&path)).await {
            Ok(meta) if meta.is_file() => Ok(ObjectMeta {
                name: owned,
                size_bytes: meta.len(),
            }),
            Ok(_) => Err(StorageError::NotFound { name: owned }),
            Err((e, n)) => Err(self.not_found_or_missing_root(Operation::Head, &n, e)),
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.check_listing(prefix)?;
        let root = self.root.clone();
        let owned_prefix = prefix.to_string();
        let all = blocking(Operation::List, prefix, move || list_blocking(&root, &owned_prefix))
            .await
            .map_err(|(e, n)| map_io(Operation::List, &n, e))?;
        let limit = max_results.min(LIST_PAGE_MAX);
        Ok(all
            .into_iter()
            .filter(|m| start_after.is_none_or(|after| m.name.as_str() > after))
            .take(limit)
            .collect())
    }

    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.check_listing(prefix)?;
        let dir = self.root.join(prefix);
        let owned_prefix = prefix.to_string();
        blocking(Operation::List, prefix, move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry?;
                let Ok(file_name) = entry.file_name().into_string() else {
                    continue;
                };
                let name = format!("{owned_prefix}{file_name}");
                if entry.file_type()?.is_dir() && validate_name(&name).is_ok() {
                    found.push(format!("{name}/"));
                }
            }
            found.sort();
            Ok(found)
        })
        .await
        .map_err(|(e, n)| map_io(Operation::List, &n, e))
    }

    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError> {
        let path = self.path_of(name)?;
        self.writer
            .put(path, data, PutMode::CreateNew)
            .await
            .map_err(|e| map_io(Operation::Put, name, e))
    }

    async fn lease(&self, name: &str, op: crate::LeaseOp) -> Result<crate::LeaseAnswer, StorageError> {
        op.check(name)?;
        let path = self.path_of(name)?;
        self.writer
            .lease(path, op)
            .await
            .map_err(|e| map_io(Operation::Lease, name, e))
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path_of(name)?;
        let removed = blocking(Operation::Delete, name, move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            match path.parent() {
                Some(dir) => fsync_directory(dir),
                None => Ok(()),
            }
        })
        .await;
        match removed {
            Ok(()) => Ok(()),
            Err((e, n)) => Err(map_io(Operation::Delete, &n, e)),
        }
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }
}
