//! `ferry-agent`: register this machine with a Ferry appliance, replicate its disks, show
//! status. See agent/README.md.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ferry_agent::config::{AgentConfig, DEFAULT_STATE_DIR};
use ferry_agent::replicate::{self, RunOptions};
use ferry_agent::{identity, out, outln, status};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferry-agent", version, about = "Ferry's mobility service")]
struct Cli {
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key pair, register with the appliance's management endpoint, keep the certificate.
    Register(RegisterArgs),
    /// Replicate the configured disks (initial copy, then passes and bookmarks on the policy).
    Run(RunArgs),
    /// Per disk: phase, pass progress, last bookmark, lag.
    Status(StateArgs),
    /// Thaw the file systems in [quiesce] freeze (after a crash during an app-consistent pass).
    Thaw(ThawArgs),
    /// Measure this machine's write churn per disk from /proc/diskstats (for `ferryctl size`).
    Profile(ProfileArgs),
}

#[derive(clap::Args)]
struct ProfileArgs {
    /// How long to measure: 90s, 10m, 1h, 7d (a plain number is seconds). SIGINT or SIGTERM
    /// stops early and still writes what was measured.
    #[arg(long, default_value = "1h")]
    duration: ferry_config::retention::Span,
    /// One sample per interval (the series and the peak are per interval).
    #[arg(long, default_value = "60s")]
    interval: ferry_config::retention::Span,
    /// A disk to measure: its kernel name (sdb, nvme0n1) or /dev path (repeatable; default:
    /// every whole disk, without loop, ram and optical devices).
    #[arg(long = "device", value_name = "DEVICE")]
    devices: Vec<String>,
    /// Write the profile here (JSON, for `ferryctl size --profile`).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ThawArgs {
    #[arg(long)]
    config: PathBuf,
}

#[derive(clap::Args)]
struct StateArgs {
    /// The agent's config (its state_dir is used).
    #[arg(long, conflicts_with = "state_dir")]
    config: Option<PathBuf>,
    /// The state directory (default /var/lib/ferry-agent).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.config, &self.state_dir) {
            (Some(config), _) => AgentConfig::load(config)?.state_dir,
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
        })
    }
}

#[derive(clap::Args)]
struct RegisterArgs {
    /// The appliance's management endpoint, HOST:PORT.
    #[arg(long)]
    server: String,
    /// A file holding the registration passphrase (shown by `ferryctl` on the appliance).
    #[arg(long)]
    passphrase_file: PathBuf,
    /// The management endpoint's SHA-256 certificate fingerprint (printed by `ferryctl init`);
    /// without it the first certificate seen is trusted.
    #[arg(long)]
    fingerprint: Option<String>,
    /// This machine's name at the appliance (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing registration.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    config: PathBuf,
    /// One pass over every disk (with its bookmark), then exit; prints what each pass did.
    #[arg(long)]
    once: bool,
    /// With --once: quiesce ([quiesce] in the config) and ask for an app-consistent bookmark.
    #[arg(long, requires = "once")]
    app: bool,
    /// With --once: how long to keep retrying a disk the appliance cannot take yet (503 with
    /// Retry-After while it drains or its cache is full, or unreachable) before giving up.
    #[arg(long, requires = "once", default_value_t = 300, value_name = "SECS")]
    retry_for: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_client::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ferry-agent")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Register(args) => register(args, json).await,
            Command::Run(args) => run(args, json).await,
            Command::Status(args) => show_status(args, json),
            Command::Thaw(args) => thaw(args),
            Command::Profile(args) => profile(args, json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn register(args: RegisterArgs, json: bool) -> anyhow::Result<()> {
    let state_dir = args.state.resolve()?;
    if identity::exists(&state_dir) && !args.force {
        bail!(
            "{} already holds a registration; pass --force to replace it (the old certificate stays valid at the appliance)",
            state_dir.display()
        );
    }
    let passphrase = read_secret(&args.passphrase_file)?;
    let name = match args.name {
        Some(name) => name,
        None => host_name(),
    };
    let registration = ferry_client::register(&args.server, args.fingerprint.as_deref(), &name, &passphrase)
        .await
        .map_err(|e| match e.code() {
            Some(ferry_client::api::ErrorCode::BadPassphrase) => {
                anyhow::anyhow!("the appliance at {} refused the passphrase: {e}", args.server)
            }
            _ => anyhow::anyhow!("registering with {}: {e}", args.server),
        })?;
    let registered = &registration.identity;
    identity::save(&state_dir, registered, &name, &args.server)?;
    let trusted_on_first_use = args.fingerprint.is_none();
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "machine_id": registered.machine_id,
                "machine_name": name,
                "data_endpoint": registered.data_endpoint,
                "state_dir": state_dir,
                "server_fingerprint": registration.server_fingerprint,
                "trusted_on_first_use": trusted_on_first_use,
            })
        );
    } else {
        outln!(
            "registered {name} as machine {} (data endpoint {}); identity kept in {}",
            registered.machine_id,
            registered.data_endpoint,
            identity::identity_dir(&state_dir).display()
        );
    }
    if trusted_on_first_use {
        // On stderr too with --json: a person must see it whatever the output is piped to.
        eprintln!(
            "warning: no --fingerprint was given, so the first certificate {} presented was trusted:\n  \
             SHA-256 {}\n  Compare it with the one `ferryctl init` printed on the appliance; to pin it next time:\n  \
             ferry-agent register --server {} --fingerprint {} ...",
            args.server, registration.server_fingerprint, args.server, registration.server_fingerprint
        );
    }
    Ok(())
}

