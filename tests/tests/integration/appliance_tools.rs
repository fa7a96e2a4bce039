//! The appliance's planning and checking tools, run as a user runs them:
//! - `ferryctl preflight` warns of a cache on ext4 without a journal, fails a cache on tmpfs,
//!   a nearly full cache file system, a wrong vault key, an unreachable target and a missing
//!   container, each saying why, and passes a good appliance with its ferryd running (the
//!   ports then held by that ferryd);
//! - `ferryctl size` answers what the test computes by hand from the same per-core costs, and
//!   a reader that left (`ferryctl ... | head -1`) ends it as SIGPIPE ends `ls`, no panic;
//! - `ferry-agent profile` reports the rate a loop device is written at, within 10%.

use ferry_tests::{azurite_endpoint, binary, ferryctl, sh, Appliance, Ferryd, LoopMount, AZURITE_ACCOUNT, AZURITE_KEY};
use serde_json::Value;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

/// `ferryctl --json preflight ARGS`: the exit status and the report.
fn preflight(args: &[&str]) -> (i32, Value) {
    let output = Command::new(binary("ferryctl"))
        .args(["--json", "preflight", "--probe-mib", "1"])
        .args(args)
        .output()
        .expect("ferryctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    (output.status.code().expect("an exit status"), report)
}

/// The named check of a report: (verdict, measured).
fn verdict(report: &Value, name: &str) -> (String, String) {
    let check = report["checks"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"));
    (
        check["verdict"].as_str().unwrap_or_default().to_string(),
        check["measured"].as_str().unwrap_or_default().to_string(),
    )
}

/// The exit status a report's worst verdict must give.
fn expected_exit(report: &Value) -> i32 {
    match report["worst"].as_str() {
        Some("fail") => 2,
        Some("warn") => 1,
        _ => 0,
    }
}

#[test]
fn preflight_fails_a_cache_on_tmpfs() {
    let dir = std::path::Path::new("/dev/shm").join(format!("ferry-preflight-{}", std::process::id()));
    let (code, report) = preflight(&["--cache-dir", dir.to_str().unwrap()]);
    let (state, measured) = verdict(&report, "cache file system");
    assert_eq!(state, "fail", "{measured}");
    assert!(measured.contains("tmpfs") && measured.contains("reboot"), "{measured}");
    assert_eq!(code, 2, "{report:#}");
    assert!(!dir.exists(), "preflight made the cache directory");
}

#[test]
fn preflight_fails_a_nearly_full_cache_file_system() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mounted) = LoopMount::with_size(scratch.path(), "ext4", 2048) else {
        return;
    };
    // Empty: 2 GiB, of which the cache may use 80%, throttled below 20% free: room for the
    // two 256 MiB segments it needs at least.
    let cache = mounted.mount.join("cache");
    let (_, report) = preflight(&["--cache-dir", cache.to_str().unwrap()]);
    let (state, measured) = verdict(&report, "cache space");
    assert_eq!(state, "ok", "{measured}");
    assert_eq!(verdict(&report, "cache file system").0, "ok");
    // Filled to all but 100 MiB by something else: no room for two segments.
    let (free, _) = sh(&format!(
        "avail=$(df --output=avail -B1 {m} | tail -1) && fallocate -l $((avail - 104857600)) {m}/other",
        m = mounted.mount.display()
    ));
    assert!(free, "filling the file system");
    let (code, report) = preflight(&["--cache-dir", cache.to_str().unwrap()]);
    let (state, measured) = verdict(&report, "cache space");
    assert_eq!(state, "fail", "{measured}");
    assert!(measured.contains("GiB usable"), "{measured}");
    assert_eq!(code, 2);
}

/// ext4 without a journal makes every new inode scan the recently deleted ones (measured in
/// docs/BENCHMARKS.md, "sixth step"): a warning, where the same ext4 with its journal is ok
/// (the test above).
#[test]
fn preflight_warns_of_ext4_without_a_journal() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mounted) = LoopMount::with_size(scratch.path(), "ext4-nojournal", 1024) else {
        return;
    };
    let cache = mounted.mount.join("cache");
    let (code, report) = preflight(&["--cache-dir", cache.to_str().unwrap()]);
    let (state, measured) = verdict(&report, "cache file system");
    assert_eq!(state, "warn", "{measured}");
    assert!(measured.contains("without a journal"), "{measured}");
    assert_eq!(code, expected_exit(&report));
    assert!(code >= 1, "{report:#}");
}

