//! A load scenario (`perf/scenarios/*.toml`; every key also a `ferry-perf run` flag, which
//! wins): how many simulated machines and disks, what each disk writes and how fast, for how
//! long, with which data, against which target. Values are checked here with the key named.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::datagen::Mix;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Simulated agents; each registers and keeps one HTTP/2 connection.
    pub machines: usize,
    pub disks_per_machine: usize,
    pub disk_size_bytes: u64,
    /// Write sizes and their weights: `[[4096, 40], [65536, 25], ...]` (bytes, weight).
    pub write_sizes: Vec<(u32, u32)>,
    /// Per disk, MB/s (10^6 B/s); 0 = as fast as the window allows.
    pub rate_mb_per_s: f64,
    /// Bursts: send `burst_on_secs`, then nothing for `burst_off_secs`, and again (0 = steady).
    pub burst_on_secs: f64,
    pub burst_off_secs: f64,
    /// How long to send (`total_bytes` ends it earlier when set, 0 = unset).
    pub duration_secs: f64,
    pub total_bytes: u64,
    /// Payload per batch, and batches in flight per disk.
    pub batch_bytes: u32,
    pub window: u32,
    /// A crash-consistent bookmark on each disk this often (0 = none).
    pub bookmark_every_secs: f64,
    /// mixed (zstd-1 ratio ~2.4), incompressible (1.0) or highly_compressible (~8.6).
    pub data: String,
    /// local, discard (the pipeline without storage) or azurite (started by ferry-perf).
    pub target: String,
    /// Hold uploads back during the load (a bandwidth cap of [`HOLD_CAP_BYTES_PER_SEC`] set
    /// through ferryd's control socket, lifted when the load ends), so the whole load is a
    /// backlog at its end and the drain measures the pipeline alone, with the machine to itself.
    /// Needs a ferryd that ferry-perf started.
    pub hold_uploads: bool,
    /// Overload, measured in one run (0 = off): uploads are held back until the backlog
    /// reaches this many MB, then let go while the load goes on; the load is told to stop once
    /// the backlog is down to half of it (or ends at `duration_secs`). Between the lift and the
    /// stop the pipeline works through a backlog with ingest competing for the CPU
    /// ("overload"); after the load it drains the rest alone. Needs a ferryd that ferry-perf
    /// started.
    pub hold_uploads_mb: u64,
    /// The nice of the load generator's threads (the simulated machines: registrations, TLS
    /// connections, senders; 0 to 19, 0 = unchanged); the sampler keeps its own. On a real
    /// site the agents run on their own machines; here they share ferryd's cores, and at the
    /// same weight they take CPU that ferryd's pipeline would have. overload.toml sets 19 so
    /// that what it measures is how ferryd shares the CPU between ingest and its pipeline,
    /// not the harness's share.
    pub load_nice: i32,
}

/// The upload cap while `hold_uploads` holds them back (ferryd's cap is never 0: 0 is
/// unlimited).
pub const HOLD_CAP_BYTES_PER_SEC: u64 = 1_000_000;

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "custom".into(),
            description: String::new(),
            machines: 1,
            disks_per_machine: 1,
            disk_size_bytes: 64 << 30,
            write_sizes: vec![(4096, 40), (16384, 20), (65536, 25), (262_144, 10), (1_048_576, 5)],
            rate_mb_per_s: 0.0,
            burst_on_secs: 0.0,
            burst_off_secs: 0.0,
            duration_secs: 10.0,
            total_bytes: 0,
            batch_bytes: 1 << 20,
            window: 4,
            bookmark_every_secs: 5.0,
            data: "mixed".into(),
            target: "local".into(),
            hold_uploads: false,
            hold_uploads_mb: 0,
            load_nice: 0,
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let scenario: Scenario = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        Ok(scenario)
    }

    pub fn mix(&self) -> anyhow::Result<Mix> {
        Ok(match self.data.as_str() {
            "mixed" => Mix::MIXED,
            "incompressible" => Mix::INCOMPRESSIBLE,
            "highly_compressible" => Mix::HIGHLY_COMPRESSIBLE,
            other => bail!("data: must be mixed, incompressible or highly_compressible, got {other:?}"),
        })
    }

    pub fn disks(&self) -> usize {
        self.machines * self.disks_per_machine
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.mix()?;
        if !matches!(self.target.as_str(), "local" | "discard" | "azurite") {
            bail!("target: must be local, discard or azurite, got {:?}", self.target);
        }
        if self.machines == 0 || self.disks_per_machine == 0 || self.disks() > 10_000 {
            bail!(
                "machines × disks_per_machine: must be 1 to 10,000 disks, got {}",
                self.disks()
            );
        }
        if self.write_sizes.is_empty() || self.write_sizes.iter().all(|(_, w)| *w == 0) {
            bail!("write_sizes: at least one size with a weight above 0");
        }
        for (size, _) in &self.write_sizes {
            if *size == 0 || !size.is_multiple_of(4096) || *size > 4 << 20 || *size > self.batch_bytes {
                bail!("write_sizes: {size} must be a multiple of 4096, at most 4 MiB and at most batch_bytes");
            }
        }
        if !(4096..=16 << 20).contains(&self.batch_bytes) {
            bail!("batch_bytes: must be 4096 to 16 MiB, got {}", self.batch_bytes);
        }
        if !(1..=16).contains(&self.window) {
            bail!("window: must be 1 to 16 (ferryd's default window), got {}", self.window);
        }
        if self.duration_secs <= 0.0 && self.total_bytes == 0 {
            bail!("duration_secs or total_bytes: one must be set");
        }
        if self.rate_mb_per_s < 0.0 || self.burst_on_secs < 0.0 || self.burst_off_secs < 0.0 {
            bail!("rate_mb_per_s, burst_on_secs, burst_off_secs: must not be negative");
        }
        if self.hold_uploads_mb > 0 && self.hold_uploads {
            bail!("hold_uploads_mb: holds uploads until a backlog, hold_uploads for the whole load; set one");
        }
        if self.hold_uploads_mb > 1_000_000 {
            bail!(
                "hold_uploads_mb: at most 1,000,000 (1 TB), got {}",
                self.hold_uploads_mb
            );
        }
        if self.hold_uploads_mb > 0 && self.duration_secs <= 0.0 {
            bail!("hold_uploads_mb: needs duration_secs (the load's longest time)");
        }
        if !(0..=19).contains(&self.load_nice) {
            bail!("load_nice: must be 0 to 19, got {}", self.load_nice);
        }
        if self.disk_size_bytes < 64 << 20 || !self.disk_size_bytes.is_multiple_of(4096) {
            bail!("disk_size_bytes: must be a multiple of 4096 of at least 64 MiB");
        }
        Ok(())
    }
}
