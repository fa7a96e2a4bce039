//! The ferryd a run measures: started by ferry-perf on a temporary appliance (made by the real
//! `ferryctl init`, beside this binary) with the scenario's target, or one already running
//! (then CPU and memory are reported only if its pid is given). For the `azurite` target
//! ferry-perf starts the Azurite that `scripts/azurite.sh` installed from the pinned lock file.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{free_port, wait_listening};

pub struct Ferryd {
    pub data: String,
    pub management: String,
    pub passphrase: String,
    pub pid: Option<u32>,
    /// ferryd's /metrics address, when ferry-perf started it.
    pub metrics: Option<String>,
    /// The appliance directory when ferry-perf made it (its local target is measured).
    pub appliance: Option<PathBuf>,
    child: Option<Child>,
    azurite: Option<Child>,
    _scratch: Option<tempfile::TempDir>,
}

impl Drop for Ferryd {
    fn drop(&mut self) {
        for child in [self.child.take(), self.azurite.take()].into_iter().flatten() {
            let mut child = child;
            let _ =
                rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating ferry-perf")?;
    let path = exe.parent().context("ferry-perf has no directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it (`cargo build --release --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace root, when ferry-perf runs from `target/<profile>/`.
fn workspace_root() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let root = exe.parent()?.parent()?.parent()?.to_path_buf();
    root.join("scripts/azurite").exists().then_some(root)
}

/// Starts Azurite on a free port with a fresh data directory under `scratch`.
fn start_azurite(scratch: &Path) -> anyhow::Result<(Child, String)> {
    let bin = workspace_root()
        .map(|root| root.join("scripts/azurite/node_modules/.bin/azurite-blob"))
        .filter(|p| p.exists())
        .context("Azurite is not installed: run `. scripts/azurite.sh && azurite_install .` in the workspace")?;
    let port = free_port()?;
    let data = scratch.join("azurite");
    std::fs::create_dir_all(&data)?;
    let mut child = Command::new(bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
        .arg(&data)
        .args(["--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Azurite")?;
    wait_listening(&format!("127.0.0.1:{port}"), Some(&mut child), "Azurite")?;
    Ok((child, format!("http://127.0.0.1:{port}/devstoreaccount1")))
}

/// Makes an appliance for `target` and starts ferryd on it.
pub fn launch(target: &str, keep: bool) -> anyhow::Result<Ferryd> {
    let scratch = tempfile::Builder::new()
        .prefix("ferry-perf-")
        .tempdir_in(std::env::temp_dir())?;
    let appliance = scratch.path().join("appliance");
    let data = format!("127.0.0.1:{}", free_port()?);
    let management = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut init = Command::new(sibling("ferryctl")?);
    init.args(["--json", "init"]).arg(&appliance).args([
        "--data-listen",
        &data,
        "--metrics-listen",
        &metrics,
        "--management-listen",
        &management,
        "--server-name",
        "127.0.0.1",
    ]);
    let mut azurite = None;
    if target == "azurite" {
        let (child, endpoint) = start_azurite(scratch.path())?;
        azurite = Some(child);
        let key = scratch.path().join("azurite.key");
        std::fs::write(
            &key,
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        )?;
        init.args([
            "--azure-account",
            "devstoreaccount1",
            "--azure-container",
            "perf",
            "--azure-endpoint",
            &endpoint,
        ])
        .arg("--azure-key-file")
        .arg(&key)
        .arg("--create-container");
    }
    let output = init.output().context("running ferryctl init")?;
    if !output.status.success() {
        bail!("ferryctl init failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    if target == "discard" {
        let config = appliance.join("ferry.toml");
        let text = std::fs::read_to_string(&config)?;
        let changed = text.replacen("kind = \"local\"", "kind = \"discard\"", 1);
        if changed == text {
            bail!("could not switch {} to the discard target", config.display());
        }
        std::fs::write(&config, changed)?;
    }
    let passphrase = std::fs::read_to_string(appliance.join("passphrase"))?
        .trim()
        .to_string();
    let log = std::fs::File::create(scratch.path().join("ferryd.log"))?;
    let mut child = Command::new(sibling("ferryd")?)
        .arg("--config")
        .arg(&appliance)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting ferryd")?;
    wait_listening(&data, Some(&mut child), "ferryd")?;
    wait_listening(&management, Some(&mut child), "ferryd")?;
    let pid = Some(child.id());
    Ok(Ferryd {
        data,
        management,
        passphrase,
        pid,
        metrics: Some(metrics),
        appliance: Some(appliance),
        child: Some(child),
        azurite,
        _scratch: if keep {
            let _ = scratch.keep();
            None
        } else {
            Some(scratch)
        },
    })
}

/// A ferryd that is already running.
pub fn existing(management: &str, data: &str, passphrase_file: &Path, pid: Option<u32>) -> anyhow::Result<Ferryd> {
    let passphrase = std::fs::read_to_string(passphrase_file)
        .with_context(|| format!("reading {}", passphrase_file.display()))?
        .trim()
        .to_string();
    Ok(Ferryd {
        data: data.to_string(),
        management: management.to_string(),
        passphrase,
        pid,
        metrics: None,
        appliance: None,
        child: None,
        azurite: None,
        _scratch: None,
    })
}

/// CPU seconds (user + system) and peak RSS (MiB) of a process, from /proc.
/// CPU seconds (user + system) of each of ferryd's live threads, with its role
/// ([`crate::threads::role_of`]), and the process's minor page faults.
pub fn thread_usage(pid: u32) -> Option<(Vec<crate::threads::ThreadSample>, u64)> {
    let hz = (rustix::param::clock_ticks_per_second() as f64).max(1.0);
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // ended meanwhile
        };
        let Some((head, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        threads.push(crate::threads::ThreadSample {
            tid,
            role: crate::threads::role_of(name).to_string(),
            cpu_seconds: ticks / hz,
        });
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let minor_faults = fields.get(7)?.parse().ok()?;
    Some((threads, minor_faults))
}

pub fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())?;
    Some((ticks / hz.max(1.0), hwm_kib / 1024.0))
}
