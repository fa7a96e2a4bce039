//! Scale-out disk ownership with real ferryd processes on one vault (docs/SCALE-OUT.md): a
//! process server killed with batches acknowledged but not uploaded has its disks taken over
//! by the others within the lease plus one renewal, the sender resends from the new owner's
//! `durable_seq`, and every disk restores equal to its model; a process server paused past its
//! leases and resumed finishes an upload, and nothing it wrote is used by any restore; the
//! owner records show one owner per epoch.
//!
//! The senders are the protocol client (ferry-client) keeping every batch they sent, as any
//! sender must until `uploaded_seq` covers it. Leases are 15 s here (`[server] lease_secs`).

use bytes::Bytes;
use ferry_client::api::ErrorCode;
use ferry_client::{BatchSender, ClientError, DataClient, DiskSpec, Identity, RetryPolicy};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind};
use ferry_tests::{azurite_endpoint, ferryctl, Appliance, Ferryd};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::failover::run_ok;

const LEASE_SECS: u64 = 15;
/// Renewals run every third of the lease.
const RENEW_SECS: u64 = LEASE_SECS / 3;
const DISK_BYTES: u64 = 1 << 20;
const WRITE_BYTES: usize = 64 << 10;

fn short_leases(text: String) -> String {
    assert!(text.contains("\nlease_secs = 60\n"), "ferry.toml documents lease_secs");
    text.replacen("\nlease_secs = 60\n", &format!("\nlease_secs = {LEASE_SECS}\n"), 1)
}

