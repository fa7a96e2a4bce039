//! `ferryctl group`: consistency groups on the running ferryd (the configuration server):
//! create (machines by id or unique prefix, intervals as `90s`, `5m`, `1h`), list, delete.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_client::groups::GroupSpec;

use crate::control::ApplianceArg;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group: its machines' points are taken at one instant together.
    Create(CreateArgs),
    /// The groups, their machines and intervals.
    List(ApplianceArg),
    /// Delete a group (by name or id); its points stay in the vault.
    Delete(DeleteArgs),
    /// Take a group point now: the barrier across the members' agents (each must be running
    /// `ferry-agent run`); waits until the group point is written or the barrier failed.
    Point(PointArgs),
    /// How the group's last barriers went (hold times, members, failures).
    Barriers(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct PointArgs {
    /// The group's name or id.
    pub group: String,
    /// app (quiesced, where the members configure it) or crash.
    #[arg(long, value_enum, default_value = "crash")]
    pub kind: crate::command::KindArg,
    #[command(flatten)]
    pub appliance: ApplianceArg,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// 1 to 64 characters: a-z, 0-9, - and _.
    pub name: String,
    /// A member (its id or a unique prefix); repeat for each, at most 16.
    #[arg(long = "machine", value_name = "MACHINE", required = true)]
    pub machines: Vec<String>,
    /// A crash-consistent group point this often (at least 30s).
    #[arg(long, default_value = "5m")]
    pub crash_every: String,
    /// An app-consistent group point this often (0: never).
    #[arg(long, default_value = "0")]
    pub app_every: String,
    /// How long the members' writes may be held while they prepare (1s to 60s).
    #[arg(long, default_value = "10s")]
    pub barrier: String,
    #[command(flatten)]
    pub appliance: ApplianceArg,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The group's name or id.
    pub group: String,
    #[command(flatten)]
    pub appliance: ApplianceArg,
}

/// Seconds of `90s`, `10m`, `24h`, `15d` (or `0`), as ferry.toml writes durations.
fn seconds(text: &str, flag: &str) -> Result<u64> {
    text.parse::<ferry_config::retention::Span>()
        .map(|span| span.secs())
        .map_err(|e| anyhow::anyhow!("--{flag} {text:?}: {e}"))
}

pub async fn run(command: GroupCommand, json: bool) -> Result<()> {
    match command {
        GroupCommand::Create(args) => create(args, json).await,
        GroupCommand::List(appliance) => list(appliance, json).await,
        GroupCommand::Point(args) => {
            let kind = match args.kind {
                crate::command::KindArg::App => ferry_client::commands::BookmarkAsk::App,
                crate::command::KindArg::Crash => ferry_client::commands::BookmarkAsk::Crash,
            };
            let report = args.appliance.client()?.group_point(&args.group, kind).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                outln!("{}: {}", if report.ok { "done" } else { "failed" }, report.message);
                for (disk, seq) in &report.members {
                    outln!("  {disk}: seq {seq}");
                }
            }
            if !report.ok {
                bail!("no group point of {}", args.group);
            }
            Ok(())
        }
        GroupCommand::Barriers(args) => {
            let reports = args.appliance.client()?.group_reports(&args.group).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    let held = r.hold_ms.iter().copied().fold(0.0, f64::max);
                    outln!(
                        "{}  {:<24} {}  held at most {held:.1} ms: {}",
                        ferry_format::time::format_unix_ms(r.created_unix_ms),
                        r.bookmark_id,
                        if r.ok { "ok    " } else { "FAILED" },
                        r.message
                    );
                }
            }
            Ok(())
        }
        GroupCommand::Delete(args) => {
            let removed = args.appliance.client()?.delete_group(&args.group).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                outln!(
                    "Group {} ({}) deleted; its points stay in the vault.",
                    removed.name,
                    removed.group_id
                );
            }
            Ok(())
        }
    }
}

async fn create(args: CreateArgs, json: bool) -> Result<()> {
    let client = args.appliance.client()?;
    let registered = client.machines().await.context("asking ferryd for its machines")?;
    let mut machines = Vec::new();
    for wanted in &args.machines {
        machines.push(crate::control::registered_machine(&registered, wanted)?);
    }
    let spec = GroupSpec {
        name: args.name.clone(),
        machines,
        crash_every_secs: seconds(&args.crash_every, "crash-every")?,
        app_every_secs: seconds(&args.app_every, "app-every")?,
        barrier_secs: seconds(&args.barrier, "barrier")?,
    };
    if let Some(problem) = spec.problem() {
        bail!("{problem}");
    }
    let group = client.create_group(&spec).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&group)?);
    } else {
        outln!(
            "Group {} ({}) created: {} machine(s), crash points every {} s{}, writes held at most {} s.",
            group.name,
            group.group_id,
            group.machines.len(),
            group.crash_every_secs,
            match group.app_every_secs {
                0 => String::new(),
                secs => format!(", app points every {secs} s"),
            },
            group.barrier_secs
        );
    }
    Ok(())
}

async fn list(appliance: ApplianceArg, json: bool) -> Result<()> {
    let groups = appliance.client()?.groups().await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    if groups.is_empty() {
        outln!("No consistency groups (ferryctl group create makes one).");
        return Ok(());
    }
    outln!(
        "{:<24} {:<36} {:>6} {:>6} {:>8}  MACHINES",
        "GROUP",
        "ID",
        "CRASH",
        "APP",
        "BARRIER"
    );
    for g in &groups {
        outln!(
            "{:<24} {:<36} {:>5}s {:>5}s {:>7}s  {}",
            g.name,
            g.group_id,
            g.crash_every_secs,
            g.app_every_secs,
            g.barrier_secs,
            g.machines
                .iter()
                .map(|m| m.to_string()[..8].to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
