//! `ferryctl group` against the real ferryd: consistency groups are created from registered
//! machines (by id prefix), refused when a rule is broken, kept across a restart of ferryd,
//! and deleted.

use ferry_tests::{ferryctl, Appliance, Ferryd};

use super::failover::run_ok;

#[tokio::test]
async fn groups_are_created_checked_kept_and_deleted() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let config = appliance.dir.to_str().unwrap();
    let a = appliance.register("db").await.machine_id.to_string();
    let b = appliance.register("app").await.machine_id.to_string();
    let c = appliance.register("web").await.machine_id.to_string();

    let erp = run_ok(&[
        "--json",
        "group",
        "create",
        "erp",
        "--config",
        config,
        "--machine",
        &a[..8],
        "--machine",
        &b,
        "--crash-every",
        "2m",
        "--app-every",
        "1h",
        "--barrier",
        "5s",
    ]);
    assert_eq!(erp["machines"], serde_json::json!([a, b]));
    assert_eq!(
        (
            erp["crash_every_secs"].as_u64(),
            erp["app_every_secs"].as_u64(),
            erp["barrier_secs"].as_u64()
        ),
        (Some(120), Some(3600), Some(5))
    );

    for (args, says) in [
        (vec!["erp", "--machine", &c[..]], "exists"),
        (vec!["web", "--machine", &b[..]], "one group"),
        (vec!["web", "--machine", "ffffffff"], "no machine registered here"),
        (vec!["Web", "--machine", &c[..]], "group name"),
        (vec!["web", "--machine", &c[..], "--crash-every", "10s"], "every 30 s"),
        (vec!["web", "--machine", &c[..], "--barrier", "2m"], "1 to 60"),
        (
            vec!["web", "--machine", &c[..], "--crash-every", "soon"],
            "--crash-every",
        ),
    ] {
        let mut all = vec!["group", "create"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--config", config]);
        let refused = ferryctl(&all);
        assert!(
            !refused.success && refused.stderr.contains(says),
            "{args:?}: {}",
            refused.stderr
        );
    }
    let web = run_ok(&["--json", "group", "create", "web", "--config", config, "--machine", &c]);
    assert_eq!(web["crash_every_secs"], 300, "the default is 5 minutes");

    // Kept across a restart.
    ferryd.terminate().await;
    let _ferryd = Ferryd::start(&appliance).await;
    let listed = run_ok(&["--json", "group", "list", "--config", config]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["erp", "web"]);
    let text = ferryctl(&["group", "list", "--config", config]);
    assert!(
        text.success && text.stdout.contains("erp") && text.stdout.contains(&a[..8]),
        "{}",
        text.stdout
    );

    run_ok(&["--json", "group", "delete", "erp", "--config", config]);
    run_ok(&[
        "--json",
        "group",
        "delete",
        web["group_id"].as_str().unwrap(),
        "--config",
        config,
    ]);
    let gone = ferryctl(&["group", "delete", "erp", "--config", config]);
    assert!(!gone.success && gone.stderr.contains("no group"), "{}", gone.stderr);
    assert_eq!(
        run_ok(&["--json", "group", "list", "--config", config]),
        serde_json::json!([])
    );
}

const BLOCK: usize = 4096;
const BLOCKS: usize = 4096; // 16 MiB images

/// Writes A[i] (fsync) on one machine's image, then B[i] (fsync) on the other's, i = 1, 2, ...
/// until stopped: at every instant the highest A is the highest B or one more.
struct PairWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PairWriter {
    fn start(a: &std::path::Path, b: &std::path::Path) -> PairWriter {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering;
        let open = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).open(p).unwrap();
        let (a, b) = (open(a), open(b));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop_flag, count) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                i += 1;
                let block = |i: u64| {
                    let mut bytes = vec![0xA5u8; BLOCK];
                    bytes[..8].copy_from_slice(&i.to_le_bytes());
                    bytes
                };
                let at = (i as usize % BLOCKS * BLOCK) as u64;
                a.write_all_at(&block(i), at).unwrap();
                a.sync_data().unwrap();
                b.write_all_at(&block(i), at).unwrap();
                b.sync_data().unwrap();
                count.store(i, Ordering::Relaxed);
            }
        });
        PairWriter {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PairWriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The highest i a restored image holds.
fn highest(image: &[u8]) -> u64 {
    image
        .chunks(BLOCK)
        .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))
        .max()
        .unwrap_or(0)
}

