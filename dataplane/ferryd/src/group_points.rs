//! Group points: the two-phase barrier across a consistency group's agents, and the group
//! point written once every member's point is in storage (FORMATS.md section 4).
//!
//! 1. *Prepare*: every member machine gets `group-prepare` (management commands): its agent
//!    captures each disk at one instant and holds the disk's writes (agent/src/held.rs), then
//!    reports. Each agent releases by itself at the barrier's deadline (`barrier_secs`),
//!    whatever happens here.
//! 2. When every member reported ok before the deadline, *commit*: `group-commit`, and each
//!    agent releases at once, passes its disks from the captures and ends them with the same
//!    BOOKMARK id and `group_id`. Otherwise *abort*: `group-abort`, no group point.
//! 3. When every member's recovery point is in storage, the group point is written, sealed
//!    with the vault key: `{group_id, bookmark_id, kind, tag, members: [{disk_id, seq}]}`.
//!
//! One barrier per group at a time. The schedule (`crash_every_secs`, `app_every_secs`) runs
//! in the background; `ferryctl group point` asks for one now. The last outcomes are kept (at
//! most [`REPORTS_MAX`] per group) for `ferryctl group list --json` and tests.

use ferry_client::commands::{BookmarkAsk, Command, CommandName, CommandOutcome};
use ferry_client::groups::{BarrierReport, Group};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{GroupMember, GroupPoint, PLAINTEXT_FORMAT};
use ferry_format::BookmarkId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::server::AppState;

pub const REPORTS_MAX: usize = 32;
/// Longest the members' passes may take after the commit.
const PASSES_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest the members' points may take to reach storage after their passes.
const POINTS_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often the outcomes are looked for: part of every member's hold, so short.
const POLL: Duration = Duration::from_millis(5);

#[derive(Default)]
pub struct Barriers {
    running: Mutex<HashSet<Uuid>>,
    reports: Mutex<HashMap<Uuid, VecDeque<BarrierReport>>>,
}

impl Barriers {
    /// The last outcomes of `group_id`'s barriers, oldest first.
    pub fn reports(&self, group_id: Uuid) -> Vec<BarrierReport> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports
            .get(&group_id)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, report: BarrierReport) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let list = reports.entry(report.group_id).or_default();
        list.push_back(report);
        while list.len() > REPORTS_MAX {
            list.pop_front();
        }
    }
}

/// Takes one group point of `group` now (see the module header); None when a barrier of the
/// group is running already.
pub async fn take_point(state: &AppState, group: &Group, kind: BookmarkAsk) -> Option<BarrierReport> {
    {
        let mut running = state.barriers.running.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(group.group_id) {
            return None;
        }
    }
    let report = run_barrier(state, group, kind).await;
    state
        .barriers
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&group.group_id);
    if report.ok {
        tracing::info!(group = %group.name, bookmark = %report.bookmark_id, prepared_ms = report.prepared_ms, "group point written");
    } else {
        tracing::warn!(group = %group.name, bookmark = %report.bookmark_id, message = %report.message, "no group point");
    }
    state.barriers.record(report.clone());
    Some(report)
}

fn command(
    name: CommandName,
    group: &Group,
    barrier_id: Uuid,
    bookmark_id: &str,
    kind: BookmarkAsk,
    deadline: u64,
) -> Command {
    Command {
        id: Uuid::new_v4(),
        command: name,
        kind: Some(kind),
        group_id: Some(group.group_id),
        disk_id: None,
        reason: None,
        barrier_id: Some(barrier_id),
        bookmark_id: Some(bookmark_id.to_string()),
        deadline_unix_ms: Some(deadline),
        data_endpoint: None,
        issued_unix_ms: ferry_client::clock::now_unix_ms(),
    }
}

/// Queues `name` for every member; the command id per machine (members whose queue is full
/// are left out and named in the error).
fn send_all(state: &AppState, group: &Group, make: impl Fn() -> Command) -> (HashMap<Uuid, Uuid>, Vec<String>) {
    let mut sent = HashMap::new();
    let mut failed = Vec::new();
    for machine in &group.machines {
        let command = make();
        let id = command.id;
        match state.commands.enqueue(*machine, command) {
            Ok(()) => {
                sent.insert(*machine, id);
            }
            Err(e) => failed.push(format!("machine {machine}: {e}")),
        }
    }
    (sent, failed)
}

