//! The sizing model behind `ferryctl size` and the load checks of `ferryctl preflight`: from a
//! site's write churn (per disk, average and peak, optionally a time series from `ferry-agent
//! profile`), an RPO target and the hours of outage to ride through, to cores, memory, cache,
//! upload bandwidth, process servers, storage transactions and their cost. Pure arithmetic, no
//! I/O: every figure is a formula of its inputs, written out in docs/SIZING.md, so a test (or a
//! user) can compute it by hand.
//!
//! Limits of the model: CPU is scaled from one calibration (`ferry-perf limits` of a machine
//! like the target's, times ferryd's measured overhead over that ideal per byte, plus a
//! measured cost per disk, also in units of that ideal); disks' series are
//! summed interval by interval as if they peaked together; a change set is one PUT (objects
//! up to 8 MiB are one Put Blob); base images count once per disk whose size is known.

use serde::{Deserialize, Serialize};

/// Per-core costs: a `ferry-perf limits --out FILE` result (these fields of it) and ferryd's
/// measured CPU over that ideal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// CPU ns per input byte of the ideal hot path (TLS in, cache append, zstd, AES, upload).
    pub ideal_ns_per_byte: f64,
    /// zstd ratio of the calibration data (plaintext / compressed).
    pub compression_ratio: f64,
    /// ferryd's CPU per byte over the ideal, from a `ferry-perf run` (docs/BENCHMARKS.md).
    #[serde(default = "default_ferryd_x_ideal")]
    pub ferryd_x_ideal: f64,
    /// ferryd's CPU per disk beyond its bytes (its requests, change sets, points and lease
    /// renewals, and the thread wake-ups of each), as bytes per second of the ideal hot path.
    #[serde(default = "default_ferryd_disk_ideal_bytes_per_s")]
    pub ferryd_disk_ideal_bytes_per_s: f64,
    /// Where the numbers come from, shown in the answer.
    #[serde(default)]
    pub source: String,
}

/// ferryd's CPU per byte over the ideal in steady load (64 disks, as fast as they go), release
/// build, on the project's machine kind: 1.32-1.38x in docs/BENCHMARKS.md's seventeenth step;
/// the upper end, rounded up.
pub fn default_ferryd_x_ideal() -> f64 {
    1.4
}

/// ferryd's CPU per disk beyond [`default_ferryd_x_ideal`]'s per byte, in bytes per second of
/// the ideal: what many quiet disks cost over the same bytes from a few busy ones. Measured in
/// one sitting (docs/BENCHMARKS.md, seventeenth step): 43 KB/s per disk with 675 disks at 0.036
/// MB/s (asr-sizing, its slowest run), 48 KB/s with 1,000 disks at 0.1 MB/s (many-streams);
/// rounded up.
pub fn default_ferryd_disk_ideal_bytes_per_s() -> f64 {
    50_000.0
}

impl Calibration {
    /// The slower of the project's measured machine kinds (2 vCPU AMD EPYC, KVM), release
    /// build: `ferry-perf limits` ideal 3.86 ns/B in docs/BENCHMARKS.md, zstd-1 ratio 2.37 on
    /// mixed data (LIMITS.md); ferryd's factors are ratios to the ideal, the defaults above.
    pub fn builtin() -> Calibration {
        Calibration {
            ideal_ns_per_byte: 3.86,
            compression_ratio: 2.37,
            ferryd_x_ideal: default_ferryd_x_ideal(),
            ferryd_disk_ideal_bytes_per_s: default_ferryd_disk_ideal_bytes_per_s(),
            source: "built in: the project's 2-vCPU EPYC machine kind (docs/SIZING.md)".into(),
        }
    }

    /// ferryd's CPU ns per received byte.
    pub fn ferryd_ns_per_byte(&self) -> f64 {
        self.ideal_ns_per_byte * self.ferryd_x_ideal
    }

