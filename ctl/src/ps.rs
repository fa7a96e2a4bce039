//! `ferryctl ps`: the process servers of a site, on its configuration server.
//!
//! - `ps token --config DIR`: a one-time join token (valid one hour by default) for
//!   `ferryctl init NEWDIR --join CONFIG:443 --join-token-file F` on a new process server; only
//!   its hash is kept (`ferry_config::site`).
//! - `ps list --config DIR`: the process servers that joined, each probed for health.
//! - `ps move --machine ID | --disk ID --to NAME`: moves a machine (with all its disks) to
//!   another process server; `ps drain NAME`: moves every machine off one (`--undo`: it takes
//!   new machines again). Both ask the running configuration server (control socket), which
//!   queues a `move` command for each agent, and wait for the agents' outcomes, each with the
//!   time its disks took no data (docs/SCALE-OUT.md).
//!
//! `token` and `list` read and write the appliance directory itself (ferryd reads the tokens at
//! each join), so they work with ferryd running or not.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_config::layout::ApplianceLayout;
use ferry_config::site;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PsCommand {
    /// Make a one-time token a new process server joins this site with.
    Token(TokenArgs),
    /// The process servers that joined this site.
    List(ListArgs),
    /// Move a machine, with all its disks, to another process server.
    Move(MoveArgs),
    /// Move every machine off a process server (and place no new one there).
    Drain(DrainArgs),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["machine", "disk"])))]
pub struct MoveArgs {
    /// The configuration server's appliance directory.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// The machine (its id, or the start of it: `ferryctl machines`).
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// The machine of this disk (a machine's disks move together).
    #[arg(long, value_name = "DISK_ID")]
    pub disk: Option<uuid::Uuid>,
    /// The process server to move to: a name from `ps list`, or a data endpoint of the site.
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// How long to wait for the agent's outcome (0: queue the move and return).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub wait: u64,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The process server to drain (its name from `ps list`).
    pub name: String,
    /// The configuration server's appliance directory.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// Take new machines there again (moves nothing back).
    #[arg(long)]
    pub undo: bool,
    /// How long to wait for the agents' outcomes (0: queue the moves and return).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub wait: u64,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The configuration server's appliance directory.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// How long the token can be used.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=7 * 86400))]
    pub valid_for_secs: u64,
    /// Write the token to this new file (owner-only) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// The configuration server's appliance directory.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
}

pub async fn run(command: PsCommand, json: bool) -> Result<()> {
    match command {
        PsCommand::Token(args) => token(args, json),
        PsCommand::List(args) => list(args, json).await,
        PsCommand::Move(args) => move_machine(args, json).await,
        PsCommand::Drain(args) => drain(args, json).await,
    }
}

fn control_client(config: &std::path::Path) -> Result<ferry_client::control::ControlClient> {
    configuration_server(config)?;
    let client = crate::control::ApplianceArg {
        config: config.to_path_buf(),
    }
    .client()?;
    if !client.answers() {
        bail!(
            "ferryd is not running on {}: moves are made by the running configuration server",
            config.display()
        );
    }
    Ok(client)
}

async fn move_machine(args: MoveArgs, json: bool) -> Result<()> {
    let client = control_client(&args.config)?;
    let machine_id = match (&args.machine, args.disk) {
        (Some(text), _) => crate::control::registered_machine(&client.machines().await?, text)?,
        (None, Some(disk)) => {
            let opened = crate::vault_access::open(&crate::vault_access::VaultArgs {
                config: Some(args.config.clone()),
                key_file: None,
                target: Default::default(),
            })
            .await?;
            crate::vault_disks::read_descriptor(&opened, disk).await?.machine_id
        }
        (None, None) => bail!("give --machine or --disk"),
    };
    let request = ferry_client::control::MoveRequest {
        machine_id,
        to: args.to.clone(),
    };
    let moving = client.move_machine(&request).await?;
    report_moves(&client, vec![moving], args.wait, json).await
}

async fn drain(args: DrainArgs, json: bool) -> Result<()> {
    let client = control_client(&args.config)?;
    let request = ferry_client::control::DrainRequest {
        name: args.name.clone(),
        undo: args.undo,
    };
    let moving = client.drain_server(&request).await?;
    if args.undo {
        if json {
            outln!("{}", serde_json::json!({ "name": args.name, "drained": false }));
        } else {
            outln!("Process server {} takes new machines again.", args.name);
        }
        return Ok(());
    }
    if moving.is_empty() && !json {
        outln!("No machine sends to {}; it takes no new ones now.", args.name);
    }
    report_moves(&client, moving, args.wait, json).await
}

