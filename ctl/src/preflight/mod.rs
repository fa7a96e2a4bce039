//! `ferryctl preflight`: is this VM fit to be a process server, before and after `ferryctl
//! init`? Each check is ok, warn or fail with the number it measured and the threshold it
//! held that number to; skipped checks say why. The exit status is the worst verdict: 0 ok,
//! 1 warn, 2 fail (also when preflight itself cannot run).
//!
//! Thresholds come from the sizing model ([`crate::sizing`]) for the load given with the
//! `ferryctl size` flags (none: a minimal process server), and from the appliance's ferry.toml
//! when `--config` names one. The target probe writes, reads and deletes objects under
//! `preflight/` of the vault's container (docs/FORMATS.md appendix); nothing else is written
//! anywhere but one temporary file in the cache directory.

mod probes;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use ferry_config::config::{ApplianceConfig, CacheEngine};
use ferry_config::layout::ApplianceLayout;
use ferry_format::names::VAULT_JSON;
use ferry_format::{VaultDescriptor, VaultKey};
use ferry_storage::{open_target, ObjectStorage, RetryPolicy, StorageError, TargetConfig};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::size::{LoadArgs, CPU_UTILISATION, SERVER_MAX_DISKS};
use crate::sizing::{self, Calibration, FerrydSettings, Load, Plan, Prices};
use crate::vault_access::VaultArgs;

#[derive(Args, Debug)]
pub struct PreflightArgs {
    /// The target and vault key (an appliance's, or flags before init).
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The cache directory (default: the appliance's, or /var/lib/ferry before init).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The load this process server is to carry (the `ferryctl size` flags).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Hours of target outage the cache must ride through at the average churn.
    #[arg(long, default_value_t = 4.0, value_name = "HOURS")]
    pub outage_hours: f64,
    /// MiB written to the cache file system and to the target to measure their rates.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub probe_mib: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Skip,
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was measured.
    pub measured: String,
    /// What it was held to.
    pub threshold: String,
}

fn check(name: &'static str, verdict: Verdict, measured: impl Into<String>, threshold: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        measured: measured.into(),
        threshold: threshold.into(),
    }
}

/// The exit status a verdict gives.
pub fn exit_code(worst: Verdict) -> ExitCode {
    match worst {
        Verdict::Skip | Verdict::Ok => ExitCode::SUCCESS,
        Verdict::Warn => ExitCode::from(1),
        Verdict::Fail => ExitCode::from(2),
    }
}

