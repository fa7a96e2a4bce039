//! `ferry-agent profile`: a machine's write churn per disk, measured from the kernel's own
//! counters (`/proc/diskstats`, sectors written, always 512-byte units) so it costs nothing
//! and needs no agent registration. It samples every `interval` for `duration` and writes a
//! profile (JSON, [`Profile`]) that `ferryctl size` reads: per disk the average and peak MB/s,
//! GB/day and the series of interval rates.
//!
//! Limits: a profile holds at most [`MAX_INTERVALS`] intervals; disks are the whole block
//! devices of `/sys/block` (not partitions, loop, ram or optical devices) unless named; a
//! device that disappears mid-run keeps the rates measured until then.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The format number of [`Profile`].
pub const PROFILE_FORMAT: u32 = 1;
/// The most intervals one profile keeps (a week at one minute, a day at one second).
pub const MAX_INTERVALS: u64 = 604_800 / 60 * 10;
const SECTOR_BYTES: u64 = 512;

/// One machine's measured churn.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub format: u32,
    pub machine: String,
    pub started_unix_ms: u64,
    /// Seconds actually measured (shorter than asked when interrupted).
    pub duration_secs: f64,
    pub interval_secs: f64,
    /// False when the run was interrupted before its duration.
    pub complete: bool,
    pub disks: Vec<DiskProfile>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskProfile {
    /// The kernel's name (`sda`, `nvme0n1`).
    pub device: String,
    pub size_bytes: u64,
    pub written_bytes: u64,
    pub average_mb_s: f64,
    /// The highest interval's rate.
    pub peak_mb_s: f64,
    pub gb_per_day: f64,
    /// MB/s of each interval, in order.
    pub series_mb_s: Vec<f64>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read(path).with_context(|| format!("reading the profile {}", path.display()))?;
        let profile: Profile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a ferry-agent profile", path.display()))?;
        if profile.format != PROFILE_FORMAT {
            bail!(
                "{} is a profile of format {}; this ferryctl reads format {PROFILE_FORMAT}",
                path.display(),
                profile.format
            );
        }
        if !(profile.interval_secs.is_finite() && profile.interval_secs > 0.0) {
            bail!("{}: interval_secs must be positive", path.display());
        }
        for disk in &profile.disks {
            let rates = [disk.average_mb_s, disk.peak_mb_s]
                .into_iter()
                .chain(disk.series_mb_s.iter().copied());
            if rates.into_iter().any(|r| !(r.is_finite() && r >= 0.0)) {
                bail!(
                    "{}: disk {} has a negative or non-numeric rate",
                    path.display(),
                    disk.device
                );
            }
        }
        Ok(profile)
    }
}

/// What to measure.
pub struct ProfileRun {
    pub devices: Vec<String>,
    pub duration: Duration,
    pub interval: Duration,
}

/// Sectors written per device, from the text of `/proc/diskstats`.
pub fn sectors_written(diskstats: &str) -> BTreeMap<String, u64> {
    diskstats
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sectors = fields.get(9)?.parse().ok()?;
            Some((fields.get(2)?.to_string(), sectors))
        })
        .collect()
}

fn read_sectors_written() -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/diskstats").context("reading /proc/diskstats")?;
    Ok(sectors_written(&text))
}

/// The kernel name of `device`: `sdb`, `/dev/sdb`, or a link to it (`/dev/disk/by-id/...`).
pub fn kernel_name(device: &str) -> Result<String> {
    if !device.contains('/') {
        return Ok(device.to_string());
    }
    let resolved = std::fs::canonicalize(device).with_context(|| format!("no device {device}"))?;
    resolved
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{device} names no device"))
}

/// The whole disks of this machine: `/sys/block` without loop, ram, zram, optical and floppy
/// devices, and without empty ones.
pub fn whole_disks() -> Result<Vec<String>> {
    let mut disks = Vec::new();
    for entry in std::fs::read_dir("/sys/block").context("listing /sys/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let skip = ["loop", "ram", "zram", "sr", "fd"].iter().any(|p| name.starts_with(p));
        if !skip && device_size(&name).unwrap_or(0) > 0 {
            disks.push(name);
        }
    }
    disks.sort();
    Ok(disks)
}

fn device_size(name: &str) -> Result<u64> {
    let path = PathBuf::from("/sys/class/block").join(name).join("size");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let sectors: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("{} is not a number", path.display()))?;
    Ok(sectors * SECTOR_BYTES)
}

