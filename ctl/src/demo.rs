//! `ferryctl demo`: Ferry's main job end to end on this machine, in a scratch directory, with
//! the local-directory target: initialise an appliance, start ferryd, make a sample disk
//! image, register an agent and replicate the image (initial copy, then three rounds of
//! changes with a bookmark each), wait for the last point to reach storage, restore the first
//! and the latest points with `ferryctl restore` and compare their SHA-256 with the source's,
//! then print a summary and clean up (processes stopped and the directory removed on every
//! exit path, unless `--keep`).
//!
//! It runs the real binaries: `ferryd` and `ferry-agent` from beside this executable (the
//! README's command builds all three in one cargo call). Under `cargo run` it first builds
//! the other two with the same profile, so that form works too, only slower.

use anyhow::{bail, Context};
use clap::Args;
use ferry_harness::datagen::{DataGenerator, Mix, Rng};
use ferry_harness::procs::{dir_bytes, free_port, wait_listening};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the sample disk image, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=16384))]
    size_mib: u64,
    /// Keep the scratch directory (appliance, agent state, image, ferryd log) afterwards.
    #[arg(long)]
    keep: bool,
}

/// Stops ferryd and removes the scratch directory however the demo ends.
struct Scratch {
    dir: PathBuf,
    ferryd: Option<Child>,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut ferryd) = self.ferryd.take() {
            // SIGTERM lets ferryd drain and exit cleanly.
            let _ =
                rustix::process::kill_process(rustix::process::Pid::from_child(&ferryd), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(ferryd.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = ferryd.kill();
            let _ = ferryd.wait();
        }
        if self.keep {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

pub async fn run(args: DemoArgs, json: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let binaries = Binaries::find()?;
    let dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut scratch = Scratch {
        dir: dir.clone(),
        ferryd: None,
        keep: args.keep,
    };
    step(&format!("working in {}", dir.display()));

    // 1. The appliance, with the local-directory target inside it.
    let appliance = dir.join("appliance");
    let data = format!("127.0.0.1:{}", free_port()?);
    let management = format!("127.0.0.1:{}", free_port()?);
    let init = run_json(
        Command::new(&binaries.ferryctl)
            .args(["--json", "init"])
            .arg(&appliance)
            .args(["--data-listen", &data, "--management-listen", &management])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--server-name", "127.0.0.1"]),
    )?;
    step("appliance initialised (vault key, CA, passphrase, local target)");

    // 2. ferryd.
    let log = std::fs::File::create(dir.join("ferryd.log"))?;
    scratch.ferryd = Some(
        Command::new(&binaries.ferryd)
            .arg("--config")
            .arg(&appliance)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binaries.ferryd.display()))?,
    );
    wait_listening(&data, scratch.ferryd.as_mut(), "ferryd")?;
    wait_listening(&management, scratch.ferryd.as_mut(), "ferryd")?;
    step(&format!("ferryd listening: data {data}, management {management}"));

    // 3. A sample disk: mixed data (zstd-1 ratio about 2.4), with unused (zero) regions.
    let image = dir.join("disk.img");
    let size = args.size_mib << 20;
    make_image(&image, size)?;
    step(&format!("sample disk image: {} MiB", args.size_mib));

    // 4. The agent.
    let agent_state = dir.join("agent");
    let fingerprint = init["server_cert_sha256"].as_str().unwrap_or_default().to_string();
    run_json(
        Command::new(&binaries.agent)
            .args(["--json", "register", "--server", &management, "--passphrase-file"])
            .arg(appliance.join("passphrase"))
            .args(["--fingerprint", &fingerprint, "--name", "demo-machine", "--state-dir"])
            .arg(&agent_state),
    )?;
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "state_dir = {:?}\n[[disks]]\npath = {:?}\nname = \"demo-disk\"\n",
            agent_state.display().to_string(),
            image.display().to_string()
        ),
    )?;
    step("agent registered (mTLS certificate from the appliance CA)");

    let pass = |label: &str| -> anyhow::Result<(Value, String)> {
        let source = sha256_file(&image)?;
        let reports = run_json(
            Command::new(&binaries.agent)
                .args(["--json", "run", "--config"])
                .arg(&agent_config)
                .arg("--once"),
        )?;
        let report = reports.get(0).cloned().context("the agent reported no pass")?;
        step(&format!(
            "{label}: {} blocks sent, bookmark {} (seq {})",
            report["changed_blocks"],
            report["bookmark_id"].as_str().unwrap_or("?"),
            report["bookmark_seq"]
        ));
        Ok((report, source))
    };
    let (initial, initial_hash) = pass("initial copy")?;
    let sent_bytes = |report: &Value| report["sent_bytes"].as_u64().unwrap_or(0);
    let mut all_sent = sent_bytes(&initial);
    let mut last = (initial.clone(), initial_hash.clone());
    for round in 1..=3u64 {
        change_image(&image, size, round)?;
        last = pass(&format!("changes {round}/3"))?;
        all_sent += sent_bytes(&last.0);
    }
    let (latest, latest_hash) = last;
    let disk = initial["disk_id"].as_str().context("no disk id")?.to_string();

    // 5. Wait for the latest point in storage, then restore from storage and the key alone.
    let point = wait_for_point(
        &binaries,
        &appliance,
        &disk,
        latest["bookmark_id"].as_str().unwrap_or(""),
    )?;
    let mut checks = Vec::new();
    for (label, report, expected) in [("initial", &initial, &initial_hash), ("latest", &latest, &latest_hash)] {
        let out = dir.join(format!("restored-{label}.img"));
        let bookmark = report["bookmark_id"].as_str().unwrap_or("");
        run_json(
            Command::new(&binaries.ferryctl)
                .args(["--json", "restore", "--config"])
                .arg(&appliance)
                .args(["--disk", &disk, "--point", bookmark, "--out"])
                .arg(&out),
        )?;
        let restored = sha256_file(&out)?;
        std::fs::remove_file(&out)?;
        if &restored != expected {
            bail!("the {label} point ({bookmark}) restored to {restored}, but the source was {expected} then");
        }
        checks.push((label, bookmark.to_string()));
        step(&format!(
            "restored the {label} point: SHA-256 matches the source at that pass"
        ));
    }

    // 6. The summary.
    let initial_seconds = initial["seconds"].as_f64().unwrap_or(0.0);
    let stored = dir_bytes(&appliance.join("target")).context("measuring the local target")?;
    let rpo_ms = point["created_unix_ms"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(point["source_time_unix_ms"].as_u64().unwrap_or(0));
    let summary = serde_json::json!({
        "image_bytes": size,
        "initial_copy_seconds": initial_seconds,
        "initial_copy_mb_per_s": size as f64 / 1e6 / initial_seconds.max(1e-9),
        "bytes_sent": all_sent,
        "bytes_stored": stored,
        "compression_ratio": all_sent as f64 / stored.max(1) as f64,
        "rpo_seconds": rpo_ms as f64 / 1000.0,
        "restores_verified": checks.iter().map(|(l, b)| serde_json::json!({"point": l, "bookmark": b})).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    drop(scratch);
    if json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        outln!();
        outln!("Ferry demo: agent -> ferryd (HTTPS, mTLS) -> zstd + AES-256-GCM -> local target -> restore");
        outln!(
            "  initial copy   {} MiB in {:.2} s: {:.0} MB/s (read, hashed, sent, durable in ferryd's cache)",
            args.size_mib,
            initial_seconds,
            summary["initial_copy_mb_per_s"].as_f64().unwrap_or(0.0)
        );
        outln!(
            "  storage        {:.1} MB sent, {:.1} MB stored sealed: compression {:.2}x",
            all_sent as f64 / 1e6,
            stored as f64 / 1e6,
            summary["compression_ratio"].as_f64().unwrap_or(0.0)
        );
        outln!(
            "  RPO            the latest point was restorable from storage {:.1} s after its pass began",
            rpo_ms as f64 / 1000.0
        );
        outln!("  restore        initial and latest points match the source (SHA-256): OK");
        let cleanup = if args.keep {
            "scratch directory kept"
        } else {
            "scratch directory removed"
        };
        outln!("  total          {:.1} s; {cleanup}", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The three binaries the demo runs.
struct Binaries {
    ferryctl: PathBuf,
    ferryd: PathBuf,
    agent: PathBuf,
}

impl Binaries {
    fn find() -> anyhow::Result<Binaries> {
        let ferryctl = std::env::current_exe().context("locating ferryctl")?;
        let dir = ferryctl.parent().context("ferryctl has no directory")?.to_path_buf();
        if let (Ok(cargo), Ok(manifest_dir)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR")) {
            // Under `cargo run`: build the other two with the same profile first.
            let workspace = Path::new(&manifest_dir).parent().context("ctl/ has a parent")?;
            step("building ferryd and ferry-agent (cargo)");
            let mut build = Command::new(cargo);
            build
                .arg("build")
                .arg("--manifest-path")
                .arg(workspace.join("Cargo.toml"))
                .args(["--bin", "ferryd", "--bin", "ferry-agent"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build of ferryd and ferry-agent failed");
            }
        }
        let binaries = Binaries {
            ferryd: dir.join("ferryd"),
            agent: dir.join("ferry-agent"),
            ferryctl,
        };
        for path in [&binaries.ferryd, &binaries.agent] {
            if !path.exists() {
                bail!(
                    "{} is missing: build the three binaries together (`cargo build --release --bin ferryctl \
                     --bin ferryd --bin ferry-agent`), then run target/release/ferryctl demo",
                    path.display()
                );
            }
        }
        Ok(binaries)
    }
}

/// Runs a command that prints JSON; its stderr is shown only if it fails.
fn run_json(command: &mut Command) -> anyhow::Result<Value> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}):\n{}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{:?} printed no JSON", command.get_program()))
}

fn make_image(path: &Path, size: u64) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)?;
    let mut generator = DataGenerator::new(7, Mix::MIXED);
    let mut chunk = vec![0u8; 4 << 20];
    let mut offset = 0;
    // Used regions with holes between them, as on a real disk.
    while offset < size {
        let len = (chunk.len() as u64).min(size - offset) as usize;
        if (offset >> 22) % 4 != 3 {
            generator.fill(&mut chunk[..len]);
            file.write_all_at(&chunk[..len], offset)?;
        }
        offset += len as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// A few hundred writes of 4 KiB to 256 KiB at random 4 KiB-aligned offsets.
fn change_image(path: &Path, size: u64, round: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut generator = DataGenerator::new(100 + round, Mix::MIXED);
    let mut rng = Rng::new(round);
    for _ in 0..200 {
        let len = 4096 * (1 + rng.below(64));
        let offset = rng.below((size - len) / 4096) * 4096;
        file.write_all_at(&generator.bytes(len as usize), offset)?;
    }
    file.sync_all()?;
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        context.update(&buf[..n]);
    }
    Ok(context.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn wait_for_point(binaries: &Binaries, appliance: &Path, disk: &str, bookmark: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let points = run_json(
            Command::new(&binaries.ferryctl)
                .args(["--json", "points", "--config"])
                .arg(appliance)
                .args(["--disk", disk]),
        );
        if let Ok(points) = points {
            if let Some(point) = points
                .as_array()
                .and_then(|all| all.iter().find(|p| p["bookmark_id"] == bookmark))
            {
                return Ok(point.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("the point {bookmark} did not reach storage within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
