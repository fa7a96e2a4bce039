//! Group commit for the local-directory target: puts that run at the same time share one
//! `syncfs(2)` of the target's file system instead of an fsync of each file and of each
//! directory. With hundreds of small disks those fsyncs were a tenth of ferryd's CPU
//! (asr-sizing, issue 11 part 6).
//!
//! Durability is unchanged: a put writes its temporary file, waits for a round that started
//! after the write (its data is then durable), renames it, and waits for another such round
//! (the rename is then durable) before it returns. A round is one `syncfs`, which on ext4 and
//! XFS writes back every dirty page and inode of the file system and commits the journal with
//! a cache flush, as fsync does for one file. Rounds run one at a time; whoever needs one
//! when none is running runs it on its own thread, and everyone who registered before it
//! started is covered by it. Memory: the errors of the last [`ERRORS_KEPT`] rounds.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex};

/// Failed rounds remembered, for the waiters that have not looked yet.
pub const ERRORS_KEPT: usize = 64;

#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<State>,
    round_done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The last round that started (rounds are numbered from 1; 0: none yet).
    started: u64,
    /// The last round that finished (rounds finish in order).
    completed: u64,
    /// (round, error) of recent failed rounds.
    errors: VecDeque<(u64, io::ErrorKind, String)>,
}

impl GroupSync {
    /// Returns once a `syncfs` of the file system holding `file`, started after this call,
    /// has finished: everything written to that file system before the call is durable.
    pub fn sync(&self, file: &File) -> io::Result<()> {
        let mut state = self.lock();
        // A round already running may have started before our writes: wait for the next.
        let mine = state.started + 1;
        loop {
            if state.completed >= mine {
                return match state.errors.iter().find(|(round, _, _)| *round == mine) {
                    Some((_, kind, message)) => Err(io::Error::new(*kind, message.clone())),
                    None => Ok(()),
                };
            }
            let running = state.started > state.completed;
            if !running {
                state.started += 1;
                let round = state.started;
                drop(state);
                let result = rustix::fs::syncfs(file);
                state = self.lock();
                state.completed = round;
                if let Err(e) = result {
                    let error = io::Error::from(e);
                    state
                        .errors
                        .push_back((round, error.kind(), format!("syncfs: {error}")));
                    while state.errors.len() > ERRORS_KEPT {
                        state.errors.pop_front();
                    }
                }
                self.round_done.notify_all();
                continue;
            }
            state = self.round_done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Rounds run since start.
    #[cfg(test)]
    pub(crate) fn rounds(&self) -> u64 {
        self.lock().completed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_syncs_share_rounds_and_each_waits_for_one_that_started_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(GroupSync::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (group, path) = (group.clone(), dir.path().join(format!("f{i}")));
                std::thread::spawn(move || {
                    let file = File::create(&path).unwrap();
                    for _ in 0..20 {
                        group.sync(&file).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let rounds = group.rounds();
        assert!(rounds >= 20, "each thread waited for 20 rounds of its own: {rounds}");
        assert!(rounds <= 16 * 20, "never more rounds than calls: {rounds}");
        // One caller alone: every call runs a round of its own.
        let before = group.rounds();
        let file = File::create(dir.path().join("alone")).unwrap();
        group.sync(&file).unwrap();
        group.sync(&file).unwrap();
        assert_eq!(group.rounds(), before + 2);
    }
}