/// Measures until the duration passes or `stop` resolves (SIGINT/SIGTERM), reporting each
/// interval through `progress`. The profile's rates are those of the intervals measured.
pub async fn measure(
    run: &ProfileRun,
    machine: &str,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(u64, u64, f64),
) -> Result<Profile> {
    if run.interval.is_zero() || run.duration < run.interval {
        bail!("--interval must be positive and at most --duration");
    }
    let planned = run.duration.as_nanos() / run.interval.as_nanos();
    if planned as u64 > MAX_INTERVALS {
        bail!("{planned} intervals is more than a profile keeps ({MAX_INTERVALS}); use a longer --interval");
    }
    let planned = planned as u64;
    let mut sizes = BTreeMap::new();
    let first = read_sectors_written()?;
    for device in &run.devices {
        if !first.contains_key(device) {
            bail!("{device} is not in /proc/diskstats (ferry-agent profile --help lists how to name a device)");
        }
        sizes.insert(device.clone(), device_size(device).unwrap_or(0));
    }
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let started = Instant::now();
    let mut last = first.clone();
    let mut series: BTreeMap<&String, Vec<f64>> = run.devices.iter().map(|d| (d, Vec::new())).collect();
    let mut measured_until = started;
    let mut complete = true;
    tokio::pin!(stop);
    for index in 1..=planned {
        let due = started + run.interval * index as u32;
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = &mut stop => { complete = false; break; }
        }
        let now_counts = read_sectors_written()?;
        let now = Instant::now();
        let seconds = now.duration_since(measured_until).as_secs_f64();
        let mut total = 0.0;
        for device in &run.devices {
            let (before, after) = (last.get(device).copied(), now_counts.get(device).copied());
            let written = match (before, after) {
                (Some(before), Some(after)) => after.saturating_sub(before) * SECTOR_BYTES,
                _ => 0,
            };
            let rate = written as f64 / seconds / 1e6;
            total += rate;
            if let Some(rates) = series.get_mut(device) {
                rates.push(rate);
            }
        }
        for (device, count) in now_counts {
            last.insert(device, count);
        }
        measured_until = now;
        progress(index, planned, total);
    }
    let duration_secs = measured_until.duration_since(started).as_secs_f64();
    let disks = run
        .devices
        .iter()
        .map(|device| {
            let written = match (first.get(device), last.get(device)) {
                (Some(before), Some(after)) => after.saturating_sub(*before) * SECTOR_BYTES,
                _ => 0,
            };
            let rates = series.remove(device).unwrap_or_default();
            let average = if duration_secs > 0.0 {
                written as f64 / duration_secs / 1e6
            } else {
                0.0
            };
            DiskProfile {
                device: device.clone(),
                size_bytes: sizes.get(device).copied().unwrap_or(0),
                written_bytes: written,
                average_mb_s: average,
                peak_mb_s: rates.iter().copied().fold(0.0, f64::max),
                gb_per_day: average * 86_400.0 / 1e3,
                series_mb_s: rates,
            }
        })
        .collect();
    Ok(Profile {
        format: PROFILE_FORMAT,
        machine: machine.to_string(),
        started_unix_ms,
        duration_secs,
        interval_secs: run.interval.as_secs_f64(),
        complete,
        disks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_sectors_written_are_the_tenth_field() {
        let text = "   8       0 sda 4242 12 90000 300 777 5 123456 900 0 1000 1200 0 0 0 0\n \
                    259       0 nvme0n1 1 0 8 0 2 0 16 0 0 0 0\n  bad line\n";
        let counts = sectors_written(text);
        assert_eq!(counts.get("sda"), Some(&123_456));
        assert_eq!(counts.get("nvme0n1"), Some(&16));
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn kernel_names_pass_through_and_paths_resolve() {
        assert_eq!(kernel_name("sdb").unwrap(), "sdb");
        assert!(kernel_name("/no/such/device").is_err());
    }

    #[test]
    fn a_profile_with_a_negative_rate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let mut profile = Profile {
            format: PROFILE_FORMAT,
            machine: "m".into(),
            started_unix_ms: 0,
            duration_secs: 60.0,
            interval_secs: 1.0,
            complete: true,
            disks: vec![DiskProfile {
                device: "sda".into(),
                size_bytes: 0,
                written_bytes: 0,
                average_mb_s: 1.0,
                peak_mb_s: 2.0,
                gb_per_day: 86.4,
                series_mb_s: vec![1.0, -2.0],
            }],
        };
        std::fs::write(&path, serde_json::to_vec(&profile).unwrap()).unwrap();
        assert!(Profile::load(&path).unwrap_err().to_string().contains("negative"));
        profile.disks[0].series_mb_s = vec![1.0, 2.0];
        std::fs::write(&path, serde_json::to_vec(&profile).unwrap()).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), profile);
        profile.format = 9;
        std::fs::write(&path, serde_json::to_vec(&profile).unwrap()).unwrap();
        assert!(Profile::load(&path).unwrap_err().to_string().contains("format 9"));
    }
}
