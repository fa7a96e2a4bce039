//! `ferryctl failover change-point` and `failover commit` with the real ferryd, ferry-agent and
//! ferryctl: a failover's outputs (a local VHD, an Azurite page blob) moved to a later and an
//! earlier point equal `ferryctl restore` at that point, with only the blocks between the
//! points rewritten; an interrupted change is finished by the next; a committed failover's
//! disks get `409 failed_over` and the agent stops sending them, also when the commit was made
//! while ferryd was down.

use ferry_harness::datagen::{DataGenerator, Mix};
use ferry_tests::{ferryctl, Agent, Appliance, Ferryd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::failover::{passes, restored, run_ok, wait_for_points, MIB};

/// A raw disk image of `size` bytes: incompressible data in its first half, zeros after.
fn data_image(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.img"));
    let mut bytes = vec![0u8; size as usize];
    DataGenerator::new(7, Mix::INCOMPRESSIBLE).fill(&mut bytes[..(size / 2) as usize]);
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// Writes `length` bytes at `offset` of `image`: seeded noise, or zeros when `seed` is None.
fn overwrite(image: &Path, offset: u64, length: u64, seed: Option<u64>) {
    let mut bytes = vec![0u8; length as usize];
    if let Some(seed) = seed {
        DataGenerator::new(seed, Mix::INCOMPRESSIBLE).fill(&mut bytes);
    }
    let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    file.write_all_at(&bytes, offset).unwrap();
    file.sync_all().unwrap();
}

/// One pass of the agent; the point it made (waited for in storage).
fn point_after_pass(appliance: &Appliance, agent: &Agent) -> serde_json::Value {
    wait_for_points(appliance, &passes(agent, &[]))[0].clone()
}

#[tokio::test]
async fn change_point_rewrites_only_the_blocks_between_points_and_finishes_after_a_failure() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let image = data_image(scratch.path(), "moving", size);
    agent.configure(&[&image], "");
    let first = point_after_pass(&appliance, &agent);
    overwrite(&image, 2 * MIB, MIB, Some(11)); // new data over old
    overwrite(&image, 12 * MIB, 256 * 1024, Some(12)); // new data where zeros were
    let second = point_after_pass(&appliance, &agent);
    overwrite(&image, 5 * MIB, 512 * 1024, None); // zeros over data
    let third = point_after_pass(&appliance, &agent);
    let disk = first["disk_id"].as_str().unwrap();
    let config = appliance.dir.to_str().unwrap();
    let point = |p: &serde_json::Value| p["bookmark_id"].as_str().unwrap().to_string();
    let expected = |p: &serde_json::Value, name: &str| {
        restored(
            config,
            disk,
            &["--point", &point(p)],
            &scratch.path().join(format!("{name}.raw")),
        )
    };
    let (at_first, at_second, at_third) = (
        expected(&first, "first"),
        expected(&second, "second"),
        expected(&third, "third"),
    );

    let out = scratch.path().join("out");
    let failover = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--point",
        &point(&first),
        "--to-dir",
        out.to_str().unwrap(),
    ]);
    let id = failover["failover_id"].as_str().unwrap().to_string();
    let vhd = std::path::PathBuf::from(failover["disks"][0]["output"].as_str().unwrap());
    let footer_before = std::fs::read(&vhd).unwrap()[(size as usize)..].to_vec();
    let disk_bytes = |path: &Path| std::fs::read(path).unwrap()[..size as usize].to_vec();
    assert!(disk_bytes(&vhd) == at_first);

    // Forward two points: only the blocks the two passes wrote (1.75 MiB) are rewritten.
    let change = |which: &[&str]| {
        let mut args = vec!["--json", "failover", "change-point", &id, "--config", config];
        args.extend_from_slice(which);
        ferryctl(&args)
    };
    let forward = change(&["--point", &point(&third)]);
    assert!(forward.success, "{}{}", forward.stdout, forward.stderr);
    let report = forward.json();
    let changed = &report["disks"][0];
    assert_eq!(changed["seq"], third["seq"]);
    assert_eq!(changed["whole_disk"], false);
    assert_eq!(
        changed["changed_bytes"].as_u64().unwrap(),
        MIB + 256 * 1024 + 512 * 1024,
        "{report}"
    );
    assert_eq!(changed["zeroed_bytes"].as_u64().unwrap(), 512 * 1024);
    assert!(
        disk_bytes(&vhd) == at_third,
        "the VHD differs from the restore at the third point"
    );
    let whole = std::fs::read(&vhd).unwrap();
    assert_eq!(&whole[size as usize..], &footer_before[..], "the footer changed");
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert_eq!(listed[0]["disks"][0]["point"], point(&third).as_str());
    assert_eq!(listed[0]["state"], "done");

    // An interrupted change (its output gone missing) is recorded, blocks commit, and the next
    // change-point, towards another point, finishes it.
    let aside = scratch.path().join("aside.vhd");
    std::fs::rename(&vhd, &aside).unwrap();
    let failed = change(&["--point", &point(&first)]);
    assert!(!failed.success);
    assert!(
        failed.stdout.contains("run `ferryctl failover change-point"),
        "{}",
        failed.stdout
    );
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert_eq!(listed[0]["state"], "changing_point");
    let refused = ferryctl(&["failover", "commit", &id, "--config", config]);
    assert!(
        !refused.success && refused.stderr.contains("change-point"),
        "{}",
        refused.stderr
    );
    std::fs::rename(&aside, &vhd).unwrap();
    let back = change(&["--point", &point(&second)]);
    assert!(back.success, "{}{}", back.stdout, back.stderr);
    assert!(
        disk_bytes(&vhd) == at_second,
        "the VHD differs from the restore at the second point"
    );
    // The range rewritten covers every seq the output may have held (first..third).
    assert_eq!(
        back.json()["disks"][0]["changed_bytes"].as_u64().unwrap(),
        MIB + 256 * 1024 + 512 * 1024
    );
    let same = change(&["--point", &point(&second)]);
    assert!(same.success);
    assert_eq!(
        same.json()["disks"],
        serde_json::json!([]),
        "nothing to do at the same point"
    );

    // Test failovers are not changed or committed.
    let test = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--latest",
        "--format",
        "raw",
        "--to-dir",
        out.to_str().unwrap(),
        "--test",
    ]);
    let test_id = test["failover_id"].as_str().unwrap();
    for action in ["change-point", "commit"] {
        let mut args = vec!["failover", action, test_id, "--config", config];
        if action == "change-point" {
            args.extend_from_slice(&["--latest"]);
        }
        let refused = ferryctl(&args);
        assert!(
            !refused.success && refused.stderr.contains("test failover"),
            "{action}: {}",
            refused.stderr
        );
    }
    run_ok(&["--json", "failover", "cleanup", test_id, "--config", config]);

    // Committed: final.
    run_ok(&["--json", "failover", "commit", &id, "--config", config]);
    let refused = change(&["--point", &point(&first)]);
    assert!(
        !refused.success && refused.stdout.contains("is committed"),
        "{}",
        refused.stdout
    );
}

