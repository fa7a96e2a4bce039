//! `ferry-perf`: load-test a Ferry process server (`run`) and measure this machine's ceilings
//! (`limits`). See perf/README.md.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_perf::datagen::Mix;
use ferry_perf::limits::{self, Limits, Probe};
use ferry_perf::report;
use ferry_perf::run::{self, RunOptions};
use ferry_perf::scenario::Scenario;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferry-perf", version, about = "Load-test a Ferry process server")]
struct Cli {
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a load scenario against ferryd (started here, or a running one).
    Run(Box<RunArgs>),
    /// Measure this machine's per-core ceilings and the ideal end-to-end ceiling.
    Limits(LimitsArgs),
    /// Write the generator's data as files, for peers (restic, rclone) to read the same bytes.
    Dataset(DatasetArgs),
}

#[derive(clap::Args)]
struct DatasetArgs {
    /// Directory to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Total size, MiB, in files of 64 MiB.
    #[arg(long, default_value_t = 2048)]
    mib: usize,
    /// mixed, incompressible or highly_compressible.
    #[arg(long, default_value = "mixed")]
    data: String,
}

#[derive(clap::Args)]
struct LimitsArgs {
    /// zstd level (ferryd's pipeline.compression_level).
    #[arg(long, default_value_t = 1)]
    level: i32,
    /// mixed, incompressible or highly_compressible.
    #[arg(long, default_value = "mixed")]
    data: String,
    /// A directory on the cache's file system (O_DIRECT append is measured there).
    #[arg(long, default_value = ".")]
    cache_dir: PathBuf,
    /// MiB per stage pass.
    #[arg(long, default_value_t = 128)]
    mib: usize,
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Also write the result to this JSON file (for `run --limits`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// A scenario file (perf/scenarios/*.toml); the flags below override its keys.
    #[arg(long)]
    scenario: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    machines: Option<usize>,
    #[arg(long)]
    disks_per_machine: Option<usize>,
    #[arg(long)]
    duration_secs: Option<f64>,
    #[arg(long)]
    total_bytes: Option<u64>,
    /// Per disk; 0 = as fast as the window allows.
    #[arg(long)]
    rate_mb_per_s: Option<f64>,
    #[arg(long)]
    burst_on_secs: Option<f64>,
    #[arg(long)]
    burst_off_secs: Option<f64>,
    #[arg(long)]
    batch_bytes: Option<u32>,
    #[arg(long)]
    window: Option<u32>,
    #[arg(long)]
    bookmark_every_secs: Option<f64>,
    /// mixed, incompressible or highly_compressible.
    #[arg(long)]
    data: Option<String>,
    /// local, discard or azurite.
    #[arg(long)]
    target: Option<String>,
    /// Hold uploads back during the load and lift the hold at its end: the drain is then the
    /// pipeline alone (needs a ferryd ferry-perf starts).
    #[arg(long)]
    hold_uploads: bool,
    /// Overload in one run: hold uploads until the backlog reaches this many MB, let them go
    /// while the load goes on, end the load at half that backlog (needs a ferryd ferry-perf
    /// starts).
    #[arg(long)]
    hold_uploads_mb: Option<u64>,
    /// The nice of the load generator's threads (0 to 19; 0 = unchanged).
    #[arg(long)]
    load_nice: Option<i32>,
    /// Where the JSON report and the SVG plot go.
    #[arg(long, default_value = "perf-results")]
    out_dir: PathBuf,
    /// A `ferry-perf limits --out` file; without it a quick probe runs first.
    #[arg(long)]
    limits: Option<PathBuf>,
    /// Skip the limits probe (no fraction of the ceiling is reported).
    #[arg(long)]
    no_limits: bool,
    /// How often every disk's uploaded_seq is read, ms.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Keep the temporary appliance (and ferryd.log) afterwards.
    #[arg(long)]
    keep: bool,
    /// Reach a running ferryd instead: its management endpoint (also needs --data-endpoint
    /// and --passphrase-file; --ferryd-pid for its CPU and memory).
    #[arg(long, requires_all = ["data_endpoint", "passphrase_file"])]
    management: Option<String>,
    #[arg(long)]
    data_endpoint: Option<String>,
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    #[arg(long)]
    ferryd_pid: Option<u32>,
}

fn mix(name: &str) -> anyhow::Result<Mix> {
    Scenario {
        data: name.to_string(),
        ..Scenario::default()
    }
    .mix()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Limits(args) => limits_command(args, json),
            Command::Run(args) => run_command(*args, json).await,
            Command::Dataset(args) => dataset_command(args),
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

fn dataset_command(args: DatasetArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        anyhow::bail!("{} exists; choose a new directory", args.out.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut generator = ferry_perf::datagen::DataGenerator::new(11, mix(&args.data)?);
    let mut chunk = vec![0u8; 64 << 20];
    let mut left = args.mib << 20;
    let mut index = 0;
    while left > 0 {
        let len = left.min(chunk.len());
        generator.fill(&mut chunk[..len]);
        let path = args.out.join(format!("part-{index:04}.bin"));
        std::fs::write(&path, &chunk[..len]).with_context(|| format!("writing {}", path.display()))?;
        left -= len;
        index += 1;
    }
    println!(
        "{} MiB of {} data in {index} files under {}",
        args.mib,
        args.data,
        args.out.display()
    );
    Ok(())
}

fn limits_command(args: LimitsArgs, json: bool) -> anyhow::Result<()> {
    let measured = limits::measure(&Probe {
        level: args.level,
        mix: mix(&args.data)?,
        mix_name: &args.data,
        cache_dir: &args.cache_dir,
        bytes: args.mib << 20,
        repetitions: args.repetitions,
    })?;
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&measured)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&measured)?);
    } else {
        print!("{}", limits::render(&measured));
    }
    Ok(())
}

