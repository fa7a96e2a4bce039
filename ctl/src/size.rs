//! `ferryctl size`: the process servers, cache, bandwidth and storage bill a site needs, from
//! `ferry-agent profile` files or flags, an RPO target and the hours of outage to ride through
//! (the model is [`crate::sizing`]; docs/SIZING.md writes out its formulas). Also the load
//! arguments `ferryctl preflight` shares.

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_agent::profile::Profile;
use std::path::PathBuf;

use crate::sizing::{self, Calibration, DiskLoad, FerrydSettings, Load, Plan, Prices, Sizing};

/// The load to plan for: profiles, or flags describing the disks.
#[derive(Args, Debug, Clone, Default)]
pub struct LoadArgs {
    /// A `ferry-agent profile` file (repeatable: one per machine).
    #[arg(long = "profile", value_name = "FILE")]
    pub profiles: Vec<PathBuf>,
    /// Without profiles: the number of disks.
    #[arg(long, conflicts_with = "profiles")]
    pub disks: Option<usize>,
    /// Without profiles: each disk's average write churn, MB/s.
    #[arg(long, value_name = "MB_S", conflicts_with = "profiles")]
    pub churn_mb_s: Option<f64>,
    /// Without profiles: each disk's peak write churn, MB/s (default: the average).
    #[arg(long, value_name = "MB_S", conflicts_with = "profiles")]
    pub peak_mb_s: Option<f64>,
    /// Protected machines (default: one per profile; with flags, one per disk).
    #[arg(long)]
    pub machines: Option<usize>,
    /// Per-core costs: a `ferry-perf limits --out FILE` result from a machine like the process
    /// servers' (default: the project's measured 2-vCPU EPYC machine kind).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// ferryd's CPU per byte over the calibration's ideal (default 1.4, docs/SIZING.md).
    #[arg(long, value_name = "FACTOR")]
    pub ferryd_x_ideal: Option<f64>,
    /// ferryd's CPU per disk beyond its bytes, as bytes per second of the calibration's ideal
    /// (default 50000, docs/SIZING.md).
    #[arg(long, value_name = "BYTES_S")]
    pub ferryd_disk_ideal_bytes_per_s: Option<f64>,
}

impl LoadArgs {
    /// The load, or None when no load was described.
    pub fn load(&self) -> Result<Option<Load>> {
        if !self.profiles.is_empty() {
            let mut disks = Vec::new();
            for path in &self.profiles {
                let profile = Profile::load(path)?;
                disks.extend(profile.disks.iter().map(|d| DiskLoad {
                    average: d.average_mb_s * 1e6,
                    peak: d.peak_mb_s.max(d.average_mb_s) * 1e6,
                    size_bytes: (d.size_bytes > 0).then_some(d.size_bytes),
                    series: d.series_mb_s.iter().map(|r| r * 1e6).collect(),
                    interval_secs: profile.interval_secs,
                }));
            }
            let machines = self.machines.unwrap_or(self.profiles.len());
            return Ok(Some(Load { disks, machines }));
        }
        let (Some(count), Some(churn)) = (self.disks, self.churn_mb_s) else {
            if self.disks.is_some() || self.churn_mb_s.is_some() || self.peak_mb_s.is_some() {
                bail!("describe the load with --disks N and --churn-mb-s X (and --peak-mb-s Y), or --profile FILE");
            }
            return Ok(None);
        };
        let peak = self.peak_mb_s.unwrap_or(churn);
        if !(churn.is_finite() && churn >= 0.0 && peak.is_finite() && peak >= churn) {
            bail!("--churn-mb-s must be a non-negative number and --peak-mb-s at least that ({churn}, {peak})");
        }
        if count == 0 {
            bail!("--disks must be at least 1");
        }
        let disk = DiskLoad {
            average: churn * 1e6,
            peak: peak * 1e6,
            size_bytes: None,
            series: Vec::new(),
            interval_secs: 0.0,
        };
        Ok(Some(Load {
            disks: vec![disk; count],
            machines: self.machines.unwrap_or(count),
        }))
    }

    pub fn calibration(&self) -> Result<Calibration> {
        let mut calibration = match &self.calibration {
            None => Calibration::builtin(),
            Some(path) => {
                let text =
                    std::fs::read(path).with_context(|| format!("reading the calibration {}", path.display()))?;
                let mut calibration: Calibration = serde_json::from_slice(&text).with_context(|| {
                    format!(
                        "{} is not a calibration (ferry-perf limits --out FILE writes one)",
                        path.display()
                    )
                })?;
                if calibration.source.is_empty() {
                    calibration.source = path.display().to_string();
                }
                calibration
            }
        };
        if let Some(factor) = self.ferryd_x_ideal {
            calibration.ferryd_x_ideal = factor;
        }
        if let Some(bytes_per_s) = self.ferryd_disk_ideal_bytes_per_s {
            calibration.ferryd_disk_ideal_bytes_per_s = bytes_per_s;
        }
        calibration.validate()?;
        Ok(calibration)
    }
}

#[derive(Args, Debug)]
pub struct SizeArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The RPO to keep, seconds: the upload bandwidth drains any burst within it.
    #[arg(long, default_value_t = 900.0, value_name = "SECS")]
    pub rpo_secs: f64,
    /// Hours the process servers must ride through with the target unreachable (the cache
    /// holds that much churn).
    #[arg(long, default_value_t = 4.0, value_name = "HOURS")]
    pub outage_hours: f64,
    /// Hours of changes the vault keeps (ferry.toml `[retention]` window).
    #[arg(long, default_value_t = 24.0, value_name = "HOURS")]
    pub retention_hours: f64,
    /// Cores of one process server VM.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=1024))]
    pub server_cores: u32,
    /// Price per 10,000 write operations (default: Azure hot LRS list price, USD).
    #[arg(long, value_name = "PRICE")]
    pub price_write_per_10k: Option<f64>,
    /// Price per 10,000 other operations (Lease Blob).
    #[arg(long, value_name = "PRICE")]
    pub price_other_per_10k: Option<f64>,
    /// Price per GB-month stored.
    #[arg(long, value_name = "PRICE")]
    pub price_gb_month: Option<f64>,
}

