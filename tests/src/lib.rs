//! Helpers for the end-to-end tests: finding the workspace's binaries, running them, and
//! reaching the Azurite that `scripts/test.sh` starts.
//!
//! The binaries are the ones `cargo build --workspace --bins` put beside this test binary's
//! directory (`target/<profile>/`); `scripts/test.sh` builds them before running tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Azurite's published development account and key (not secrets).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The path of workspace binary `name`, built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/integration-<hash> -> target/<profile>/<name>
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A finished command's exit status and text.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `ferryctl` with `args`.
pub fn ferryctl(args: &[&str]) -> Run {
    Command::new(binary("ferryctl"))
        .args(args)
        .output()
        .expect("ferryctl runs")
        .into()
}

/// Runs one of the workspace's binaries with a standard output whose reader has already gone,
/// as `| head -1` or `| grep -q` leave it once they have what they wanted.
pub fn run_with_stdout_closed(program: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Command::new(binary(program))
        .args(args)
        .stdout(writer)
        .output()
        .expect("the program runs")
}

/// Azurite's account URL, or `None` (the test then skips) unless `FERRY_REQUIRE_AZURITE=1`.
pub fn azurite_endpoint() -> Option<String> {
    match std::env::var("FERRY_TEST_AZURITE_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ if std::env::var("FERRY_REQUIRE_AZURITE").as_deref() == Ok("1") => {
            panic!("FERRY_REQUIRE_AZURITE=1 but FERRY_TEST_AZURITE_ENDPOINT is not set: start Azurite (scripts/test.sh does)")
        }
        _ => {
            eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh starts Azurite)");
            None
        }
    }
}

