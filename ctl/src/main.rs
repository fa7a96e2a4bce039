//! `ferryctl`: Ferry's control-plane CLI.
//!
//! Local (offline) commands read the appliance directory or target storage directly and need
//! no running ferryd: `init`, `vault check`, `points` (and `points pin|unpin`), `restore`,
//! `failover` (and `failover list|cleanup`);
//! `demo` runs ferryd and an agent end to end in a scratch directory. `status`, `disks`,
//! `machines`, `tune` and `drain` ask a running ferryd over its control socket; `retention
//! run|set` ask ferryd when it runs and work on storage (or ferry.toml) directly when it does
//! not. Every command takes `--json`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// `out!` and `outln!` (ferry_agent::output): what a closed pipe does to ferryctl's output.
#[macro_use]
extern crate ferry_agent;

mod command;
mod control;
mod demo;
mod failback;
mod failover;
mod failover_final;
mod group;
mod init;
mod plan;
mod point_args;
mod points;
mod preflight;
mod ps;
mod restore;
mod retention;
mod secrets;
mod size;
mod sizing;
mod target_args;
mod vault;
mod vault_access;
mod vault_disks;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "Control Ferry, the replication gateway for disaster recovery"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an appliance directory: config, vault key, CA, passphrase; create or join the vault.
    Init(init::InitArgs),
    /// Scale-out: join tokens for new process servers, and the process servers of this site
    /// (on the configuration server).
    #[command(subcommand)]
    Ps(ps::PsCommand),
    /// Vault key commands.
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// List a disk's recovery points, or without --disk every disk of the vault (reads storage
    /// only; no ferryd needed).
    Points(points::PointsArgs),
    /// Write a disk image at a seq or recovery point (reads storage only; no ferryd needed).
    Restore(restore::RestoreArgs),
    /// Turn recovery points into disks a machine can boot (fixed VHD or raw files), with test
    /// failovers that pin their points until `failover cleanup`; `failover list` shows them
    /// (reads storage only; no ferryd needed).
    Failover(Box<failover::FailoverArgs>),
    /// After a failover and a reprotect: write onto the original disk only the blocks that
    /// differ from a point of the reprotected disk, and resume forward replication without an
    /// initial copy.
    Failback(Box<failback::FailbackArgs>),
    /// Recovery plans: fail machines over group by group, with scripts and manual steps.
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// Retention: consolidate now (run), or override one disk's policy (set).
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// A running ferryd's health, cache, throughput, upload errors and disks (control socket).
    Status(control::StatusArgs),
    /// A running ferryd's disks: durable and uploaded seq, backlog, RPO, state.
    Disks(control::StatusArgs),
    /// The machines registered with this appliance.
    Machines(control::ApplianceArg),
    /// Consistency groups: machines whose points are taken at one instant together.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Ask a machine's agent for a pass now, a bookmark, or a resync, and wait for its outcome
    /// (--log: the machine's commands).
    #[command(name = "command")]
    Ask(command::CommandArgs),
    /// Show or change ferryd's tunables at run time (written to ferry.toml; --reset for defaults).
    Tune(control::TuneArgs),
    /// Stop accepting data, upload everything cached, report when the cache is empty (--resume ends it).
    Drain(control::DrainArgs),
    /// Show (or --rotate) the registration passphrase agents register with.
    Passphrase(secrets::PassphraseArgs),
    /// Check this VM before and after init: cores, memory, cache file system, clock, ports,
    /// target, vault key; each ok/warn/fail with what it measured (exit 0, 1 or 2: the worst).
    Preflight(preflight::PreflightArgs),
    /// Size a site: process servers, cores, memory, cache, upload bandwidth, storage
    /// transactions and their cost, beside Azure Site Recovery's published sizing.
    Size(size::SizeArgs),
    /// Run Ferry end to end in a scratch directory: appliance, ferryd, an agent replicating a
    /// sample disk, and verified restores; then clean up.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let done = match cli.command {
            // Its exit status is its worst verdict, not just success or failure.
            Command::Preflight(args) => return Ok(preflight::run(args, cli.json).await),
            Command::Size(args) => size::run(args, cli.json),
            Command::Init(args) => init::run(args, cli.json).await,
            Command::Ps(command) => ps::run(command, cli.json).await,
            Command::Vault(command) => vault::run(command, cli.json).await,
            Command::Points(args) => points::run(args, cli.json).await,
            Command::Restore(args) => restore::run(args, cli.json).await,
            Command::Retention(command) => retention::run(command, cli.json).await,
            Command::Failover(args) => failover::run(*args, cli.json).await,
            Command::Failback(args) => failback::run(*args, cli.json).await,
            Command::Plan(command) => plan::run(command, cli.json).await,
            Command::Demo(args) => demo::run(args, cli.json).await,
            Command::Status(args) => control::status(args, cli.json, false).await,
            Command::Disks(args) => control::status(args, cli.json, true).await,
            Command::Machines(args) => control::machines(args, cli.json).await,
            Command::Group(command) => group::run(command, cli.json).await,
            Command::Ask(args) => command::run(args, cli.json).await,
            Command::Passphrase(args) => secrets::passphrase(args, cli.json),
            Command::Drain(args) => control::drain(args, cli.json).await,
            Command::Tune(args) => control::tune(args, cli.json).await,
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            if cli.json {
                outln!("{}", serde_json::json!({ "error": format!("{error:#}") }));
            } else {
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}