    /// ferryd's CPU ns per second for each disk, beyond its bytes.
    pub fn ferryd_ns_per_disk_second(&self) -> f64 {
        self.ideal_ns_per_byte * self.ferryd_disk_ideal_bytes_per_s
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        if !finite_positive(self.ideal_ns_per_byte) || !finite_positive(self.ferryd_x_ideal) {
            anyhow::bail!("the calibration's ideal_ns_per_byte and ferryd_x_ideal must be positive numbers");
        }
        if !(self.ferryd_disk_ideal_bytes_per_s.is_finite() && self.ferryd_disk_ideal_bytes_per_s >= 0.0) {
            anyhow::bail!("the calibration's ferryd_disk_ideal_bytes_per_s must be a non-negative number");
        }
        if !(self.compression_ratio.is_finite() && self.compression_ratio >= 1.0) {
            anyhow::bail!("the calibration's compression_ratio must be at least 1");
        }
        Ok(())
    }
}

/// One disk's write churn, in bytes per second.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskLoad {
    pub average: f64,
    pub peak: f64,
    pub size_bytes: Option<u64>,
    /// Rates of consecutive intervals of `interval_secs` (empty: the peak held all the time).
    pub series: Vec<f64>,
    pub interval_secs: f64,
}

/// The site (or one process server's share of it).
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub disks: Vec<DiskLoad>,
    pub machines: usize,
}

impl Load {
    // (`+ 0.0`: an empty f64 sum is -0.0, which would print as "-0.00")
    pub fn average(&self) -> f64 {
        self.disks.iter().map(|d| d.average).sum::<f64>() + 0.0
    }
    pub fn peak(&self) -> f64 {
        self.disks.iter().map(|d| d.peak).sum::<f64>() + 0.0
    }
}

/// What the answer depends on besides the load.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub rpo_secs: f64,
    pub outage_hours: f64,
    pub retention_hours: f64,
    /// Cores of one process server VM.
    pub server_cores: u32,
    /// Disks one process server takes at most (the 1,000-disk scenario is measured).
    pub server_max_disks: usize,
    /// Share of its cores ferryd may use at the peak (the rest is headroom; alerts warn at 80%).
    pub cpu_utilisation: f64,
    pub prices: Prices,
    pub ferryd: FerrydSettings,
}

/// ferryd's settings the model uses (ferry.toml's defaults, or the appliance's).
#[derive(Clone, Debug, PartialEq)]
pub struct FerrydSettings {
    pub change_set_bytes: f64,
    pub flush_delay_secs: f64,
    pub idle_flush_delay_max_secs: f64,
    pub lease_secs: f64,
    pub cache_limit_percent: f64,
    pub throttle_free_percent: f64,
    pub segment_bytes: f64,
    pub memory_budget_bytes: f64,
    /// The agents' bookmark interval (ferry-agent's crash_interval_secs): one point per disk.
    pub bookmark_interval_secs: f64,
}

impl FerrydSettings {
    pub fn defaults() -> FerrydSettings {
        let pipeline = ferry_config::config::PipelineConfig::default();
        let cache = ferry_config::config::CacheConfig::default();
        let server = ferry_config::config::ServerConfig::default();
        let alerts = ferry_config::config::AlertsConfig::default();
        FerrydSettings {
            change_set_bytes: pipeline.change_set_bytes as f64,
            flush_delay_secs: pipeline.flush_delay_ms as f64 / 1000.0,
            idle_flush_delay_max_secs: pipeline.idle_flush_delay_max_ms as f64 / 1000.0,
            lease_secs: f64::from(server.lease_secs),
            cache_limit_percent: f64::from(cache.limit_percent),
            throttle_free_percent: f64::from(alerts.throttle_free_percent),
            segment_bytes: cache.segment_bytes as f64,
            memory_budget_bytes: pipeline.memory_budget_bytes as f64,
            bookmark_interval_secs: 300.0,
        }
    }
}

