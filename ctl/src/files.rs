//! Small durable-file helpers for the appliance directory: owner-only files written and
//! fsync'd, directories 0700 and fsync'd after their entries change.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `path` (which must not exist) with mode 0600, writes `contents`, fsyncs it.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// Replaces `path` so a crash leaves the old or the new content, never a torn file: a
/// temporary file beside it (mode 0600, fsync'd), a rename, an fsync of the directory.
pub fn replace_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp); // left by an interrupted replace
    write_private_file(&tmp, contents)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Creates the directory `path` with mode 0700.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create directory {}", path.display()))
}

pub fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync directory {}", path.display()))
}
