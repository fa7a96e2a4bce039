//! Files that a crash leaves whole (STYLE.md 5): the one way Ferry writes its own state, used
//! by ferry-agent (identity, progress, status), ferryctl (the appliance directory), ferry.toml
//! and ferryd (registrations, the cache's disk metadata).
//!
//! A file is replaced by writing a temporary file beside it (owner-only, `<name>.tmp`),
//! fsyncing it, renaming it over the old one and fsyncing the directory, so after a crash the
//! path holds the old or the new content, never a mix or nothing. [`checked`] adds a magic,
//! a version and a CRC-32C for files whose damage must be told from their absence;
//! [`two_slots`] rewrites a small record in place, in one of two slots, for state updated too
//! often for a new file each time.
//!
//! Not here: the local storage target's objects, whose durability is shared between many
//! puts by `syncfs` rounds (`ferry_storage::group_sync`), and the cache's segment files.

pub mod checked;
pub mod two_slots;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents` (mode 0600): after a crash it holds the old or the new
/// content. A temporary file left by an earlier interrupted replace is overwritten.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_and_rename(path, contents)?;
    fsync_dir(parent_of(path))
}

/// The part of a replace before its directory's fsync: the temporary file written, fsynced
/// and renamed over `path`.
fn write_and_rename(path: &Path, contents: &[u8]) -> io::Result<()> {
    let temporary = temporary_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)
}

/// Creates `path`, which must not exist yet, with `contents` (mode 0600), fsyncs it and its
/// directory.
pub fn create_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fsync_dir(parent_of(path))
}

/// Makes a directory's entries (a rename, a new or removed file) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its parents owner-only (0700), or tightens an existing one to 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates the directory `dir` (0700), which must not exist yet; its parent must.
pub fn new_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Reads `path`, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `<path>.tmp`: beside the file, so the rename stays within one directory (and file system).
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replace_writes_owner_only_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn an_interrupted_replace_leaves_the_old_content_and_the_next_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        replace(&path, b"old").unwrap();
        // A crash after the temporary file was written but before the rename.
        fs::write(dir.path().join("ferry.toml.tmp"), b"half").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!dir.path().join("ferry.toml.tmp").exists());
    }

    #[test]
    fn create_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        create_new(&path, b"secret").unwrap();
        let again = create_new(&path, b"other").unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn private_dirs_are_0700_and_read_optional_tells_absence_from_errors() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        private_dir(&nested).unwrap();
        assert_eq!(fs::metadata(&nested).unwrap().mode() & 0o777, 0o700);
        assert!(new_private_dir(&nested).is_err(), "it exists");
        assert_eq!(read_optional(&nested.join("missing")).unwrap(), None);
        assert!(read_optional(&nested).is_err(), "a directory is not a file");
    }
}