/// Azure Blob Storage prices, in the user's currency.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prices {
    /// Per 10,000 write operations (Put Blob, Put Block, Put Block List).
    pub write_per_10k: f64,
    /// Per 10,000 other operations (Lease Blob is billed as one).
    pub other_per_10k: f64,
    pub gb_month: f64,
}

impl Prices {
    /// Hot LRS list prices (US East, pay as you go, USD), rounded: $0.05 per 10,000 writes,
    /// $0.004 per 10,000 other operations, $0.018 per GB-month.
    pub fn hot_lrs() -> Prices {
        Prices {
            write_per_10k: 0.05,
            other_per_10k: 0.004,
            gb_month: 0.018,
        }
    }
}

/// Azure bills a month as 730 hours.
pub const MONTH_SECS: f64 = 730.0 * 3600.0;
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// Memory of the OS and everything but ferryd's budget-bound buffers.
const BASE_MEMORY_BYTES: f64 = GIB;
/// ferryd's peak memory is under this multiple of memory_budget_bytes (ferry.toml's comment).
const MEMORY_BUDGET_PEAK_FACTOR: f64 = 2.5;
/// The memory budget holds this many seconds of the peak rate in flight.
const BUDGET_SECONDS_OF_PEAK: f64 = 4.0;
/// Smallest process server: its cores.
pub const MIN_CORES: u32 = 2;