#[test]
fn preflight_fails_a_wrong_vault_key_and_passes_the_right_one() {
    let appliance = Appliance::init(|t| t);
    let other = Appliance::init(|t| t);
    let config = appliance.dir.to_str().unwrap();
    let wrong = other.dir.join("vault.key");
    let (code, report) = preflight(&["--config", config, "--key-file", wrong.to_str().unwrap()]);
    let (state, measured) = verdict(&report, "vault key");
    assert_eq!(state, "fail", "{measured}");
    assert!(measured.contains("wrong vault key"), "{measured}");
    assert_eq!(code, 2);
    let (_, report) = preflight(&["--config", config]);
    let (state, measured) = verdict(&report, "vault key");
    assert_eq!(state, "ok", "{measured}");
}

#[test]
fn preflight_fails_an_unreachable_target_and_a_missing_container() {
    let keys = tempfile::tempdir().unwrap();
    let account_key = keys.path().join("account.key");
    std::fs::write(&account_key, AZURITE_KEY).unwrap();
    let cache = keys.path().join("cache");
    let nobody = format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", ferry_tests::free_port());
    let azure = |endpoint: &str, container: &str| -> (i32, Value) {
        preflight(&[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--azure-account",
            AZURITE_ACCOUNT,
            "--azure-container",
            container,
            "--azure-endpoint",
            endpoint,
            "--azure-key-file",
            account_key.to_str().unwrap(),
        ])
    };
    let started = Instant::now();
    let (code, report) = azure(&nobody, "vault");
    let (state, measured) = verdict(&report, "target");
    assert_eq!(state, "fail", "{measured}");
    assert_eq!(code, 2);
    eprintln!("unreachable target: {measured} (in {:?})", started.elapsed());

    let Some(endpoint) = azurite_endpoint() else { return };
    let (code, report) = azure(&endpoint, &ferry_tests::unique_container("no-such"));
    let (state, measured) = verdict(&report, "target");
    assert_eq!(state, "fail", "{measured}");
    assert!(measured.to_lowercase().contains("container"), "{measured}");
    assert_eq!(code, 2);
}

#[tokio::test]
async fn preflight_passes_a_good_appliance_with_its_ferryd_running() {
    let appliance = match azurite_endpoint() {
        Some(endpoint) => Appliance::init_azurite(&endpoint, "preflight", |t| t),
        None => Appliance::init(|t| t),
    };
    let ferryd = Ferryd::start(&appliance).await;
    let (code, report) = preflight(&["--config", appliance.dir.to_str().unwrap()]);
    for check in report["checks"].as_array().unwrap() {
        let (name, state) = (check["name"].as_str().unwrap(), check["verdict"].as_str().unwrap());
        // The clock and the file system under the test's directory are the machine's:
        // preflight says which they are (an undisciplined clock, an ext4 without a journal
        // warn); everything else of a good appliance is ok.
        let measured = check["measured"].as_str().unwrap_or_default();
        let machines = name == "clock" || (name == "cache file system" && measured.contains("without a journal"));
        let allowed: &[&str] = if machines { &["ok", "warn"] } else { &["ok"] };
        assert!(allowed.contains(&state), "{name}: {state}: {measured}");
    }
    for port in ["data port", "management port", "metrics port"] {
        let (_, measured) = verdict(&report, port);
        assert!(measured.contains("held by this appliance's ferryd"), "{measured}");
    }
    assert_eq!(code, expected_exit(&report));
    assert!(code <= 1);
    drop(ferryd);
    // Stopped, the ports are free again, and something else on one of them fails the check.
    let squatter = std::net::TcpListener::bind(&appliance.data).unwrap();
    let (code, report) = preflight(&["--config", appliance.dir.to_str().unwrap()]);
    let (state, measured) = verdict(&report, "data port");
    assert_eq!(state, "fail", "{measured}");
    assert!(measured.contains("another program"), "{measured}");
    assert_eq!(verdict(&report, "management port").0, "ok");
    assert_eq!(code, 2);
    drop(squatter);
}

