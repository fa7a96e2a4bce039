//! `ferryctl ps`: the process servers of a site, on its configuration server.
//!
//! - `ps token --config DIR`: a one-time join token (valid one hour by default) for
//!   `ferryctl init NEWDIR --join CONFIG:443 --join-token-file F` on a new process server; only
//!   its hash is kept (`ferry_config::site`).
//! - `ps list --config DIR`: the process servers that joined, each probed for health.
//!
//! Both read and write the appliance directory itself (ferryd reads the tokens at each join),
//! so they work with ferryd running or not.

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
    }
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
        println!(
            "{}",
            serde_json::json!({ "token": shown, "file": args.out, "expires": expires })
        );
    } else if let Some(out) = &args.out {
        println!(
            "Join token written to {} (one use, until {expires} UTC).",
            out.display()
        );
    } else {
        println!("{token}");
        eprintln!("One use, until {expires} UTC: ferryctl init DIR --join THIS_HOST:PORT --join-token-file FILE");
    }
    Ok(())
}

/// A process server as `ps list` shows it: as recorded, and whether it answers now.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    server: site::ProcessServer,
    /// Its data endpoint answered `GET /v1/health` (TLS verified with the site's CA) within 2 s.
    healthy: bool,
}

async fn list(args: ListArgs, json: bool) -> Result<()> {
    let layout = configuration_server(&args.config)?;
    let servers = site::servers(layout.root()).map_err(anyhow::Error::msg)?;
    let ca_pem = std::fs::read_to_string(layout.ca_cert_file())
        .with_context(|| format!("cannot read {}", layout.ca_cert_file().display()))?;
    let probes = servers
        .iter()
        .map(|s| ferry_client::register::healthy(&s.data_endpoint, &ca_pem, std::time::Duration::from_secs(2)));
    let health = futures::future::join_all(probes).await;
    let listed: Vec<Listed> = servers
        .into_iter()
        .zip(health)
        .map(|(server, healthy)| Listed { server, healthy })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if listed.is_empty() {
        println!("No process server has joined this site (ferryctl ps token makes a join token).");
        return Ok(());
    }
    println!(
        "{:<20} {:<28} {:<12} {:<24} joined from",
        "name", "data endpoint", "health", "joined (UTC)"
    );
    for entry in &listed {
        let server = &entry.server;
        println!(
            "{:<20} {:<28} {:<12} {:<24} {}",
            server.name,
            server.data_endpoint,
            if entry.healthy { "ok" } else { "unreachable" },
            ferry_format::time::format_unix_ms(server.joined_unix_ms),
            server.joined_from
        );
    }
    Ok(())
}