/// Waits until every sent command has an outcome, or `until`; the outcomes so far.
async fn outcomes(state: &AppState, sent: &HashMap<Uuid, Uuid>, until: Instant) -> HashMap<Uuid, CommandOutcome> {
    loop {
        let mut found = HashMap::new();
        for (machine, id) in sent {
            if let Some(outcome) = state.commands.outcome(*machine, *id) {
                found.insert(*machine, outcome);
            }
        }
        if found.len() == sent.len() || Instant::now() >= until {
            return found;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn run_barrier(state: &AppState, group: &Group, kind: BookmarkAsk) -> BarrierReport {
    let started = Instant::now();
    let created_unix_ms = ferry_client::clock::now_unix_ms();
    let barrier_id = Uuid::new_v4();
    let bookmark_id = format!("group-{created_unix_ms}");
    let mut report = BarrierReport {
        group_id: group.group_id,
        bookmark_id: bookmark_id.clone(),
        created_unix_ms,
        ok: false,
        message: String::new(),
        prepared_ms: None,
        hold_ms: Vec::new(),
        members: Vec::new(),
    };
    let barrier = Duration::from_secs(group.barrier_secs);
    let deadline_ms = created_unix_ms + group.barrier_secs * 1000;
    let abort = |report: &mut BarrierReport, why: String| {
        let _ = send_all(state, group, || {
            command(
                CommandName::GroupAbort,
                group,
                barrier_id,
                &bookmark_id,
                kind,
                deadline_ms,
            )
        });
        report.message = why;
    };

    // Prepare.
    let (sent, failed) = send_all(state, group, || {
        command(
            CommandName::GroupPrepare,
            group,
            barrier_id,
            &bookmark_id,
            kind,
            deadline_ms,
        )
    });
    if !failed.is_empty() {
        abort(&mut report, format!("prepare not sent: {}", failed.join("; ")));
        return report;
    }
    let prepared = outcomes(state, &sent, started + barrier).await;
    let not_prepared: Vec<String> = group
        .machines
        .iter()
        .filter_map(|m| match prepared.get(m) {
            Some(outcome) if outcome.ok => None,
            Some(outcome) => Some(format!("machine {m}: {}", outcome.message)),
            None => Some(format!(
                "machine {m}: no answer within the barrier ({} s)",
                group.barrier_secs
            )),
        })
        .collect();
    if !not_prepared.is_empty() {
        abort(&mut report, format!("aborted: {}", not_prepared.join("; ")));
        return report;
    }
    report.prepared_ms = Some(started.elapsed().as_secs_f64() * 1e3);

    // Commit.
    let (sent, failed) = send_all(state, group, || {
        command(
            CommandName::GroupCommit,
            group,
            barrier_id,
            &bookmark_id,
            kind,
            deadline_ms,
        )
    });
    if !failed.is_empty() {
        report.message = format!("commit not sent: {}", failed.join("; "));
        return report;
    }
    let committed = outcomes(state, &sent, Instant::now() + PASSES_TIMEOUT).await;
    let mut members = Vec::new();
    let mut kinds = HashSet::new();
    for machine in &group.machines {
        match committed.get(machine) {
            Some(outcome) if outcome.ok => {
                report.hold_ms.extend(outcome.hold_ms);
                for bookmark in &outcome.bookmarks {
                    kinds.insert(bookmark.kind.clone());
                    members.push(GroupMember {
                        disk_id: bookmark.disk_id,
                        seq: bookmark.seq,
                    });
                }
            }
            Some(outcome) => {
                report.message = format!("machine {machine}: {}", outcome.message);
                return report;
            }
            None => {
                report.message = format!("machine {machine} did not finish its passes");
                return report;
            }
        }
    }
    if members.is_empty() {
        report.message = "the members have no disks".into();
        return report;
    }
    report.members = members.iter().map(|m| (m.disk_id, m.seq)).collect();

    // The group point, once every member's point is in storage.
    let Some((storage, keyring)) = state.retention.vault.get().cloned() else {
        report.message = "the target is not connected: no group point".into();
        return report;
    };
    let Ok(bookmark) = BookmarkId::new(&bookmark_id) else {
        report.message = format!("{bookmark_id:?} is not a bookmark id");
        return report;
    };
    let until = Instant::now() + POINTS_TIMEOUT;
    for member in &members {
        let key = keyring.disk_key(member.disk_id);
        loop {
            match ferry_vault::points::exists(&*storage, &key, member.disk_id, member.seq, bookmark.as_str()).await {
                Ok(true) => break,
                Ok(false) | Err(_) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(false) => {
                    report.message = format!("the point of disk {} never reached storage", member.disk_id);
                    return report;
                }
                Err(e) => {
                    report.message = format!("looking for the point of disk {}: {e:#}", member.disk_id);
                    return report;
                }
            }
        }
    }
    let point = GroupPoint {
        format: PLAINTEXT_FORMAT,
        group_id: group.group_id,
        bookmark_id: bookmark_id.clone(),
        kind: if kinds.len() == 1 && kinds.contains("app") {
            "app"
        } else {
            "crash"
        }
        .to_string(),
        tag: Some(format!(
            "group {}, writes held at most {:.1} ms",
            group.name,
            report.hold_ms.iter().copied().fold(0.0, f64::max)
        )),
        members,
    };
    let name = ObjectName::GroupPoint {
        group_id: group.group_id,
        created_unix_ms,
        bookmark_id: bookmark,
    };
    let key = keyring.key_for(&name);
    match ferry_vault::sealed::write_json(&*storage, &key, &name.to_string(), &point).await {
        Ok(_) => {
            report.ok = true;
            report.message = format!("group point {bookmark_id} of {} disk(s)", point.members.len());
        }
        Err(e) => report.message = format!("writing the group point: {e:#}"),
    }
    report
}

/// Takes each group's points on its schedule (crash every `crash_every_secs`, app every
/// `app_every_secs`), counting from ferryd's start.
pub async fn run_schedule(state: Arc<AppState>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut last: HashMap<(Uuid, bool), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for group in state.groups.list() {
            let now = Instant::now();
            let due = |app: bool, every: u64, last: &mut HashMap<(Uuid, bool), Instant>| {
                every != 0
                    && now.duration_since(*last.entry((group.group_id, app)).or_insert(now))
                        >= Duration::from_secs(every)
            };
            let kind = if due(true, group.app_every_secs, &mut last) {
                // An app point is also the interval's crash point.
                last.insert((group.group_id, false), now);
                BookmarkAsk::App
            } else if due(false, group.crash_every_secs, &mut last) {
                BookmarkAsk::Crash
            } else {
                continue;
            };
            last.insert((group.group_id, kind == BookmarkAsk::App), now);
            let (state, group) = (state.clone(), group.clone());
            tokio::spawn(async move { take_point(&state, &group, kind).await });
        }
    }
}