fn join_with_short_leases(site: &Appliance, name: &str) -> Appliance {
    let joined = site
        .join(name)
        .unwrap_or_else(|run| panic!("ferryctl init --join failed: {}{}", run.stdout, run.stderr));
    let config = joined.dir.join("ferry.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, short_leases(text)).unwrap();
    joined
}

fn spec() -> DiskSpec {
    DiskSpec {
        name: "sda".into(),
        size_bytes: DISK_BYTES,
        sector_size: 512,
        write_ordered: false,
        reprotect_from: None,
    }
}

/// A disk as its sender knows it: every batch sent (to resend after a takeover) and the image
/// they make.
struct ModelDisk {
    id: Uuid,
    batches: Vec<Bytes>,
    image: Vec<u8>,
}

impl ModelDisk {
    fn new() -> Self {
        Self {
            id: Uuid::new_v4(),
            batches: Vec::new(),
            image: vec![0; DISK_BYTES as usize],
        }
    }

    /// The next batch: 64 KiB of `variant`'s pattern at a place that depends on the seq, and a
    /// crash bookmark `bookmark` when given.
    fn next(&mut self, variant: u8, bookmark: Option<&str>) -> (u64, Bytes) {
        let seq = self.batches.len() as u64 + 1;
        let offset = (seq as usize * 3 % 16) * WRITE_BYTES;
        let data: Vec<u8> = (0..WRITE_BYTES)
            .map(|i| (i as u8).wrapping_mul(7) ^ (seq as u8) ^ variant)
            .collect();
        self.image[offset..offset + WRITE_BYTES].copy_from_slice(&data);
        let mut encoder = BatchEncoder::new(seq, 1_790_000_000_000 + seq);
        encoder.write(offset as u64, &data);
        if let Some(id) = bookmark {
            encoder.bookmark(&Bookmark {
                id: BookmarkId::new(id).unwrap(),
                kind: BookmarkKind::Crash,
                tag: None,
                group_id: None,
            });
        }
        let batch = encoder.finish();
        self.batches.push(batch.clone());
        (seq, batch)
    }

    /// Forgets the batches after `seq` (their content changes: the disk moved on).
    fn rewind_to(&mut self, seq: u64) {
        self.batches.truncate(seq as usize);
        self.image = vec![0; DISK_BYTES as usize];
        let kept = std::mem::take(&mut self.batches);
        for batch in &kept {
            let decoded = ferry_format::batch::decode(
                batch.clone(),
                0,
                ferry_format::batch::DiskGeometry {
                    size_bytes: DISK_BYTES,
                    sector_size: 512,
                },
                u32::MAX - 40,
            );
            if let Ok(decoded) = decoded {
                for record in decoded.records {
                    if let ferry_format::batch::Record::Write { offset, data } = record {
                        let at = offset as usize;
                        self.image[at..at + data.len()].copy_from_slice(&data);
                    }
                }
            }
        }
        self.batches = kept;
    }
}

async fn send(client: &DataClient, disk: Uuid, seq: u64, batch: Bytes) {
    let sender = BatchSender::new(client.clone(), disk, 4, RetryPolicy::default());
    sender
        .send_one(seq, batch)
        .await
        .unwrap_or_else(|e| panic!("batch {seq} of disk {disk}: {e}"));
}

/// `PUT`s the disk at `client`'s process server until it is held there (another holding the
/// lease answers `not_owner`), at most `within`; the disk's state as the new owner sees it.
async fn claim(client: &DataClient, disk: Uuid, within: Duration) -> (ferry_client::DiskInfo, Duration) {
    let started = Instant::now();
    loop {
        match client.put_disk(disk, &spec()).await {
            Ok((_, info)) => return (info, started.elapsed()),
            Err(ClientError::Status { code, .. })
                if matches!(ErrorCode::parse(&code), Some(ErrorCode::NotOwner | ErrorCode::Busy)) =>
            {
                assert!(
                    started.elapsed() < within,
                    "disk {disk} was not taken over within {within:?}: still {code}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("claiming disk {disk}: {e}"),
        }
    }
}

/// A client of `identity` at `endpoint`.
fn client_at(identity: &Identity, endpoint: &str) -> DataClient {
    let mut identity = identity.clone();
    identity.data_endpoint = endpoint.to_string();
    identity.data_client().unwrap()
}

async fn wait_for_point(config: &str, disk: Uuid, bookmark: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let points = ferryctl(&["--json", "points", "--config", config, "--disk", &disk.to_string()]);
        if points.success && points.stdout.contains(&format!("\"{bookmark}\"")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "point {bookmark} of disk {disk} never reached the vault: {}{}",
            points.stdout,
            points.stderr
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn restore(config: &str, disk: Uuid, selector: &[&str]) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("disk.raw");
    let disk = disk.to_string();
    let mut args = vec!["--json", "restore", "--config", config, "--disk", &disk];
    args.extend_from_slice(selector);
    args.extend_from_slice(&["--out", image.to_str().unwrap()]);
    run_ok(&args);
    std::fs::read(&image).unwrap()
}

/// The target of `site`'s vault, opened as ferryctl opens it.
async fn vault_storage(site: &Appliance) -> std::sync::Arc<dyn ferry_storage::ObjectStorage> {
    let layout = ferry_config::ApplianceLayout::new(&site.dir);
    let config = ferry_config::ApplianceConfig::load(&layout.config_file()).unwrap();
    ferry_storage::open_target(&config.resolved_target(&layout), Default::default())
        .await
        .unwrap()
}

/// The owner records of `disk` in `site`'s vault.
async fn owner_history(site: &Appliance, disk: Uuid) -> ferry_vault::owners::History {
    let layout = ferry_config::ApplianceLayout::new(&site.dir);
    let storage = vault_storage(site).await;
    let key = ferry_format::VaultKey::parse_text(&std::fs::read_to_string(layout.vault_key_file()).unwrap()).unwrap();
    let vault =
        ferry_format::VaultDescriptor::parse(&storage.get(ferry_format::names::VAULT_JSON).await.unwrap()).unwrap();
    let keyring = vault.open(&key).unwrap();
    ferry_vault::owners::History::read(&*storage, &keyring.disk_key(disk), disk)
        .await
        .unwrap()
}

/// One owner per epoch, epochs counting up from 0 without a gap, each starting where the last
/// left off or later: no seq ever had two owners.
fn assert_one_owner_per_epoch(history: &ferry_vault::owners::History, owners: &[&str]) {
    let epochs: Vec<u64> = history.records.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, (0..owners.len() as u64).collect::<Vec<_>>(), "{history:?}");
    let names: Vec<&str> = history.records.iter().map(|r| r.owner_name.as_str()).collect();
    assert_eq!(names, owners, "{history:?}");
    assert!(
        history.records.windows(2).all(|w| w[0].since_seq <= w[1].since_seq),
        "{history:?}"
    );
}

#[tokio::test]
async fn a_killed_process_server_s_disks_are_taken_over_within_the_lease_and_restore_exactly() {
    let Some(endpoint) = azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh starts Azurite)");
        return;
    };
    let site = Appliance::init_azurite(&endpoint, "takeover-kill", short_leases);
    let _site_ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();
    let ps2 = join_with_short_leases(&site, "ps-2");
    let ps3 = join_with_short_leases(&site, "ps-3");
    let _ps2_ferryd = Ferryd::start(&ps2).await;
    // The victim uploads nothing in time: its change sets take two minutes each, so every
    // batch it acknowledges is in its cache only when it dies.
    let mut ps3_ferryd = Ferryd::start_with_env(&ps3, &[("FERRY_TEST_SLOW_NAMES", "/log/000:120000")]).await;

    // Three machines, placed one per process server by the configuration server; 8 disks.
    let mut machines = Vec::new();
    for name in ["m1", "m2", "m3"] {
        machines.push(site.register(name).await);
    }
    let endpoints: Vec<&str> = machines.iter().map(|m| m.data_endpoint.as_str()).collect();
    let mut sorted = endpoints.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "placement spreads machines: {endpoints:?}");
    let victim = machines
        .iter()
        .position(|m| m.data_endpoint == ps3.data)
        .expect("a machine on ps-3");
    let mut disks: Vec<(usize, ModelDisk)> = (0..8).map(|i| (i % 3, ModelDisk::new())).collect();
    for (machine, disk) in disks.iter_mut() {
        let client = machines[*machine].data_client().unwrap();
        client.put_disk(disk.id, &spec()).await.unwrap();
        for seq in 1..=4 {
            let (_, batch) = disk.next(1, (seq == 4).then_some("p-4"));
            send(&client, disk.id, seq, batch).await;
        }
    }
    for (machine, disk) in &disks {
        if *machine != victim {
            wait_for_point(config, disk.id, "p-4").await;
        }
    }

    // SIGKILL ps-3 with its disks' batches acknowledged but not uploaded.
    ps3_ferryd.kill();
    let killed = Instant::now();
    // Its machine asks the configuration server where to send now: ps-3 fails its health
    // probe, so it is moved.
    let management = client_at(&machines[victim], &site.management);
    let placement = management.placement(machines[victim].machine_id).await.unwrap();
    assert!(placement.moved, "{placement:?}");
    assert!(
        placement.data_endpoint == site.data || placement.data_endpoint == ps2.data,
        "{placement:?}"
    );
    let moved = client_at(&machines[victim], &placement.data_endpoint);
    let promised = Duration::from_secs(LEASE_SECS + RENEW_SECS);
    for (machine, disk) in disks.iter_mut().filter(|(m, _)| *m == victim) {
        let (info, _) = claim(&moved, disk.id, promised + Duration::from_secs(5)).await;
        let after_kill = killed.elapsed();
        eprintln!("disk {} taken over {after_kill:?} after the kill", disk.id);
        assert!(
            after_kill <= promised + Duration::from_secs(2),
            "disk {} taken over {after_kill:?} after the kill (promised: lease + one renewal, {promised:?})",
            disk.id
        );
        // Nothing of it reached storage: the new owner starts from seq 1 and the sender
        // resends every batch the dead server acknowledged.
        assert_eq!((info.durable_seq, info.uploaded_seq), (0, 0), "machine {machine}");
        for (index, batch) in disk.batches.clone().into_iter().enumerate() {
            send(&moved, disk.id, index as u64 + 1, batch).await;
        }
    }
    // Every disk goes on (the moved ones at their new process server) and restores exactly.
    for (machine, disk) in disks.iter_mut() {
        let client = if *machine == victim {
            moved.clone()
        } else {
            machines[*machine].data_client().unwrap()
        };
        for seq in 5..=6 {
            let (_, batch) = disk.next(2, (seq == 6).then_some("p-6"));
            send(&client, disk.id, seq, batch).await;
        }
    }
    for (machine, disk) in &disks {
        wait_for_point(config, disk.id, "p-6").await;
        let restored = restore(config, disk.id, &["--latest"]);
        assert!(
            restored == disk.image,
            "disk {} (machine {machine}) restores equal to its model",
            disk.id
        );
        let history = owner_history(&site, disk.id).await;
        let first = endpoints[*machine];
        if *machine == victim {
            assert_one_owner_per_epoch(&history, &[first, &placement.data_endpoint]);
        } else {
            assert_one_owner_per_epoch(&history, &[first]);
        }
    }
    let shown = ferry_tests::scrape_metrics(&ps2.metrics).await;
    assert!(shown.contains("ferry_disk_leases_held"), "{shown}");
}