#[tokio::test]
async fn change_point_on_azurite_writes_and_clears_only_the_changed_pages() {
    let Some(endpoint) = ferry_tests::azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh sets it)");
        return;
    };
    let appliance = Appliance::init_azurite(&endpoint, "change-point", |c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let image = data_image(scratch.path(), "paged", size);
    agent.configure(&[&image], "");
    let first = point_after_pass(&appliance, &agent);
    overwrite(&image, MIB, 256 * 1024, None); // zeros over data: pages to clear
    overwrite(&image, 6 * MIB, 128 * 1024, Some(5)); // data where zeros were
    let second = point_after_pass(&appliance, &agent);
    let disk = first["disk_id"].as_str().unwrap();
    let config = appliance.dir.to_str().unwrap();
    let container = ferry_tests::unique_container("change-point-out");
    let failover = run_ok(&[
        "--json",
        "failover",
        "--config",
        config,
        "--disk",
        disk,
        "--point",
        first["bookmark_id"].as_str().unwrap(),
        "--to-azure-container",
        &container,
    ]);
    let id = failover["failover_id"].as_str().unwrap();
    let url = failover["disks"][0]["output"].as_str().unwrap();
    let name = url.split_once(&format!("/{container}/")).unwrap().1.to_string();

    let change = run_ok(&[
        "--json",
        "failover",
        "change-point",
        id,
        "--config",
        config,
        "--point",
        second["bookmark_id"].as_str().unwrap(),
    ]);
    let changed = &change["disks"][0];
    assert_eq!(changed["changed_bytes"].as_u64().unwrap(), 256 * 1024 + 128 * 1024);
    assert_eq!(changed["written_bytes"].as_u64().unwrap(), 128 * 1024);
    assert_eq!(changed["zeroed_bytes"].as_u64().unwrap(), 256 * 1024);

    let az_config = super::failover::azurite_config(&endpoint, &container);
    let reader = ferry_storage::azure::AzureBlob::connect(&az_config).await.unwrap();
    let bytes = ferry_storage::ObjectStorage::get(&reader, &name).await.unwrap();
    let at_second = restored(
        config,
        disk,
        &["--point", second["bookmark_id"].as_str().unwrap()],
        &scratch.path().join("second.raw"),
    );
    assert!(
        bytes[..size as usize] == at_second[..],
        "the blob's disk bytes differ from the restore at the new point"
    );
    super::failover::check_footer(&bytes[bytes.len() - 512..], bytes.len() as u64);
    let blob = ferry_storage::page_blob::PageBlob::open(&az_config, &container, &name)
        .await
        .unwrap();
    // Cleared pages no longer count as written.
    super::failover::assert_pages_are_the_non_zero_sectors(&blob, &bytes).await;
}