pub async fn run(args: PreflightArgs, json: bool) -> ExitCode {
    let checks = match checks(&args).await {
        Ok(checks) => checks,
        Err(error) => vec![check(
            "preflight",
            Verdict::Fail,
            format!("{error:#}"),
            "runs to the end",
        )],
    };
    let worst = checks.iter().map(|c| c.verdict).max().unwrap_or(Verdict::Ok);
    if json {
        let report = serde_json::json!({ "worst": worst, "checks": checks });
        outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        for c in &checks {
            let verdict = match c.verdict {
                Verdict::Skip => "skip",
                Verdict::Ok => "ok",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            outln!("{verdict:<5} {:<18} {}  [{}]", c.name, c.measured, c.threshold);
        }
        let summary = match worst {
            Verdict::Skip | Verdict::Ok => "fit to be a process server",
            Verdict::Warn => "usable, with the warnings above",
            Verdict::Fail => "NOT fit to be a process server: fix the failures above",
        };
        outln!("preflight: {summary}");
    }
    exit_code(worst)
}

/// What preflight knows of the appliance (or its absence) and the load it is to carry.
struct Appliance {
    config: Option<(PathBuf, ApplianceConfig)>,
    settings: FerrydSettings,
    load: Load,
    calibration: Calibration,
    plan: Plan,
}

async fn checks(args: &PreflightArgs) -> Result<Vec<Check>> {
    let config = match &args.vault.config {
        Some(dir) => {
            let layout = ApplianceLayout::new(dir);
            let config = ApplianceConfig::load(&layout.config_file())
                .with_context(|| format!("reading the appliance at {}", dir.display()))?;
            Some((dir.clone(), config))
        }
        None => None,
    };
    let mut settings = FerrydSettings::defaults();
    if let Some((_, config)) = &config {
        settings.cache_limit_percent = f64::from(config.cache.limit_percent);
        settings.segment_bytes = config.cache.segment_bytes as f64;
        settings.memory_budget_bytes = config.pipeline.memory_budget_bytes as f64;
        settings.throttle_free_percent = f64::from(config.alerts.throttle_free_percent);
    }
    let load = args.load.load()?.unwrap_or(Load {
        disks: Vec::new(),
        machines: 0,
    });
    let context = Appliance {
        plan: Plan {
            rpo_secs: 900.0,
            outage_hours: args.outage_hours,
            retention_hours: 24.0,
            server_cores: u32::MAX,
            server_max_disks: SERVER_MAX_DISKS,
            cpu_utilisation: CPU_UTILISATION,
            prices: Prices::hot_lrs(),
            ferryd: settings.clone(),
        },
        settings,
        load,
        calibration: args.load.calibration()?,
        config,
    };
    let sized = sizing::size(&context.load, &context.plan, &context.calibration);

    let mut checks = vec![cores_check(&sized), memory_check(&sized)?];
    checks.extend(cache_checks(args, &context));
    checks.push(clock_check());
    checks.extend(port_checks(&context));
    checks.extend(target_checks(args, &context, &sized).await);
    Ok(checks)
}

fn cores_check(sized: &sizing::Sizing) -> Check {
    let have = probes::cores();
    let need = sized.per_server.cores as usize;
    let verdict = if have >= need { Verdict::Ok } else { Verdict::Fail };
    check(
        "cores",
        verdict,
        format!("{have} cores"),
        format!(
            ">= {need} (ferryd needs {:.2} at the peak load given, planned at {:.0}%; at least {})",
            sized.cores_needed,
            CPU_UTILISATION * 100.0,
            sizing::MIN_CORES
        ),
    )
}

fn memory_check(sized: &sizing::Sizing) -> Result<Check> {
    let have = probes::memory_bytes()? as f64 / f64::from(1u32 << 30);
    let need = sized.per_server.memory_gib;
    let verdict = if have >= need { Verdict::Ok } else { Verdict::Fail };
    Ok(check(
        "memory",
        verdict,
        format!("{have:.1} GiB"),
        format!(
            ">= {need:.1} GiB (1 GiB + 2.5 x a {:.0} MiB memory budget)",
            sized.per_server.memory_budget_mib
        ),
    ))
}

/// The cache file system: durable, O_DIRECT at a rate above the peak, io_uring, room for
/// the outage's backlog.
fn cache_checks(args: &PreflightArgs, context: &Appliance) -> Vec<Check> {
    let cache_dir = match (&args.cache_dir, &context.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some((dir, config))) => ApplianceLayout::new(dir).resolve(&config.cache.directory),
        (None, None) => PathBuf::from("/var/lib/ferry"),
    };
    let probed = probes::existing_ancestor(&cache_dir);
    let where_ = if probed == cache_dir {
        cache_dir.display().to_string()
    } else {
        format!("{} (not made yet; probed {})", cache_dir.display(), probed.display())
    };
    let mut checks = Vec::new();
    let fs = match probes::file_system(&probed) {
        Ok(fs) => fs,
        Err(error) => {
            checks.push(check("cache file system", Verdict::Fail, format!("{error:#}"), where_));
            return checks;
        }
    };
    let peak_mb_s = context.load.peak() / 1e6;
    let direct = probes::direct_write_mb_s(&probed, (args.probe_mib as usize) << 20);
    let (verdict, measured) = match (&direct, fs.volatile) {
        (_, true) => (
            Verdict::Fail,
            format!(
                "{} is {}: memory, so acknowledged batches would not survive a reboot{}",
                where_,
                fs.kind,
                match &direct {
                    Ok(_) => String::new(),
                    Err(e) => format!(", and O_DIRECT fails ({e})"),
                }
            ),
        ),
        (Err(reason), false) => (
            Verdict::Fail,
            format!("{where_} ({}): O_DIRECT does not work: {reason}", fs.kind),
        ),
        (Ok(rate), false) if *rate < peak_mb_s => (
            Verdict::Warn,
            format!(
                "{where_} ({}): O_DIRECT writes + fdatasync {rate:.0} MB/s, below the peak load",
                fs.kind
            ),
        ),
        (Ok(rate), false) => (
            Verdict::Ok,
            format!("{where_} ({}): O_DIRECT writes + fdatasync {rate:.0} MB/s", fs.kind),
        ),
    };
    let (verdict, measured) = match (
        verdict,
        fs.kind == "ext4" && probes::ext4_has_journal(&probed) == Some(false),
    ) {
        (Verdict::Ok, true) => (
            Verdict::Warn,
            format!(
                "{measured}; ext4 without a journal: every new file scans the inodes deleted in the \
                 last minutes (docs/SIZING.md), use XFS or ext4 with its journal"
            ),
        ),
        (verdict, _) => (verdict, measured),
    };
    checks.push(check(
        "cache file system",
        verdict,
        measured,
        format!("durable, O_DIRECT works, >= {peak_mb_s:.1} MB/s (the peak load)"),
    ));

    let engine = context
        .config
        .as_ref()
        .map(|(_, c)| c.cache.engine)
        .unwrap_or(CacheEngine::Auto);
    checks.push(match (probes::io_uring(), engine) {
        (Ok(()), _) => check("io_uring", Verdict::Ok, "available", "cache.engine auto or io_uring"),
        (Err(e), CacheEngine::IoUring) => check(
            "io_uring",
            Verdict::Fail,
            format!("not available: {e}"),
            "cache.engine = io_uring needs it",
        ),
        (Err(e), _) => check(
            "io_uring",
            Verdict::Warn,
            format!("not available: {e}; the cache uses psync (more CPU per byte)"),
            "available",
        ),
    });

    // Room: the cache may fill limit_percent of the file system (or limit_bytes), its own
    // segments count as room, and new batches are throttled below throttle_free_percent.
    let settings = &context.settings;
    let own = probes::bytes_below(&cache_dir);
    let room = fs.available_bytes + own;
    let mut limit = fs.size_bytes as f64 * settings.cache_limit_percent / 100.0;
    if let Some((_, config)) = &context.config {
        if config.cache.limit_bytes > 0 {
            limit = config.cache.limit_bytes as f64;
        }
    }
    let usable = limit.min(room as f64) * (1.0 - settings.throttle_free_percent / 100.0);
    let backlog = context.load.average() * args.outage_hours * 3600.0;
    let need = backlog.max(2.0 * settings.segment_bytes);
    let gib = |b: f64| b / f64::from(1u32 << 30);
    let verdict = if usable < need {
        Verdict::Fail
    } else if usable < 1.25 * need {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    checks.push(check(
        "cache space",
        verdict,
        format!(
            "{:.2} GiB usable ({:.2} GiB free of {:.2} GiB, {:.2} GiB already the cache's; limit {:.0}%, throttled below {:.0}% free)",
            gib(usable),
            gib(fs.available_bytes as f64),
            gib(fs.size_bytes as f64),
            gib(own as f64),
            settings.cache_limit_percent,
            settings.throttle_free_percent
        ),
        format!(
            ">= {:.2} GiB: {:.1} h of outage at {:.2} MB/s, at least two {:.0} MiB segments (warn below 1.25x)",
            gib(need),
            args.outage_hours,
            context.load.average() / 1e6,
            settings.segment_bytes / f64::from(1u32 << 20)
        ),
    ));
    checks
}

fn clock_check() -> Check {
    match probes::clock() {
        Ok(clock) if clock.synchronised => check(
            "clock",
            Verdict::Ok,
            format!("synchronised, max error {} ms", clock.max_error.as_millis()),
            "synchronised (leases, Azure authentication)",
        ),
        Ok(clock) => check(
            "clock",
            Verdict::Warn,
            format!(
                "not synchronised (no NTP or chrony discipline; max error {} ms)",
                clock.max_error.as_millis()
            ),
            "synchronised: storage leases and Azure's request signing need agreeing clocks",
        ),
        Err(error) => check("clock", Verdict::Warn, format!("{error:#}"), "synchronised"),
    }
}

/// The listen ports: free, or held by this appliance's own ferryd.
fn port_checks(context: &Appliance) -> Vec<Check> {
    let server = context
        .config
        .as_ref()
        .map(|(_, c)| c.server.clone())
        .unwrap_or_default();
    let ferryd_runs = context
        .config
        .as_ref()
        .map(|(dir, _)| crate::control::running_ferryd(Some(dir)).ok().flatten().is_some())
        .unwrap_or(false);
    [
        ("data port", server.data_listen),
        ("management port", server.management_listen),
        ("metrics port", server.metrics_listen),
    ]
    .into_iter()
    .map(|(name, address)| match probes::port_taken(&address) {
        Ok(false) => check(name, Verdict::Ok, format!("{address} free"), "free, or held by ferryd"),
        Ok(true) if ferryd_runs => check(
            name,
            Verdict::Ok,
            format!("{address} held by this appliance's ferryd"),
            "free, or held by ferryd",
        ),
        Ok(true) => check(
            name,
            Verdict::Fail,
            format!("{address} in use by another program"),
            "free, or held by ferryd",
        ),
        Err(error) => check(name, Verdict::Fail, format!("{error:#}"), "a listen address"),
    })
    .collect()
}

/// How long one target call may take before preflight calls the target unreachable.
const TARGET_TIMEOUT: Duration = Duration::from_secs(20);

/// The target: reachable and writable (small-object latency, a throughput probe against the
/// upload the load needs), and the vault key opening the vault there.
async fn target_checks(args: &PreflightArgs, context: &Appliance, sized: &sizing::Sizing) -> Vec<Check> {
    let named = context.config.is_some() || args.vault.target.names_a_target();
    if !named {
        return vec![
            check(
                "target",
                Verdict::Skip,
                "no target named",
                "--config DIR, or target flags",
            ),
            check(
                "vault key",
                Verdict::Skip,
                "no target named",
                "--config DIR, or target flags",
            ),
        ];
    }
    let resolved: Result<(TargetConfig, Option<PathBuf>)> = match &context.config {
        Some((dir, _)) => crate::init::appliance_target(dir).map(|(t, k)| (t, Some(k))),
        None => args.vault.target.to_config(None, false).map(|t| (t, None)),
    };
    let (target, default_key) = match resolved {
        Ok(found) => found,
        Err(error) => return vec![check("target", Verdict::Fail, format!("{error:#}"), "a usable target")],
    };
    let retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff_ms: 200,
        max_backoff_ms: 1000,
        total_budget_ms: 10_000,
    };
    let storage = match tokio::time::timeout(TARGET_TIMEOUT, open_target(&target, retry)).await {
        Ok(Ok(storage)) => storage,
        Ok(Err(error)) => {
            return vec![check(
                "target",
                Verdict::Fail,
                format!("cannot open it: {error}"),
                "reachable, writable",
            )]
        }
        Err(_) => {
            return vec![check(
                "target",
                Verdict::Fail,
                "no answer in 20 s",
                "reachable, writable",
            )]
        }
    };
    let upload_mb_s = sized.upload_mbit_s / 8.0;
    let mut checks = vec![probe_target(storage.as_ref(), args.probe_mib, upload_mb_s).await];
    let key_file = args.vault.key_file.clone().or(default_key);
    checks.push(match key_file {
        None => check("vault key", Verdict::Skip, "no key file named", "--key-file FILE"),
        Some(key_file) => vault_key_check(storage, &key_file).await,
    });
    checks
}

