//! `ferryctl plan run PLAN.toml`: a recovery plan, failed over group by group in order.
//!
//! A plan names ordered groups of machines and disks; each group may have a pre script, a
//! post script and a manual step. For each group: the pre script, then a failover of the
//! group's disks (the same point and destination flags as `ferryctl failover`), then the post
//! script, then the manual step (printed; it waits for "yes" on the terminal unless `--yes`).
//! Scripts get `FERRY_PLAN`, `FERRY_PLAN_GROUP` and `FERRY_FAILOVER_ID` in their environment;
//! the post script also `FERRY_OUTPUTS` (the group's outputs, one per line) and
//! `FERRY_FAILOVER_JSON` (a file holding the failover's JSON report). The run stops at the
//! first failing script or failover. Progress is kept in `PLAN.toml.state.json` beside the
//! plan; `--resume` goes on from the first group not done (refused if the plan changed).
//!
//! ```toml
//! name = "erp"
//! [[groups]]
//! name = "databases"
//! machines = ["01c26f6e"]          # machine id prefixes
//! disks = []                       # disk selectors, as --disk takes them
//! pre_script = "/etc/ferry/plan/stop-replicas.sh"
//! post_script = "/etc/ferry/plan/check-db.sh"
//! manual = "Check the database answers before the application servers start."
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use uuid::Uuid;

use crate::failover::{Report, RunArgs};

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Fail a recovery plan over, group by group.
    Run(Box<PlanRunArgs>),
}

#[derive(Args, Debug)]
pub struct PlanRunArgs {
    /// The plan (TOML).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Go on from the first group not done in the last run of this plan.
    #[arg(long)]
    pub resume: bool,
    /// Do not wait for manual steps to be confirmed.
    #[arg(long)]
    pub yes: bool,
    /// Point, destination, --test and vault flags, as `ferryctl failover` takes them (the
    /// disks come from the plan).
    #[command(flatten)]
    pub failover: RunArgs,
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Plan {
    #[serde(default)]
    name: Option<String>,
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    #[serde(default)]
    machines: Vec<String>,
    #[serde(default)]
    disks: Vec<String>,
    #[serde(default)]
    pre_script: Option<PathBuf>,
    #[serde(default)]
    post_script: Option<PathBuf>,
    #[serde(default)]
    manual: Option<String>,
}

impl Plan {
    fn load(path: &Path) -> Result<(Plan, String)> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the plan {}", path.display()))?;
        let plan: Plan = toml::from_str(&text).with_context(|| format!("{} is not a recovery plan", path.display()))?;
        if plan.groups.is_empty() {
            bail!("{}: a plan needs at least one [[groups]]", path.display());
        }
        let mut names = std::collections::HashSet::new();
        for group in &plan.groups {
            if group.machines.is_empty() && group.disks.is_empty() {
                bail!(
                    "{}: group {:?} names no machines and no disks",
                    path.display(),
                    group.name
                );
            }
            if !names.insert(group.name.as_str()) {
                bail!("{}: two groups are named {:?}", path.display(), group.name);
            }
        }
        let digest = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()));
        Ok((plan, digest))
    }
}

/// What a run of the plan has done, kept beside the plan.
#[derive(Debug, Default, Deserialize, Serialize)]
struct PlanState {
    plan_sha256: String,
    groups: Vec<GroupState>,
}

#[derive(Debug, Deserialize, Serialize)]
struct GroupState {
    name: String,
    failover_id: Option<Uuid>,
    done: bool,
    /// Why it failed (None when done).
    error: Option<String>,
}

fn state_path(plan: &Path) -> PathBuf {
    let mut name = plan.as_os_str().to_owned();
    name.push(".state.json");
    PathBuf::from(name)
}

fn save(path: &Path, state: &PlanState) -> Result<()> {
    let json = serde_json::to_vec_pretty(state)?;
    ferry_durable::replace(path, &json).with_context(|| format!("cannot write {}", path.display()))
}

pub async fn run(command: PlanCommand, json: bool) -> Result<()> {
    match command {
        PlanCommand::Run(args) => run_plan(*args, json).await,
    }
}

