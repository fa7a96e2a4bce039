//! Files that a crash leaves whole (STYLE.md 5): the one way Ferry writes its own state, used
//! by ferry-agent (identity, progress, status), ferryctl (the appliance directory), ferry.toml
//! and ferryd (registrations, the cache's disk metadata).
//!
//! A file is replaced by writing a temporary file beside it (owner-only, `<name>.tmp`),
//! fsyncing it, renaming it over the old one and fsyncing the directory, so after a crash the
//! path holds the old or the new content, never a mix or nothing. [`checked`] adds a magic,
//! a version and a CRC-32C for files whose damage must be told from their absence.
//!
//! Not here: the local storage target's objects, whose durability is shared between many
//! puts by `syncfs` rounds (`ferry_storage::group_sync`), and the cache's segment files.

pub mod checked;

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

/// Replaces several files of one directory, each as [`replace`] would (after a crash each holds
/// its old or its new content), sharing the directory's sync: every temporary file is
/// written and fsynced, each is renamed, and one fsync of the directory makes the renames
/// durable. N + 1 syncs instead of 2N: the cache releases the batches of hundreds of disks a
/// second this way (issue 11, asr-sizing). Not one `syncfs` for the files: measured, it cost
/// more than the fsyncs it saved, as it walks every dirty inode of a file system that may
/// also hold the local target.
///
/// One result per file, in order. A file whose temporary could not be written or synced
/// fails alone (its old content stays); a failed directory sync fails every renamed file.
pub fn replace_in_dir(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Vec<io::Result<()>> {
    let mut results: Vec<io::Result<()>> = files
        .iter()
        .map(|(path, contents)| {
            if parent_of(path) != dir {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not in {}", path.display(), dir.display()),
                ));
            }
            write_and_rename(path, contents)
        })
        .collect();
    if results.iter().all(|r| r.is_err()) {
        return results;
    }
    if let Err(e) = fsync_dir(dir) {
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            *result = Err(io::Error::new(e.kind(), e.to_string()));
        }
    }
    results
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
    fn replace_in_dir_replaces_each_file_and_fails_only_the_one_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.meta"), dir.path().join("b.meta"));
        replace(&a, b"old a").unwrap();
        let elsewhere = dir.path().join("sub/c.meta");
        let results = replace_in_dir(
            dir.path(),
            &[
                (a.clone(), b"new a".to_vec()),
                (elsewhere, b"c".to_vec()),
                (b.clone(), b"new b".to_vec()),
            ],
        );
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert_eq!(results[1].as_ref().unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert_eq!(fs::read(&b).unwrap(), b"new b");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.meta", "b.meta"], "no temporary file stays");
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