async fn probe_target(storage: &dyn ObjectStorage, probe_mib: u32, upload_mb_s: f64) -> Check {
    let base = format!("preflight/{}", uuid::Uuid::new_v4());
    let result = async {
        let small = Bytes::from(vec![0x5au8; 4096]);
        let mut latencies = Vec::new();
        for i in 0..3 {
            let name = format!("{base}-small-{i}");
            let started = Instant::now();
            timed(storage.put(&name, small.clone()))
                .await
                .context("writing a 4 KiB object")?;
            latencies.push(started.elapsed());
        }
        let back = timed(storage.get(&format!("{base}-small-0")))
            .await
            .context("reading it back")?;
        if back != small {
            anyhow::bail!("the object read back differs from the one written");
        }
        latencies.sort();
        let large = Bytes::from(vec![0xa5u8; (probe_mib as usize) << 20]);
        let started = Instant::now();
        timed(storage.put(&format!("{base}-large"), large))
            .await
            .context("writing the throughput probe")?;
        let mb_s = f64::from(probe_mib) * 1048576.0 / started.elapsed().as_secs_f64().max(1e-9) / 1e6;
        Ok::<_, anyhow::Error>((latencies[1], mb_s))
    }
    .await;
    for name in [format!("{base}-large")]
        .into_iter()
        .chain((0..3).map(|i| format!("{base}-small-{i}")))
    {
        let _ = timed(storage.delete(&name)).await;
    }
    let threshold =
        format!("reachable, writable; >= {upload_mb_s:.1} MB/s (the upload that keeps a 900 s RPO at the load given)");
    match result {
        Ok((latency, mb_s)) => check(
            "target",
            if mb_s < upload_mb_s { Verdict::Warn } else { Verdict::Ok },
            format!(
                "{}: 4 KiB PUT {} ms (median of 3), {probe_mib} MiB PUT {mb_s:.0} MB/s",
                storage.describe(),
                latency.as_millis()
            ),
            threshold,
        ),
        Err(error) => check(
            "target",
            Verdict::Fail,
            format!("{}: {error:#}", storage.describe()),
            threshold,
        ),
    }
}

