//! Reprotect and failback with the real ferryd, ferry-agent and ferryctl (local target and
//! Azurite): a disk replicated, failed over, moved to a later point and committed; then the failed-over copy and the
//! original changed independently; the failed-over machine's agent replicates back with
//! `reprotect_from` (its first pass sends only what changed there); `ferryctl failback` writes
//! onto the original only the blocks that differ; the original then equals the failed-over copy
//! byte for byte, and forward replication resumes without an initial copy.

use ferry_harness::datagen::{DataGenerator, Mix};
use ferry_tests::{ferryctl, Agent, Appliance, Ferryd};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::failover::{passes, restored, run_ok, wait_for_points, MIB};

const BLOCK: u64 = 64 * 1024;

/// Overwrites `count` distinct 64 KiB blocks of `image` chosen by `seed` (every eighth one with
/// zeros, the others with fresh noise); returns the indexes of those whose content changed (a
/// block of zeros zeroed again did not).
fn change_blocks(image: &Path, size: u64, count: usize, seed: u64) -> BTreeSet<u64> {
    let blocks = size / BLOCK;
    let mut chosen = BTreeSet::new();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while chosen.len() < count {
        // xorshift: a spread of blocks, the same for a seed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chosen.insert(state % blocks);
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
    let mut changed = BTreeSet::new();
    for (i, block) in chosen.iter().enumerate() {
        let mut data = vec![0u8; BLOCK as usize];
        if i % 8 != 7 {
            DataGenerator::new(seed * 1_000_003 + block, Mix::INCOMPRESSIBLE).fill(&mut data);
        }
        let mut before = vec![0u8; BLOCK as usize];
        file.read_exact_at(&mut before, block * BLOCK).unwrap();
        if before != data {
            changed.insert(*block);
        }
        file.write_all_at(&data, block * BLOCK).unwrap();
    }
    file.sync_all().unwrap();
    changed
}

/// Whether two files hold the same bytes (without printing megabytes when they do not).
fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Where failback writes: the original image file, or a loop device over it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Onto {
    ImageFile,
    LoopDevice,
}

async fn reprotect_and_fail_back(appliance: Appliance, size: u64, onto: Onto) {
    let _ferryd = Ferryd::start(&appliance).await;
    let config = appliance.dir.to_str().unwrap().to_string();
    let scratch = tempfile::tempdir().unwrap();
    // The original: noise in three quarters, zeros in the rest.
    let original = scratch.path().join("original.img");
    let mut bytes = vec![0u8; size as usize];
    DataGenerator::new(3, Mix::INCOMPRESSIBLE).fill(&mut bytes[..(size / 4 * 3) as usize]);
    std::fs::write(&original, &bytes).unwrap();
    drop(bytes);

    let forward = Agent::register(&appliance);
    forward.configure(&[&original], "");
    let first = wait_for_points(&appliance, &passes(&forward, &[]))[0].clone();
    let disk = first["disk_id"].as_str().unwrap().to_string();
    let size_blocks = size / BLOCK;
    change_blocks(&original, size, (size_blocks / 200) as usize, 5);
    let second = wait_for_points(&appliance, &passes(&forward, &[]))[0].clone();

    // Failover to a raw file at the first point, moved to the second (the stored digests move
    // with it: stale ones would make the reprotect below send more), then committed.
    let out = scratch.path().join("failover");
    let failover = run_ok(&[
        "--json",
        "failover",
        "--config",
        &config,
        "--disk",
        &disk,
        "--point",
        first["bookmark_id"].as_str().unwrap(),
        "--to-dir",
        out.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    let id = failover["failover_id"].as_str().unwrap().to_string();
    run_ok(&[
        "--json",
        "failover",
        "change-point",
        &id,
        "--config",
        &config,
        "--point",
        second["bookmark_id"].as_str().unwrap(),
    ]);
    let failed_over = std::path::PathBuf::from(failover["disks"][0]["output"].as_str().unwrap());
    let listed = run_ok(&["--json", "failover", "list", "--config", &config]);
    assert_eq!(listed[0]["failover_id"], id.as_str());

    // Before commit, a reprotect is refused with the reason.
    let reverse = Agent::register(&appliance);
    reverse.configure(&[&failed_over], &format!("reprotect_from = \"{id}\"\n"));
    let early = reverse.run_once(&[]);
    assert!(!early.success, "a reprotect from an uncommitted failover ran");
    assert!(early.stderr.contains("commit it first"), "{}", early.stderr);
    run_ok(&["--json", "failover", "commit", &id, "--config", &config]);

    // 3% of the failed-over copy and 1% of the original change, independently.
    let there = change_blocks(&failed_over, size, (size_blocks * 3 / 100) as usize, 17);
    let here = change_blocks(&original, size, (size_blocks / 100) as usize, 29);
    let union: BTreeSet<u64> = there.union(&here).copied().collect();

    // Reprotect: the first pass of the reverse replication sends only what changed there.
    let reports = passes(&reverse, &[]);
    let report = &reports[0];
    let changed_there = there.len() as u64;
    let sent_blocks = report["changed_blocks"].as_u64().unwrap();
    assert!(
        sent_blocks >= changed_there && sent_blocks * 10 <= changed_there * 11,
        "the reprotect's first pass sent {sent_blocks} blocks for {changed_there} changed: {report}"
    );
    let sent_bytes = report["sent_bytes"].as_u64().unwrap();
    assert!(
        sent_bytes * 10 <= changed_there * BLOCK * 11,
        "the reprotect's first pass sent {sent_bytes} bytes for {} of changed blocks",
        changed_there * BLOCK
    );
    let back = wait_for_points(&appliance, &reports)[0].clone();
    let reverse_disk = back["disk_id"].as_str().unwrap().to_string();
    // The reprotected disk restores whole (the failover point, then its own batches).
    let copy = scratch.path().join("reverse-restored.raw");
    let restored_bytes = restored(&config, &reverse_disk, &["--latest"], &copy);
    assert!(
        restored_bytes == std::fs::read(&failed_over).unwrap(),
        "the reprotected disk does not restore to the failed-over copy"
    );
    drop(restored_bytes);

    // Bad input changes nothing.
    let small = scratch.path().join("small.img");
    std::fs::File::create(&small).unwrap().set_len(size / 2).unwrap();
    let failback = |disk: &str, failover: &str, onto: &Path| {
        ferryctl(&[
            "--json",
            "failback",
            "--config",
            &config,
            "--failover",
            failover,
            "--disk",
            disk,
            "--latest",
            "--onto",
            onto.to_str().unwrap(),
            "--agent-state",
            forward.state_dir.to_str().unwrap(),
        ])
    };
    let refused = failback(&disk, &id, &small);
    assert!(
        !refused.success
            && (refused.stderr.contains("smaller than the disk") || refused.stdout.contains("smaller than the disk")),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let refused = failback(&reverse_disk, &id, &original);
    assert!(
        !refused.success && (refused.stderr.contains("has no disk") || refused.stdout.contains("has no disk")),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = failback(&disk, &unknown, &original);
    assert!(
        !refused.success && (refused.stderr.contains("no failover") || refused.stdout.contains("no failover")),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let mut loops = super::failover::Loops::default();
    let target = match onto {
        Onto::ImageFile => original.clone(),
        Onto::LoopDevice => {
            let mounted = loops.mounted(scratch.path(), size);
            let refused = failback(&disk, &id, Path::new(&mounted));
            assert!(
                !refused.success
                    && (refused.stderr.contains("is mounted at") || refused.stdout.contains("is mounted at")),
                "{}{}",
                refused.stdout,
                refused.stderr
            );
            std::path::PathBuf::from(loops.attach(&original).expect("a loop device"))
        }
    };
    assert!(!same_bytes(&original, &failed_over));

    // Failback: only the blocks changed on either side are written, and verified.
    let done = failback(&disk, &id, &target);
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    let report = done.json();
    let written = report["written_bytes"].as_u64().unwrap();
    let differing = union.len() as u64 * BLOCK;
    assert!(
        written >= differing && written * 10 <= differing * 11,
        "failback wrote {written} bytes for {differing} of changed blocks: {report}"
    );
    assert_eq!(report["verified_bytes"].as_u64().unwrap(), written);
    assert_eq!(
        report["changed_here_blocks"].as_u64().unwrap(),
        here.len() as u64,
        "{report}"
    );
    assert_eq!(
        report["changed_there_blocks"].as_u64().unwrap(),
        changed_there,
        "{report}"
    );
    assert_eq!(report["read_bytes"].as_u64().unwrap(), size + written);
    assert_eq!(report["agent_map_written"], true);
    assert_eq!(report["ferryd_told"], true);
    drop(loops); // the loop device's writes are in the file once it is detached
    assert!(
        same_bytes(&original, &failed_over),
        "after failback the original differs from the failed-over copy"
    );

    // Forward replication resumes without an initial copy: its next pass sends what failback
    // changed, and its point restores equal to the disk.
    let reports = passes(&forward, &[]);
    let report = &reports[0];
    assert_eq!(report["phase"], "continuous", "{report}");
    let resent = report["changed_blocks"].as_u64().unwrap();
    assert!(
        resent * 10 <= union.len() as u64 * 11,
        "forward replication after failback sent {resent} blocks for {} changed: {report}",
        union.len()
    );
    let point = wait_for_points(&appliance, &reports)[0].clone();
    let again = restored(
        &config,
        &disk,
        &["--point", point["bookmark_id"].as_str().unwrap()],
        &scratch.path().join("forward-restored.raw"),
    );
    assert!(
        again == std::fs::read(&original).unwrap(),
        "the point after failback does not restore to the disk"
    );
}

#[tokio::test]
async fn reprotect_and_failback_on_a_local_target_write_only_what_differs() {
    reprotect_and_fail_back(Appliance::init(|c| c), 256 * MIB, Onto::ImageFile).await;
}

#[tokio::test]
async fn failback_onto_a_block_device_refusing_a_mounted_one() {
    let probe = tempfile::tempdir().unwrap();
    let file = probe.path().join("probe");
    std::fs::File::create(&file).unwrap().set_len(MIB).unwrap();
    if super::failover::Loops::default().attach(&file).is_none() {
        super::failover::Loops::unavailable();
        return;
    }
    reprotect_and_fail_back(Appliance::init(|c| c), 64 * MIB, Onto::LoopDevice).await;
}

#[tokio::test]
async fn reprotect_and_failback_on_azurite_write_only_what_differs() {
    let Some(endpoint) = ferry_tests::azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set");
        return;
    };
    reprotect_and_fail_back(
        Appliance::init_azurite(&endpoint, "failback", |c| c),
        64 * MIB,
        Onto::ImageFile,
    )
    .await;
}
