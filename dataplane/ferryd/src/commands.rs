//! The management commands waiting for each machine's agent (docs/PROTOCOL.md section 4):
//! queued by the operator (the control socket) or by ferryd itself, taken by the agent's long
//! poll, reported back when done.
//!
//! Bounded: at most [`PENDING_MAX`] queued per machine (more is refused), the newest
//! [`DELIVERED_MAX`] delivered-but-unreported and [`RESULTS_MAX`] outcomes kept. Kept in
//! memory: a restart of ferryd forgets queued commands (an operator queues them again; the
//! agent's schedule goes on regardless). A command is delivered once: an agent that dies after
//! taking it never reports it, and `ferryctl command` says it has no outcome.

use ferry_client::commands::{Command, CommandLog, CommandOutcome, CommandReport};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

pub const PENDING_MAX: usize = 16;
pub const DELIVERED_MAX: usize = 64;
pub const RESULTS_MAX: usize = 32;
/// The longest a poll waits.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Queue {
    pending: VecDeque<Command>,
    delivered: VecDeque<Command>,
    results: VecDeque<CommandReport>,
    wake: Arc<Notify>,
}

#[derive(Default)]
pub struct CommandQueues {
    machines: Mutex<HashMap<Uuid, Queue>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("{PENDING_MAX} commands are queued for this machine already; wait for its agent to take them")]
    Full,
    #[error("no delivered command {0} is waiting for its outcome")]
    Unknown(Uuid),
}

impl CommandQueues {
    fn machines(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Queue>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `command` for `machine` and wakes its agent's poll.
    pub fn enqueue(&self, machine: Uuid, command: Command) -> Result<(), QueueError> {
        let mut machines = self.machines();
        let queue = machines.entry(machine).or_default();
        if queue.pending.len() >= PENDING_MAX {
            return Err(QueueError::Full);
        }
        queue.pending.push_back(command);
        queue.wake.notify_waiters();
        Ok(())
    }

    /// Every queued command of `machine` (now delivered), waiting up to `wait` for one.
    pub async fn take(&self, machine: Uuid, wait: Duration) -> Vec<Command> {
        let deadline = tokio::time::Instant::now() + wait.min(WAIT_MAX);
        loop {
            let notified = {
                let mut machines = self.machines();
                let queue = machines.entry(machine).or_default();
                if !queue.pending.is_empty() {
                    let taken: Vec<Command> = queue.pending.drain(..).collect();
                    queue.delivered.extend(taken.iter().cloned());
                    while queue.delivered.len() > DELIVERED_MAX {
                        queue.delivered.pop_front();
                    }
                    return taken;
                }
                // Made (so registered) before the lock is released: an enqueue after this
                // wakes it.
                queue.wake.clone().notified_owned()
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Records the outcome of delivered command `id` of `machine`.
    pub fn report(&self, machine: Uuid, id: Uuid, outcome: CommandOutcome, now_unix_ms: u64) -> Result<(), QueueError> {
        let mut machines = self.machines();
        let queue = machines.get_mut(&machine).ok_or(QueueError::Unknown(id))?;
        let at = queue
            .delivered
            .iter()
            .position(|c| c.id == id)
            .ok_or(QueueError::Unknown(id))?;
        let command = queue.delivered.remove(at).ok_or(QueueError::Unknown(id))?;
        queue.results.push_back(CommandReport {
            command,
            outcome,
            reported_unix_ms: now_unix_ms,
        });
        while queue.results.len() > RESULTS_MAX {
            queue.results.pop_front();
        }
        Ok(())
    }

    /// The outcome of `machine`'s command `id`, once reported (and while it is among the
    /// outcomes kept).
    pub fn outcome(&self, machine: Uuid, id: Uuid) -> Option<CommandOutcome> {
        let machines = self.machines();
        let queue = machines.get(&machine)?;
        queue
            .results
            .iter()
            .find(|r| r.command.id == id)
            .map(|r| r.outcome.clone())
    }

    /// What `machine` has queued, delivered and done.
    pub fn log(&self, machine: Uuid) -> CommandLog {
        let machines = self.machines();
        match machines.get(&machine) {
            Some(queue) => CommandLog {
                pending: queue.pending.iter().cloned().collect(),
                delivered: queue.delivered.iter().cloned().collect(),
                results: queue.results.iter().cloned().collect(),
            },
            None => CommandLog::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::commands::CommandName;

    fn command() -> Command {
        Command {
            id: Uuid::new_v4(),
            command: CommandName::PassNow,
            kind: None,
            group_id: None,
            disk_id: None,
            reason: None,
            barrier_id: None,
            bookmark_id: None,
            deadline_unix_ms: None,
            data_endpoint: None,
            issued_unix_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_poll_wakes_for_a_command_and_outcomes_are_kept_bounded() {
        let queues = Arc::new(CommandQueues::default());
        let machine = Uuid::new_v4();
        assert!(queues.take(machine, Duration::from_millis(10)).await.is_empty());
        let waiting = {
            let queues = queues.clone();
            tokio::spawn(async move { queues.take(machine, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        let first = command();
        queues.enqueue(machine, first.clone()).unwrap();
        let taken = waiting.await.unwrap();
        assert_eq!(taken, std::slice::from_ref(&first));
        assert_eq!(queues.log(machine).delivered, std::slice::from_ref(&first));
        let outcome = CommandOutcome {
            move_ms: None,
            ok: true,
            message: "done".into(),
            bookmarks: Vec::new(),
            hold_ms: None,
        };
        queues.report(machine, first.id, outcome.clone(), 2).unwrap();
        assert_eq!(
            queues.report(machine, first.id, outcome.clone(), 3),
            Err(QueueError::Unknown(first.id)),
            "reported twice"
        );
        let log = queues.log(machine);
        assert!(log.delivered.is_empty());
        assert_eq!(log.results.len(), 1);
        for _ in 0..PENDING_MAX {
            queues.enqueue(machine, command()).unwrap();
        }
        assert_eq!(queues.enqueue(machine, command()), Err(QueueError::Full));
        assert_eq!(queues.take(machine, Duration::ZERO).await.len(), PENDING_MAX);
        for c in queues.log(machine).delivered.clone() {
            queues.report(machine, c.id, outcome.clone(), 4).unwrap();
        }
        assert_eq!(queues.log(machine).results.len(), PENDING_MAX + 1);
        for _ in 0..RESULTS_MAX {
            let c = command();
            queues.enqueue(machine, c.clone()).unwrap();
            queues.take(machine, Duration::ZERO).await;
            queues.report(machine, c.id, outcome.clone(), 5).unwrap();
        }
        assert_eq!(queues.log(machine).results.len(), RESULTS_MAX);
    }
}
