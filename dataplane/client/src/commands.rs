//! Management commands for agents (PROTOCOL.md section 4, docs/PROTOCOL.md "Management
//! commands"): what ferryd queues for a machine, what the agent reports back, and what the
//! control socket shows of both.
//!
//! - `GET /v1/machines/{machine_id}/commands?wait_s=N` (management endpoint, mTLS as that
//!   machine) -> [`Commands`], at once when some are queued, else after at most N seconds
//!   (0..=60) with none.
//! - `POST /v1/machines/{machine_id}/commands/{id}/result` with [`CommandOutcome`] -> `{}`.
//! - Control socket: `POST /v1/machines/{machine_id}/commands` with [`CommandRequest`] ->
//!   [`Command`] (queued); `GET` the same path -> [`CommandLog`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a command asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandName {
    /// A pass of every disk now, ending in a bookmark of `kind` (with `group_id` when given).
    Bookmark,
    /// A pass of every disk now, its bookmark as the schedule would make it.
    PassNow,
    /// Re-read `disk_id` (every disk when absent) and send what differs: the block map is
    /// forgotten, `reason` shown while it runs.
    Resync,
    /// A consistency group's barrier, first phase: capture every disk at one instant and hold
    /// its writes until `group-commit` or `group-abort` of the same `barrier_id`, or until
    /// `deadline_unix_ms`, whichever comes first; report ok once held.
    GroupPrepare,
    /// Second phase: release the writes at once, then pass every disk from its capture and
    /// end with the BOOKMARK `bookmark_id` of the group (`group_id`).
    GroupCommit,
    /// Release the writes and drop the captures; no bookmark.
    GroupAbort,
    /// Move the machine to another process server (`ferryctl ps move`, `ps drain`): release
    /// every disk at the current one (it uploads what it holds first), then send to
    /// `data_endpoint`; report once the disks are set up there.
    Move,
}

crate::api::text_enum!(CommandName {
    Bookmark => "bookmark",
    PassNow => "pass-now",
    Resync => "resync",
    GroupPrepare => "group-prepare",
    GroupCommit => "group-commit",
    GroupAbort => "group-abort",
    Move => "move",
});

impl CommandName {
    /// `group-prepare`, `group-commit` or `group-abort`.
    pub fn is_group_barrier(self) -> bool {
        matches!(
            self,
            CommandName::GroupPrepare | CommandName::GroupCommit | CommandName::GroupAbort
        )
    }
}

/// The bookmark kind a `bookmark` command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookmarkAsk {
    App,
    Crash,
}

/// A queued command, as the agent receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: Uuid,
    pub command: CommandName,
    /// With `bookmark`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BookmarkAsk>,
    /// With `bookmark`: the consistency group the bookmark belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Uuid>,
    /// With `resync`: the one disk (all of the machine's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<Uuid>,
    /// With `resync`: why, shown while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With the `group-*` commands: which barrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barrier_id: Option<Uuid>,
    /// With `group-prepare` and `group-commit`: the group point's bookmark id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookmark_id: Option<String>,
    /// With `group-prepare`: when the agent releases the writes whatever it hears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix_ms: Option<u64>,
    /// With `move`: the process server to send to from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_endpoint: Option<String>,
    pub issued_unix_ms: u64,
}

/// The answer of the long poll.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    pub commands: Vec<Command>,
}

/// A bookmark a command's passes ended in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBookmark {
    pub disk_id: Uuid,
    pub bookmark_id: String,
    pub kind: String,
    pub seq: u64,
}

/// What the agent reports when a command is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOutcome {
    pub ok: bool,
    /// What happened, in words (at most 4096 characters).
    pub message: String,
    #[serde(default)]
    pub bookmarks: Vec<CommandBookmark>,
    /// With `group-commit`: how long the disks' writes were held, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<f64>,
    /// With `move`: from the first disk's release (its batches refused at the old process
    /// server) to the last disk set up at the new one, in milliseconds: the RPO the move added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_ms: Option<f64>,
}

/// Control socket: a command to queue for a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub command: CommandName,
    #[serde(default)]
    pub kind: Option<BookmarkAsk>,
    #[serde(default)]
    pub group_id: Option<Uuid>,
    #[serde(default)]
    pub disk_id: Option<Uuid>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A command and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandReport {
    pub command: Command,
    pub outcome: CommandOutcome,
    pub reported_unix_ms: u64,
}

/// Control socket: a machine's commands, queued, delivered (no outcome yet) and done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandLog {
    pub pending: Vec<Command>,
    pub delivered: Vec<Command>,
    pub results: Vec<CommandReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_the_protocol_writes_them() {
        let wire = r#"{"id":"6f1c9a52-2a0b-4b53-9f0e-6c1f0b2f8a11","command":"pass-now","issued_unix_ms":1}"#;
        let command: Command = serde_json::from_str(wire).unwrap();
        assert_eq!(command.command, CommandName::PassNow);
        let bookmark = r#"{"id":"6f1c9a52-2a0b-4b53-9f0e-6c1f0b2f8a11","command":"bookmark","kind":"app",
            "group_id":"0b1c9a52-2a0b-4b53-9f0e-6c1f0b2f8a11","issued_unix_ms":1}"#;
        let command: Command = serde_json::from_str(bookmark).unwrap();
        assert_eq!(command.kind, Some(BookmarkAsk::App));
        assert!(command.group_id.is_some());
        for name in CommandName::ALL {
            assert_eq!(serde_json::to_value(name).unwrap(), name.as_str());
        }
        assert!(serde_json::from_str::<CommandRequest>(r#"{"command":"reboot"}"#).is_err());
    }
}