async fn run(args: RunArgs, json: bool) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    let options = RunOptions {
        once: args.once,
        app: args.app,
        once_retry_for: std::time::Duration::from_secs(args.retry_for),
    };
    let reports = replicate::run(config, options, shutdown_signal()).await?;
    if args.once {
        if json {
            outln!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            for r in &reports {
                outln!(
                    "{} ({}): {} pass, bookmark {} ({}, seq {}), {} blocks changed, {:.1} MB sent, read {:.0} MB/s, {:.1} s",
                    r.name,
                    r.disk_id,
                    r.phase,
                    r.bookmark_id,
                    r.bookmark_kind,
                    r.bookmark_seq,
                    r.changed_blocks,
                    r.sent_bytes as f64 / 1e6,
                    r.read_mb_per_s,
                    r.seconds
                );
            }
        }
    }
    Ok(())
}

fn show_status(args: StateArgs, json: bool) -> anyhow::Result<()> {
    let state_dir = args.resolve()?;
    let Some(found) = status::load(&state_dir)? else {
        bail!(
            "no status in {}: the agent has not run with this state directory",
            state_dir.display()
        );
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&status::to_json(&found))?);
    } else {
        out!("{}", status::render(&found));
    }
    Ok(())
}

fn thaw(args: ThawArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    let mut failed = false;
    for (mount, result) in ferry_agent::quiesce::thaw_mounts(&config.quiesce.freeze) {
        match result {
            Ok(what) => outln!("{}: {what}", mount.display()),
            Err(e) => {
                failed = true;
                eprintln!("{}: cannot thaw: {e}", mount.display());
            }
        }
    }
    if failed {
        bail!("some file systems could not be thawed");
    }
    Ok(())
}

async fn profile(args: ProfileArgs, json: bool) -> anyhow::Result<()> {
    use ferry_agent::profile::{self, ProfileRun};
    let devices = if args.devices.is_empty() {
        profile::whole_disks()?
    } else {
        args.devices
            .iter()
            .map(|d| profile::kernel_name(d))
            .collect::<anyhow::Result<_>>()?
    };
    if devices.is_empty() {
        bail!("no disk to measure (name one with --device)");
    }
    let run = ProfileRun {
        devices,
        duration: args.duration.duration(),
        interval: args.interval.duration(),
    };
    eprintln!(
        "profiling {} for {} s, a sample every {} s (SIGINT stops early)",
        run.devices.join(", "),
        run.duration.as_secs(),
        run.interval.as_secs()
    );
    let measured = profile::measure(&run, &host_name(), shutdown_signal(), |index, planned, mb_s| {
        eprintln!("  interval {index}/{planned}: {mb_s:.2} MB/s written");
    })
    .await?;
    let text = serde_json::to_string_pretty(&measured)?;
    if let Some(out) = &args.out {
        ferry_durable::replace(out, text.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    }
    if json {
        outln!("{text}");
    } else {
        let state = if measured.complete { "complete" } else { "interrupted" };
        outln!(
            "{} s measured ({state}), interval {} s",
            measured.duration_secs.round(),
            measured.interval_secs
        );
        outln!(
            "{:<12} {:>12} {:>12} {:>10} {:>12}",
            "DEVICE",
            "AVG MB/s",
            "PEAK MB/s",
            "GB/day",
            "SIZE GiB"
        );
        for disk in &measured.disks {
            outln!(
                "{:<12} {:>12.3} {:>12.3} {:>10.1} {:>12.1}",
                disk.device,
                disk.average_mb_s,
                disk.peak_mb_s,
                disk.gb_per_day,
                disk.size_bytes as f64 / f64::from(1u32 << 30)
            );
        }
        if let Some(out) = &args.out {
            outln!(
                "profile written to {} (ferryctl size --profile {})",
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(secret)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry-agent".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