async fn timed<T>(call: impl std::future::Future<Output = Result<T, StorageError>>) -> Result<T> {
    match tokio::time::timeout(TARGET_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no answer in {} s", TARGET_TIMEOUT.as_secs()),
    }
}

async fn vault_key_check(storage: Arc<dyn ObjectStorage>, key_file: &std::path::Path) -> Check {
    let threshold = "the key opens the vault (its key_check)";
    let key = match std::fs::read_to_string(key_file)
        .with_context(|| format!("cannot read {}", key_file.display()))
        .and_then(|text| {
            VaultKey::parse_text(&text).with_context(|| format!("{} holds no vault key", key_file.display()))
        }) {
        Ok(key) => key,
        Err(error) => return check("vault key", Verdict::Fail, format!("{error:#}"), threshold),
    };
    let bytes = match timed(storage.get(VAULT_JSON)).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let missing = error
                .downcast_ref::<StorageError>()
                .is_some_and(|e| matches!(e, StorageError::NotFound { .. }));
            return if missing {
                check(
                    "vault key",
                    Verdict::Skip,
                    "no vault at the target yet",
                    "ferryctl init creates it",
                )
            } else {
                check(
                    "vault key",
                    Verdict::Fail,
                    format!("reading {VAULT_JSON}: {error:#}"),
                    threshold,
                )
            };
        }
    };
    match VaultDescriptor::parse(&bytes)
        .map_err(anyhow::Error::from)
        .and_then(|vault| {
            vault.open(&key)?;
            Ok(vault)
        }) {
        Ok(vault) => check(
            "vault key",
            Verdict::Ok,
            format!("{} opens vault {}", key_file.display(), vault.vault_id),
            threshold,
        ),
        Err(error) => check(
            "vault key",
            Verdict::Fail,
            format!("{}: {error:#}", key_file.display()),
            threshold,
        ),
    }
}
