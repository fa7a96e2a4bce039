//! Quiescing around an app-consistent pass, as ASR's mobility service does with its custom
//! scripts: run the pre script (`SCRIPT --pre`), freeze the configured mount points (FIFREEZE,
//! needs root), let the pass read, thaw (FITHAW), run the post script (`SCRIPT --post`).
//!
//! The bookmark is `app` only if the pre script exited 0, every freeze held, and the reads
//! finished within `quiesce.timeout_secs`; otherwise `crash`, with the reason in the log.
//! A freeze is never left behind by this process: [`Quiesce`] thaws on every path, including
//! drop. (A SIGKILL cannot be caught: the systemd unit's `ExecStopPost` thaws then.)

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::QuiesceConfig;

// linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
pub(crate) const FIFREEZE: libc::c_ulong = 0xC004_5877;
pub(crate) const FITHAW: libc::c_ulong = 0xC004_5878;

pub struct Quiesce {
    frozen: Vec<(PathBuf, File)>,
    post_script: Option<PathBuf>,
    pre_ran: bool,
    ok: bool,
    notes: Vec<String>,
    started: Instant,
    timeout: Duration,
}

/// How a quiesce went, for the bookmark and the log.
#[derive(Clone, Debug)]
pub struct QuiesceOutcome {
    pub consistent: bool,
    pub notes: Vec<String>,
}

impl Quiesce {
    /// Whether one of the file systems this quiesce froze holds `path` (a reflink clone there
    /// would wait for the thaw).
    pub fn froze_file_system_of(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(target) = std::fs::metadata(path) else {
            return false;
        };
        self.frozen
            .iter()
            .any(|(_, root)| root.metadata().is_ok_and(|m| m.dev() == target.dev()))
    }

    /// Runs the pre script and freezes; failures are recorded, not returned.
    pub async fn begin(config: &QuiesceConfig) -> Quiesce {
        let mut quiesce = Quiesce {
            frozen: Vec::new(),
            post_script: config.post_script.clone(),
            pre_ran: false,
            ok: true,
            notes: Vec::new(),
            started: Instant::now(),
            timeout: config.timeout(),
        };
        if let Some(pre) = &config.pre_script {
            quiesce.pre_ran = true;
            if let Err(why) = run_script(pre, "--pre", quiesce.timeout).await {
                quiesce.fail(format!("pre script: {why}"));
                return quiesce;
            }
        }
        for mount in &config.freeze {
            match freeze(mount) {
                Ok(file) => quiesce.frozen.push((mount.clone(), file)),
                Err(e) => {
                    quiesce.fail(format!("freezing {}: {e}", mount.display()));
                    quiesce.thaw_all();
                    break;
                }
            }
        }
        quiesce
    }

    fn fail(&mut self, note: String) {
        tracing::warn!(%note, "quiesce failed; this pass's bookmark will be crash-consistent");
        self.ok = false;
        self.notes.push(note);
    }

    fn thaw_all(&mut self) {
        for (mount, file) in self.frozen.drain(..) {
            if let Err(e) = freeze_ioctl(&file, FITHAW) {
                tracing::error!(mount = %mount.display(), error = %e, "thaw failed: run `fsfreeze --unfreeze` on it");
                self.notes.push(format!("thawing {}: {e}", mount.display()));
                self.ok = false;
            }
        }
    }

    /// Thaws, runs the post script, and says whether the reads in between were consistent.
    pub async fn end(mut self, reads_finished_in_time: bool) -> QuiesceOutcome {
        self.thaw_all();
        if !reads_finished_in_time {
            let note = format!(
                "the reads outlasted quiesce.timeout_secs ({} s)",
                self.timeout.as_secs()
            );
            self.fail(note);
        }
        if self.pre_ran {
            if let Some(post) = self.post_script.clone() {
                if let Err(why) = run_script(&post, "--post", self.timeout).await {
                    // The applications were quiesced while the pass read: the point stands.
                    tracing::warn!(%why, "post script failed");
                    self.notes.push(format!("post script: {why}"));
                }
            }
            self.pre_ran = false;
        }
        QuiesceOutcome {
            consistent: self.ok,
            notes: std::mem::take(&mut self.notes),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.saturating_sub(self.started.elapsed())
    }
}

impl Drop for Quiesce {
    fn drop(&mut self) {
        self.thaw_all();
        if self.pre_ran {
            if let Some(post) = &self.post_script {
                // Cancelled mid-pass: still undo what the pre script did.
                let _ = std::process::Command::new(post).arg("--post").status();
            }
        }
    }
}

/// Thaws `mounts` whatever froze them (`ferry-agent thaw`, the unit's `ExecStopPost`): a
/// mount that is not frozen is left as it is.
pub fn thaw_mounts(mounts: &[PathBuf]) -> Vec<(PathBuf, Result<&'static str, std::io::Error>)> {
    mounts
        .iter()
        .map(|mount| {
            let result = File::open(mount).and_then(|file| {
                match freeze_ioctl(&file, FITHAW) {
                    Ok(()) => Ok("thawed"),
                    // EINVAL: the file system was not frozen.
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok("not frozen"),
                    Err(error) => Err(error),
                }
            });
            (mount.clone(), result)
        })
        .collect()
}

fn freeze(mount: &Path) -> std::io::Result<File> {
    let file = File::open(mount)?;
    freeze_ioctl(&file, FIFREEZE)?;
    Ok(file)
}

/// FIFREEZE or FITHAW on a mount point's directory (neither has a safe wrapper in std or
/// rustix: rustix's `ioctl` is unsafe too, as any raw ioctl must be).
pub(crate) fn freeze_ioctl(file: &File, request: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: `request` is FIFREEZE or FITHAW (callers pass only these constants), on a
    // descriptor we opened; both ignore their argument, so passing 0 reads or writes nothing.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

async fn run_script(script: &Path, phase: &str, timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new(script)
        .arg(phase)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{} {phase} exited with {status}", script.display())),
        Ok(Err(e)) => Err(format!("waiting for {}: {e}", script.display())),
        Err(_) => Err(format!(
            "{} {phase} ran past {} s and was killed",
            script.display(),
            timeout.as_secs()
        )),
    }
}
