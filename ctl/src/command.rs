//! `ferryctl command`: a management command for a machine's agent (docs/PROTOCOL.md section
//! 4), queued with the running ferryd (control socket); by default it waits for the agent's
//! outcome and shows it. `--log` shows the machine's queued, delivered and done commands.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ferry_client::commands::{BookmarkAsk, CommandName, CommandRequest};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::control::ApplianceArg;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Action {
    /// A pass of every disk now.
    PassNow,
    /// A pass of every disk now, ending in a bookmark of --kind.
    Bookmark,
    /// Re-read a disk (--disk) or every disk and send what differs.
    Resync,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    App,
    Crash,
}

#[derive(Args, Debug)]
pub struct CommandArgs {
    /// The machine: its id or a unique prefix (`ferryctl machines` lists them).
    #[arg(long, value_name = "MACHINE")]
    pub machine: String,
    /// What to ask (not with --log).
    #[arg(value_enum, required_unless_present = "log")]
    pub action: Option<Action>,
    /// With bookmark: app (quiesced) or crash.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// With bookmark: the consistency group it belongs to.
    #[arg(long, value_name = "GROUP_ID")]
    pub group: Option<Uuid>,
    /// With resync: the one disk (its id; every disk of the machine when absent).
    #[arg(long, value_name = "DISK_ID")]
    pub disk: Option<Uuid>,
    /// With resync: why (shown while it runs).
    #[arg(long)]
    pub reason: Option<String>,
    /// How long to wait for the agent's outcome (0: queue and return).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub wait: u64,
    /// Show the machine's commands instead: queued, delivered, done.
    #[arg(long, conflicts_with = "action")]
    pub log: bool,
    #[command(flatten)]
    pub appliance: ApplianceArg,
}

pub async fn run(args: CommandArgs, json: bool) -> Result<()> {
    let client = args.appliance.client()?;
    let machines = client.machines().await.context("asking ferryd for its machines")?;
    let machine = crate::control::registered_machine(&machines, &args.machine)?;
    if args.log {
        let log = client.command_log(machine).await?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&log)?);
        } else {
            for c in &log.pending {
                outln!("queued     {} {}", c.id, c.command);
            }
            for c in &log.delivered {
                outln!("delivered  {} {} (no outcome yet)", c.id, c.command);
            }
            for r in &log.results {
                outln!(
                    "{}   {} {}: {}",
                    if r.outcome.ok { "done  " } else { "FAILED" },
                    r.command.id,
                    r.command.command,
                    r.outcome.message
                );
            }
        }
        return Ok(());
    }
    let request = CommandRequest {
        command: match args.action {
            Some(Action::PassNow) => CommandName::PassNow,
            Some(Action::Bookmark) => CommandName::Bookmark,
            Some(Action::Resync) => CommandName::Resync,
            None => bail!("say what to ask: pass-now, bookmark or resync"),
        },
        kind: args.kind.map(|k| match k {
            KindArg::App => BookmarkAsk::App,
            KindArg::Crash => BookmarkAsk::Crash,
        }),
        group_id: args.group,
        disk_id: args.disk,
        reason: args.reason.clone(),
    };
    let queued = client.queue_command(machine, &request).await?;
    if args.wait == 0 {
        if json {
            outln!("{}", serde_json::to_string_pretty(&queued)?);
        } else {
            outln!("Queued {} {} for machine {machine}.", queued.command, queued.id);
        }
        return Ok(());
    }
    if !json {
        eprintln!("queued {} {}; waiting for the agent", queued.command, queued.id);
    }
    let report = wait_for_outcome(&client, machine, &queued, args.wait).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{}: {}",
            if report.outcome.ok { "done" } else { "failed" },
            report.outcome.message
        );
        for b in &report.outcome.bookmarks {
            outln!("  {}: {} ({}, seq {})", b.disk_id, b.bookmark_id, b.kind, b.seq);
        }
    }
    if !report.outcome.ok {
        bail!("the agent could not carry out {} {}", queued.command, queued.id);
    }
    Ok(())
}

/// Waits at most `wait_secs` for the agent's outcome of `queued` (sent to `machine`).
pub async fn wait_for_outcome(
    client: &ferry_client::control::ControlClient,
    machine: uuid::Uuid,
    queued: &ferry_client::commands::Command,
    wait_secs: u64,
) -> Result<ferry_client::commands::CommandReport> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let log = client.command_log(machine).await?;
        if let Some(report) = log.results.into_iter().find(|r| r.command.id == queued.id) {
            return Ok(report);
        }
        if Instant::now() >= deadline {
            let state = if log.pending.iter().any(|c| c.id == queued.id) {
                "still queued: is the machine's agent running (ferry-agent run)?"
            } else {
                "delivered, no outcome yet"
            };
            bail!("{} {} after {wait_secs} s: {state}", queued.command, queued.id);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