/// The answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sizing {
    pub disks: usize,
    pub machines: usize,
    pub average_mb_s: f64,
    pub peak_mb_s: f64,
    pub gb_per_day: f64,
    /// Cores ferryd needs for the peak, site-wide (before rounding per server).
    pub cores_needed: f64,
    pub process_servers: u32,
    pub per_server: ServerSize,
    /// Upload bandwidth (compressed, encrypted bytes) that keeps the RPO target.
    pub upload_mbit_s: f64,
    /// The least that keeps up on average (the RPO then grows during peaks).
    pub upload_mbit_s_average: f64,
    pub transactions: Transactions,
    pub stored_gb: f64,
    pub cost_per_month: Cost,
    pub asr: AsrComparison,
    pub calibration: Calibration,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServerSize {
    pub cores: u32,
    pub memory_gib: f64,
    pub memory_budget_mib: f64,
    /// File system size for the cache (ferry.toml's cache limit and throttle on top of the backlog).
    pub cache_gib: f64,
    pub disks: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Transactions {
    pub change_set_puts_per_hour: f64,
    pub point_puts_per_hour: f64,
    pub lease_calls_per_hour: f64,
    pub writes_per_month: f64,
    pub others_per_month: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Cost {
    pub writes: f64,
    pub others: f64,
    pub storage: f64,
    pub total: f64,
    pub prices: Prices,
}

/// Azure Site Recovery's published scale-out process server sizes ("Plan capacity and scaling
/// for VMware disaster recovery to Azure", learn.microsoft.com/azure/site-recovery/
/// site-recovery-plan-capacity-vmware): vCPUs, memory GB, cache GB, daily churn GB, machines.
pub const ASR_PROCESS_SERVERS: [AsrRow; 3] = [
    AsrRow {
        vcpus: 4,
        memory_gb: 8,
        cache_gb: 300,
        churn_gb_per_day: 250,
        machines: 85,
    },
    AsrRow {
        vcpus: 8,
        memory_gb: 12,
        cache_gb: 600,
        churn_gb_per_day: 1000,
        machines: 150,
    },
    AsrRow {
        vcpus: 12,
        memory_gb: 24,
        cache_gb: 1000,
        churn_gb_per_day: 2000,
        machines: 225,
    },
];

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct AsrRow {
    pub vcpus: u32,
    pub memory_gb: u32,
    pub cache_gb: u32,
    pub churn_gb_per_day: u32,
    pub machines: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AsrComparison {
    pub process_servers: u32,
    pub each: AsrRow,
    pub vcpus: u32,
    pub memory_gb: u32,
    pub cache_gb: u32,
    /// Ferry's cores (all process servers) over ASR's vCPUs for the same site.
    pub ferry_cores_over_asr: f64,
}

/// Sizes a site. Rates are bytes per second of plaintext as the agents send it.
pub fn size(load: &Load, plan: &Plan, calibration: &Calibration) -> Sizing {
    let average = load.average();
    let peak = load.peak();
    let settings = &plan.ferryd;

    // CPU: the peak rate at ferryd's cost per byte, plus every disk's own cost, within the
    // utilisation share. (Every disk counts as active: an idle one costs less, but is planned
    // for the day it writes.)
    let cpu_ns_per_second =
        peak * calibration.ferryd_ns_per_byte() + load.disks.len() as f64 * calibration.ferryd_ns_per_disk_second();
    let cores_needed = cpu_ns_per_second / 1e9 / plan.cpu_utilisation;
    let by_cpu = (cores_needed / f64::from(plan.server_cores)).ceil() as u32;
    let by_disks = load.disks.len().div_ceil(plan.server_max_disks.max(1)) as u32;
    let servers = by_cpu.max(by_disks).max(1);
    let share = 1.0 / f64::from(servers);
    let cores = ((cores_needed * share).ceil() as u32).max(MIN_CORES);

    // Memory: the budget holds a few seconds of the server's peak, at least ferryd's default.
    let budget = round_up(
        (peak * share * BUDGET_SECONDS_OF_PEAK).max(settings.memory_budget_bytes),
        64.0 * MIB,
    );
    let memory = BASE_MEMORY_BYTES + MEMORY_BUDGET_PEAK_FACTOR * budget;

    // Cache: the outage's backlog at the average rate, inside the cache limit and above the
    // throttle, and never less than two segments.
    let backlog = average * share * plan.outage_hours * 3600.0;
    let usable = settings.cache_limit_percent / 100.0 * (1.0 - settings.throttle_free_percent / 100.0);
    let cache = (backlog / usable).max(2.0 * settings.segment_bytes / usable);

    // Upload: the least bandwidth whose backlog always drains within the RPO target.
    let ratio = calibration.compression_ratio;
    let upload = bandwidth_for_rpo(load, plan.rpo_secs);
    let mbit = |bytes_per_s: f64| bytes_per_s / ratio * 8.0 / 1e6;

    // Transactions: change sets per disk from the flush rules, a point per bookmark, a lease
    // renewal every third of the lease.
    let change_sets_per_s: f64 = load
        .disks
        .iter()
        .map(|d| change_sets_per_second(d.average, settings))
        .sum();
    let points_per_s = load.disks.len() as f64 / settings.bookmark_interval_secs;
    let leases_per_s = load.disks.len() as f64 / (settings.lease_secs / 3.0);
    let writes_per_month = (change_sets_per_s + points_per_s) * MONTH_SECS;
    let others_per_month = leases_per_s * MONTH_SECS;

    // Storage: the retention window's changes plus one base image per disk of known size.
    let bases: f64 = load.disks.iter().filter_map(|d| d.size_bytes).map(|b| b as f64).sum();
    let stored = (average * plan.retention_hours * 3600.0 + bases) / ratio;
    let prices = plan.prices.clone();
    let cost = Cost {
        writes: writes_per_month / 1e4 * prices.write_per_10k,
        others: others_per_month / 1e4 * prices.other_per_10k,
        storage: stored / 1e9 * prices.gb_month,
        total: 0.0,
        prices,
    };
    let cost = Cost {
        total: cost.writes + cost.others + cost.storage,
        ..cost
    };

    let gb_per_day = average * 86400.0 / 1e9;
    let asr = asr_comparison(gb_per_day, load.machines, cores * servers);
    Sizing {
        disks: load.disks.len(),
        machines: load.machines,
        average_mb_s: average / 1e6,
        peak_mb_s: peak / 1e6,
        gb_per_day,
        cores_needed,
        process_servers: servers,
        per_server: ServerSize {
            cores,
            memory_gib: memory / GIB,
            memory_budget_mib: budget / MIB,
            cache_gib: cache / GIB,
            disks: load.disks.len().div_ceil(servers as usize),
        },
        upload_mbit_s: mbit(upload),
        upload_mbit_s_average: mbit(average),
        transactions: Transactions {
            change_set_puts_per_hour: change_sets_per_s * 3600.0,
            point_puts_per_hour: points_per_s * 3600.0,
            lease_calls_per_hour: leases_per_s * 3600.0,
            writes_per_month,
            others_per_month,
        },
        stored_gb: stored / 1e9,
        cost_per_month: cost,
        asr,
        calibration: calibration.clone(),
    }
}

/// Change sets a disk writing `rate` bytes/s makes per second: one per change_set_bytes, or,
/// for a quiet disk, one per flush delay, which grows (up to the idle maximum) while its change
/// sets stay under a quarter of change_set_bytes.
pub fn change_sets_per_second(rate: f64, settings: &FerrydSettings) -> f64 {
    if rate <= 0.0 {
        return 0.0;
    }
    let quiet_interval = (settings.change_set_bytes / 4.0 / rate)
        .max(settings.flush_delay_secs)
        .min(settings.idle_flush_delay_max_secs.max(settings.flush_delay_secs));
    (rate / settings.change_set_bytes).max(1.0 / quiet_interval)
}

/// The least upload rate (plaintext bytes/s) at which the site's backlog, fed by the disks'
/// series summed interval by interval, never holds more than `rpo_secs` of that rate: at most
/// the peak, at least the average. Without series the peak is assumed to last.
pub fn bandwidth_for_rpo(load: &Load, rpo_secs: f64) -> f64 {
    let (series, interval) = site_series(load);
    let average = load.average();
    let peak = load.peak();
    if series.is_empty() {
        return peak;
    }
    let keeps_rpo = |rate: f64| {
        let mut backlog = 0.0f64;
        for &arriving in &series {
            backlog = (backlog + (arriving - rate) * interval).max(0.0);
            if backlog > rate * rpo_secs + 1e-6 {
                return false;
            }
        }
        true
    };
    let (mut low, mut high) = (average, peak.max(average));
    if keeps_rpo(low) {
        return low;
    }
    for _ in 0..100 {
        let middle = (low + high) / 2.0;
        if keeps_rpo(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}

/// The disks' series added interval by interval (all must share one interval; the shortest
/// series bounds the sum).
fn site_series(load: &Load) -> (Vec<f64>, f64) {
    let with_series: Vec<&DiskLoad> = load.disks.iter().filter(|d| !d.series.is_empty()).collect();
    if with_series.is_empty() || with_series.len() != load.disks.len() {
        return (Vec::new(), 0.0);
    }
    let interval = with_series[0].interval_secs;
    if with_series.iter().any(|d| (d.interval_secs - interval).abs() > 1e-9) || interval <= 0.0 {
        return (Vec::new(), 0.0);
    }
    let length = with_series.iter().map(|d| d.series.len()).min().unwrap_or(0);
    let sum = (0..length)
        .map(|i| with_series.iter().map(|d| d.series[i]).sum())
        .collect();
    (sum, interval)
}

/// ASR's process servers for the same site: the fewest of its largest size that carry the churn
/// and machines, then the smallest size that carries each one's share.
fn asr_comparison(gb_per_day: f64, machines: usize, ferry_cores: u32) -> AsrComparison {
    let largest = ASR_PROCESS_SERVERS[ASR_PROCESS_SERVERS.len() - 1];
    let servers = ((gb_per_day / f64::from(largest.churn_gb_per_day)).ceil() as u32)
        .max(machines.div_ceil(largest.machines as usize) as u32)
        .max(1);
    let share_churn = gb_per_day / f64::from(servers);
    let share_machines = machines.div_ceil(servers as usize) as u32;
    let each = ASR_PROCESS_SERVERS
        .iter()
        .copied()
        .find(|row| share_churn <= f64::from(row.churn_gb_per_day) && share_machines <= row.machines)
        .unwrap_or(largest);
    AsrComparison {
        process_servers: servers,
        each,
        vcpus: each.vcpus * servers,
        memory_gb: each.memory_gb * servers,
        cache_gb: each.cache_gb * servers,
        ferry_cores_over_asr: f64::from(ferry_cores) / f64::from(each.vcpus * servers),
    }
}

fn round_up(value: f64, unit: f64) -> f64 {
    (value / unit).ceil() * unit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(average_mb: f64, peak_mb: f64) -> DiskLoad {
        DiskLoad {
            average: average_mb * 1e6,
            peak: peak_mb * 1e6,
            size_bytes: None,
            series: Vec::new(),
            interval_secs: 0.0,
        }
    }

    #[test]
    fn quiet_disks_make_fewer_change_sets_busy_ones_one_per_change_set() {
        let settings = FerrydSettings::defaults();
        // 8 MiB change sets, 1 s flush, 60 s idle maximum.
        assert_eq!(change_sets_per_second(0.0, &settings), 0.0);
        // 1 kB/s: a quarter change set would take ~35 min: the idle maximum rules.
        assert!((change_sets_per_second(1e3, &settings) - 1.0 / 60.0).abs() < 1e-12);
        // 100 MB/s: one per 8 MiB.
        let busy = change_sets_per_second(100e6, &settings);
        assert!((busy - 100e6 / 8_388_608.0).abs() < 1e-9);
        // 0.5 MB/s: a quarter change set (2 MiB) fills in 4.19 s.
        let middle = change_sets_per_second(0.5e6, &settings);
        assert!((middle - 0.5e6 / 2_097_152.0).abs() < 1e-12);
    }

    #[test]
    fn bandwidth_between_average_and_peak_drains_the_peak_within_the_rpo() {
        // One minute at 40 MB/s among minutes at 10 MB/s, RPO 30 s: (40 - B) * 60 <= B * 30
        // gives B = 26.67 MB/s (above the 17.5 MB/s average, which alone would not do).
        let disk = DiskLoad {
            average: 17.5e6,
            peak: 40e6,
            size_bytes: None,
            series: vec![10e6, 40e6, 10e6, 10e6],
            interval_secs: 60.0,
        };
        let load = Load {
            disks: vec![disk],
            machines: 1,
        };
        let rate = bandwidth_for_rpo(&load, 30.0);
        assert!((rate - 80e6 / 3.0).abs() < 1e3, "{rate}");
        // A long RPO needs only the average; without a series the peak is assumed to last.
        assert!((bandwidth_for_rpo(&load, 1e6) - 17.5e6).abs() < 1e-3);
        let flat_load = Load {
            disks: vec![flat(10.0, 40.0)],
            machines: 1,
        };
        assert_eq!(bandwidth_for_rpo(&flat_load, 120.0), 40e6);
    }

    #[test]
    fn asr_sizes_by_churn_and_machines() {
        // 3 TB/day: two of the largest, each 1.5 TB/day: still the largest.
        let asr = asr_comparison(3000.0, 100, 8);
        assert_eq!((asr.process_servers, asr.each.vcpus, asr.vcpus), (2, 12, 24));
        // 200 GB/day, 50 machines: one of the smallest.
        let asr = asr_comparison(200.0, 50, 2);
        assert_eq!((asr.process_servers, asr.each.vcpus), (1, 4));
        assert!((asr.ferry_cores_over_asr - 0.5).abs() < 1e-12);
        // 300 machines at little churn: two servers for the machines.
        assert_eq!(asr_comparison(10.0, 300, 2).process_servers, 2);
    }

    /// 8-core servers planned at 50%.
    fn half_busy_plan() -> Plan {
        Plan {
            rpo_secs: 300.0,
            outage_hours: 4.0,
            retention_hours: 24.0,
            server_cores: 8,
            server_max_disks: 1000,
            cpu_utilisation: 0.5,
            prices: Prices::hot_lrs(),
            ferryd: FerrydSettings::defaults(),
        }
    }

    #[test]
    fn many_quiet_disks_cost_cores_beyond_their_bytes() {
        let calibration = Calibration {
            ideal_ns_per_byte: 4.0,
            compression_ratio: 2.0,
            ferryd_x_ideal: 1.5,
            ferryd_disk_ideal_bytes_per_s: 50_000.0,
            source: String::new(),
        };
        let plan = half_busy_plan();
        // The same 100 MB/s from one disk and from 1,000: 100e6 B/s x 6 ns/B = 0.6 cores busy
        // either way, plus 4 ns/B x 50,000 B/s = 0.2 ms/s per disk; at 50%.
        let one = Load {
            disks: vec![flat(100.0, 100.0)],
            machines: 1,
        };
        let many = Load {
            disks: (0..1000).map(|_| flat(0.1, 0.1)).collect(),
            machines: 100,
        };
        let one_cores = size(&one, &plan, &calibration).cores_needed;
        let many_cores = size(&many, &plan, &calibration).cores_needed;
        assert!((one_cores - (0.6 + 0.0002) / 0.5).abs() < 1e-12, "{one_cores}");
        assert!(
            (many_cores - (0.6 + 1000.0 * 0.0002) / 0.5).abs() < 1e-12,
            "{many_cores}"
        );
        // Without the per-disk cost the two are the same site.
        let bytes_only = Calibration {
            ferryd_disk_ideal_bytes_per_s: 0.0,
            ..calibration
        };
        assert!((size(&many, &plan, &bytes_only).cores_needed - 1.2).abs() < 1e-12);
    }

    #[test]
    fn a_calibration_from_ferry_perf_limits_takes_the_measured_factors() {
        // `ferry-perf limits --out` writes the ideal and the ratio (and more), not ferryd's own
        // factors: those default to the measured ones.
        let limits = r#"{"ideal_ns_per_byte": 3.1, "compression_ratio": 2.4, "cores": 2, "stages": []}"#;
        let calibration: Calibration = serde_json::from_str(limits).expect("a limits file parses");
        assert_eq!(calibration.ferryd_x_ideal, default_ferryd_x_ideal());
        assert_eq!(
            calibration.ferryd_disk_ideal_bytes_per_s,
            default_ferryd_disk_ideal_bytes_per_s()
        );
        calibration.validate().expect("valid");
        let negative = Calibration {
            ferryd_disk_ideal_bytes_per_s: -1.0,
            ..calibration
        };
        let error = negative.validate().expect_err("a negative per-disk cost is refused");
        assert!(error.to_string().contains("ferryd_disk_ideal_bytes_per_s"), "{error}");
    }

    #[test]
    fn servers_split_by_cpu_and_by_disks() {
        let calibration = Calibration {
            ideal_ns_per_byte: 4.0,
            compression_ratio: 2.0,
            ferryd_x_ideal: 2.0,
            ferryd_disk_ideal_bytes_per_s: 0.0,
            source: String::new(),
        };
        let plan = half_busy_plan();
        // 500 MB/s peak at 8 ns/B = 4 cores busy, 8 at 50%: one 8-core server.
        let load = Load {
            disks: vec![flat(100.0, 500.0)],
            machines: 1,
        };
        let answer = size(&load, &plan, &calibration);
        assert_eq!((answer.process_servers, answer.per_server.cores), (1, 8));
        // 1,001 disks: two servers even with no churn to speak of.
        let many = Load {
            disks: (0..1001).map(|_| flat(0.001, 0.001)).collect(),
            machines: 10,
        };
        let answer = size(&many, &plan, &calibration);
        assert_eq!((answer.process_servers, answer.per_server.cores), (2, MIN_CORES));
        assert_eq!(answer.per_server.disks, 501);
    }
}