/// A container name no other test uses.
pub fn unique_container(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A free loopback port (bound and released; good enough for tests on one machine).
/// A loopback port free now (`ferry_harness::procs::free_port`: below the ephemeral range).
pub fn free_port() -> u16 {
    ferry_harness::procs::free_port().expect("a free loopback port")
}

/// An appliance directory made by the real `ferryctl init`, on free loopback ports.
pub struct Appliance {
    pub dir: PathBuf,
    pub data: String,
    pub management: String,
    /// Prometheus /metrics (plain HTTP, loopback).
    pub metrics: String,
    _tmp: tempfile::TempDir,
}

impl Appliance {
    /// `edit` may change `ferry.toml` (for example a small cache limit) before first start.
    pub fn init(edit: impl FnOnce(String) -> String) -> Appliance {
        Self::init_with(&[], edit)
    }

    /// As [`Appliance::init`], with more `ferryctl init` arguments (an Azure target, say).
    pub fn init_with(extra: &[&str], edit: impl FnOnce(String) -> String) -> Appliance {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("appliance");
        let data = format!("127.0.0.1:{}", free_port());
        let management = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "init",
            dir.to_str().expect("utf-8 path"),
            "--data-listen",
            &data,
            "--management-listen",
            &management,
            "--metrics-listen",
            &metrics,
            "--server-name",
            "127.0.0.1",
            "--server-name",
            "localhost",
        ];
        args.extend_from_slice(extra);
        let run = ferryctl(&args);
        assert!(run.success, "ferryctl init failed: {}", run.stderr);
        let config = dir.join("ferry.toml");
        let text = std::fs::read_to_string(&config).expect("ferry.toml");
        std::fs::write(&config, edit(text)).expect("ferry.toml written");
        Appliance {
            dir,
            data,
            management,
            metrics,
            _tmp: tmp,
        }
    }

    /// An appliance on a fresh container of the test Azurite at `endpoint` (the account key is
    /// read from a file by `ferryctl init`, which keeps it in ferry.toml).
    pub fn init_azurite(endpoint: &str, tag: &str, edit: impl FnOnce(String) -> String) -> Appliance {
        let keys = tempfile::tempdir().expect("temporary directory");
        let key_file = keys.path().join("account.key");
        std::fs::write(&key_file, AZURITE_KEY).expect("account key file");
        let container = unique_container(tag);
        Self::init_with(
            &[
                "--azure-account",
                AZURITE_ACCOUNT,
                "--azure-container",
                &container,
                "--azure-endpoint",
                endpoint,
                "--azure-key-file",
                key_file.to_str().expect("utf-8 path"),
                "--create-container",
            ],
            edit,
        )
    }

    /// A scale-out process server of this appliance's site (which must be running), made by the
    /// real `ferryctl ps token` and `ferryctl init --join`, named `name`, on free loopback ports.
    pub fn join(&self, name: &str) -> Result<Appliance, Run> {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("appliance");
        let token = tmp.path().join("token");
        let config = self.dir.to_str().expect("utf-8 path");
        let made = ferryctl(&[
            "ps",
            "token",
            "--config",
            config,
            "--out",
            token.to_str().expect("utf-8 path"),
        ]);
        assert!(made.success, "ferryctl ps token failed: {}", made.stderr);
        let (data, management, metrics) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let joined = ferryctl(&[
            "init",
            dir.to_str().expect("utf-8 path"),
            "--join",
            &self.management,
            "--join-token-file",
            token.to_str().expect("utf-8 path"),
            "--fingerprint",
            &self.fingerprint(),
            "--name",
            name,
            "--data-listen",
            &data,
            "--management-listen",
            &management,
            "--metrics-listen",
            &metrics,
            "--server-name",
            "127.0.0.1",
            "--server-name",
            "localhost",
        ]);
        if !joined.success {
            return Err(joined);
        }
        Ok(Appliance {
            dir,
            data,
            management,
            metrics,
            _tmp: tmp,
        })
    }

    /// The SHA-256 fingerprint of this appliance's server certificate, as `ferryctl init`
    /// prints it.
    pub fn fingerprint(&self) -> String {
        let pem = std::fs::read_to_string(self.dir.join("pki/server.pem")).expect("server.pem");
        let der = ferry_client::tls::certificate_der(&pem).expect("a certificate");
        ferry_config::pki::fingerprint_sha256(&der)
    }

    pub fn passphrase(&self) -> String {
        std::fs::read_to_string(self.dir.join("passphrase"))
            .expect("passphrase")
            .trim()
            .to_string()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("pki/ca.pem")).expect("ca.pem")
    }

    /// A data-endpoint client with no client certificate.
    pub fn anonymous_client(&self) -> ferry_client::DataClient {
        let tls = ferry_client::tls::ca_verified(&self.ca_pem(), None).expect("TLS config");
        ferry_client::DataClient::new(&self.data, tls)
    }

    /// Registers a machine with the right passphrase.
    pub async fn register(&self, name: &str) -> ferry_client::Identity {
        ferry_client::register(&self.management, None, name, &self.passphrase())
            .await
            .expect("registration")
            .identity
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ferryd.log")).unwrap_or_default()
    }

    /// Everything an operator sees of this appliance: `ferryctl status` (JSON and text),
    /// `/metrics`, and ferryd's log.
    pub async fn everything_shown(&self) -> Vec<String> {
        let dir = self.dir.to_str().expect("utf-8 path");
        let json = ferryctl(&["--json", "status", "--config", dir]);
        let text = ferryctl(&["status", "--config", dir]);
        let metrics = scrape_metrics(&self.metrics).await;
        vec![json.stdout, json.stderr, text.stdout, text.stderr, metrics, self.log()]
    }

    /// Asserts that no secret of the appliance (passphrase, vault key, CA and server private
    /// keys) nor any of `extra` appears in `shown`.
    pub fn assert_no_secrets(&self, shown: &[String], extra: &[&str]) {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).expect("appliance file");
        let mut secrets: Vec<(String, String)> = vec![
            ("passphrase".into(), read("passphrase").trim().to_string()),
            (
                "vault key".into(),
                read("vault.key")
                    .trim()
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
        ];
        for key in ["pki/ca.key", "pki/server.key"] {
            // A line from the middle of the PEM body: unmistakably the key.
            let pem = read(key);
            let line = pem.lines().nth(1).expect("PEM body").to_string();
            secrets.push((key.to_string(), line));
        }
        secrets.extend(extra.iter().map(|s| ("extra".to_string(), s.to_string())));
        for (what, secret) in &secrets {
            assert!(secret.len() >= 16, "{what} is too short to look for");
            for text in shown {
                assert!(!text.contains(secret.as_str()), "the {what} appears in: {text}");
            }
        }
    }
}

/// `GET /metrics` over plain HTTP.
pub async fn scrape_metrics(address: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return String::new();
    };
    let request = b"GET /metrics HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer
}

/// A running ferryd.
pub struct Ferryd {
    child: std::process::Child,
}

impl Ferryd {
    /// Starts ferryd on `appliance` and waits until its data endpoint answers health.
    pub async fn start(appliance: &Appliance) -> Ferryd {
        Self::start_with_env(appliance, &[]).await
    }