/// Share of a process server's cores ferryd is planned to use at the peak (alerts warn at 80%).
pub const CPU_UTILISATION: f64 = 0.7;
/// Disks one process server is planned to take at most (the 1,000-disk scenario is measured).
pub const SERVER_MAX_DISKS: usize = 1000;

pub fn run(args: SizeArgs, json: bool) -> Result<()> {
    let Some(load) = args.load.load()? else {
        bail!(
            "describe the load: --profile FILE (from ferry-agent profile), or --disks N --churn-mb-s X [--peak-mb-s Y]"
        );
    };
    for (name, value) in [
        ("--rpo-secs", args.rpo_secs),
        ("--outage-hours", args.outage_hours),
        ("--retention-hours", args.retention_hours),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            bail!("{name} must be a non-negative number, not {value}");
        }
    }
    if args.rpo_secs <= 0.0 {
        bail!("--rpo-secs must be positive");
    }
    let defaults = Prices::hot_lrs();
    let prices = Prices {
        write_per_10k: args.price_write_per_10k.unwrap_or(defaults.write_per_10k),
        other_per_10k: args.price_other_per_10k.unwrap_or(defaults.other_per_10k),
        gb_month: args.price_gb_month.unwrap_or(defaults.gb_month),
    };
    if [prices.write_per_10k, prices.other_per_10k, prices.gb_month]
        .iter()
        .any(|p| !(p.is_finite() && *p >= 0.0))
    {
        bail!("prices must be non-negative numbers");
    }
    let plan = Plan {
        rpo_secs: args.rpo_secs,
        outage_hours: args.outage_hours,
        retention_hours: args.retention_hours,
        server_cores: args.server_cores,
        server_max_disks: SERVER_MAX_DISKS,
        cpu_utilisation: CPU_UTILISATION,
        prices,
        ferryd: FerrydSettings::defaults(),
    };
    let calibration = args.load.calibration()?;
    let answer = sizing::size(&load, &plan, &calibration);
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_answer(&answer, &plan);
    }
    Ok(())
}

fn print_answer(answer: &Sizing, plan: &Plan) {
    let server = &answer.per_server;
    let calibration = &answer.calibration;
    outln!(
        "Site: {} disks on {} machines, {:.2} MB/s average ({:.1} GB/day), {:.2} MB/s peak",
        answer.disks,
        answer.machines,
        answer.average_mb_s,
        answer.gb_per_day,
        answer.peak_mb_s
    );
    outln!(
        "Per-core cost: ferryd {:.2} ns/B ({:.2} ideal x {:.2}) and {:.0} us a second per disk ({:.0} B/s at the ideal), compression {:.2}x; {}",
        calibration.ferryd_ns_per_byte(),
        calibration.ideal_ns_per_byte,
        calibration.ferryd_x_ideal,
        calibration.ferryd_ns_per_disk_second() / 1e3,
        calibration.ferryd_disk_ideal_bytes_per_s,
        calibration.compression_ratio,
        calibration.source
    );
    outln!();
    outln!(
        "Process servers  {} x {} cores, {:.1} GiB memory (memory_budget_bytes {:.0} MiB), {:.1} GiB cache file system, up to {} disks each",
        answer.process_servers, server.cores, server.memory_gib, server.memory_budget_mib, server.cache_gib, server.disks
    );
    outln!(
        "                 ferryd needs {:.2} cores at the peak ({:.0}% of each server's cores planned); the cache holds {:.1} h of churn",
        answer.cores_needed,
        CPU_UTILISATION * 100.0,
        plan.outage_hours
    );
    outln!(
        "Upload           {:.1} Mbit/s keeps the RPO under {:.0} s ({:.1} Mbit/s keeps up on average only)",
        answer.upload_mbit_s,
        plan.rpo_secs,
        answer.upload_mbit_s_average
    );
    let t = &answer.transactions;
    outln!(
        "Transactions     {:.0} change-set PUTs/h, {:.0} point PUTs/h, {:.0} lease calls/h: {:.2} M writes and {:.2} M other operations a month",
        t.change_set_puts_per_hour,
        t.point_puts_per_hour,
        t.lease_calls_per_hour,
        t.writes_per_month / 1e6,
        t.others_per_month / 1e6
    );
    let cost = &answer.cost_per_month;
    outln!(
        "Storage          {:.1} GB kept ({:.0} h of changes, plus a base image per disk of known size)",
        answer.stored_gb,
        plan.retention_hours
    );
    outln!(
        "Cost per month   {:.2} writes + {:.2} other + {:.2} storage = {:.2} (at {} per 10k writes, {} per 10k other, {} per GB-month)",
        cost.writes,
        cost.others,
        cost.storage,
        cost.total,
        cost.prices.write_per_10k,
        cost.prices.other_per_10k,
        cost.prices.gb_month
    );
    let asr = &answer.asr;
    outln!(
        "ASR's sizing     {} x ({} vCPU, {} GB memory, {} GB cache) = {} vCPU, {} GB, {} GB cache; Ferry: {} cores = {:.2}x ASR's vCPUs",
        asr.process_servers,
        asr.each.vcpus,
        asr.each.memory_gb,
        asr.each.cache_gb,
        asr.vcpus,
        asr.memory_gb,
        asr.cache_gb,
        server.cores * answer.process_servers,
        asr.ferry_cores_over_asr
    );
}