/// `disk` at `seq`, restored.
fn restore_at(config: &str, disk: &str, seq: u64, out: &std::path::Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    run_ok(&[
        "--json",
        "restore",
        "--config",
        config,
        "--disk",
        disk,
        "--seq",
        &seq.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

#[tokio::test]
async fn group_points_hold_causality_across_machines_and_a_dead_member_stops_none() {
    use ferry_tests::{Agent, LoopMount};
    let scratch = tempfile::tempdir().unwrap();
    let (Some(fs_a), Some(fs_b)) = (
        LoopMount::new(&scratch.path().join("a"), "xfs"),
        LoopMount::new(&scratch.path().join("b"), "xfs"),
    ) else {
        return;
    };
    let appliance = Appliance::init(|c| c);
    let mut ferryd = Some(Ferryd::start(&appliance).await);
    let config = appliance.dir.to_str().unwrap();
    let images: Vec<std::path::PathBuf> = [&fs_a, &fs_b]
        .iter()
        .map(|fs| {
            let image = fs.mount.join("disk.img");
            std::fs::write(&image, vec![0u8; BLOCK * BLOCKS]).unwrap();
            image
        })
        .collect();
    let agents: Vec<Agent> = images
        .iter()
        .map(|image| {
            let agent = Agent::register(&appliance);
            agent.configure(
                &[image],
                "[bookmarks]\ncrash_interval_secs = 3600\napp_interval_secs = 0\n",
            );
            agent
        })
        .collect();
    let mut children: Vec<std::process::Child> = agents.iter().map(|a| a.spawn(false)).collect();
    let disk_of = |agent: &Agent| -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(disk) = agent
                .status()
                .filter(|s| s["disks"][0]["last_bookmark"].is_object())
                .and_then(|s| s["disks"][0]["disk_id"].as_str().map(str::to_string))
            {
                return disk;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no first pass: {}",
                agent.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let disks: Vec<String> = agents.iter().map(disk_of).collect();
    let machines: Vec<String> = agents.iter().map(|a| a.identity().machine_id.to_string()).collect();
    let group = run_ok(&[
        "--json",
        "group",
        "create",
        "pair",
        "--config",
        config,
        "--machine",
        &machines[0],
        "--machine",
        &machines[1],
        "--crash-every",
        "1h",
        "--barrier",
        "5s",
    ]);
    let group_id = group["group_id"].as_str().unwrap().to_string();
    let writer = PairWriter::start(&images[0], &images[1]);
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Group points: never B ahead of A.
    let out = scratch.path().join("restored.raw");
    let mut holds = Vec::new();
    for number in 0..20 {
        let report = run_ok(&["--json", "group", "point", "pair", "--config", config]);
        assert_eq!(report["ok"], true, "group point {number}: {report}");
        holds.extend(report["hold_ms"].as_array().unwrap().iter().filter_map(|h| h.as_f64()));
        let members: Vec<(String, u64)> = report["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_u64().unwrap()))
            .collect();
        let seq_of = |disk: &str| members.iter().find(|(d, _)| d == disk).map(|(_, s)| *s).unwrap();
        let a = highest(&restore_at(config, &disks[0], seq_of(&disks[0]), &out));
        let b = highest(&restore_at(config, &disks[1], seq_of(&disks[1]), &out));
        assert!(a == b || a == b + 1, "group point {number}: A at {a}, B at {b}");
    }
    // The group points are in the vault: listed, restored and failed over by group.
    let listed = run_ok(&["--json", "points", "--config", config, "--group", &group_id]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 20);
    let last = &listed[19];
    assert_eq!(last["members"].as_array().unwrap().len(), 2);
    let bookmark = last["bookmark_id"].as_str().unwrap();
    let dir = scratch.path().join("group-restore");
    run_ok(&[
        "--json",
        "restore",
        "--config",
        config,
        "--group",
        &group_id,
        "--point",
        bookmark,
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    let a = highest(&std::fs::read(dir.join(format!("{}.raw", disks[0]))).unwrap());
    let b = highest(&std::fs::read(dir.join(format!("{}.raw", disks[1]))).unwrap());
    assert!(a == b || a == b + 1, "restore --group: A at {a}, B at {b}");
    let failover = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--group",
        &group_id,
        "--point",
        bookmark,
        "--format",
        "raw",
        "--to-dir",
        scratch.path().join("group-failover").to_str().unwrap(),
    ]);
    assert_eq!(failover["disks"].as_array().unwrap().len(), 2, "{failover}");
    for disk in failover["disks"].as_array().unwrap() {
        assert_eq!(disk["point"], bookmark);
    }
    holds.sort_by(f64::total_cmp);
    eprintln!(
        "writes held per member and group point: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} holds)",
        holds[holds.len() / 2],
        holds[(holds.len() * 99 / 100).min(holds.len() - 1)],
        holds[holds.len() - 1],
        holds.len()
    );

    // The same with each machine's own bookmark, one after the other: causality breaks.
    let mut broken = 0;
    for _ in 0..3 {
        let mut highs = Vec::new();
        for (machine, disk) in machines.iter().zip(&disks) {
            let done = run_ok(&[
                "--json",
                "command",
                "--config",
                config,
                "--machine",
                machine,
                "bookmark",
                "--kind",
                "crash",
            ]);
            let seq = done["outcome"]["bookmarks"][0]["seq"].as_u64().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let restored = loop {
                let run = ferryctl(&[
                    "--json",
                    "restore",
                    "--config",
                    config,
                    "--disk",
                    disk,
                    "--seq",
                    &seq.to_string(),
                    "--out",
                    out.to_str().unwrap(),
                ]);
                if run.success {
                    break std::fs::read(&out).unwrap();
                }
                let _ = std::fs::remove_file(&out);
                assert!(std::time::Instant::now() < deadline, "{}", run.stdout);
                std::thread::sleep(std::time::Duration::from_millis(200));
            };
            let _ = std::fs::remove_file(&out);
            highs.push(highest(&restored));
        }
        if !(highs[0] == highs[1] || highs[0] == highs[1] + 1) {
            broken += 1;
        }
    }
    assert!(
        broken > 0,
        "independent bookmarks never broke causality: the check cannot tell"
    );

    // A member that is gone: no group point, the other releases its writes, and once the
    // member is back the next group point is taken.
    let _ = children[1].kill();
    let _ = children[1].wait();
    let before = writer.written();
    let failed = ferryctl(&["--json", "group", "point", "pair", "--config", config]);
    assert!(!failed.success, "{}", failed.stdout);
    assert!(
        failed.stdout.contains("no answer within the barrier"),
        "{}",
        failed.stdout
    );
    let resumed = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while writer.written() == before {
        assert!(
            std::time::Instant::now() < resumed,
            "the writes stayed held after the failed barrier"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // ferryd dies in the middle of a barrier (the gone member keeps it waiting): the member
    // holding its writes releases them by itself at the barrier's deadline.
    let mut waiting = std::process::Command::new(ferry_tests::binary("ferryctl"))
        .args(["--json", "group", "point", "pair", "--config", config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let held = writer.written();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(
        writer.written(),
        held,
        "machine a's writes are not held during the prepare"
    );
    ferryd.take().unwrap().kill();
    let _ = waiting.wait();
    let released = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while writer.written() == held {
        assert!(
            std::time::Instant::now() < released,
            "machine a kept its writes held past the barrier's deadline with ferryd gone"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ferryd = Ferryd::start(&appliance).await;
    children[1] = agents[1].spawn(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let run = ferryctl(&["--json", "group", "point", "pair", "--config", config]);
        if run.success {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no group point after the member came back: {}",
            run.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // This ferryd's barriers (it started after the crash), and every group point in storage.
    let barriers = run_ok(&["--json", "group", "barriers", "pair", "--config", config]);
    assert_eq!(barriers.as_array().unwrap().last().unwrap()["ok"], true, "{barriers}");
    let listed = run_ok(&["--json", "points", "--config", config, "--group", &group_id]);
    assert_eq!(listed.as_array().unwrap().len(), 21);
    drop(writer);
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
