//! Retention end to end with the real ferryd and ferryctl: a disk whose bookmarks' source times
//! span three days (the test chooses them), consolidated under a 24 h window through ferryd's
//! control socket and with ferryd stopped; every kept point restores equal to the test's model,
//! every dropped point is refused by name, the log at or below the base and orphaned chunks are
//! gone, stored bytes fall; pins hold points and unpinning lets them go; status and /metrics
//! show the result. The same against Azurite; and the background run.

use bytes::Bytes;
use ferry_client::{BatchSender, DataClient, DiskSpec, RetryPolicy};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind};
use ferry_tests::{azurite_endpoint, ferryctl, Appliance, Ferryd};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const DISK_BYTES: usize = 4 << 20;
const HOT_BYTES: usize = 1 << 20;
const HOUR_MS: u64 = 3_600_000;
/// One batch an hour for three days, each with a bookmark.
const BATCHES: u64 = 72;

/// The default 24 h window, 3 h kept whole, one crash point per 6 h, 64 KiB chunks, runs on demand.
fn policy(run_every: &'static str) -> impl FnOnce(String) -> String {
    move |config: String| {
        let config = config
            .replace("flush_delay_ms = 1000", "flush_delay_ms = 50")
            .replace("change_set_bytes = 8388608", "change_set_bytes = 1048576")
            .replace("keep_all = \"1h\"", "keep_all = \"3h\"")
            .replace("crash_every = \"10m\"", "crash_every = \"6h\"")
            .replace("chunk_bytes = 4194304", "chunk_bytes = 65536")
            .replace("run_every = \"10m\"", &format!("run_every = \"{run_every}\""));
        assert!(config.contains("crash_every = \"6h\""), "the template changed");
        config
    }
}

fn sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct History {
    start_ms: u64,
    batches: Vec<(u64, Bytes)>,
    hash_after: BTreeMap<u64, String>,
    /// The disk after the last batch.
    final_image: Vec<u8>,
}

impl History {
    /// Source time of batch `seq`: on the half hour, so the window's edges (which move with
    /// the clock while the test runs) stay 30 minutes from any point.
    fn source_time(&self, seq: u64) -> u64 {
        self.start_ms + seq * HOUR_MS - HOUR_MS / 2
    }

    fn is_app(seq: u64) -> bool {
        seq.is_multiple_of(4)
    }

    /// The seqs the test's policy keeps at `now`.
    fn kept(&self, now: u64) -> Vec<u64> {
        self.kept_with_window(now, 24)
    }

    /// The seqs kept at `now` with a window of `window_hours`.
    fn kept_with_window(&self, now: u64, window_hours: u64) -> Vec<u64> {
        (1..=BATCHES)
            .filter(|&seq| {
                let age = now.saturating_sub(self.source_time(seq));
                let interval = self.source_time(seq) / (6 * HOUR_MS);
                let newest_crash = !(seq + 1..=BATCHES)
                    .any(|later| !Self::is_app(later) && self.source_time(later) / (6 * HOUR_MS) == interval);
                seq == BATCHES
                    || age <= 3 * HOUR_MS
                    || (age <= window_hours * HOUR_MS && (Self::is_app(seq) || newest_crash))
            })
            .collect()
    }
}

fn history() -> History {
    let start_ms = ferry_client::clock::now_unix_ms() - BATCHES * HOUR_MS;
    let mut history = History {
        start_ms,
        batches: Vec::new(),
        hash_after: BTreeMap::new(),
        final_image: Vec::new(),
    };
    let mut model = vec![0u8; DISK_BYTES];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seq in 1..=BATCHES {
        let mut batch = BatchEncoder::new(seq, history.source_time(seq));
        // The first batches are an initial copy over the whole disk; then churn in 1 MiB.
        let (writes, region) = if seq <= 4 { (48, DISK_BYTES) } else { (4, HOT_BYTES) };
        for _ in 0..writes {
            let sectors = 1 + next() as usize % 64;
            let offset = (next() as usize % (region / 512 - sectors)) * 512;
            let data: Vec<u8> = (0..sectors * 512).map(|_| next() as u8).collect();
            model[offset..offset + data.len()].copy_from_slice(&data);
            batch.write(offset as u64, &data);
        }
        if seq.is_multiple_of(3) {
            let offset = (next() as usize % (HOT_BYTES / 512 - 8)) * 512;
            model[offset..offset + 4096].fill(0);
            batch.zero(offset as u64, 4096);
        }
        batch.bookmark(&Bookmark {
            id: BookmarkId::new(&format!("p{seq}")).unwrap(),
            kind: if History::is_app(seq) {
                BookmarkKind::App
            } else {
                BookmarkKind::Crash
            },
            tag: None,
            group_id: None,
        });
        history.batches.push((seq, batch.finish()));
        history.hash_after.insert(seq, sha256(&model));
    }
    history.final_image = model;
    history
}

