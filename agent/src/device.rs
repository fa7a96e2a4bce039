//! A protected disk opened read-only: a block device (size and sector size from the kernel)
//! or an image file. Block devices are read with O_DIRECT: the block device's page cache is
//! not kept coherent with what a mounted file system writes, so a buffered read can return
//! blocks as they were at an earlier read (a test over a loop-mounted ext4 showed it). Image
//! files are read through the page cache (coherent with every writer of the file), which a
//! pass then drops. Owns the disk's stable identity: `disk_id` is a UUIDv5 of the machine id
//! and the device's identity string, so the same device on the same machine keeps its id
//! across restarts and re-registrations of the agent's state (not across machines).

use anyhow::{bail, Context};
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

use crate::config::DiskConfig;

// linux/fs.h: _IOR(0x12, 114, size_t) and _IO(0x12, 104).

pub struct Device {
    file: File,
    pub path: PathBuf,
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub identity: String,
    pub is_block_device: bool,
    /// Bytes laid over what the file holds (a held capture's, held.rs).
    overlay: Option<Arc<crate::held::Overlay>>,
}

impl Device {
    pub fn open(config: &DiskConfig) -> anyhow::Result<Device> {
        let path = &config.path;
        let metadata = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let is_block_device = metadata.file_type().is_block_device();
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if is_block_device {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options
            .open(path)
            .with_context(|| format!("opening {} for reading", path.display()))?;
        let (size_bytes, detected_sector) = if is_block_device {
            block_geometry(&file).with_context(|| format!("reading the geometry of {}", path.display()))?
        } else if metadata.is_file() {
            (metadata.len(), 512)
        } else {
            bail!("{} is neither a block device nor a regular file", path.display());
        };
        let sector_size = config.sector_size.unwrap_or(detected_sector);
        if size_bytes == 0 || size_bytes % u64::from(sector_size) != 0 {
            bail!(
                "{}: size {size_bytes} is not a positive multiple of the sector size {sector_size}",
                path.display()
            );
        }
        let canonical = std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        let identity = match &config.identity {
            Some(identity) => format!("configured:{identity}"),
            None if is_block_device => match by_id_name(&canonical) {
                Some(name) => format!("by-id:{name}"),
                None => format!("path:{}", canonical.display()),
            },
            None => format!("path:{}", canonical.display()),
        };
        let name = config.name.clone().unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        });
        Ok(Device {
            file,
            path: path.clone(),
            name,
            size_bytes,
            sector_size,
            identity,
            is_block_device,
            overlay: None,
        })
    }

    /// The same disk read from `file` (a snapshot of it): same identity, name and size.
    pub fn reading_from(&self, file: File, is_block_device: bool) -> Device {
        Device {
            file,
            path: self.path.clone(),
            name: self.name.clone(),
            size_bytes: self.size_bytes,
            sector_size: self.sector_size,
            identity: self.identity.clone(),
            is_block_device,
            overlay: None,
        }
    }

    /// Reads see `overlay` over what the file holds.
    pub fn with_overlay(mut self, overlay: Arc<crate::held::Overlay>) -> Device {
        self.overlay = Some(overlay);
        self
    }

    /// The open disk (for a snapshot provider).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The disk's id on this machine (UUIDv5 of the machine id and the identity string).
    pub fn disk_id(&self, machine_id: Uuid) -> Uuid {
        Uuid::new_v5(&machine_id, self.identity.as_bytes())
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)?;
        if let Some(overlay) = &self.overlay {
            overlay.apply(buf, offset);
        }
        Ok(())
    }

    /// A buffer reads can go into (aligned for O_DIRECT).
    pub fn read_buffer(&self, len: usize) -> ReadBuffer {
        ReadBuffer::new(len)
    }

    /// Tells the kernel the range will not be read again soon (a pass reads each byte once;
    /// this keeps it from evicting the protected machine's own working set).
    pub fn drop_cached(&self, offset: u64, len: u64) {
        // Advice only: an error changes nothing that matters. A length of 0 means "to the end".
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }

    pub fn advise_sequential(&self) {
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::Sequential);
    }
}

fn block_geometry(file: &File) -> std::io::Result<(u64, u32)> {
    // A block device's end is its size (what BLKGETSIZE64 says, without an ioctl); reads are
    // positioned (read_exact_at), so moving the file offset changes nothing else.
    let size = rustix::fs::seek(file, rustix::fs::SeekFrom::End(0))?;
    let sector = rustix::fs::ioctl_blksszget(file)?;
    Ok((size, if sector == 4096 { 4096 } else { 512 }))
}

/// The first (sorted) /dev/disk/by-id name that points at `device`: stable across reboots.
fn by_id_name(device: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/disk/by-id")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| std::fs::canonicalize(entry.path()).ok().as_deref() == Some(device))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Alignment of read buffers and offsets for O_DIRECT (the largest logical sector size).
const READ_ALIGNMENT: usize = 4096;

/// A zeroed byte buffer whose start is 4096-aligned: a `Vec` over-allocated by one alignment,
/// never resized, so the aligned window never moves.
pub struct ReadBuffer {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl ReadBuffer {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + READ_ALIGNMENT];
        let start = raw.as_ptr().align_offset(READ_ALIGNMENT);
        Self { raw, start, len }
    }
}

impl Deref for ReadBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for ReadBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}
