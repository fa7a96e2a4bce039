//! Point-in-time passes: before a pass, the disk is captured at one instant and the pass reads
//! the capture, not the live disk, so its bookmark names a state the disk really had.
//!
//! Providers, chosen per disk (`[[disks]] snapshot`):
//! - `reflink`: an image file on a file system that shares extents (XFS, btrfs): a `FICLONE`
//!   copy beside it. The kernel holds the file's writers (its I/O and mmap locks) and flushes
//!   its dirty pages for the length of the clone, so the copy is one instant of the file; no
//!   data is copied (extents are shared, written blocks of the original are copied on write
//!   later). The clone is unlinked as soon as it is open: nothing is left behind, even if the
//!   agent dies. (Freezing the file system around the clone, FIFREEZE, is not possible: a clone
//!   writes the file system's metadata and would wait for the thaw.)
//! - `lvm`: a logical volume: an LVM snapshot (`lvcreate --snapshot`, 10% of the origin's size
//!   for the writes made while the pass reads), read with O_DIRECT, removed after the pass.
//! - `none`: the live disk, as before; the bookmark's tag says it is not point-in-time.
//! - `auto` (the default): `reflink` for an image file whose file system can, `lvm` for a
//!   logical volume, otherwise `none`, with the reason shown in `ferry-agent status`.
//!
//! How long writes were held (the clone, or the `lvcreate` call around the device-mapper
//! suspend) is measured per pass.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::Device;

/// `[[disks]] snapshot`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    #[default]
    Auto,
    Reflink,
    Lvm,
    None,
}

/// A capture of a disk for one pass; dropping it removes what it made (an LVM snapshot).
pub struct Snapshot {
    /// `reflink`, `lvm` or `none`.
    pub provider: &'static str,
    /// How long the disk's writers were held while it was taken (zero for `none`).
    pub hold: Duration,
    /// What the pass reads: the capture, or the live disk.
    pub device: Arc<Device>,
    /// Why the capture is the live disk under `auto`.
    pub note: Option<String>,
    lvm: Option<LvmSnapshot>,
}

impl Snapshot {
    /// A capture held at a group barrier (held.rs), already released.
    pub fn held(device: Arc<Device>, hold: Duration) -> Snapshot {
        Snapshot {
            provider: "reflink",
            hold,
            device,
            note: Some("held at a group barrier".into()),
            lvm: None,
        }
    }

    /// Whether the pass reads one instant of the disk.
    pub fn point_in_time(&self) -> bool {
        self.provider != "none"
    }

    /// Words for the bookmark's tag (shown by `ferryctl points`).
    pub fn tag(&self) -> String {
        match self.provider {
            "none" => "live read, not point-in-time".to_string(),
            provider => format!(
                "snapshot {provider}, writes held {:.1} ms",
                self.hold.as_secs_f64() * 1e3
            ),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(lvm) = self.lvm.take() {
            lvm.remove();
        }
    }
}

/// Captures `device` as `mode` says. An explicit provider that cannot work is an error (the
/// pass fails with the reason); `auto` falls back to `none` and says why.
pub fn take(device: &Arc<Device>, mode: SnapshotMode) -> anyhow::Result<Snapshot> {
    let live = |note: Option<String>| Snapshot {
        provider: "none",
        hold: Duration::ZERO,
        device: device.clone(),
        note,
        lvm: None,
    };
    match mode {
        SnapshotMode::None => Ok(live(None)),
        SnapshotMode::Reflink => reflink(device),
        SnapshotMode::Lvm => lvm(device),
        SnapshotMode::Auto if device.is_block_device => match logical_volume(&device.path) {
            Some(_) => lvm(device),
            None => Ok(live(Some(format!(
                "{} is not an LVM logical volume: passes read the live disk",
                device.path.display()
            )))),
        },
        SnapshotMode::Auto => match reflink(device) {
            Ok(snapshot) => Ok(snapshot),
            Err(e) => Ok(live(Some(format!("{e:#}: passes read the live disk")))),
        },
    }
}

/// A `FICLONE` copy of the image file beside it, open and already unlinked.
fn reflink(device: &Arc<Device>) -> anyhow::Result<Snapshot> {
    let (clone, hold) = reflink_clone(device)?;
    Ok(Snapshot {
        provider: "reflink",
        hold,
        device: Arc::new(device.reading_from(clone, false)),
        note: None,
        lvm: None,
    })
}

/// The clone itself (open, unlinked) and how long the clone held the image's writers.
pub(crate) fn reflink_clone(device: &Device) -> anyhow::Result<(File, Duration)> {
    if device.is_block_device {
        bail!(
            "{} is a block device: reflink takes image files (use lvm)",
            device.path.display()
        );
    }
    let path = clone_path(&device.path);
    // A clone left by an agent that died between creating and unlinking it.
    let _ = std::fs::remove_file(&path);
    let clone = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create the snapshot file {}", path.display()))?;
    // Most dirty pages written back first, with the writers running: the clone then holds
    // them only while it flushes what was written since (milliseconds, not the backlog).
    let _ = rustix::fs::fdatasync(device.file());
    let started = Instant::now();
    let cloned = rustix::fs::ioctl_ficlone(&clone, device.file());
    let hold = started.elapsed();
    let _ = std::fs::remove_file(&path); // the open handle keeps the blocks until the pass ends
    cloned.map_err(|e| {
        anyhow::anyhow!(
            "the file system of {} cannot clone files ({e}; XFS with reflink, or btrfs, can)",
            device.path.display()
        )
    })?;
    Ok((clone, hold))
}

/// `.{name}.ferry-snapshot` beside the image (a clone must be on the same file system).
fn clone_path(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!(".{name}.ferry-snapshot"))
}