#[test]
fn a_reader_that_left_ends_ferryctl_as_sigpipe_ends_ls() {
    use std::os::unix::process::ExitStatusExt;
    // ferryctl's first line of output finds the pipe closed.
    let output = ferry_tests::run_with_stdout_closed("ferryctl", &["size", "--disks", "10", "--churn-mb-s", "5"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "status {:?}, stderr: {stderr}",
        output.status
    );
    assert!(stderr.is_empty(), "a quiet end, no panic or backtrace: {stderr}");
    // The same command with a reader prints the sizing and succeeds.
    let run = ferryctl(&["size", "--disks", "10", "--churn-mb-s", "5"]);
    assert!(
        run.success && run.stdout.starts_with("Site: 10 disks"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn size_answers_what_the_formulas_give_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // One machine, two disks, one-minute intervals: disk a bursts to 40 MB/s for a minute,
    // disk b writes 5 MB/s steadily; a's size is known (100 GiB).
    let profile = serde_json::json!({
        "format": 1, "machine": "db1", "started_unix_ms": 0, "duration_secs": 240.0,
        "interval_secs": 60.0, "complete": true,
        "disks": [
            {"device": "sda", "size_bytes": 107374182400u64, "written_bytes": 4200000000u64,
             "average_mb_s": 17.5, "peak_mb_s": 40.0, "gb_per_day": 1512.0,
             "series_mb_s": [10.0, 40.0, 10.0, 10.0]},
            {"device": "sdb", "size_bytes": 0, "written_bytes": 1200000000u64,
             "average_mb_s": 5.0, "peak_mb_s": 5.0, "gb_per_day": 432.0,
             "series_mb_s": [5.0, 5.0, 5.0, 5.0]}
        ]
    });
    let calibration = serde_json::json!({"ideal_ns_per_byte": 5.0, "compression_ratio": 2.5, "ferryd_x_ideal": 2.0,
                                          "ferryd_disk_ideal_bytes_per_s": 40000.0, "cores": 2, "stages": []});
    let (profile_path, calibration_path) = (dir.path().join("db1.json"), dir.path().join("limits.json"));
    std::fs::write(&profile_path, profile.to_string()).unwrap();
    std::fs::write(&calibration_path, calibration.to_string()).unwrap();
    let run = ferryctl(&[
        "--json",
        "size",
        "--profile",
        profile_path.to_str().unwrap(),
        "--calibration",
        calibration_path.to_str().unwrap(),
        "--rpo-secs",
        "30",
        "--outage-hours",
        "2",
        "--retention-hours",
        "24",
        "--server-cores",
        "8",
        "--price-write-per-10k",
        "0.1",
        "--price-other-per-10k",
        "0.01",
        "--price-gb-month",
        "0.02",
    ]);
    assert!(run.success, "{}", run.stderr);
    let answer = run.json();
    let number = |path: &[&str]| -> f64 {
        let mut value = &answer;
        for key in path {
            value = &value[*key];
        }
        value
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?} missing in {answer:#}"))
    };
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= want.abs() * 1e-6 + 1e-9,
            "{what}: {got}, by hand {want}"
        );
    };
    let (gib, mib) = (1073741824.0, 1048576.0);

    // Peak 45 MB/s at 5 ns/B x 2 = 10 ns/B, and 2 disks at 40,000 B/s of the 5 ns/B ideal
    // each (0.2 ms a second), planned at 70% of the cores.
    close(
        number(&["cores_needed"]),
        (45e6 * 10e-9 + 2.0 * 40_000.0 * 5e-9) / 0.7,
        "cores needed",
    );
    close(number(&["process_servers"]), 1.0, "process servers");
    close(
        number(&["per_server", "cores"]),
        2.0,
        "cores (0.64 rounds up to the minimum, 2)",
    );
    // Budget: 4 s of the peak (180 MB) is below ferryd's 512 MiB default, so 512 MiB.
    close(number(&["per_server", "memory_budget_mib"]), 512.0, "memory budget");
    close(
        number(&["per_server", "memory_gib"]),
        (gib + 2.5 * 512.0 * mib) / gib,
        "memory",
    );
    // Cache: 22.5 MB/s for 2 h, in the 80% limit above the 20% throttle.
    close(
        number(&["per_server", "cache_gib"]),
        22.5e6 * 7200.0 / (0.8 * 0.8) / gib,
        "cache",
    );
    // Upload: the burst minute (45 MB/s in all) must drain within 30 s: (45 - B) * 60 = 30 B,
    // B = 30 MB/s of plaintext, 12 MB/s compressed (2.5x), 96 Mbit/s.
    close(number(&["upload_mbit_s"]), 30e6 / 2.5 * 8.0 / 1e6, "upload");
    close(
        number(&["upload_mbit_s_average"]),
        22.5e6 / 2.5 * 8.0 / 1e6,
        "average upload",
    );
    // Change sets: a at 17.5 MB/s fills 8 MiB ones (2.086/s); b at 5 MB/s would fill a quarter
    // one in 0.42 s, below the 1 s flush delay, so one per second.
    let change_sets = 17.5e6 / 8388608.0 + 1.0;
    close(
        number(&["transactions", "change_set_puts_per_hour"]),
        change_sets * 3600.0,
        "change sets",
    );
    close(
        number(&["transactions", "point_puts_per_hour"]),
        2.0 / 300.0 * 3600.0,
        "points",
    );
    close(
        number(&["transactions", "lease_calls_per_hour"]),
        2.0 / 20.0 * 3600.0,
        "leases",
    );
    let month = 730.0 * 3600.0;
    let writes = (change_sets + 2.0 / 300.0) * month;
    let others = 2.0 / 20.0 * month;
    close(number(&["transactions", "writes_per_month"]), writes, "writes a month");
    // Storage: 24 h of 22.5 MB/s and a's 100 GiB base, compressed 2.5x.
    let stored_gb = (22.5e6 * 86400.0 + 107374182400.0) / 2.5 / 1e9;
    close(number(&["stored_gb"]), stored_gb, "stored");
    close(
        number(&["cost_per_month", "total"]),
        writes / 1e4 * 0.1 + others / 1e4 * 0.01 + stored_gb * 0.02,
        "cost",
    );
    // ASR: 1,944 GB/day on one machine is its largest process server (12 vCPU, up to 2 TB/day).
    close(number(&["gb_per_day"]), 1944.0, "GB/day");
    close(number(&["asr", "process_servers"]), 1.0, "ASR servers");
    close(number(&["asr", "vcpus"]), 12.0, "ASR vCPUs");
    close(number(&["asr", "ferry_cores_over_asr"]), 2.0 / 12.0, "Ferry over ASR");

    // Bad input: a profile that is not one, and a load described by halves.
    std::fs::write(&profile_path, "{\"format\": 1}").unwrap();
    let run = ferryctl(&["size", "--profile", profile_path.to_str().unwrap()]);
    assert!(
        !run.success && run.stderr.contains("not a ferry-agent profile"),
        "{}",
        run.stderr
    );
    let run = ferryctl(&["size", "--disks", "10"]);
    assert!(!run.success && run.stderr.contains("--churn-mb-s"), "{}", run.stderr);
}

/// A loop device over a sparse file, detached however the test ends.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

#[test]
fn profile_reports_the_rate_a_loop_device_is_written_at() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let (made, device) = sh(&format!(
        "truncate -s 1G {i} && losetup -f --show {i}",
        i = image.display()
    ));
    if !made {
        assert!(
            std::env::var("FERRY_REQUIRE_LOOP").is_err(),
            "FERRY_REQUIRE_LOOP is set but no loop device could be made"
        );
        eprintln!("skipped: needs root and loop devices (set FERRY_REQUIRE_LOOP=1 to require)");
        return;
    }
    let device = LoopDevice(device);
    let name = device.0.trim_start_matches("/dev/").to_string();

    // A writer at 8 MB/s (1 MiB every 131 ms, O_DIRECT so each write reaches the device when
    // it is made), from a second before the profile starts to after it ends.
    const RATE: f64 = 8e6;
    const PIECE: usize = 1 << 20;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (device.0.clone(), stop.clone());
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(&path)
                .expect("the loop device opens with O_DIRECT");
            let buffer = vec![7u8; PIECE + 4096];
            let offset = buffer.as_ptr().align_offset(4096);
            let piece = &buffer[offset..offset + PIECE];
            let started = Instant::now();
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = started + Duration::from_secs_f64(written as f64 / RATE);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                file.write_all_at(piece, written % (1 << 30))
                    .expect("a write to the loop device");
                written += PIECE as u64;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let out = dir.path().join("profile.json");
    let run = Command::new(binary("ferry-agent"))
        .args(["--json", "profile", "--duration", "8s", "--interval", "1s", "--device"])
        .arg(&device.0)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("ferry-agent runs");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let profile: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let disk = &profile["disks"][0];
    assert_eq!(disk["device"], name.as_str());
    assert_eq!(disk["size_bytes"], 1u64 << 30);
    assert_eq!(profile["complete"], true);
    let average = disk["average_mb_s"].as_f64().unwrap();
    assert!(
        (average - RATE / 1e6).abs() <= 0.1 * RATE / 1e6,
        "profile says {average} MB/s; the device was written at {} MB/s",
        RATE / 1e6
    );
    let series = disk["series_mb_s"].as_array().unwrap();
    assert_eq!(series.len(), 8);
    let peak = disk["peak_mb_s"].as_f64().unwrap();
    assert!(peak >= average, "peak {peak} below the average {average}");
    let gb_per_day = disk["gb_per_day"].as_f64().unwrap();
    assert!((gb_per_day - average * 86.4).abs() < 1e-6);
    // The profile is what `ferryctl size` reads.
    let run = ferryctl(&["--json", "size", "--profile", out.to_str().unwrap()]);
    assert!(run.success, "{}", run.stderr);
    assert!((run.json()["average_mb_s"].as_f64().unwrap() - average).abs() < 1e-9);
}

#[test]
fn profile_refuses_a_device_the_kernel_does_not_have() {
    let run = Command::new(binary("ferry-agent"))
        .args([
            "profile",
            "--duration",
            "2s",
            "--interval",
            "1s",
            "--device",
            "nosuchdisk0",
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("nosuchdisk0 is not in /proc/diskstats"), "{stderr}");
}