async fn run_command(args: RunArgs, json: bool) -> anyhow::Result<()> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field.clone() { scenario.$field = v; })* };
    }
    set!(
        name,
        machines,
        disks_per_machine,
        duration_secs,
        total_bytes,
        rate_mb_per_s,
        burst_on_secs
    );
    set!(
        burst_off_secs,
        batch_bytes,
        window,
        bookmark_every_secs,
        data,
        target,
        hold_uploads_mb,
        load_nice
    );
    scenario.hold_uploads |= args.hold_uploads;
    scenario.validate()?;
    let limits: Option<Limits> = match (&args.limits, args.no_limits) {
        (_, true) => None,
        (Some(path), false) => Some(
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
                .with_context(|| format!("{} is not a ferry-perf limits file", path.display()))?,
        ),
        (None, false) => {
            eprintln!("measuring this machine's ceilings (quick; `ferry-perf limits` for the full probe)...");
            Some(limits::measure(&Probe {
                level: 1,
                mix: scenario.mix()?,
                mix_name: &scenario.data,
                cache_dir: &std::env::temp_dir(),
                bytes: 32 << 20,
                repetitions: 2,
            })?)
        }
    };
    let options = RunOptions {
        poll: Duration::from_millis(args.poll_ms.max(50)),
        progress: !json,
        keep: args.keep,
        existing: args.management.clone().map(|m| {
            (
                m,
                args.data_endpoint.clone().unwrap_or_default(),
                args.passphrase_file.clone().unwrap_or_default(),
                args.ferryd_pid,
            )
        }),
    };
    let report = run::run(scenario, limits, options).await?;
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("creating {}", args.out_dir.display()))?;
    let stem = args.out_dir.join(format!(
        "{}-{}",
        report.scenario.name,
        ferry_client::clock::now_unix_ms() / 1000
    ));
    let json_path = stem.with_extension("json");
    let svg_path = stem.with_extension("svg");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(&svg_path, report::svg(&report))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::table(&report));
        println!("  written          {} and {}", json_path.display(), svg_path.display());
    }
    Ok(())
}