async fn replicate(appliance: &Appliance, history: &History) -> (Uuid, DataClient) {
    let machine = appliance.register("m").await;
    let disk = Uuid::new_v4();
    let client = machine.data_client().unwrap();
    let spec = DiskSpec {
        name: "sda".into(),
        size_bytes: DISK_BYTES as u64,
        sector_size: 512,
        write_ordered: false,
        reprotect_from: None,
    };
    client.put_disk(disk, &spec).await.unwrap();
    let sender = BatchSender::new(machine.data_client().unwrap(), disk, 4, RetryPolicy::default());
    assert_eq!(sender.send_all(history.batches.clone()).await.unwrap(), BATCHES);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = client.get_disk(disk).await.unwrap();
        if info.uploaded_seq >= BATCHES && info.latest_point.as_ref().is_some_and(|p| p.seq == BATCHES) {
            break;
        }
        assert!(Instant::now() < deadline, "uploads did not finish: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (disk, client)
}

fn ctl(appliance: &Appliance, args: &[&str]) -> ferry_tests::Run {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--config", appliance.dir.to_str().unwrap()]);
    ferryctl(&all)
}

fn listed_points(appliance: &Appliance, disk: Uuid) -> Vec<u64> {
    let run = ctl(appliance, &["--json", "points", "--disk", &disk.to_string()]);
    assert!(run.success, "{}", run.stderr);
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect()
}

fn restore_hash(appliance: &Appliance, disk: Uuid, point: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.img");
    let run = ctl(
        appliance,
        &[
            "restore",
            "--disk",
            &disk.to_string(),
            "--point",
            point,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    if !run.success {
        return Err(run.stderr);
    }
    Ok(sha256(&std::fs::read(&out).unwrap()))
}

fn run_retention(appliance: &Appliance, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "retention", "run"];
    args.extend_from_slice(extra);
    let run = ctl(appliance, &args);
    assert!(run.success, "retention run failed: {}{}", run.stdout, run.stderr);
    run.json()[0].clone()
}

async fn consolidate_and_check(appliance: &Appliance) {
    let history = history();
    let mut ferryd = Ferryd::start(appliance).await;
    let (disk, _client) = replicate(appliance, &history).await;
    let disk_text = disk.to_string();
    assert_eq!(listed_points(appliance, disk), (1..=BATCHES).collect::<Vec<_>>());

    // A dry run changes nothing.
    let dry = run_retention(appliance, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["points_dropped"].as_u64().unwrap() > 30, "{dry}");
    assert_eq!(listed_points(appliance, disk), (1..=BATCHES).collect::<Vec<_>>());

    // A pin on a point older than the window holds it, and the base, back.
    let pin = ctl(
        appliance,
        &[
            "points", "pin", "--disk", &disk_text, "--point", "p10", "--reason", "audit",
        ],
    );
    assert!(pin.success, "{}", pin.stderr);
    let pinned = run_retention(appliance, &[]);
    assert_eq!(pinned["base_seq"], 10, "{pinned}");
    assert_eq!(pinned["pinned_beyond_window"], serde_json::json!(["p10"]));
    let now = ferry_client::clock::now_unix_ms();
    let mut expected = vec![10];
    expected.extend(history.kept(now));
    assert_eq!(listed_points(appliance, disk), expected);
    let status = ctl(appliance, &["--json", "status"]).json();
    assert!(
        status["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["code"] == "retention_unmet"),
        "{status}"
    );
    let points_json = ctl(appliance, &["--json", "points", "--disk", &disk_text]).json();
    assert_eq!(points_json[0]["pinned"], true);
    assert_eq!(points_json[0]["pin_reason"], "audit");

    // Unpinned, the next run (through ferryd) moves the base to the window's oldest point.
    let unpin = ctl(appliance, &["points", "unpin", "--disk", &disk_text, "--point", "p10"]);
    assert!(unpin.success, "{}", unpin.stderr);
    let summary = run_retention(appliance, &[]);
    let now = ferry_client::clock::now_unix_ms();
    let kept = history.kept(now);
    let base = kept[0];
    assert_eq!(summary["base_seq"], base, "{summary}");
    // ferryd remembers the points its run before read: none is read again.
    assert_eq!(summary["points_read"], 0, "{summary}");
    assert!(
        summary["stored_bytes_after"].as_u64() < pinned["stored_bytes_before"].as_u64(),
        "{summary}"
    );
    assert_eq!(listed_points(appliance, disk), kept);
    for seq in &kept {
        assert_eq!(
            restore_hash(appliance, disk, &format!("p{seq}")).unwrap(),
            history.hash_after[seq],
            "point p{seq}"
        );
    }
    for seq in (1..=BATCHES).filter(|s| !kept.contains(s)).take(5) {
        let error = restore_hash(appliance, disk, &format!("p{seq}")).unwrap_err();
        assert!(
            error.contains(&format!("recovery point p{seq}")) && error.contains("pruned by retention"),
            "{error}"
        );
    }

    // Status and /metrics show what the run found.
    let status = ctl(appliance, &["--json", "status"]).json();
    let shown = &status["retention"]["disks"][0];
    assert_eq!(shown["base_seq"], base, "{status}");
    assert_eq!(shown["oldest_point"], format!("p{base}"));
    assert_eq!(shown["stored_bytes"], summary["stored_bytes_after"]);
    let metrics = ferry_tests::scrape_metrics(&appliance.metrics).await;
    assert!(
        metrics.contains(&format!(
            "ferry_disk_stored_bytes{{disk_id=\"{disk}\"}} {}",
            summary["stored_bytes_after"]
        )),
        "{metrics}"
    );

    // With ferryd stopped, ferryctl consolidates from storage and the key alone: nothing left.
    ferryd.kill();
    let offline = run_retention(appliance, &[]);
    assert_eq!(offline["base_seq"], base);
    assert_eq!(offline["points_read"], kept.len(), "without ferryd every point is read");
    assert_eq!(
        (offline["objects_written"].as_u64(), offline["objects_deleted"].as_u64()),
        (Some(0), Some(0)),
        "{offline}"
    );
    // Nothing a kept point does not need is left in storage.
    check_storage(appliance, disk, base).await;
}

/// No log object at or below the base, exactly one base, and every chunk object named by it.
async fn check_storage(appliance: &Appliance, disk: Uuid, base: u64) {
    let layout = ferry_config::ApplianceLayout::new(&appliance.dir);
    let config = ferry_config::ApplianceConfig::load(&layout.config_file()).unwrap();
    let storage = ferry_storage::open_target(&config.resolved_target(&layout), Default::default())
        .await
        .unwrap();
    let key = ferry_format::VaultKey::parse_text(&std::fs::read_to_string(layout.vault_key_file()).unwrap()).unwrap();
    let vault =
        ferry_format::VaultDescriptor::parse(&storage.get(ferry_format::names::VAULT_JSON).await.unwrap()).unwrap();
    let keyring = vault.open(&key).unwrap();
    for object in ferry_vault::log::list_every_epoch(&*storage, disk).await.unwrap() {
        assert!(object.last_seq > base, "{} is at or below the base {base}", object.name);
    }
    let bases = ferry_vault::base::list(&*storage, disk).await.unwrap();
    assert_eq!(bases.manifests.iter().copied().collect::<Vec<_>>(), [base]);
    let manifest = ferry_vault::base::read_manifest(&*storage, &keyring.disk_key(disk), disk, base, DISK_BYTES as u64)
        .await
        .unwrap();
    let mut named: Vec<String> = manifest.chunks.into_values().collect();
    named.sort();
    let stored: Vec<String> = bases.chunks.into_keys().collect();
    assert_eq!(stored, named, "no orphaned chunk, none missing");
}

#[tokio::test]
async fn consolidation_keeps_the_policy_and_frees_the_rest_local() {
    let appliance = Appliance::init(policy("0"));
    consolidate_and_check(&appliance).await;

    // Policy overrides per disk, written to ferry.toml (ferryd stopped: directly).
    let disk = std::fs::read_dir(appliance.dir.join("target/ferry/v1/disks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let set = ctl(
        &appliance,
        &[
            "retention",
            "set",
            "--disk",
            &disk,
            "--window",
            "7d",
            "--keep-all",
            "2h",
        ],
    );
    assert!(set.success, "{}", set.stderr);
    let text = std::fs::read_to_string(appliance.dir.join("ferry.toml")).unwrap();
    assert!(text.contains(&format!("[retention.disks.\"{disk}\"]")), "{text}");
    assert!(text.contains("window = \"7d\""), "{text}");
    let bad = ctl(&appliance, &["retention", "set", "--disk", &disk, "--window", "30d"]);
    assert!(!bad.success && bad.stderr.contains("window"), "{}", bad.stderr);
    let clear = ctl(&appliance, &["retention", "set", "--disk", &disk, "--clear"]);
    assert!(clear.success, "{}", clear.stderr);
    let text = std::fs::read_to_string(appliance.dir.join("ferry.toml")).unwrap();
    assert!(!text.contains("[retention.disks"), "{text}");
}

#[tokio::test]
async fn consolidation_keeps_the_policy_and_frees_the_rest_azurite() {
    let Some(endpoint) = azurite_endpoint() else { return };
    let appliance = Appliance::init_azurite(&endpoint, "retention", policy("0"));
    consolidate_and_check(&appliance).await;
}

#[tokio::test]
async fn ferryd_consolidates_in_the_background_and_takes_policy_changes_through_its_socket() {
    let appliance = Appliance::init(policy("1m"));
    let history = history();
    let _ferryd = Ferryd::start(&appliance).await;
    let (disk, _client) = replicate(&appliance, &history).await;
    // The first background run starts 30 s after ferryd.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status = ctl(&appliance, &["--json", "status"]).json();
        if status["retention"]["runs"].as_u64() >= Some(1) && status["retention"]["running"] == false {
            break status;
        }
        assert!(Instant::now() < deadline, "no background run within 120 s: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let kept = history.kept(ferry_client::clock::now_unix_ms());
    assert_eq!(status["retention"]["disks"][0]["base_seq"], kept[0], "{status}");
    assert_eq!(listed_points(&appliance, disk), kept);
    let text = ctl(&appliance, &["status"]);
    assert!(text.stdout.contains("retention  last run"), "{}", text.stdout);

    // ferryd owns ferry.toml while it runs: the override goes through it, and is kept.
    let set = ctl(
        &appliance,
        &["retention", "set", "--disk", &disk.to_string(), "--window", "2d"],
    );
    assert!(
        set.success && set.stdout.contains("window 2d"),
        "{}{}",
        set.stdout,
        set.stderr
    );
    let tune = ctl(&appliance, &["tune", "upload_concurrency=8"]);
    assert!(tune.success, "{}", tune.stderr);
    let text = std::fs::read_to_string(appliance.dir.join("ferry.toml")).unwrap();
    assert!(
        text.contains(&format!("[retention.disks.\"{disk}\"]")) && text.contains("window = \"2d\""),
        "a later tune keeps the override: {text}"
    );
}

/// Every listed point that `hash_after` knows restores equal to the model. Points are deleted
/// before anything they need, so this holds at every moment, not only for the points the
/// policy keeps.
fn listed_points_restore(appliance: &Appliance, disk: Uuid, hash_after: &BTreeMap<u64, String>, when: &str) {
    for seq in listed_points(appliance, disk) {
        let Some(expected) = hash_after.get(&seq) else { continue };
        let restored = restore_hash(appliance, disk, &format!("p{seq}"))
            .unwrap_or_else(|e| panic!("{when}: point p{seq} does not restore: {e}"));
        assert_eq!(&restored, expected, "{when}: point p{seq}");
    }
}

#[tokio::test]
async fn sigkill_during_background_consolidation_under_load_loses_no_kept_point() {
    let appliance = Appliance::init(policy("1m"));
    let history = history();
    let first = Ferryd::start(&appliance).await;
    let (disk, client) = replicate(&appliance, &history).await;
    drop(first);

    // Twenty lives of ferryd, each killed while its first consolidation runs (after its batch
    // is in); the first background run starts at
    // once, and a new batch (with a young, kept point) arrives during each life. The window
    // shrinks by an hour each life (24 h down to 5 h), so every run has a new base to write
    // and points to prune.
    let mut image = history.final_image.clone();
    let mut hash_after = history.hash_after.clone();
    let mut next_seq = BATCHES + 1;
    let mut killed_while_running = 0;
    let config_file = appliance.dir.join("ferry.toml");
    let mut window_hours = 24;
    for life in 0..20u64 {
        let text = std::fs::read_to_string(&config_file).unwrap();
        let next_window = 24 - life;
        let text = text.replace(
            &format!("window = \"{window_hours}h\""),
            &format!("window = \"{next_window}h\""),
        );
        window_hours = next_window;
        std::fs::write(&config_file, text).unwrap();
        // Every storage call takes 3 ms (and one in 50 fails, retried): runs last long
        // enough for the kills to land inside them.
        let mut ferryd = Ferryd::start_with_env(
            &appliance,
            &[
                ("FERRY_TEST_RETENTION_FIRST_RUN_MS", "0"),
                ("FERRY_TEST_FAULTS", "503:50:3"),
            ],
        )
        .await;
        let offset = (life % 8) * 4096;
        let data = vec![life as u8 + 1; 4096];
        let mut batch = BatchEncoder::new(next_seq, ferry_client::clock::now_unix_ms());
        batch.write(offset, &data);
        batch.bookmark(&Bookmark {
            id: BookmarkId::new(&format!("p{next_seq}")).unwrap(),
            kind: BookmarkKind::Crash,
            tag: None,
            group_id: None,
        });
        if client.put_batch(disk, next_seq, batch.finish()).await.is_ok() {
            image[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            hash_after.insert(next_seq, sha256(&image));
            next_seq += 1;
        }
        // Kill once the run is seen going, 0 - 0.3 s later (or after 5 s without one).
        let seen = Instant::now();
        let mut running = false;
        while !running && seen.elapsed() < Duration::from_secs(5) {
            let status = ctl(&appliance, &["--json", "status"]);
            running = status.success && status.json()["retention"]["running"] == true;
        }
        tokio::time::sleep(Duration::from_millis(life * 37 % 300)).await;
        let status = ctl(&appliance, &["--json", "status"]);
        ferryd.kill();
        if status.success && status.json()["retention"]["running"] == true {
            killed_while_running += 1;
        }
        if life % 5 == 4 {
            listed_points_restore(&appliance, disk, &hash_after, &format!("after kill {}", life + 1));
        }
    }
    eprintln!("{killed_while_running} of 20 kills landed while a consolidation ran");
    assert!(killed_while_running >= 5, "too few kills landed during a consolidation");
    assert!(next_seq > BATCHES + 10, "the load mostly failed: {next_seq}");

    // A last, uninterrupted life, with storage failing every 7th call (retried), finishes.
    let _ferryd = Ferryd::start_with_env(&appliance, &[("FERRY_TEST_FAULTS", "500:7")]).await;
    let last = run_retention(&appliance, &[]);
    assert!(last["error"].is_null(), "{last}");
    assert!(std::fs::read_to_string(&config_file)
        .unwrap()
        .contains("window = \"5h\""));
    let kept = history.kept_with_window(ferry_client::clock::now_unix_ms(), 5);
    let listed = listed_points(&appliance, disk);
    for seq in kept.iter().chain(&(BATCHES + 1..next_seq).collect::<Vec<_>>()) {
        assert!(listed.contains(seq), "kept point p{seq} is gone: {listed:?}");
    }
    listed_points_restore(&appliance, disk, &hash_after, "after 20 kills and storage faults");
    check_storage(&appliance, disk, kept[0]).await;
}