    /// As [`Ferryd::start`], with extra environment (for example `FERRY_TEST_FAULTS`).
    pub async fn start_with_env(appliance: &Appliance, env: &[(&str, &str)]) -> Ferryd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(appliance.dir.join("ferryd.log"))
            .expect("log file");
        let child = Command::new(binary("ferryd"))
            .arg("--config")
            .arg(&appliance.dir)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ferryd starts");
        let mut ferryd = Ferryd { child };
        let client = appliance.anonymous_client();
        for _ in 0..300 {
            if let Ok(Some(status)) = ferryd.child.try_wait() {
                panic!("ferryd exited during start ({status}):\n{}", appliance.log());
            }
            if client.health().await.is_ok() {
                return ferryd;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        ferryd.kill();
        panic!("ferryd did not answer health within 15 s:\n{}", appliance.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process freezes (its leases run out) until [`Ferryd::resume`]. Returns once
    /// every thread is stopped: the kernel hands SIGSTOP to one thread, which stops the others
    /// only when it next runs, so a thread held in an uninterruptible wait (an fsync on a busy
    /// disk) leaves the rest answering requests for as long as that wait lasts.
    pub fn pause(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let states = thread_states(self.child.id());
            if !states.is_empty() && states.iter().all(|state| state == "T") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ferryd {} did not stop within 60 s of SIGSTOP; its threads' states: {states:?}",
                self.child.id()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// SIGCONT after [`Ferryd::pause`].
    pub fn resume(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (waits at most 60 s). Async, so the test's own client
    /// connections keep running and can take part in the graceful close (HTTP/2 GOAWAY).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.kill();
        panic!("ferryd did not stop within 60 s of SIGTERM");
    }
}

impl Drop for Ferryd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// An Azurite of a test's own (so it can be stopped without disturbing other tests), from
/// the install `scripts/azurite.sh` made. Its data directory survives a stop and restart.
pub struct PrivateAzurite {
    child: Option<std::process::Child>,
    pub port: u16,
    data: tempfile::TempDir,
}

impl PrivateAzurite {
    fn binary() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/azurite/node_modules/.bin/azurite-blob")
    }

    /// Starts one, or `None` (the test skips) when Azurite is not installed and not required.
    pub async fn start() -> Option<PrivateAzurite> {
        if !Self::binary().exists() {
            assert!(
                std::env::var("FERRY_REQUIRE_AZURITE").as_deref() != Ok("1"),
                "Azurite is not installed: run scripts/test.sh"
            );
            eprintln!("skipped: Azurite is not installed (scripts/test.sh installs it)");
            return None;
        }
        let mut azurite = PrivateAzurite {
            child: None,
            port: free_port(),
            data: tempfile::tempdir().expect("temporary directory"),
        };
        azurite.restart().await;
        Some(azurite)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    pub async fn restart(&mut self) {
        let child = Command::new(Self::binary())
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--loose",
                "--silent",
            ])
            .arg("--location")
            .arg(self.data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Azurite starts");
        self.child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("Azurite did not listen within 30 s");
    }

    /// Stops it with SIGTERM (Azurite persists its metadata lazily; a SIGKILL can forget a
    /// container, which real Azure never does), then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ =
                rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateAzurite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A registered `ferry-agent` with its own state directory and config file.
pub struct Agent {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Registers with `appliance` through the real `ferry-agent register`.
    pub fn register(appliance: &Appliance) -> Agent {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let state_dir = tmp.path().join("state");
        let passphrase = tmp.path().join("passphrase");
        std::fs::write(&passphrase, appliance.passphrase()).expect("passphrase file");
        let run = Self::command(&[
            "register",
            "--server",
            &appliance.management,
            "--passphrase-file",
            passphrase.to_str().expect("utf-8 path"),
            "--state-dir",
            state_dir.to_str().expect("utf-8 path"),
            "--name",
            "test-machine",
        ]);
        assert!(run.success, "ferry-agent register failed: {}", run.stderr);
        Agent {
            config: tmp.path().join("agent.toml"),
            log: tmp.path().join("agent.log"),
            state_dir,
            _tmp: tmp,
        }
    }

    /// Runs `ferry-agent` with `args`.
    pub fn command(args: &[&str]) -> Run {
        Command::new(binary("ferry-agent"))
            .args(args)
            .output()
            .expect("ferry-agent runs")
            .into()
    }

    /// Writes the config: these disks, then `extra` TOML (sections such as `[scan]`).
    pub fn configure(&self, disks: &[&Path], extra: &str) {
        let mut text = format!("state_dir = {:?}\n", self.state_dir.to_str().expect("utf-8 path"));
        for disk in disks {
            text.push_str(&format!("[[disks]]\npath = {:?}\n", disk.to_str().expect("utf-8 path")));
        }
        text.push_str(extra);
        std::fs::write(&self.config, text).expect("agent.toml");
    }

    /// `run --once --json` (plus `extra` arguments): one pass per disk.
    pub fn run_once(&self, extra: &[&str]) -> Run {
        let mut args = vec![
            "--json",
            "run",
            "--config",
            self.config.to_str().expect("utf-8 path"),
            "--once",
        ];
        args.extend_from_slice(extra);
        let run = Self::command(&args);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let _ = std::io::Write::write_all(&mut log, run.stderr.as_bytes());
        run
    }

    /// Starts `ferry-agent run` (stderr to [`Agent::log`]); `once` adds `--once`.
    pub fn spawn(&self, once: bool) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut command = Command::new(binary("ferry-agent"));
        command.args(["run", "--config", self.config.to_str().expect("utf-8 path")]);
        if once {
            command.arg("--once");
        }
        command
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ferry-agent starts")
    }

    /// `status --json`, or `None` before the agent first wrote it.
    pub fn status(&self) -> Option<serde_json::Value> {
        let run = Self::command(&[
            "--json",
            "status",
            "--state-dir",
            self.state_dir.to_str().expect("utf-8 path"),
        ]);
        run.success.then(|| run.json())
    }

    /// The machine's identity as the agent stored it (to talk to ferryd as this machine).
    pub fn identity(&self) -> ferry_client::Identity {
        let dir = self.state_dir.join("identity");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("identity file");
        let machine: serde_json::Value = serde_json::from_str(&read("machine.json")).expect("machine.json");
        ferry_client::Identity {
            machine_id: machine["machine_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("machine_id"),
            cert_pem: read("cert.pem"),
            key_pem: read("key.pem"),
            ca_pem: read("ca.pem"),
            data_endpoint: machine["data_endpoint"].as_str().expect("data_endpoint").to_string(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `status --json` until `found` gives a value, while the agent process `child` keeps
    /// running (at most `seconds`; `what` names the wait in failures, with the agent's log).
    pub fn poll_status<T>(
        &self,
        child: &mut std::process::Child,
        what: &str,
        seconds: u64,
        found: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            if let Some(value) = self.status().as_ref().and_then(&found) {
                return value;
            }
            assert!(
                child.try_wait().expect("the agent's status").is_none(),
                "the agent exited before {what}:\n{}",
                self.log_text()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} in {seconds} s:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Runs `cmd` with `sh -c`: whether it succeeded, and its trimmed stdout.
pub fn sh(cmd: &str) -> (bool, String) {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            )
        })
        .unwrap_or((false, String::new()))
}

/// A loop-mounted file system of a test's own (`ext4`, `ext4-nojournal`, or `xfs` with
/// reflink), unmounted (and thawed) however the test ends.
pub struct LoopMount {
    pub mount: PathBuf,
    /// The loop device that holds it.
    pub device: PathBuf,
}

impl LoopMount {
    /// `None` (the test then skips, saying why) without root, loop devices or the file
    /// system's mkfs, unless FERRY_REQUIRE_LOOP=1 (ext4) or FERRY_REQUIRE_XFS=1 (xfs): then
    /// not being able to make one fails the test.
    pub fn new(dir: &Path, fs_type: &str) -> Option<LoopMount> {
        Self::with_size(dir, fs_type, if fs_type == "xfs" { 512 } else { 64 })
    }

    /// As [`LoopMount::new`], `mib` MiB large (a sparse image).
    pub fn with_size(dir: &Path, fs_type: &str, mib: u32) -> Option<LoopMount> {
        let image = dir.join(format!("{fs_type}.img"));
        let mount = dir.join(format!("{fs_type}-mnt"));
        std::fs::create_dir_all(&mount).expect("mount point");
        let (make, required_by) = match fs_type {
            "ext4" => (
                "truncate -s {size}M {img} && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 {img} && mount -o loop,noinit_itable {img} {mnt}",
                "FERRY_REQUIRE_LOOP",
            ),
            // ext4 as this project's VMs have it at their root: no journal.
            "ext4-nojournal" => (
                "truncate -s {size}M {img} && mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=0 {img} && mount -o loop,noinit_itable {img} {mnt}",
                "FERRY_REQUIRE_LOOP",
            ),
            "xfs" => (
                "truncate -s {size}M {img} && mkfs.xfs -q -f -m reflink=1 {img} && mount -o loop {img} {mnt}",
                "FERRY_REQUIRE_XFS",
            ),
            other => panic!("no recipe for a loop-mounted {other}"),
        };
        let made = sh(&make
            .replace("{img}", &image.display().to_string())
            .replace("{mnt}", &mount.display().to_string())
            .replace("{size}", &mib.to_string()));
        if !made.0 {
            assert!(
                std::env::var(required_by).is_err(),
                "{required_by} is set but a loop-mounted {fs_type} could not be made"
            );
            eprintln!("skipped: needs root, loop devices and mkfs.{fs_type} (set {required_by}=1 to require)");
            return None;
        }
        let (_, source) = sh(&format!("findmnt -n -o SOURCE {}", mount.display()));
        Some(LoopMount {
            mount,
            device: PathBuf::from(source),
        })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("--unfreeze").arg(&self.mount).output();
        let _ = Command::new("umount").arg(&self.mount).output();
    }
}

/// The state letter of each thread of process `pid` (`/proc/<pid>/task/<tid>/stat`, the field
/// after the parenthesised command name: `T` stopped, `Z` exited); none once it is gone.
fn thread_states(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(str::to_string)
        })
        .collect()
}
