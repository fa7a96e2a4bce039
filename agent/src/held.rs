//! A capture of an image file held at one instant with its file system frozen: what a
//! consistency group's *prepare* needs (writes stay held until every member is prepared, so
//! the members' captures form one consistent cut), built from a reflink clone.
//!
//! A clone cannot be taken while the file system is frozen (it writes metadata and would
//! wait for the thaw), so: clone, then freeze (FIFREEZE writes back every dirty page and holds
//! new writes), then, while frozen, find what the image gained since the clone from the
//! extent maps (FIEMAP): after a clone every extent of the image is shared with it, and a
//! block written since sits in a new, unshared extent; a range the clone maps and the image no
//! longer does was punched out. Those ranges are read from the frozen image into an overlay
//! ([`Overlay`]); clone plus overlay is the image at the instant of the freeze. The window
//! between clone and freeze is milliseconds, so the overlay is small; it is bounded by
//! [`OVERLAY_MAX_BYTES`] (a capture that would need more fails, and is retried by the caller).
//!
//! The freeze ends with [`Held::release`], on drop, or (the caller's duty) at the barrier's
//! deadline; the systemd unit's `ExecStopPost` thaws after a SIGKILL.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::Device;

/// The largest overlay a capture may need.
pub const OVERLAY_MAX_BYTES: u64 = 256 << 20;

/// Bytes of the image that differ from its clone, by offset (non-overlapping).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    pieces: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    /// Copies the overlay's bytes that fall in `offset .. offset + buf.len()` into `buf`.
    pub fn apply(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        // The piece that starts before `offset` may reach into the range.
        let first = self.pieces.range(..=offset).next_back().map(|(start, _)| *start);
        let from = first.unwrap_or(offset);
        for (start, bytes) in self.pieces.range(from..end) {
            let piece_end = start + bytes.len() as u64;
            if piece_end <= offset {
                continue;
            }
            let (lo, hi) = ((*start).max(offset), piece_end.min(end));
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&bytes[(lo - start) as usize..(hi - start) as usize]);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.pieces.values().map(|p| p.len() as u64).sum()
    }
}

/// A held capture: read the image through [`Held::device`]; writes to the image wait until
/// [`Held::release`].
pub struct Held {
    pub device: Arc<Device>,
    /// Bytes written between the clone and the freeze, laid over the clone.
    pub overlay_bytes: u64,
    /// From the freeze to now (the caller reads it after the release).
    pub frozen_at: Instant,
    frozen: Option<(PathBuf, File)>,
}