#[tokio::test]
async fn a_paused_process_server_loses_its_disks_and_nothing_it_writes_after_is_used_local() {
    paused_process_server(Appliance::init(short_leases)).await;
}

#[tokio::test]
async fn a_paused_process_server_loses_its_disks_and_nothing_it_writes_after_is_used_azurite() {
    let Some(endpoint) = azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh starts Azurite)");
        return;
    };
    paused_process_server(Appliance::init_azurite(&endpoint, "takeover-pause", short_leases)).await;
}

async fn paused_process_server(site: Appliance) {
    let _site_ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();
    let ps2 = join_with_short_leases(&site, "ps-2");
    // ps-2's change sets wait 20 s in storage calls: one is past its ownership check and on
    // its way when it is paused.
    let ps2_ferryd = Ferryd::start_with_env(&ps2, &[("FERRY_TEST_SLOW_NAMES", "/log/000:20000")]).await;
    let _m1 = site.register("m1").await;
    let m2 = site.register("m2").await;
    assert_eq!(
        m2.data_endpoint, ps2.data,
        "the second machine goes to the idle process server"
    );
    let ps2_client = m2.data_client().unwrap();
    let mut disk = ModelDisk::new();
    ps2_client.put_disk(disk.id, &spec()).await.unwrap();
    for seq in 1..=4 {
        let (_, batch) = disk.next(1, (seq == 4).then_some("p-4"));
        send(&ps2_client, disk.id, seq, batch).await;
    }
    // Wait until its upload is in flight (in the slow storage call), then freeze it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ferryctl(&["--json", "status", "--config", ps2.dir.to_str().unwrap()]);
        if status.success && status.json()["utilisation"]["uploads_in_flight"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ps-2 never started its upload: {}",
            status.stdout
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    ps2_ferryd.pause();
    let paused = Instant::now();

    // The machine is moved to the configuration server, which takes the disk over once ps-2's
    // lease runs out; the disk's content differs from here on (the agent's disk moved on, say).
    let management = client_at(&m2, &site.management);
    let placement = management.placement(m2.machine_id).await.unwrap();
    assert_eq!(
        (placement.moved, placement.data_endpoint.as_str()),
        (true, site.data.as_str())
    );
    let site_client = client_at(&m2, &site.data);
    let promised = Duration::from_secs(LEASE_SECS + RENEW_SECS);
    let (info, _) = claim(&site_client, disk.id, promised + Duration::from_secs(5)).await;
    assert!(paused.elapsed() <= promised + Duration::from_secs(2));
    assert_eq!(info.durable_seq, 0, "ps-2 stored nothing before it was paused");
    disk.rewind_to(0);
    for seq in 1..=4 {
        let (_, batch) = disk.next(9, (seq == 4).then_some("q-4"));
        send(&site_client, disk.id, seq, batch).await;
    }
    wait_for_point(config, disk.id, "q-4").await;

    // ps-2 resumes: its upload in flight completes after the takeover.
    ps2_ferryd.resume();
    let stale = format!("ferry/v1/disks/{}/log/{:020}-{:020}.fseal", disk.id, 1, 4);
    let storage = vault_storage(&site).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while storage.head(&stale).await.is_err() {
        assert!(Instant::now() < deadline, "ps-2's upload never landed at {stale}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It then finds its lease taken and sends its machine on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ps2_client.get_disk(disk.id).await {
            Err(ClientError::Status { code, .. }) if code == "not_owner" => break,
            other => {
                assert!(Instant::now() < deadline, "ps-2 still serves the disk: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    // Nothing ps-2 wrote after the takeover is used: every restore is the new owner's.
    assert!(restore(config, disk.id, &["--latest"]) == disk.image);
    assert!(restore(config, disk.id, &["--seq", "4"]) == disk.image);
    let points = ferryctl(&["--json", "points", "--config", config, "--disk", &disk.id.to_string()]);
    assert!(
        points.stdout.contains("q-4") && !points.stdout.contains("p-4"),
        "{}",
        points.stdout
    );
    let history = owner_history(&site, disk.id).await;
    assert_one_owner_per_epoch(&history, &[ps2.data.as_str(), site.data.as_str()]);
    assert_eq!(history.records.iter().map(|r| r.since_seq).collect::<Vec<_>>(), [1, 1]);
    let vault_json = storage.get(ferry_format::names::VAULT_JSON).await.unwrap();
    let vault = ferry_format::VaultDescriptor::parse(&vault_json).unwrap();
    assert_eq!(vault.format, ferry_format::vault::VAULT_FORMAT_EPOCHS);
}

fn last_bookmark(status: &serde_json::Value) -> Option<String> {
    status["disks"][0]["last_bookmark"]["id"].as_str().map(str::to_string)
}

/// The next bookmark the agent makes after `after` (its passes run every second).
fn next_bookmark(agent: &ferry_tests::Agent, child: &mut std::process::Child, after: &str) -> String {
    agent.poll_status(child, "a new bookmark", 120, |status| {
        last_bookmark(status).filter(|id| id != after)
    })
}

fn point_ids(config: &str, disk: &str) -> Vec<String> {
    let points = run_ok(&["--json", "points", "--config", config, "--disk", disk]);
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bookmark_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn planned_moves_and_a_drain_under_load_lose_no_point_and_report_their_rpo() {
    let site = Appliance::init(short_leases);
    let _site_ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();
    let ps2 = join_with_short_leases(&site, "ps-2");
    let _ps2_ferryd = Ferryd::start(&ps2).await;
    let agent = ferry_tests::Agent::register(&site);
    assert_eq!(
        agent.identity().data_endpoint,
        site.data,
        "the first machine stays on the configuration server"
    );
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("disk.img");
    // Rewritten in place (never truncated: a pass may be reading it).
    let write_image = |seed: u8| {
        use std::os::unix::fs::FileExt;
        let data: Vec<u8> = (0..(16usize << 20))
            .map(|i| ((i / 4096) as u8).wrapping_mul(seed) ^ (i as u8))
            .collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&image)
            .unwrap();
        file.write_all_at(&data, 0).unwrap();
        file.sync_all().unwrap();
    };
    write_image(3);
    agent.configure(
        &[&image],
        "[bookmarks]\ncrash_interval_secs = 1\napp_interval_secs = 0\n",
    );
    let mut child = agent.spawn(false);
    let first = agent.poll_status(&mut child, "a first bookmark", 120, last_bookmark);
    let disk = agent.status().unwrap()["disks"][0]["disk_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Load: the disk changes while the agent keeps passing.
    write_image(5);
    let machine = agent.identity().machine_id.to_string();

    // A planned move to ps-2: the configuration server queues it, the agent releases the disk
    // (the site uploads what it holds), sets it up at ps-2 and reports the time it took no data.
    let moved = ferryctl(&[
        "--json",
        "ps",
        "move",
        "--config",
        config,
        "--machine",
        &machine,
        "--to",
        "ps-2",
        "--wait",
        "120",
    ]);
    assert!(
        moved.success,
        "ps move failed: {}{}\n{}",
        moved.stdout,
        moved.stderr,
        agent.log_text()
    );
    let report = &moved.json()[0];
    assert_eq!(report["move"]["from"], site.data.as_str(), "{report}");
    assert_eq!(report["move"]["to"], ps2.data.as_str(), "{report}");
    assert_eq!(report["outcome"]["ok"], true, "{report}");
    eprintln!("move: {report}");
    let rpo_ms = report["outcome"]["move_ms"].as_f64().expect("the move reports its RPO");
    assert!(rpo_ms > 0.0, "{report}");
    assert!(
        report["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("no data was taken for"),
        "{report}"
    );
    assert_eq!(
        agent.identity().data_endpoint,
        ps2.data,
        "the agent sends to ps-2 from now on"
    );
    let before_move = point_ids(config, &disk);
    assert!(before_move.contains(&first), "{before_move:?}");

    // Passes go on at ps-2 (every bookmark after the one the agent had when it reported the
    // move); with the disk left alone since, their points restore equal to it.
    let at_move = last_bookmark(&agent.status().unwrap()).unwrap();
    let mut after = next_bookmark(&agent, &mut child, &at_move);
    after = next_bookmark(&agent, &mut child, &after);
    wait_for_point(config, disk.parse().unwrap(), &after).await;
    assert!(
        restore(config, disk.parse().unwrap(), &["--point", &after]) == std::fs::read(&image).unwrap(),
        "the point after the move restores equal to the disk"
    );
    let listed = point_ids(config, &disk);
    for id in &before_move {
        assert!(listed.contains(id), "point {id} was lost in the move: {listed:?}");
    }
    // Nothing was resent: the new owner started where storage ended, so no resync ran.
    let status = agent.status().unwrap();
    assert!(status["disks"][0]["resync_reason"].is_null(), "{status}");
    assert!(!agent.log_text().contains("resync:"), "{}", agent.log_text());
    let history = owner_history(&site, disk.parse().unwrap()).await;
    assert_one_owner_per_epoch(&history, &[site.data.as_str(), ps2.data.as_str()]);

    // Drain ps-2: its machine comes back to the configuration server, under load again.
    write_image(7);
    let drained = ferryctl(&["--json", "ps", "drain", "ps-2", "--config", config, "--wait", "120"]);
    assert!(
        drained.success,
        "ps drain failed: {}{}\n{}",
        drained.stdout,
        drained.stderr,
        agent.log_text()
    );
    let report = &drained.json()[0];
    assert_eq!(
        (report["move"]["to"].as_str(), report["outcome"]["ok"].as_bool()),
        (Some(site.data.as_str()), Some(true)),
        "{report}"
    );
    assert!(report["outcome"]["move_ms"].as_f64().is_some(), "{report}");
    let at_drain = last_bookmark(&agent.status().unwrap()).unwrap();
    let mut again = next_bookmark(&agent, &mut child, &at_drain);
    again = next_bookmark(&agent, &mut child, &again);
    wait_for_point(config, disk.parse().unwrap(), &again).await;
    assert!(restore(config, disk.parse().unwrap(), &["--point", &again]) == std::fs::read(&image).unwrap());
    let listed_after_drain = point_ids(config, &disk);
    for id in &listed {
        assert!(listed_after_drain.contains(id), "point {id} was lost in the drain");
    }
    // A drained process server gets no new machine.
    let newcomer = site.register("after-drain").await;
    assert_eq!(newcomer.data_endpoint, site.data);
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
    let _ = child.wait();
}

#[tokio::test]
async fn an_agent_whose_process_server_dies_moves_on_and_resends_only_what_was_lost() {
    let site = Appliance::init(short_leases);
    let _site_ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();
    let ps2 = join_with_short_leases(&site, "ps-2");
    let mut ps2_ferryd = Ferryd::start(&ps2).await;
    let _filler = site.register("filler").await;
    let agent = ferry_tests::Agent::register(&site);
    assert_eq!(
        agent.identity().data_endpoint,
        ps2.data,
        "the second machine goes to ps-2"
    );
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("disk.img");
    const IMAGE_BYTES: usize = 8 << 20;
    let data: Vec<u8> = (0..IMAGE_BYTES)
        .map(|i| ((i / 4096) as u8).wrapping_mul(13) ^ (i as u8))
        .collect();
    std::fs::write(&image, data).unwrap();
    agent.configure(
        &[&image],
        "[bookmarks]\ncrash_interval_secs = 1\napp_interval_secs = 0\n",
    );
    let mut child = agent.spawn(false);
    let copied = agent.poll_status(&mut child, "a bookmark at ps-2", 120, last_bookmark);
    let disk = agent.status().unwrap()["disks"][0]["disk_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_point(config, disk.parse().unwrap(), &copied).await;
    // From here ps-2 acknowledges but uploads nothing in time (a 1 kB/s cap): 1 MiB changed
    // on the disk is acknowledged by ps-2 only when it dies.
    let capped = ferryctl(&[
        "tune",
        "--config",
        ps2.dir.to_str().unwrap(),
        "bandwidth_cap_bytes_per_sec=1000",
    ]);
    assert!(capped.success, "{}", capped.stderr);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
        // Incompressible, so the cap holds it back (a pattern would seal to a few bytes).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        file.write_all_at(&noise, 2 << 20).unwrap();
        file.sync_all().unwrap();
    }
    let after_change = next_bookmark(&agent, &mut child, &copied);
    let acknowledged = next_bookmark(&agent, &mut child, &after_change);
    ps2_ferryd.kill();
    // The agent finds ps-2 gone, asks the configuration server, is placed there, and once
    // ps-2's lease has run out its disk is taken over from what storage holds; the agent's
    // journal knows which blocks the lost batches wrote, and its resync sends those alone.
    agent.poll_status(&mut child, "the move to the configuration server", 120, |_| {
        (agent.identity().data_endpoint == site.data).then_some(())
    });
    let at_move = last_bookmark(&agent.status().unwrap()).unwrap();
    let moved_on = next_bookmark(&agent, &mut child, &at_move);
    wait_for_point(config, disk.parse().unwrap(), &moved_on).await;
    assert!(restore(config, disk.parse().unwrap(), &["--point", &moved_on]) == std::fs::read(&image).unwrap());
    let log = agent.log_text();
    assert!(log.contains("block(s) of the lost batches are sent again"), "{log}");
    let resync_sent: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("pass complete") && l.contains("phase=\"resync\""))
        .filter_map(|l| l.split("sent_bytes=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(resync_sent.len(), 1, "{log}");
    assert!(
        resync_sent[0] >= 1 << 20 && resync_sent[0] < 2 << 20,
        "the resync sent {} bytes: the 1 MiB lost, not the {IMAGE_BYTES}-byte disk",
        resync_sent[0]
    );
    let points = point_ids(config, &disk);
    assert!(
        points.contains(&copied) && !points.contains(&acknowledged),
        "{points:?}"
    );
    let history = owner_history(&site, disk.parse().unwrap()).await;
    assert_one_owner_per_epoch(&history, &[ps2.data.as_str(), site.data.as_str()]);
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
    let _ = child.wait();
}