/// The batch the agent would send next for `disk`, straight from this test as the machine.
async fn put_next_batch(agent: &Agent, disk: Uuid) -> Result<ferry_client::BatchAck, ferry_client::ClientError> {
    let client = agent.identity().data_client().unwrap();
    let info = client.get_disk(disk).await?;
    let seq = info.durable_seq + 1;
    let mut batch = ferry_format::BatchEncoder::new(seq, 1);
    batch.write(0, &[0xAB; 4096]);
    client.put_batch(disk, seq, batch.finish()).await
}

/// Waits until ferryd shows `disk` as `state`.
async fn wait_for_state(agent: &Agent, disk: Uuid, state: &str) -> ferry_client::api::DiskInfo {
    let client = agent.identity().data_client().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = client.get_disk(disk).await.unwrap();
        if info.state.as_str() == state {
            return info;
        }
        assert!(Instant::now() < deadline, "disk {disk} never became {state}: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn commit_refuses_the_disks_batches_and_the_agent_stops_sending_them() {
    let appliance = Appliance::init(|c| c);
    let mut ferryd = Some(Ferryd::start(&appliance).await);
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let a = data_image(scratch.path(), "a", 4 * MIB);
    let b = data_image(scratch.path(), "b", 4 * MIB);
    agent.configure(&[&a, &b], "");
    let reports = passes(&agent, &[]);
    wait_for_points(&appliance, &reports);
    let disk_of = |path: &Path| -> Uuid {
        let name = path.file_name().unwrap().to_str().unwrap();
        let report = reports.iter().find(|r| r["name"] == name).expect("a report per disk");
        report["disk_id"].as_str().unwrap().parse().unwrap()
    };
    let (disk_a, disk_b) = (disk_of(&a), disk_of(&b));
    let config = appliance.dir.to_str().unwrap();
    let out = scratch.path().join("out");
    let fail_over = |disk: Uuid| {
        run_ok(&[
            "--json",
            "failover",
            "--config",
            config,
            "--disk",
            &disk.to_string(),
            "--latest-processed",
            "--format",
            "raw",
            "--to-dir",
            out.to_str().unwrap(),
        ])["failover_id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Disk a: committed while ferryd runs; it is told at once.
    let failover_a = fail_over(disk_a);
    assert!(
        put_next_batch(&agent, disk_a).await.is_ok(),
        "not committed yet: batches are taken"
    );
    let committed = run_ok(&["--json", "failover", "commit", &failover_a, "--config", config]);
    assert_eq!(committed["ferryd_told"], true);
    assert_eq!(committed["refused_by_ferryd"], serde_json::json!([disk_a.to_string()]));
    let refused = put_next_batch(&agent, disk_a).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ferry_client::api::ErrorCode::FailedOver),
        "{refused}"
    );
    assert!(refused.to_string().contains(&failover_a), "{refused}");
    let info = wait_for_state(&agent, disk_a, "failed_over").await;
    assert_eq!(info.failover_id.map(|f| f.to_string()), Some(failover_a.clone()));
    assert!(
        put_next_batch(&agent, disk_b).await.is_ok(),
        "disk b is not failed over"
    );
    let listed = run_ok(&["--json", "failover", "list", "--config", config]);
    assert_eq!(listed[0]["state"], "committed");
    // Again: no change, ferryd told once more.
    run_ok(&["--json", "failover", "commit", &failover_a, "--config", config]);

    // The agent: disk a stops with the reason; disk b goes on.
    let run = agent.run_once(&[]);
    assert!(!run.success, "a failed-over disk is an error for run --once");
    assert!(run.stderr.contains("was failed over"), "{}", run.stderr);
    let status = agent.status().expect("the agent's status");
    let phase_of = |disk: Uuid| {
        status["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["disk_id"] == disk.to_string())
            .map(|d| d["phase"].clone())
    };
    assert_eq!(phase_of(disk_a), Some(serde_json::json!("failed_over")), "{status}");
    assert_eq!(phase_of(disk_b), Some(serde_json::json!("continuous")), "{status}");

    // Disk b: committed while ferryd is down; ferryd applies it from the vault when it starts,
    // and disk a's mark survived the restart.
    ferryd.take().unwrap().terminate().await;
    let failover_b = fail_over(disk_b);
    let committed = run_ok(&["--json", "failover", "commit", &failover_b, "--config", config]);
    assert_eq!(committed["ferryd_told"], false);
    let _ferryd = Ferryd::start(&appliance).await;
    assert_eq!(
        wait_for_state(&agent, disk_a, "failed_over")
            .await
            .failover_id
            .map(|f| f.to_string()),
        Some(failover_a)
    );
    let info = wait_for_state(&agent, disk_b, "failed_over").await;
    assert_eq!(info.failover_id.map(|f| f.to_string()), Some(failover_b));
    let refused = put_next_batch(&agent, disk_b).await.unwrap_err();
    assert_eq!(refused.code(), Some(ferry_client::api::ErrorCode::FailedOver));
}