async fn run_plan(args: PlanRunArgs, json: bool) -> Result<()> {
    let (plan, digest) = Plan::load(&args.plan)?;
    if !args.failover.disks.is_empty() || !args.failover.machines.is_empty() || args.failover.group.is_some() {
        bail!("a plan names its disks: drop --disk, --machine and --group");
    }
    let plan_name = plan.name.clone().unwrap_or_else(|| args.plan.display().to_string());
    let state_file = state_path(&args.plan);
    let mut state = if args.resume {
        let text = std::fs::read(&state_file)
            .with_context(|| format!("nothing to resume: cannot read {}", state_file.display()))?;
        let state: PlanState =
            serde_json::from_slice(&text).with_context(|| format!("{} is damaged", state_file.display()))?;
        if state.plan_sha256 != digest {
            bail!(
                "the plan changed since the run that {} records; run it again without --resume",
                state_file.display()
            );
        }
        state
    } else {
        PlanState {
            plan_sha256: digest,
            groups: Vec::new(),
        }
    };
    state.groups.retain(|g| g.done);
    let opened = crate::vault_access::open(&args.failover.vault).await?;
    let mut reports = Vec::new();
    for (number, group) in plan.groups.iter().enumerate() {
        if state.groups.iter().any(|g| g.name == group.name) {
            if !json {
                eprintln!(
                    "group {}/{} {}: done in an earlier run",
                    number + 1,
                    plan.groups.len(),
                    group.name
                );
            }
            continue;
        }
        if !json {
            eprintln!("group {}/{} {}", number + 1, plan.groups.len(), group.name);
        }
        let failover_id = Uuid::new_v4();
        let result = run_group(&args, &opened, &plan_name, group, failover_id, json).await;
        match result {
            Ok(report) => {
                state.groups.push(GroupState {
                    name: group.name.clone(),
                    failover_id: Some(failover_id),
                    done: true,
                    error: None,
                });
                save(&state_file, &state)?;
                reports.push(report);
            }
            Err(e) => {
                state.groups.push(GroupState {
                    name: group.name.clone(),
                    failover_id: Some(failover_id),
                    done: false,
                    error: Some(format!("{e:#}")),
                });
                save(&state_file, &state)?;
                return Err(e.context(format!(
                    "plan {plan_name}: group {:?} failed; fix it and run `ferryctl plan run {} --resume ...`",
                    group.name,
                    args.plan.display()
                )));
            }
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": plan_name, "failovers": reports }))?
        );
    } else {
        outln!("Plan {plan_name}: all {} groups failed over.", plan.groups.len());
    }
    Ok(())
}

async fn run_group(
    args: &PlanRunArgs,
    opened: &crate::vault_access::OpenVault,
    plan_name: &str,
    group: &Group,
    failover_id: Uuid,
    json: bool,
) -> Result<Report> {
    let env = vec![
        ("FERRY_PLAN".to_string(), plan_name.to_string()),
        ("FERRY_PLAN_GROUP".to_string(), group.name.clone()),
        ("FERRY_FAILOVER_ID".to_string(), failover_id.to_string()),
    ];
    if let Some(script) = &group.pre_script {
        run_script(script, &env, "pre")?;
    }
    let mut failover = args.failover.clone();
    failover.disks = group.disks.clone();
    failover.machines = group.machines.clone();
    let record = crate::failover::execute(opened, &failover, failover_id, json).await?;
    let report = Report::of(&record);
    if let Some(script) = &group.post_script {
        let report_file = std::env::temp_dir().join(format!("ferry-failover-{failover_id}.json"));
        std::fs::write(&report_file, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", report_file.display()))?;
        let mut env = env.clone();
        let outputs: Vec<String> = record.disks.iter().map(|d| d.output.clone()).collect();
        env.push(("FERRY_OUTPUTS".into(), outputs.join("\n")));
        env.push(("FERRY_FAILOVER_JSON".into(), report_file.display().to_string()));
        let ran = run_script(script, &env, "post");
        let _ = std::fs::remove_file(&report_file);
        ran?;
    }
    if let Some(step) = &group.manual {
        eprintln!("Manual step for group {}: {step}", group.name); // stderr: stdout keeps the report
        if !args.yes {
            eprint!("Type yes when it is done: ");
            let mut answer = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut answer)
                .context("cannot read the answer")?;
            if answer.trim() != "yes" {
                bail!("the manual step of group {:?} was not confirmed", group.name);
            }
        }
    }
    Ok(report)
}

fn run_script(script: &Path, env: &[(String, String)], what: &str) -> Result<()> {
    let status = std::process::Command::new(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .with_context(|| format!("cannot run the {what} script {}", script.display()))?;
    if !status.success() {
        bail!("the {what} script {} failed ({status})", script.display());
    }
    Ok(())
}