/// Prints each move, and with `wait` the agent's outcome of each (the time its disks took no
/// data); fails when an agent reported a failure.
async fn report_moves(
    client: &ferry_client::control::ControlClient,
    moving: Vec<ferry_client::control::Moving>,
    wait: u64,
    json: bool,
) -> Result<()> {
    let mut shown = Vec::new();
    let mut failed = 0;
    for m in moving {
        if !json {
            outln!("{} ({}): {} -> {}", m.machine_name, m.machine_id, m.from, m.to);
        }
        let outcome = if wait == 0 {
            None
        } else {
            let log = client.command_log(m.machine_id).await?;
            let queued = log
                .pending
                .into_iter()
                .chain(log.delivered)
                .find(|c| c.id == m.command_id)
                .or_else(|| {
                    log.results
                        .iter()
                        .map(|r| r.command.clone())
                        .find(|c| c.id == m.command_id)
                })
                .context("the move command is not in the machine's log")?;
            Some(
                crate::command::wait_for_outcome(client, m.machine_id, &queued, wait)
                    .await?
                    .outcome,
            )
        };
        if let Some(outcome) = &outcome {
            failed += usize::from(!outcome.ok);
            if !json {
                outln!("  {}: {}", if outcome.ok { "done" } else { "FAILED" }, outcome.message);
            }
        }
        shown.push(serde_json::json!({ "move": m, "outcome": outcome }));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&shown)?);
    }
    if failed > 0 {
        bail!("{failed} move(s) failed; their disks stay where they were");
    }
    Ok(())
}

fn configuration_server(dir: &std::path::Path) -> Result<ApplianceLayout> {
    let layout = ApplianceLayout::new(dir);
    let config = ferry_config::ApplianceConfig::load(&layout.config_file())?;
    if let Some(config_server) = config.server.config_server {
        bail!(
            "{} is a process server of the configuration server at {config_server}: run this there",
            dir.display()
        );
    }
    Ok(layout)
}

fn token(args: TokenArgs, json: bool) -> Result<()> {
    let layout = configuration_server(&args.config)?;
    let now = ferry_client::clock::now_unix_ms();
    let token = site::new_token(layout.root(), now, args.valid_for_secs * 1000).map_err(anyhow::Error::msg)?;
    let expires = ferry_format::time::format_unix_ms(now + args.valid_for_secs * 1000);
    if let Some(out) = &args.out {
        ferry_durable::create_new(out, format!("{token}\n").as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if json {
        let shown = if args.out.is_some() { None } else { Some(token.as_str()) };
        outln!(
            "{}",
            serde_json::json!({ "token": shown, "file": args.out, "expires": expires })
        );
    } else if let Some(out) = &args.out {
        outln!(
            "Join token written to {} (one use, until {expires} UTC).",
            out.display()
        );
    } else {
        outln!("{token}");
        eprintln!("One use, until {expires} UTC: ferryctl init DIR --join THIS_HOST:PORT --join-token-file FILE");
    }
    Ok(())
}

/// A process server as `ps list` shows it: as recorded, and its health and load now.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    server: site::ProcessServer,
    /// Its data endpoint answered `GET /v1/health` (TLS verified with the site's CA) within 2 s.
    healthy: bool,
    /// What it answered: status, disks, MB/s received over the last minute, free cache share.
    load: Option<ferry_client::api::Health>,
}

async fn list(args: ListArgs, json: bool) -> Result<()> {
    let layout = configuration_server(&args.config)?;
    let servers = site::servers(layout.root()).map_err(anyhow::Error::msg)?;
    let ca_pem = std::fs::read_to_string(layout.ca_cert_file())
        .with_context(|| format!("cannot read {}", layout.ca_cert_file().display()))?;
    let probes = servers
        .iter()
        .map(|s| ferry_client::register::probe(&s.data_endpoint, &ca_pem, std::time::Duration::from_secs(2)));
    let health = futures::future::join_all(probes).await;
    let listed: Vec<Listed> = servers
        .into_iter()
        .zip(health)
        .map(|(server, load)| Listed {
            server,
            healthy: load.is_some(),
            load,
        })
        .collect();
    if json {
        outln!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if listed.is_empty() {
        outln!("No process server has joined this site (ferryctl ps token makes a join token).");
        return Ok(());
    }
    outln!(
        "{:<16} {:<24} {:<12} {:>6} {:>8} {:>10} {:<20}",
        "name",
        "data endpoint",
        "health",
        "disks",
        "MB/s",
        "cache free",
        "joined (UTC)"
    );
    for entry in &listed {
        let server = &entry.server;
        let health = match (&entry.load, server.drained) {
            (None, _) => "unreachable".to_string(),
            (Some(load), true) => format!("{} drained", load.status),
            (Some(load), false) => load.status.clone(),
        };
        let load = entry.load.clone().unwrap_or_default();
        outln!(
            "{:<16} {:<24} {:<12} {:>6} {:>8.1} {:>9.0}% {:<20}",
            server.name,
            server.data_endpoint,
            health,
            load.disks.map_or("-".to_string(), |d| d.to_string()),
            load.ingest_mb_per_s.unwrap_or(0.0),
            load.cache_free_fraction.unwrap_or(0.0) * 100.0,
            ferry_format::time::format_unix_ms(server.joined_unix_ms),
        );
    }
    Ok(())
}
