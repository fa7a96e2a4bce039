//! ferry-agent against a real ferryd (local target): restore at each pass's bookmark equals
//! the source at that pass; the agent killed mid-pass, a batch a dead run left past a gap,
//! and ferryd killed mid-run lose nothing; registration, certificate and config errors are
//! clear; quiesce scripts decide the bookmark's kind.

use ferry_client::api::DiskState;
use ferry_harness::datagen::{DataGenerator, Mix, Rng};
use ferry_tests::{ferryctl, Agent, Appliance, Ferryd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

const IMAGE_BYTES: u64 = 256 << 20;
const BLOCK: u64 = 64 << 10;

fn sha256(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_hash(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap())
}

/// A 256 MiB image: 96 MiB of mixed data, 64 MiB of zeros (sparse), 96 MiB mixed with a zero
/// block every 8th block.
fn make_image(dir: &Path, seed: u64) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join("disk.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(IMAGE_BYTES).unwrap();
    let mut generator = DataGenerator::new(seed, Mix::MIXED);
    let mut chunk = vec![0u8; 4 << 20];
    for (start, end) in [(0u64, 96u64 << 20), (160 << 20, IMAGE_BYTES)] {
        let mut offset = start;
        while offset < end {
            generator.fill(&mut chunk);
            if start > 0 {
                for block in chunk.chunks_mut(BLOCK as usize).step_by(8) {
                    block.fill(0);
                }
            }
            file.write_all_at(&chunk, offset).unwrap();
            offset += chunk.len() as u64;
        }
    }
    file.sync_all().unwrap();
    path
}

/// `count` random writes of 4 KiB to 256 KiB at 4 KiB-aligned offsets, a few of them zeros.
fn random_writes(image: &Path, seed: u64, count: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    let mut rng = Rng::new(seed);
    let mut generator = DataGenerator::new(seed, Mix::MIXED);
    for i in 0..count {
        let len = 4096 * (1 + rng.next() % 64);
        let offset = (rng.next() % ((IMAGE_BYTES - len) / 4096)) * 4096;
        let mut data = generator.bytes(len as usize);
        if i % 7 == 0 {
            data.fill(0);
        }
        file.write_all_at(&data, offset).unwrap();
    }
    file.sync_all().unwrap();
}

fn pass_report(run: &ferry_tests::Run) -> serde_json::Value {
    assert!(run.success, "ferry-agent run --once failed: {}", run.stderr);
    let reports = run.json();
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{reports}");
    reports[0].clone()
}

/// Waits until `ferryctl points` lists `bookmark` for `disk` (ferryd uploads behind the acks).
fn wait_for_point(appliance: &Appliance, disk: &str, bookmark: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = ferryctl(&[
            "--json",
            "points",
            "--config",
            appliance.dir.to_str().unwrap(),
            "--disk",
            disk,
        ]);
        if run.success {
            let points = run.json();
            if let Some(point) = points
                .as_array()
                .and_then(|all| all.iter().find(|p| p["bookmark_id"] == bookmark))
            {
                return point.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "point {bookmark} never reached storage: {}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An appliance with ferryd running, a registered agent, and a 256 MiB image it is
/// configured to replicate (with `extra` config).
struct Setup {
    appliance: Appliance,
    ferryd: Ferryd,
    agent: Agent,
    scratch: tempfile::TempDir,
    image: PathBuf,
}

async fn setup(seed: u64, extra: &str) -> Setup {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let image = make_image(scratch.path(), seed);
    agent.configure(&[&image], extra);
    Setup {
        appliance,
        ferryd,
        agent,
        scratch,
        image,
    }
}

/// Waits until the agent process `child` is in a pass that has had batches acknowledged.
fn wait_until_sending(agent: &Agent, child: &mut std::process::Child) {
    let pid = u64::from(child.id());
    agent.poll_status(child, "acknowledged batches", 60, |status| {
        let pass = &status["disks"][0]["pass"];
        let sending = pass["running"] == true && pass["sent_bytes"].as_u64().unwrap_or(0) > 0;
        (status["pid"].as_u64() == Some(pid) && sending).then_some(())
    });
}

fn restore_hash(appliance: &Appliance, disk: &str, bookmark: &str, scratch: &Path) -> String {
    let out = scratch.join(format!("restored-{bookmark}.img"));
    let run = ferryctl(&[
        "restore",
        "--config",
        appliance.dir.to_str().unwrap(),
        "--disk",
        disk,
        "--point",
        bookmark,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.success,
        "restore at {bookmark} failed: {}{}",
        run.stdout, run.stderr
    );
    let hash = file_hash(&out);
    std::fs::remove_file(&out).unwrap();
    hash
}

#[tokio::test]
async fn restore_at_each_bookmark_equals_the_source_at_that_pass() {
    let Setup {
        appliance,
        ferryd: _ferryd,
        agent,
        scratch,
        image,
    } = setup(1, "").await;
    let mut expected = Vec::new();
    let mut disk = String::new();
    for pass in 0..4u64 {
        if pass > 0 {
            random_writes(&image, pass, 40);
        }
        let source_hash = file_hash(&image);
        let report = pass_report(&agent.run_once(&[]));
        let blocks = IMAGE_BYTES / BLOCK;
        let changed = report["changed_blocks"].as_u64().unwrap();
        if pass == 0 {
            assert_eq!(report["phase"], "initial");
            assert_eq!(
                changed, blocks,
                "the initial copy sends every block (zeros as ZERO records)"
            );
            disk = report["disk_id"].as_str().unwrap().to_string();
        } else {
            assert_eq!(report["phase"], "continuous");
            assert!(
                changed > 0 && changed <= 40 * 5,
                "40 writes touch at most 200 blocks: {report}"
            );
            assert_eq!(report["disk_id"], disk.as_str(), "the disk id is stable");
        }
        assert_eq!(report["bookmark_kind"], "crash");
        expected.push((report["bookmark_id"].as_str().unwrap().to_string(), source_hash));
    }
    // An unchanged disk: a pass sends nothing but its bookmark.
    let quiet = pass_report(&agent.run_once(&[]));
    assert_eq!(quiet["changed_blocks"], 0, "{quiet}");

    for (bookmark, source_hash) in &expected {
        let point = wait_for_point(&appliance, &disk, bookmark);
        assert_eq!(point["kind"], "crash");
        assert_eq!(
            &restore_hash(&appliance, &disk, bookmark, scratch.path()),
            source_hash,
            "restore at {bookmark} equals the source at that pass"
        );
    }
    let status = agent.status().expect("status.json");
    assert_eq!(status["running"], false);
    let shown = &status["disks"][0];
    assert_eq!(shown["phase"], "continuous");
    assert_eq!(shown["last_bookmark"]["id"], quiet["bookmark_id"]);
    assert!(shown["lag_seconds"].as_f64().is_some(), "{shown}");
}

/// Kills the agent mid-pass, then puts back the content some blocks had before it (the case a
/// map updated before the server's acknowledgement would miss), and plants a batch past a gap
/// as a dead run could leave one. The next run resyncs and the restore equals the source.
#[tokio::test]
async fn agent_killed_mid_pass_and_a_batch_past_a_gap_lose_nothing() {
    let Setup {
        appliance,
        ferryd: _ferryd,
        agent,
        scratch,
        image,
    } = setup(2, "").await;
    let first = pass_report(&agent.run_once(&[]));
    let disk = first["disk_id"].as_str().unwrap().to_string();
    let original = std::fs::read(&image).unwrap();

    // Change a lot, then kill a slow pass once it has sent some of it.
    random_writes(&image, 11, 600);
    agent.configure(&[&image], "[scan]\nread_rate_bytes_per_sec = 50000000\n");
    let mut child = agent.spawn(true);
    wait_until_sending(&agent, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();

    // Put the original content back into the first half of the disk (some of it was sent).
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
        file.write_all_at(&original[..(IMAGE_BYTES / 2) as usize], 0).unwrap();
        file.sync_all().unwrap();
    }

    // A batch of garbage stored past a gap, as if the dead run had it in flight.
    let client = agent.identity().data_client().unwrap();
    let disk_id: Uuid = disk.parse().unwrap();
    // Batches the dead run had sent may still be landing in ferryd's cache: once they have,
    // its durable_seq stops moving (otherwise one could close the gap below the orphan).
    let mut info = client.get_disk(disk_id).await.unwrap();
    let settle_by = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let now = client.get_disk(disk_id).await.unwrap();
        if now.durable_seq == info.durable_seq || Instant::now() > settle_by {
            break;
        }
        info = now;
    }
    let orphan_seq = info.durable_seq + 2;
    let mut orphan = ferry_format::BatchEncoder::new(orphan_seq, 1);
    orphan.write(0, &vec![0xEE; 1 << 20]);
    client.put_batch(disk_id, orphan_seq, orphan.finish()).await.unwrap();

    agent.configure(&[&image], "");
    let resync = pass_report(&agent.run_once(&[]));
    assert_eq!(resync["phase"], "resync", "{resync}");
    let bookmark = resync["bookmark_id"].as_str().unwrap();
    let point = wait_for_point(&appliance, &disk, bookmark);
    assert!(
        point["tag"]
            .as_str()
            .unwrap_or_default()
            .contains("; resync: a pass was interrupted"),
        "{point}"
    );
    assert!(agent
        .log_text()
        .contains("gave up batches a previous run left past a gap"));
    assert_eq!(
        restore_hash(&appliance, &disk, bookmark, scratch.path()),
        file_hash(&image),
        "after the resync the point equals the source"
    );
    let info = client.get_disk(disk_id).await.unwrap();
    assert_eq!(info.state, DiskState::Replicating, "the resync is over: {info:?}");
    let next = pass_report(&agent.run_once(&[]));
    assert_eq!(next["phase"], "continuous");
    assert_eq!(next["changed_blocks"], 0);
}

/// The agent's state directory is lost: it resyncs (everything is sent again) and the
/// server shows resync_required until the resync's bookmark.
#[tokio::test]
async fn lost_agent_state_means_a_full_resync() {
    let Setup {
        appliance,
        ferryd: _ferryd,
        agent,
        scratch,
        image,
    } = setup(3, "").await;
    let first = pass_report(&agent.run_once(&[]));
    let disk = first["disk_id"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(agent.state_dir.join("disks")).unwrap();
    random_writes(&image, 5, 20);

    agent.configure(&[&image], "[scan]\nread_rate_bytes_per_sec = 100000000\n");
    let mut child = agent.spawn(true);
    let client = agent.identity().data_client().unwrap();
    let disk_id: Uuid = disk.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let info = client.get_disk(disk_id).await.unwrap();
        if info.state == DiskState::ResyncRequired {
            break info;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the resync ended before it was seen"
        );
        assert!(Instant::now() < deadline, "resync_required never shown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(seen.resync_reason.unwrap().contains("state for this disk was lost"));
    assert!(child.wait().unwrap().success(), "{}", agent.log_text());
    let status = agent.status().unwrap();
    let bookmark = status["disks"][0]["last_bookmark"]["id"].as_str().unwrap().to_string();
    assert_eq!(status["disks"][0]["pass"]["changed_blocks"], IMAGE_BYTES / BLOCK);
    wait_for_point(&appliance, &disk, &bookmark);
    assert_eq!(
        restore_hash(&appliance, &disk, &bookmark, scratch.path()),
        file_hash(&image)
    );
    assert_eq!(client.get_disk(disk_id).await.unwrap().state, DiskState::Replicating);
}

#[tokio::test]
async fn ferryd_killed_mid_run_the_agent_resumes() {
    let Setup {
        appliance,
        mut ferryd,
        agent,
        scratch,
        image,
    } = setup(
        4,
        "[scan]\nread_rate_bytes_per_sec = 60000000\n[bookmarks]\ncrash_interval_secs = 1\napp_interval_secs = 0\n",
    )
    .await;
    let mut child = agent.spawn(false);
    wait_until_sending(&agent, &mut child);
    ferryd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ferryd = Ferryd::start(&appliance).await;
    // The source is not changing: once any pass after the restart has its bookmark, the
    // point equals the image.
    let bookmark = agent.poll_status(&mut child, "bookmark after ferryd came back", 180, |status| {
        status["disks"][0]["last_bookmark"]["id"].as_str().map(str::to_string)
    });
    // SIGTERM: the agent stops cleanly.
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
    assert!(child.wait().unwrap().success(), "{}", agent.log_text());
    let disk = agent.status().unwrap()["disks"][0]["disk_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_point(&appliance, &disk, &bookmark);
    assert_eq!(
        restore_hash(&appliance, &disk, &bookmark, scratch.path()),
        file_hash(&image)
    );
}

#[tokio::test]
async fn registration_certificate_and_config_errors_are_clear() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let scratch = tempfile::tempdir().unwrap();
    let wrong = scratch.path().join("wrong");
    std::fs::write(&wrong, "not-the-passphrase").unwrap();
    let state = scratch.path().join("state");
    let run = Agent::command(&[
        "register",
        "--server",
        &appliance.management,
        "--passphrase-file",
        wrong.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(!run.success);
    assert!(run.stderr.contains("refused the passphrase"), "{}", run.stderr);
    assert!(!state.join("identity").exists(), "nothing kept after a refusal");

    // Trust on first use says what it trusted and how to pin it; that fingerprint pins.
    let right = scratch.path().join("right");
    std::fs::write(&right, appliance.passphrase()).unwrap();
    let register = |extra: &[&str]| {
        let mut args = vec![
            "register",
            "--server",
            &appliance.management,
            "--passphrase-file",
            right.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--force",
        ];
        args.extend_from_slice(extra);
        Agent::command(&args)
    };
    let tofu = register(&[]);
    assert!(tofu.success, "{}", tofu.stderr);
    let fingerprint = tofu
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("SHA-256 "))
        .unwrap_or_else(|| panic!("no fingerprint printed: {}", tofu.stderr))
        .to_string();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    assert!(
        tofu.stderr.contains(&format!("--fingerprint {fingerprint}")),
        "{}",
        tofu.stderr
    );
    let pinned = register(&["--fingerprint", &fingerprint]);
    assert!(pinned.success, "the printed fingerprint pins: {}", pinned.stderr);
    assert!(!pinned.stderr.contains("warning"), "{}", pinned.stderr);
    let other = if fingerprint.starts_with("00") { "11" } else { "00" };
    let mismatched = register(&["--fingerprint", &format!("{other}{}", &fingerprint[2..])]);
    assert!(!mismatched.success, "a different fingerprint is refused");

    let agent = Agent::register(&appliance);
    let identity_dir = agent.state_dir.join("identity");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(identity_dir.join("key.pem")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the private key is owner-only");
    let image = make_image(scratch.path(), 5);

    // A key the config does not know.
    agent.configure(&[&image], "[scan]\nblock_size = 4096\n");
    let run = agent.run_once(&[]);
    assert!(!run.success && run.stderr.contains("block_size"), "{}", run.stderr);
    agent.configure(&[&image], "[scan]\nblock_bytes = 3000\n");
    let run = agent.run_once(&[]);
    assert!(
        !run.success && run.stderr.contains("scan.block_bytes"),
        "{}",
        run.stderr
    );
    agent.configure(&[&image], "");

    // An expired certificate for this machine, from the right CA.
    let good_cert = std::fs::read_to_string(identity_dir.join("cert.pem")).unwrap();
    let key_pem = std::fs::read_to_string(identity_dir.join("key.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(appliance.dir.join("pki/ca.key")).unwrap()).unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&appliance.ca_pem())
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent.identity().machine_id.to_string());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    std::fs::write(
        identity_dir.join("cert.pem"),
        params.signed_by(&key, &ca, &ca_key).unwrap().pem(),
    )
    .unwrap();
    let run = agent.run_once(&[]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("expired") && run.stderr.contains("register again"),
        "{}",
        run.stderr
    );

    // A certificate from a foreign CA.
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut foreign_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    foreign_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca = foreign_ca.self_signed(&foreign_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent.identity().machine_id.to_string());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let foreign = params.signed_by(&key, &foreign_ca, &foreign_key).unwrap();
    std::fs::write(identity_dir.join("cert.pem"), foreign.pem()).unwrap();
    let started = Instant::now();
    let run = agent.run_once(&[]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("certificate") && run.stderr.contains("register again"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a refused certificate is not retried for minutes"
    );

    // Back to the real certificate: it works.
    std::fs::write(identity_dir.join("cert.pem"), good_cert).unwrap();
    pass_report(&agent.run_once(&[]));

    let never = scratch.path().join("never-ran");
    let run = Agent::command(&["status", "--state-dir", never.to_str().unwrap()]);
    assert!(!run.success && run.stderr.contains("has not run"), "{}", run.stderr);
}

/// `--app` runs the pre and post scripts; the bookmark is `app` only when the pre script
/// succeeded.
#[tokio::test]
async fn quiesce_scripts_decide_the_bookmark_kind() {
    use std::os::unix::fs::PermissionsExt;
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let image = make_image(scratch.path(), 6);
    let calls = scratch.path().join("calls");
    let script = |name: &str, exit: i32| {
        let path = scratch.path().join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name} $1\" >> {}\nexit {exit}\n", calls.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let good = script("good", 0);
    let failing = script("failing", 3);
    let quiesce = |pre: &Path| format!("[quiesce]\npre_script = {:?}\npost_script = {:?}\n", pre, good);
    agent.configure(&[&image], &quiesce(&good));
    let app = pass_report(&agent.run_once(&["--app"]));
    assert_eq!(app["bookmark_kind"], "app", "{app}");
    agent.configure(&[&image], &quiesce(&failing));
    let crash = pass_report(&agent.run_once(&["--app"]));
    assert_eq!(
        crash["bookmark_kind"], "crash",
        "a failed pre script makes a crash bookmark"
    );
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(log, "good --pre\ngood --post\nfailing --pre\ngood --post\n");
    let disk = app["disk_id"].as_str().unwrap();
    let point = wait_for_point(&appliance, disk, app["bookmark_id"].as_str().unwrap());
    assert_eq!(point["kind"], "app");
}

/// The README's first command, small: everything end to end, verified, and cleaned up.
#[test]
fn ferryctl_demo_runs_end_to_end_and_cleans_up() {
    let output = std::process::Command::new(ferry_tests::binary("ferryctl"))
        .args(["--json", "demo", "--size-mib", "32"])
        // As an installed binary would run: no `cargo build` of its siblings from here.
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .unwrap();
    let run: ferry_tests::Run = output.into();
    assert!(run.success, "demo failed: {}", run.stderr);
    let summary = run.json();
    assert_eq!(summary["image_bytes"], 32u64 << 20);
    let verified: Vec<&str> = summary["restores_verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["point"].as_str().unwrap())
        .collect();
    assert_eq!(verified, ["initial", "latest"]);
    let ratio = summary["compression_ratio"].as_f64().unwrap();
    assert!(ratio > 1.5, "mixed data compresses: {summary}");
    let dir = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("==> working in "))
        .expect("the demo says where it works");
    assert!(!Path::new(dir).exists(), "{dir} was removed");
}

/// A real block device (a loop device holding ext4) with `[quiesce] freeze` on its mount: the
/// agent reads the device, freezes the file system around the pass, marks the bookmark `app`,
/// and the restored image is a clean file system (e2fsck) equal to the device.
#[tokio::test]
async fn app_consistent_pass_over_a_frozen_block_device() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(fs) = ferry_tests::LoopMount::new(scratch.path(), "ext4") else {
        return;
    };
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let mut generator = DataGenerator::new(9, Mix::MIXED);
    for i in 0..8 {
        std::fs::write(fs.mount.join(format!("file-{i}")), generator.bytes(1 << 20)).unwrap();
    }
    let quiesce = format!(
        "[quiesce]\nfreeze = [{:?}]\ntimeout_secs = 30\n",
        fs.mount.to_str().unwrap()
    );
    agent.configure(&[&fs.device], &quiesce);
    let first = pass_report(&agent.run_once(&["--app"]));
    assert_eq!(
        (first["phase"].as_str(), first["bookmark_kind"].as_str()),
        (Some("initial"), Some("app"))
    );
    assert_eq!(
        first["scanned_bytes"],
        64u64 << 20,
        "the block device's size came from the kernel"
    );
    // The file system is thawed again: writes go through.
    for i in 8..12 {
        std::fs::write(fs.mount.join(format!("file-{i}")), generator.bytes(1 << 20)).unwrap();
    }
    let second = pass_report(&agent.run_once(&["--app"]));
    assert_eq!(second["bookmark_kind"], "app");
    let disk = second["disk_id"].as_str().unwrap().to_string();
    let bookmark = second["bookmark_id"].as_str().unwrap().to_string();
    wait_for_point(&appliance, &disk, &bookmark);
    let out = scratch.path().join("restored.img");
    let run = ferryctl(&[
        "restore",
        "--config",
        appliance.dir.to_str().unwrap(),
        "--disk",
        &disk,
        "--point",
        &bookmark,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    // Frozen means clean: no journal to replay, nothing for fsck to mend.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the restored file system is clean: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // And it holds every file as it was written before the pass.
    let restored = scratch.path().join("restored-mnt");
    std::fs::create_dir_all(&restored).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-o", "loop,ro,noload"])
        .arg(&out)
        .arg(&restored)
        .status()
        .unwrap();
    assert!(mounted.success());
    let mut compared = 0;
    for i in 0..12 {
        let name = format!("file-{i}");
        let same = std::fs::read(restored.join(&name)).ok() == std::fs::read(fs.mount.join(&name)).ok();
        compared += usize::from(same);
    }
    let _ = std::process::Command::new("umount").arg(&restored).status();
    assert_eq!(compared, 12, "every file restored with its content");
    drop(fs);
}

/// The disk grows: ferryd resizes it, the agent resyncs (the block map no longer fits), and
/// the restore at the resync's bookmark is the grown disk; the point before stays valid.
#[tokio::test]
async fn a_grown_disk_is_resized_and_resynced() {
    let Setup {
        appliance,
        ferryd: _ferryd,
        agent,
        scratch,
        image,
    } = setup(8, "").await;
    let before = pass_report(&agent.run_once(&[]));
    let before_hash = file_hash(&image);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), IMAGE_BYTES);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
        file.set_len(IMAGE_BYTES + (64 << 20)).unwrap();
        file.write_all_at(
            &DataGenerator::new(8, Mix::MIXED).bytes(1 << 20),
            IMAGE_BYTES + (8 << 20),
        )
        .unwrap();
        file.sync_all().unwrap();
    }
    let after = pass_report(&agent.run_once(&[]));
    assert_eq!(after["phase"], "resync", "{after}");
    assert_eq!(after["disk_id"], before["disk_id"]);
    let disk = after["disk_id"].as_str().unwrap().to_string();
    let client = agent.identity().data_client().unwrap();
    let info = client.get_disk(disk.parse().unwrap()).await.unwrap();
    assert_eq!(
        (info.size_bytes, info.state.as_str()),
        (IMAGE_BYTES + (64 << 20), "replicating")
    );
    let bookmark = after["bookmark_id"].as_str().unwrap();
    let point = wait_for_point(&appliance, &disk, bookmark);
    // How the pass read the disk, then why it resynced.
    let tag = point["tag"].as_str().unwrap_or_default();
    assert!(tag.ends_with("; resync: the disk was resized"), "{point}");
    assert_eq!(
        restore_hash(&appliance, &disk, bookmark, scratch.path()),
        file_hash(&image)
    );
    // FORMATS.md keeps one size per disk: an older point restores at the current size, its
    // first 256 MiB the disk as it was and the grown part zeros.
    let first = before["bookmark_id"].as_str().unwrap();
    wait_for_point(&appliance, &disk, first);
    let out = scratch.path().join("first.img");
    let run = ferryctl(&[
        "restore",
        "--config",
        appliance.dir.to_str().unwrap(),
        "--disk",
        &disk,
        "--point",
        first,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let restored = std::fs::read(&out).unwrap();
    assert_eq!(sha256(&restored[..IMAGE_BYTES as usize]), before_hash);
    assert!(restored[IMAGE_BYTES as usize..].iter().all(|b| *b == 0));
}

/// A draining appliance answers disk set-up with 503 and Retry-After 5: `run --once` waits
/// that long (not its 30 s default) and tries again instead of exiting, and meanwhile
/// `status` keeps the last good bookmark, with the error on its own line (and ends quietly when
/// its reader has left). Once the drain is resumed the pass completes.
#[tokio::test]
async fn an_agent_meeting_503_with_retry_after_waits_and_keeps_its_bookmark() {
    let Setup {
        appliance,
        ferryd: _ferryd,
        agent,
        scratch: _scratch,
        image: _image,
    } = setup(6, "[bookmarks]\napp_interval_secs = 0\n").await;
    let first = agent.run_once(&[]);
    assert!(first.success, "{}", first.stderr);
    let bookmark = pass_report(&first)["bookmark_id"].as_str().unwrap().to_string();
    let dir = appliance.dir.to_str().unwrap();
    let drained = ferryctl(&["drain", "--config", dir]);
    assert!(drained.success, "{}", drained.stderr);

    let mut child = agent.spawn(true);
    let pid = u64::from(child.id());
    let shown = agent.poll_status(&mut child, "a disk waiting on the drain", 60, |status| {
        let disk = &status["disks"][0];
        (status["pid"].as_u64() == Some(pid) && disk["phase"] == "waiting").then(|| disk.clone())
    });
    assert_eq!(
        shown["last_bookmark"]["id"],
        bookmark.as_str(),
        "the last good bookmark stays: {shown}"
    );
    assert!(shown["lag_seconds"].is_number(), "{shown}");
    let error = shown["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("draining for maintenance"), "{error}");
    let text = Agent::command(&["status", "--config", agent.config.to_str().unwrap()]);
    assert!(
        text.stdout.contains(&bookmark) && text.stdout.contains("\n  error: ") && text.stdout.contains("waiting"),
        "{}",
        text.stdout
    );
    // `ferry-agent status | head -1`: a reader that left ends it as SIGPIPE ends `ls`.
    let closed =
        ferry_tests::run_with_stdout_closed("ferry-agent", &["status", "--config", agent.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&closed.status),
        Some(libc::SIGPIPE),
        "{stderr}"
    );
    assert!(stderr.is_empty(), "a quiet end, no panic: {stderr}");

    let resumed = ferryctl(&["drain", "--resume", "--config", dir]);
    assert!(resumed.success, "{}", resumed.stderr);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "run --once did not finish after the resume");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = agent.log_text();
    assert!(
        status.success(),
        "run --once gave up on a 503 instead of retrying:\n{log}"
    );
    assert!(
        log.contains("retry_in_s=5"),
        "the appliance's Retry-After was used:\n{log}"
    );
    let after = agent.status().unwrap();
    assert_ne!(
        after["disks"][0]["last_bookmark"]["id"],
        bookmark.as_str(),
        "a new pass completed"
    );
    assert!(after["disks"][0]["last_error"].is_null(), "{after}");
}