impl Held {
    /// Thaws the file system (once); returns how long writes were held.
    pub fn release(&mut self) -> Duration {
        if let Some((root, file)) = self.frozen.take() {
            if let Err(e) = crate::quiesce::freeze_ioctl(&file, crate::quiesce::FITHAW) {
                tracing::error!(mount = %root.display(), error = %e, "thaw failed: run `fsfreeze --unfreeze` on it");
            }
        }
        self.frozen_at.elapsed()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// Takes a held capture of the image file `device` (see the module header).
pub fn take(device: &Arc<Device>) -> anyhow::Result<Held> {
    let (clone, _) = crate::snapshot::reflink_clone(device)?;
    let root = mount_root(&device.path)?;
    let root_dir = File::open(&root).with_context(|| format!("cannot open {}", root.display()))?;
    crate::quiesce::freeze_ioctl(&root_dir, crate::quiesce::FIFREEZE)
        .with_context(|| format!("cannot freeze {} (FIFREEZE needs root)", root.display()))?;
    let frozen_at = Instant::now();
    let mut held = Held {
        device: device.clone(),
        overlay_bytes: 0,
        frozen_at,
        frozen: Some((root, root_dir)),
    };
    let overlay = changed_since_clone(device.file(), &clone, device.size_bytes)?;
    held.overlay_bytes = overlay.bytes();
    held.device = Arc::new(device.reading_from(clone, false).with_overlay(Arc::new(overlay)));
    Ok(held)
}

/// The directory the file system holding `path` is mounted at (the highest ancestor on the
/// same device).
fn mount_root(path: &Path) -> anyhow::Result<PathBuf> {
    let canonical = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let device = std::fs::metadata(&canonical)?.dev();
    let mut root = canonical.parent().map(Path::to_path_buf).unwrap_or_default();
    while let Some(parent) = root.parent() {
        if std::fs::metadata(parent).map(|m| m.dev()).ok() != Some(device) {
            break;
        }
        root = parent.to_path_buf();
    }
    Ok(root)
}

/// The ranges of `image` that differ from `clone` (read from `image`; zeros where the image
/// no longer maps what the clone does), up to `size`.
fn changed_since_clone(image: &File, clone: &File, size: u64) -> anyhow::Result<Overlay> {
    let image_extents = extents(image, size).context("cannot map the image (FIEMAP)")?;
    let clone_extents = extents(clone, size).context("cannot map the clone (FIEMAP)")?;
    let mut ranges: Vec<(u64, u64)> = image_extents
        .iter()
        .filter(|e| !e.shared)
        .map(|e| (e.start, e.end))
        .collect();
    // Mapped in the clone, a hole in the image now: punched since the clone.
    for clone_extent in &clone_extents {
        let mut at = clone_extent.start;
        for image_extent in &image_extents {
            if image_extent.end <= at || image_extent.start >= clone_extent.end {
                continue;
            }
            if image_extent.start > at {
                ranges.push((at, image_extent.start));
            }
            at = at.max(image_extent.end);
        }
        if at < clone_extent.end {
            ranges.push((at, clone_extent.end));
        }
    }
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    if total > OVERLAY_MAX_BYTES {
        bail!("{total} bytes changed between the clone and the freeze (at most {OVERLAY_MAX_BYTES}); try again");
    }
    let mut overlay = Overlay::default();
    for (start, end) in ranges {
        let mut bytes = vec![0u8; (end - start) as usize];
        read_up_to(image, &mut bytes, start)?;
        overlay.pieces.insert(start, bytes);
    }
    Ok(overlay)
}

/// Reads what the file holds at `offset` into `buf` (zeros past its end).
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    start: u64,
    end: u64,
    shared: bool,
}

// linux/fiemap.h and linux/fs.h.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const EXTENTS_PER_CALL: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Every extent of `file` below `size`, in order. An extent whose place is unknown or not yet
/// allocated counts as not shared (it is read into the overlay).
fn extents(file: &File, size: u64) -> std::io::Result<Vec<Extent>> {
    let mut found = Vec::new();
    let mut start = 0u64;
    while start < size {
        let mut map = Box::new(Fiemap {
            start,
            length: size - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: EXTENTS_PER_CALL as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        });
        // SAFETY: FS_IOC_FIEMAP reads the header and writes at most `extent_count` extents
        // into the array that follows it, all inside this boxed struct, which outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *map as *mut Fiemap) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mapped = (map.mapped_extents as usize).min(EXTENTS_PER_CALL);
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for extent in &map.extents[..mapped] {
            let uncertain = extent.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC) != 0;
            found.push(Extent {
                start: extent.logical,
                end: (extent.logical + extent.length).min(size),
                shared: extent.flags & FIEMAP_EXTENT_SHARED != 0 && !uncertain,
            });
            start = extent.logical + extent.length;
            last |= extent.flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last {
            break;
        }
    }
    found.retain(|e| e.end > e.start);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_patches_exactly_the_bytes_it_holds() {
        let mut overlay = Overlay::default();
        overlay.pieces.insert(10, vec![1; 10]); // 10..20
        overlay.pieces.insert(30, vec![2; 5]); // 30..35
        let mut buf = vec![0u8; 20];
        overlay.apply(&mut buf, 15); // 15..35
        let mut expected = vec![0u8; 20];
        expected[..5].fill(1); // 15..20
        expected[15..20].fill(2); // 30..35
        assert_eq!(buf, expected);
        let mut untouched = vec![9u8; 5];
        overlay.apply(&mut untouched, 20);
        assert_eq!(untouched, [9; 5]);
        assert_eq!(overlay.bytes(), 15);
    }
}
