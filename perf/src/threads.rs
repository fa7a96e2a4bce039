//! ferryd's CPU by thread role over a run, including threads that ended during it.
//!
//! `/proc/<pid>/task` lists live threads only, so comparing two snapshots (start and end)
//! loses every thread that ended in between: tokio's blocking-pool threads, which serve file
//! work and retention's unsealing and sealing, live seconds each. So the run observes the
//! threads at every poll; a thread keeps the CPU time it had when last seen, and only what an
//! ended thread used after its last poll goes uncounted (into `other`). A thread id the
//! kernel reused (a different role, or less CPU than before) counts as a new thread.
//!
//! Memory: one entry per thread seen in the run (ferryd's threads number in the hundreds).

use std::collections::BTreeMap;

/// One thread as read from /proc: its role (its name without a trailing `-<number>`, so
/// `ferry-seal-0` and `ferry-seal-1` are `ferry-seal`) and CPU seconds so far.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadSample {
    pub tid: u32,
    pub role: String,
    pub cpu_seconds: f64,
}

#[derive(Debug)]
struct Seen {
    role: String,
    /// CPU seconds when first seen (threads alive at the start count from there).
    base: f64,
    latest: f64,
}

/// CPU by role since the first observation.
#[derive(Debug, Default)]
pub struct ThreadLog {
    threads: BTreeMap<u32, Seen>,
    /// CPU of threads whose id was reused since, by role.
    retired: BTreeMap<String, f64>,
    started: bool,
}

impl ThreadLog {
    /// Takes a snapshot of the process's threads. The first call sets the baseline: threads
    /// then alive count only what they use afterwards; threads born later count whole.
    pub fn observe(&mut self, samples: impl IntoIterator<Item = ThreadSample>) {
        let first = !self.started;
        self.started = true;
        for sample in samples {
            match self.threads.get_mut(&sample.tid) {
                Some(seen) if seen.role == sample.role && sample.cpu_seconds >= seen.latest => {
                    seen.latest = sample.cpu_seconds;
                }
                Some(seen) => {
                    // The id now names another thread: keep what the old one used.
                    *self.retired.entry(seen.role.clone()).or_insert(0.0) += seen.latest - seen.base;
                    *seen = Seen {
                        role: sample.role,
                        base: 0.0,
                        latest: sample.cpu_seconds,
                    };
                }
                None => {
                    let base = if first { sample.cpu_seconds } else { 0.0 };
                    self.threads.insert(
                        sample.tid,
                        Seen {
                            role: sample.role,
                            base,
                            latest: sample.cpu_seconds,
                        },
                    );
                }
            }
        }
    }

    /// CPU seconds by role since the first observation.
    pub fn by_role(&self) -> BTreeMap<String, f64> {
        let mut roles = self.retired.clone();
        for seen in self.threads.values() {
            *roles.entry(seen.role.clone()).or_insert(0.0) += seen.latest - seen.base;
        }
        roles
    }
}

/// The role of a thread named `name`: without a trailing `-<number>`.
pub fn role_of(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tid: u32, role: &str, cpu_seconds: f64) -> ThreadSample {
        ThreadSample {
            tid,
            role: role.into(),
            cpu_seconds,
        }
    }

    #[test]
    fn an_ended_thread_keeps_what_it_used_until_last_seen() {
        let mut log = ThreadLog::default();
        log.observe([sample(1, "ferry-seal", 10.0), sample(2, "ferryd", 1.0)]);
        // A blocking-pool thread is born, works, and is seen once before it ends.
        log.observe([
            sample(1, "ferry-seal", 12.0),
            sample(2, "ferryd", 1.5),
            sample(3, "ferry-retention", 0.7),
        ]);
        log.observe([sample(1, "ferry-seal", 13.0), sample(2, "ferryd", 2.0)]);
        let roles = log.by_role();
        assert_eq!(roles["ferry-seal"], 3.0, "counted from the baseline");
        assert_eq!(roles["ferryd"], 1.0);
        assert_eq!(roles["ferry-retention"], 0.7, "kept after the thread ended");
    }

    #[test]
    fn a_reused_thread_id_counts_as_a_new_thread() {
        let mut log = ThreadLog::default();
        log.observe([]);
        log.observe([sample(7, "ferryd", 2.0)]);
        // Id 7 ended and the kernel gave it to a new thread, of another role or with less CPU.
        log.observe([sample(7, "ferry-retention", 0.5)]);
        log.observe([sample(7, "ferry-retention", 0.25)]);
        let roles = log.by_role();
        assert_eq!(roles["ferryd"], 2.0);
        assert_eq!(roles["ferry-retention"], 0.75);
    }

    #[test]
    fn roles_drop_a_trailing_number_only() {
        assert_eq!(role_of("ferry-seal-0"), "ferry-seal");
        assert_eq!(role_of("ferry-read-12"), "ferry-read");
        assert_eq!(role_of("ferry-localput"), "ferry-localput");
        assert_eq!(role_of("iou-wrk-23079"), "iou-wrk");
        assert_eq!(role_of("ferry-"), "ferry-");
    }
}
