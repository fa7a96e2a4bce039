//! The upload pipeline and restore, end to end with the real ferryd and ferryctl: a known
//! workload (writes, zero ranges, bookmarks) on several disks, then `ferryctl restore` at every
//! bookmark compared with the test's model of each disk; SIGKILL during uploads; restore's
//! errors (wrong vault key, a corrupt object named); the same against Azurite.

use bytes::Bytes;
use ferry_client::api::DiskState;
use ferry_client::{BatchSender, DataClient, DiskSpec, RetryPolicy};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind, VaultKey};
use ferry_tests::{azurite_endpoint, ferryctl, Appliance, Ferryd, AZURITE_ACCOUNT, AZURITE_KEY};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

const DISK_BYTES: usize = 4 << 20;
const SECTOR: usize = 512;

/// Quick flushes and small change sets, so a test sees many objects.
fn fast_pipeline(config: String) -> String {
    config
        .replace("flush_delay_ms = 1000", "flush_delay_ms = 50")
        .replace("change_set_bytes = 8388608", "change_set_bytes = 1048576")
}

fn sha256(bytes: &[u8]) -> String {
    hex_of(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Batch `seq` of a disk, a function of (salt, seq): writes, a zero range, and a bookmark
/// every fifth batch. Applies itself to `model`.
fn batch(salt: u64, seq: u64, model: &mut [u8]) -> (Bytes, Option<String>) {
    let mut state = salt ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut enc = BatchEncoder::new(seq, 1_790_000_000_000 + seq * 1000);
    let sectors = (DISK_BYTES / SECTOR) as u64;
    for _ in 0..3 {
        let count = 1 + next() % 16;
        let start = next() % (sectors - count);
        let data: Vec<u8> = (0..count as usize * SECTOR).map(|_| next() as u8).collect();
        let offset = start as usize * SECTOR;
        model[offset..offset + data.len()].copy_from_slice(&data);
        enc.write(offset as u64, &data);
    }
    if seq.is_multiple_of(3) {
        let count = 1 + next() % 64;
        let start = next() % (sectors - count);
        let offset = start as usize * SECTOR;
        let length = count as usize * SECTOR;
        model[offset..offset + length].fill(0);
        enc.zero(offset as u64, length as u64);
    }
    let bookmark = seq.is_multiple_of(5).then(|| format!("bm-{seq}"));
    if let Some(id) = &bookmark {
        let kind = if seq.is_multiple_of(10) {
            BookmarkKind::App
        } else {
            BookmarkKind::Crash
        };
        enc.bookmark(&Bookmark {
            id: BookmarkId::new(id).unwrap(),
            kind,
            tag: Some(format!("test {seq}")),
            group_id: None,
        });
    }
    (enc.finish(), bookmark)
}

/// The workload of one disk: every batch, and the model's hash after each seq.
struct Workload {
    batches: Vec<(u64, Bytes)>,
    hash_after: BTreeMap<u64, String>,
    bookmarks: Vec<(u64, String)>,
}

fn workload(salt: u64, count: u64) -> Workload {
    let mut model = vec![0u8; DISK_BYTES];
    let mut w = Workload {
        batches: Vec::new(),
        hash_after: BTreeMap::new(),
        bookmarks: Vec::new(),
    };
    for seq in 1..=count {
        let (bytes, bookmark) = batch(salt, seq, &mut model);
        w.batches.push((seq, bytes));
        w.hash_after.insert(seq, sha256(&model));
        if let Some(id) = bookmark {
            w.bookmarks.push((seq, id));
        }
    }
    w
}

fn spec() -> DiskSpec {
    DiskSpec {
        name: "sda".into(),
        size_bytes: DISK_BYTES as u64,
        sector_size: SECTOR as u32,
        write_ordered: false,
        reprotect_from: None,
    }
}

/// Waits until batches 1..=`through` of `disk` are in storage with their recovery points
/// (points are written right after `uploaded_seq` passes them).
async fn wait_uploaded(client: &DataClient, disk: Uuid, through: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let last_bookmark = (1..=through).rev().find(|s| s % 5 == 0).unwrap_or(0);
    loop {
        let info = client.get_disk(disk).await.unwrap();
        let points_written = info.latest_point.as_ref().map_or(0, |p| p.seq) >= last_bookmark;
        if info.uploaded_seq >= through && points_written {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "uploads did not reach seq {through}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn restore(appliance: &Appliance, disk: Uuid, selector: &[&str], out: &Path) -> ferry_tests::Run {
    let mut args = vec!["restore", "--config", appliance.dir.to_str().unwrap(), "--disk"];
    let disk_text = disk.to_string();
    args.push(&disk_text);
    args.extend_from_slice(selector);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    ferryctl(&args)
}

fn restored_hash(appliance: &Appliance, disk: Uuid, selector: &[&str], dir: &Path, tag: &str) -> String {
    let out = dir.join(format!("{disk}-{tag}.img"));
    let run = restore(appliance, disk, selector, &out);
    assert!(run.success, "restore {selector:?} failed: {}{}", run.stdout, run.stderr);
    sha256(&std::fs::read(&out).unwrap())
}

async fn replicate_and_check(appliance: &Appliance) {
    let _ferryd = Ferryd::start(appliance).await;
    let machine = appliance.register("m").await;
    let disks: Vec<(Uuid, Workload)> = (0..3).map(|i| (Uuid::new_v4(), workload(i + 1, 30))).collect();
    let mut sends = Vec::new();
    for (disk, work) in &disks {
        let client = machine.data_client().unwrap();
        client.put_disk(*disk, &spec()).await.unwrap();
        let sender = BatchSender::new(client, *disk, 4, RetryPolicy::default());
        let batches = work.batches.clone();
        sends.push(tokio::spawn(async move { sender.send_all(batches).await.unwrap() }));
    }
    for send in sends {
        assert_eq!(send.await.unwrap(), 30);
    }
    let client = machine.data_client().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for (disk, work) in &disks {
        wait_uploaded(&client, *disk, 30).await;
        let info = client.get_disk(*disk).await.unwrap();
        assert_eq!(
            info.latest_point.as_ref().map(|p| p.bookmark_id.as_str()),
            Some("bm-30"),
            "{info:?}"
        );
        assert_eq!(info.state, DiskState::Replicating);
        let points = ferryctl(&[
            "--json",
            "points",
            "--config",
            appliance.dir.to_str().unwrap(),
            "--disk",
            &disk.to_string(),
        ]);
        assert!(points.success, "{}", points.stderr);
        let listed: Vec<u64> = points
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(listed, work.bookmarks.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        for (seq, id) in &work.bookmarks {
            assert_eq!(
                &restored_hash(appliance, *disk, &["--point", id], scratch.path(), id),
                &work.hash_after[seq],
                "disk {disk} at {id}"
            );
        }
        assert_eq!(
            restored_hash(appliance, *disk, &["--latest"], scratch.path(), "latest"),
            work.hash_after[&30]
        );
        assert_eq!(
            restored_hash(appliance, *disk, &["--seq", "17"], scratch.path(), "seq17"),
            work.hash_after[&17]
        );
    }
}

#[tokio::test]
async fn restore_at_every_bookmark_equals_the_model_local() {
    let appliance = Appliance::init(fast_pipeline);
    replicate_and_check(&appliance).await;

    // Restore needs no ferryd: the one started above is gone by now (dropped).
    let scratch = tempfile::tempdir().unwrap();
    let target = appliance.dir.join("target");
    let disk_dir = std::fs::read_dir(target.join("ferry/v1/disks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let disk: Uuid = disk_dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let wrong_key = scratch.path().join("wrong.key");
    std::fs::write(&wrong_key, VaultKey::generate().unwrap().to_text()).unwrap();
    let out = scratch.path().join("x.img");
    let wrong = ferryctl(&[
        "restore",
        "--target-dir",
        target.to_str().unwrap(),
        "--key-file",
        wrong_key.to_str().unwrap(),
        "--disk",
        &disk.to_string(),
        "--latest",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !wrong.success && wrong.stderr.contains("wrong vault key"),
        "{}",
        wrong.stderr
    );
    assert!(!out.exists());

    // Corrupt one log object: restore names it.
    let mut logs: Vec<_> = std::fs::read_dir(disk_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    logs.sort();
    let victim = &logs[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let run = restore(&appliance, disk, &["--latest"], &scratch.path().join("y.img"));
    let name = victim.strip_prefix(&target).unwrap().to_str().unwrap();
    assert!(
        !run.success && run.stderr.contains(name) && run.stderr.contains("authentication failed"),
        "{}",
        run.stderr
    );

    // A missing object is a missing seq, named.
    std::fs::remove_file(victim).unwrap();
    let run = restore(&appliance, disk, &["--latest"], &scratch.path().join("z.img"));
    assert!(
        !run.success && run.stderr.contains("seq 1 is missing"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn restore_at_every_bookmark_equals_the_model_azurite() {
    let Some(endpoint) = azurite_endpoint() else { return };
    let appliance = Appliance::init_azurite(&endpoint, "pipeline", fast_pipeline);
    replicate_and_check(&appliance).await;
}

#[tokio::test]
async fn sigkill_during_uploads_loses_nothing() {
    let appliance = Appliance::init(fast_pipeline);
    let mut ferryd = Ferryd::start(&appliance).await;
    let machine = appliance.register("m").await;
    let disk = Uuid::new_v4();
    machine.data_client().unwrap().put_disk(disk, &spec()).await.unwrap();
    let work = workload(42, 160);
    for round in 0..8 {
        let client = machine.data_client().unwrap();
        let start = client.get_disk(disk).await.unwrap().durable_seq;
        let sender = BatchSender::new(
            client,
            disk,
            4,
            RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
        );
        let batches: Vec<(u64, Bytes)> = work.batches.iter().filter(|(s, _)| *s > start).cloned().collect();
        let send = tokio::spawn(async move { sender.send_all(batches).await });
        tokio::time::sleep(Duration::from_millis(150 + round * 37)).await;
        ferryd.kill();
        let _ = send.await;
        ferryd = Ferryd::start(&appliance).await;
    }
    let client = machine.data_client().unwrap();
    let start = client.get_disk(disk).await.unwrap().durable_seq;
    let sender = BatchSender::new(client.clone(), disk, 4, RetryPolicy::default());
    let rest: Vec<(u64, Bytes)> = work.batches.iter().filter(|(s, _)| *s > start).cloned().collect();
    sender.send_all(rest).await.unwrap();
    wait_uploaded(&client, disk, 160).await;
    assert_eq!(ferryd.terminate().await.code(), Some(0));
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_hash(&appliance, disk, &["--seq", "160"], scratch.path(), "160"),
        work.hash_after[&160],
        "no seq missing, all in order"
    );
    assert_eq!(
        restored_hash(&appliance, disk, &["--seq", "97"], scratch.path(), "97"),
        work.hash_after[&97]
    );
}

/// One disk replicated through `ferryd` (started with `env`); returns the machine's client.
async fn replicate_one(appliance: &Appliance, ferryd: &Ferryd, work: &Workload, disk: Uuid) -> DataClient {
    let _ = ferryd;
    let client = appliance.register("m").await.data_client().unwrap();
    client.put_disk(disk, &spec()).await.unwrap();
    BatchSender::new(client.clone(), disk, 4, RetryPolicy::default())
        .send_all(work.batches.clone())
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn injected_storage_faults_are_retried_and_nothing_is_lost() {
    for faults in ["503:3:20", "timeout-after-success:2", "reset:4"] {
        let appliance = Appliance::init(fast_pipeline);
        let ferryd = Ferryd::start_with_env(&appliance, &[("FERRY_TEST_FAULTS", faults)]).await;
        let work = workload(7, 25);
        let disk = Uuid::new_v4();
        let client = replicate_one(&appliance, &ferryd, &work, disk).await;
        wait_uploaded(&client, disk, 25).await;
        assert!(
            appliance.log().contains("injecting storage faults"),
            "{faults}: the faults were on"
        );
        drop(ferryd);
        let scratch = tempfile::tempdir().unwrap();
        for (seq, id) in &work.bookmarks {
            assert_eq!(
                &restored_hash(&appliance, disk, &["--point", id], scratch.path(), id),
                &work.hash_after[seq],
                "{faults}: {id}"
            );
        }
    }
}

async fn azure_appliance(
    endpoint: &str,
    account_key: &str,
    container: &str,
    create: bool,
) -> (Appliance, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("account.key");
    std::fs::write(&key_file, account_key).unwrap();
    let mut args = vec![
        "--azure-account",
        AZURITE_ACCOUNT,
        "--azure-container",
        container,
        "--azure-endpoint",
        endpoint,
        "--azure-key-file",
        key_file.to_str().unwrap(),
    ];
    if create {
        args.push("--create-container");
    }
    (Appliance::init_with(&args, fast_pipeline), tmp)
}

#[tokio::test]
async fn azurite_stopped_mid_run_resumes_by_itself() {
    let Some(mut azurite) = ferry_tests::PrivateAzurite::start().await else {
        return;
    };
    let (appliance, _keys) = azure_appliance(&azurite.endpoint(), AZURITE_KEY, "outage", true).await;
    let ferryd = Ferryd::start(&appliance).await;
    let work = workload(9, 40);
    let disk = Uuid::new_v4();
    let client = appliance.register("m").await.data_client().unwrap();
    client.put_disk(disk, &spec()).await.unwrap();
    let sender = BatchSender::new(client.clone(), disk, 4, RetryPolicy::default());
    sender.send_all(work.batches[..15].to_vec()).await.unwrap();
    wait_uploaded(&client, disk, 15).await;
    azurite.stop();
    // Ingest goes on into the cache while storage is down.
    sender.send_all(work.batches[15..].to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        client.get_disk(disk).await.unwrap().uploaded_seq < 40,
        "nothing can reach a stopped Azurite"
    );
    azurite.restart().await;
    wait_uploaded(&client, disk, 40).await;
    drop(ferryd);
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_hash(&appliance, disk, &["--latest"], scratch.path(), "latest"),
        work.hash_after[&40]
    );
    assert_eq!(
        restored_hash(&appliance, disk, &["--seq", "23"], scratch.path(), "23"),
        work.hash_after[&23]
    );
}

#[tokio::test]
async fn a_wrong_account_key_is_a_clear_state_and_nothing_is_lost_once_fixed() {
    let Some(azurite) = ferry_tests::PrivateAzurite::start().await else {
        return;
    };
    let (appliance, _keys) = azure_appliance(&azurite.endpoint(), AZURITE_KEY, "badkey", true).await;
    let config = appliance.dir.join("ferry.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    std::fs::write(&config, good.replace(AZURITE_KEY, wrong_key)).unwrap();
    let ferryd = Ferryd::start(&appliance).await;
    let work = workload(11, 20);
    let disk = Uuid::new_v4();
    let client = replicate_one(&appliance, &ferryd, &work, disk).await;
    let info = client.get_disk(disk).await.unwrap();
    assert_eq!(
        (info.durable_seq, info.uploaded_seq, info.state.as_str()),
        (20, 0, "upload_error"),
        "{info:?}"
    );
    let error = info.error.unwrap_or_default();
    assert!(error.contains("authentication failed"), "{error}");
    assert!(!error.contains(wrong_key), "no secret in the status");
    let shown = appliance.everything_shown().await;
    assert!(shown[0].contains("upload_failing"), "the alert is shown: {}", shown[0]);
    appliance.assert_no_secrets(&shown, &[wrong_key, AZURITE_KEY]);
    assert_eq!(ferryd.terminate().await.code(), Some(0));

    std::fs::write(&config, good).unwrap();
    let _ferryd = Ferryd::start(&appliance).await;
    wait_uploaded(&client, disk, 20).await;
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_hash(&appliance, disk, &["--latest"], scratch.path(), "latest"),
        work.hash_after[&20]
    );
}

/// A SAS credential the storage refuses: the state says why, and the signature appears in
/// no status, metric or log line.
#[tokio::test]
async fn a_refused_sas_never_shows_its_signature() {
    let Some(azurite) = ferry_tests::PrivateAzurite::start().await else {
        return;
    };
    let (appliance, _keys) = azure_appliance(&azurite.endpoint(), AZURITE_KEY, "badsas", true).await;
    let config = appliance.dir.join("ferry.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let signature = "c2lnbmF0dXJlVGhhdE11c3ROZXZlckJlU2hvd24rK3NlY3JldA%3D%3D";
    let sas = format!("sv=2019-12-12&ss=b&srt=sco&sp=rwdlac&se=2035-01-01T00:00:00Z&sig={signature}");
    let edited = text.replace("kind = \"shared_key\"", "kind = \"sas\"").replace(
        &format!("account_key = \"{AZURITE_KEY}\""),
        &format!("token = \"{sas}\""),
    );
    assert_ne!(edited, text, "the credential was replaced");
    std::fs::write(&config, edited).unwrap();
    let ferryd = Ferryd::start(&appliance).await;
    let work = workload(12, 5);
    let disk = Uuid::new_v4();
    let client = replicate_one(&appliance, &ferryd, &work, disk).await;
    let info = client.get_disk(disk).await.unwrap();
    assert_eq!((info.durable_seq, info.state.as_str()), (5, "upload_error"), "{info:?}");
    let shown = appliance.everything_shown().await;
    assert!(shown[0].contains("upload_failing"), "{}", shown[0]);
    let decoded = "c2lnbmF0dXJlVGhhdE11c3ROZXZlckJlU2hvd24rK3NlY3JldA==";
    appliance.assert_no_secrets(&shown, &[signature, decoded]);
    let answer = format!("{info:?}");
    assert!(!answer.contains(signature) && !answer.contains(decoded), "{answer}");
}

/// With storage and the vault key alone (no ferryd, no appliance): `vault disks` and `points`
/// without `--disk` list every disk with its machine, size and newest point; `--disk` takes a
/// unique id prefix or MACHINE/NAME (an ambiguous prefix or an unknown name is refused by
/// name); restoring past the end says so and names the newest point.
#[tokio::test]
async fn disks_are_found_by_prefix_and_name_from_storage_alone() {
    let appliance = Appliance::init(fast_pipeline);
    let ferryd = Ferryd::start(&appliance).await;
    let machine = appliance.register("m").await;
    let client = machine.data_client().unwrap();
    // Two ids that share their first 8 characters, as `ferryctl status` prints them.
    let ids: [Uuid; 2] = [
        "aaaaaaaa-0000-4000-8000-000000000001".parse().unwrap(),
        "aaaaaaaa-1111-4000-8000-000000000002".parse().unwrap(),
    ];
    let works = [workload(21, 10), workload(22, 10)];
    for ((disk, work), name) in ids.iter().zip(&works).zip(["sda", "sdb"]) {
        let spec = DiskSpec {
            name: name.into(),
            ..spec()
        };
        client.put_disk(*disk, &spec).await.unwrap();
        BatchSender::new(client.clone(), *disk, 4, RetryPolicy::default())
            .send_all(work.batches.clone())
            .await
            .unwrap();
        wait_uploaded(&client, *disk, 10).await;
    }
    drop(ferryd);

    let target = appliance.dir.join("target");
    let key = appliance.dir.join("vault.key");
    let offline = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&[
            "--target-dir",
            target.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ]);
        ferryctl(&all)
    };
    let listed = offline(&["--json", "vault", "disks"]);
    assert!(listed.success, "{}", listed.stderr);
    let disks = listed.json();
    let disks = disks.as_array().unwrap();
    assert_eq!(disks.len(), 2, "{disks:?}");
    for (disk, (id, name)) in disks.iter().zip(ids.iter().zip(["sda", "sdb"])) {
        assert_eq!(disk["disk_id"], id.to_string());
        assert_eq!(disk["name"], name);
        assert_eq!(disk["machine_id"], machine.machine_id.to_string());
        assert_eq!(disk["size_bytes"], DISK_BYTES as u64);
        assert_eq!(disk["newest_point"]["bookmark_id"], "bm-10");
        assert_eq!(disk["newest_point"]["seq"], 10);
    }
    let table = offline(&["points"]);
    assert!(table.success, "{}", table.stderr);
    assert!(
        table.stdout.contains("bm-10 (10)") && table.stdout.contains("sda") && table.stdout.contains("sdb"),
        "{}",
        table.stdout
    );

    let ambiguous = offline(&["points", "--disk", "aaaaaaaa"]);
    assert!(
        !ambiguous.success && ambiguous.stderr.contains("is the start of 2 disk ids"),
        "{}",
        ambiguous.stderr
    );
    let by_prefix = offline(&["--json", "points", "--disk", "aaaaaaaa-1"]);
    assert!(by_prefix.success, "{}", by_prefix.stderr);
    assert_eq!(by_prefix.json()[0]["disk_id"], ids[1].to_string());
    let unknown = offline(&["points", "--disk", "sdc"]);
    assert!(
        !unknown.success && unknown.stderr.contains("no disk in this vault matches \"sdc\""),
        "{}",
        unknown.stderr
    );

    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("sdb.img");
    let by_name = format!("{}/sdb", &machine.machine_id.to_string()[..8]);
    let run = offline(&[
        "restore",
        "--disk",
        &by_name,
        "--latest",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), works[1].hash_after[&10]);

    let past = scratch.path().join("past.img");
    let run = offline(&[
        "restore",
        "--disk",
        "aaaaaaaa-0",
        "--seq",
        "99",
        "--out",
        past.to_str().unwrap(),
    ]);
    assert!(
        !run.success
            && run.stderr.contains("seq 99 is past the newest seq in storage (10)")
            && run.stderr.contains("the newest recovery point is bm-10 at seq 10"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("damaged"), "{}", run.stderr);
    assert!(!past.exists(), "nothing is written");
}

/// A quiet disk (a small batch every 50 ms, no bookmark) with `flush_delay_ms = 50`: its flush
/// delay doubles while its change sets stay small, so it makes a handful of objects instead of
/// one per 50 ms (about 100 here); the bookmark at the end still becomes a point, and the data
/// restores exactly. `ferry_storage_puts_total` counts what was written.
#[tokio::test]
async fn a_quiet_disk_makes_few_objects() {
    let appliance = Appliance::init(|c| {
        fast_pipeline(c).replace("idle_flush_delay_max_ms = 60000", "idle_flush_delay_max_ms = 3000")
    });
    let ferryd = Ferryd::start(&appliance).await;
    let client = appliance.register("m").await.data_client().unwrap();
    let disk = Uuid::new_v4();
    client.put_disk(disk, &spec()).await.unwrap();
    let mut model = vec![0u8; DISK_BYTES];
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < Duration::from_secs(6) {
        seq += 1;
        let mut enc = BatchEncoder::new(seq, 1_790_000_000_000 + seq);
        let offset = (seq as usize * SECTOR) % DISK_BYTES;
        let data = vec![seq as u8; SECTOR];
        model[offset..offset + SECTOR].copy_from_slice(&data);
        enc.write(offset as u64, &data);
        client.put_batch(disk, seq, enc.finish()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seq += 1;
    let mut last = BatchEncoder::new(seq, 1_790_000_000_000 + seq);
    last.bookmark(&Bookmark {
        id: BookmarkId::new("quiet-end").unwrap(),
        kind: BookmarkKind::Crash,
        tag: None,
        group_id: None,
    });
    client.put_batch(disk, seq, last.finish()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.get_disk(disk).await.unwrap().latest_point.map(|p| p.seq) != Some(seq) {
        assert!(Instant::now() < deadline, "the point never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = appliance.dir.join(format!("target/ferry/v1/disks/{disk}/log"));
    let objects = std::fs::read_dir(&log).unwrap().count();
    assert!(
        objects <= 20,
        "{objects} objects for {seq} small batches: the quiet disk's delay did not grow"
    );
    let metrics = ferry_tests::scrape_metrics(&appliance.metrics).await;
    let puts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_storage_puts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        puts >= objects as u64 + 2,
        "objects, the point and disk.fseal are counted: {puts}"
    );
    drop(ferryd);
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_hash(&appliance, disk, &["--point", "quiet-end"], scratch.path(), "quiet"),
        sha256(&model)
    );
}

/// One disk's storage calls stuck (each of its point writes held for ten minutes by the
/// fault layer) must not hold up any other disk: the other disk's points keep appearing,
/// round after round, while the stuck disk's change sets still upload and its point waits.
#[tokio::test]
async fn a_disk_with_stuck_point_writes_does_not_hold_up_another() {
    let appliance = Appliance::init(fast_pipeline);
    let stuck = Uuid::new_v4();
    let slow = format!("{stuck}/points/:600000");
    let ferryd = Ferryd::start_with_env(&appliance, &[("FERRY_TEST_SLOW_NAMES", &slow)]).await;
    let client = appliance.register("m").await.data_client().unwrap();
    let other = Uuid::new_v4();
    client.put_disk(stuck, &spec()).await.unwrap();
    client.put_disk(other, &spec()).await.unwrap();
    let (stuck_work, other_work) = (workload(11, 10), workload(12, 30));
    let send = |disk, batches: &[(u64, Bytes)]| {
        let (client, batches) = (client.clone(), batches.to_vec());
        async move {
            BatchSender::new(client, disk, 4, RetryPolicy::default())
                .send_all(batches)
                .await
        }
    };
    send(stuck, &stuck_work.batches).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.get_disk(stuck).await.unwrap().uploaded_seq < 10 {
        assert!(Instant::now() < deadline, "the stuck disk's change sets never uploaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its first point write is now held; the other disk goes through three rounds of points.
    for through in [10usize, 20, 30] {
        send(other, &other_work.batches[through - 10..through]).await.unwrap();
        wait_uploaded(&client, other, through as u64).await;
    }
    let stuck_info = client.get_disk(stuck).await.unwrap();
    assert_eq!(stuck_info.uploaded_seq, 10);
    assert_eq!(stuck_info.latest_point, None, "its point write is still held");
    assert!(appliance.log().contains("injecting storage faults"));
    assert_eq!(
        ferryd.terminate().await.code(),
        Some(0),
        "a held call does not block shutdown"
    );
    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_hash(&appliance, other, &["--point", "bm-30"], scratch.path(), "other"),
        other_work.hash_after[&30]
    );
}