/// `(volume group, logical volume)` when `device` is an LVM logical volume (device-mapper
/// says so: its uuid starts with `LVM-`).
fn logical_volume(device: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device).ok()?.rdev();
    let sys = format!(
        "/sys/dev/block/{}:{}/dm",
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    );
    let uuid = std::fs::read_to_string(format!("{sys}/uuid")).ok()?;
    if !uuid.starts_with("LVM-") {
        return None;
    }
    let output = std::process::Command::new("lvs")
        .args(["--noheadings", "-o", "vg_name,lv_name"])
        .arg(device)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

struct LvmSnapshot {
    /// `vg/name`.
    volume: String,
}

impl LvmSnapshot {
    fn remove(&self) {
        match std::process::Command::new("lvremove")
            .args(["-f", &self.volume])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                tracing::error!(snapshot = %self.volume, stderr = %String::from_utf8_lossy(&out.stderr), "cannot remove the LVM snapshot")
            }
            Err(e) => tracing::error!(snapshot = %self.volume, error = %e, "cannot run lvremove"),
        }
    }
}

/// An LVM snapshot of the logical volume, open for reading.
fn lvm(device: &Arc<Device>) -> anyhow::Result<Snapshot> {
    let Some((vg, lv)) = logical_volume(&device.path) else {
        bail!(
            "{} is not an LVM logical volume (or lvs is missing)",
            device.path.display()
        );
    };
    let name = format!("{lv}-ferry-snapshot");
    let volume = format!("{vg}/{name}");
    // One left by an agent that died during a pass.
    let _ = std::process::Command::new("lvremove").args(["-f", &volume]).output();
    let started = Instant::now();
    let made = std::process::Command::new("lvcreate")
        .args(["--snapshot", "--extents", "10%ORIGIN", "--name", &name])
        .arg(format!("{vg}/{lv}"))
        .output()
        .context("cannot run lvcreate")?;
    let hold = started.elapsed();
    if !made.status.success() {
        bail!(
            "lvcreate --snapshot of {vg}/{lv} failed: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
    }
    let snapshot = LvmSnapshot { volume };
    let path = PathBuf::from(format!("/dev/{vg}/{name}"));
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .with_context(|| format!("cannot open the snapshot {}", path.display()));
    let file: File = match file {
        Ok(file) => file,
        Err(e) => {
            snapshot.remove();
            return Err(e);
        }
    };
    Ok(Snapshot {
        provider: "lvm",
        hold,
        device: Arc::new(device.reading_from(file, true)),
        note: None,
        lvm: Some(snapshot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_the_config_words() {
        #[derive(Deserialize)]
        struct Disk {
            snapshot: SnapshotMode,
        }
        for (word, mode) in [
            ("auto", SnapshotMode::Auto),
            ("reflink", SnapshotMode::Reflink),
            ("lvm", SnapshotMode::Lvm),
            ("none", SnapshotMode::None),
        ] {
            let disk: Disk = toml::from_str(&format!("snapshot = {word:?}")).unwrap();
            assert_eq!(disk.snapshot, mode);
        }
        assert!(toml::from_str::<Disk>("snapshot = \"zfs\"").is_err());
        assert_eq!(
            clone_path(Path::new("/srv/vm/disk.img")),
            Path::new("/srv/vm/.disk.img.ferry-snapshot")
        );
    }
}
