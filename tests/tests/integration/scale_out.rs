//! Scale-out, the site's roles: a process server joins the configuration server's site with a
//! one-time token (`ferryctl ps token`, `ferryctl init --join`), gets a certificate from the
//! site's CA, the vault key and the target, and then serves the site's agents into the site's
//! vault; a wrong or used token is refused and creates nothing; agents register only with the
//! configuration server; an agent of another site cannot use this site's process server.

use ferry_client::{BatchSender, DiskSpec, RetryPolicy};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind};
use ferry_tests::{ferryctl, Appliance, Ferryd};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::failover::run_ok;

/// One batch writing `data` at offset 0 with bookmark `bookmark`.
fn batch_with_bookmark(seq: u64, data: &[u8], bookmark: &str) -> bytes::Bytes {
    let mut encoder = BatchEncoder::new(seq, 1_790_000_000_000 + seq);
    encoder.write(0, data);
    encoder.bookmark(&Bookmark {
        id: BookmarkId::new(bookmark).unwrap(),
        kind: BookmarkKind::Crash,
        tag: None,
        group_id: None,
    });
    encoder.finish()
}

#[tokio::test]
async fn a_process_server_joins_with_a_token_and_serves_the_sites_agents_into_its_vault() {
    let site = Appliance::init(|c| c);
    let _config_ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();

    let process_server = match site.join("ps-2") {
        Ok(joined) => joined,
        Err(run) => panic!("ferryctl init --join failed: {}{}", run.stdout, run.stderr),
    };
    // It holds the site's CA certificate but not the CA key, nor a passphrase: agents
    // register with the configuration server.
    assert_eq!(
        std::fs::read(process_server.dir.join("pki/ca.pem")).unwrap(),
        std::fs::read(site.dir.join("pki/ca.pem")).unwrap()
    );
    assert!(!process_server.dir.join("pki/ca.key").exists());
    assert!(!process_server.dir.join("passphrase").exists());
    assert_eq!(
        std::fs::read_to_string(process_server.dir.join("vault.key")).unwrap(),
        std::fs::read_to_string(site.dir.join("vault.key")).unwrap()
    );
    let listed = run_ok(&["--json", "ps", "list", "--config", config]);
    assert_eq!(listed[0]["name"], "ps-2", "{listed}");
    assert_eq!(listed[0]["data_endpoint"], process_server.data.as_str());
    let _process_ferryd = Ferryd::start(&process_server).await;

    // A machine registered with the configuration server sends a disk to the process server.
    let mut identity = site.register("web-1").await;
    identity.data_endpoint = process_server.data.clone();
    let client = identity.data_client().unwrap();
    let disk = Uuid::new_v4();
    let spec = DiskSpec {
        name: "sda".into(),
        size_bytes: 1 << 20,
        sector_size: 512,
        write_ordered: false,
        reprotect_from: None,
    };
    let (status, _) = client.put_disk(disk, &spec).await.unwrap();
    assert_eq!(status, 201);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let sender = BatchSender::new(client.clone(), disk, 4, RetryPolicy::default());
    sender
        .send_one(1, batch_with_bookmark(1, &data, "joined-1"))
        .await
        .expect("the process server stores the batch");
    // Its point lands in the site's vault: the configuration server's ferryctl sees it and
    // restores the disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let points = ferryctl(&["--json", "points", "--config", config, "--disk", &disk.to_string()]);
        if points.success && points.stdout.contains("joined-1") {
            break;
        }
        assert!(Instant::now() < deadline, "the point never reached the site's vault");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("sda.raw");
    run_ok(&[
        "--json",
        "restore",
        "--config",
        config,
        "--disk",
        &disk.to_string(),
        "--point",
        "joined-1",
        "--out",
        image.to_str().unwrap(),
    ]);
    let restored = std::fs::read(&image).unwrap();
    assert!(restored[..data.len()] == data[..] && restored[data.len()..].iter().all(|&b| b == 0));

    // Agents register with the configuration server, not with a process server.
    let refused = ferry_client::register(&process_server.management, None, "web-2", &site.passphrase()).await;
    let message = format!("{:?}", refused.expect_err("a process server registered an agent"));
    assert!(message.contains("configuration server"), "{message}");

    // A machine of another site cannot use this site's process server.
    let other_site = Appliance::init(|c| c);
    let _other_ferryd = Ferryd::start(&other_site).await;
    let mut stranger = other_site.register("intruder").await;
    stranger.data_endpoint = process_server.data.clone();
    let refused = stranger.data_client().unwrap().put_disk(Uuid::new_v4(), &spec).await;
    assert!(refused.is_err(), "another site's machine was served");
}

#[tokio::test]
async fn a_wrong_or_used_token_is_refused_and_creates_nothing() {
    let site = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let join = |dir: &std::path::Path, token: &std::path::Path| {
        ferryctl(&[
            "init",
            dir.to_str().unwrap(),
            "--join",
            &site.management,
            "--join-token-file",
            token.to_str().unwrap(),
            "--fingerprint",
            &site.fingerprint(),
            "--data-listen",
            "127.0.0.1:1",
            "--server-name",
            "127.0.0.1",
        ])
    };
    let wrong = scratch.path().join("wrong");
    std::fs::write(&wrong, "00".repeat(32)).unwrap();
    let refused = join(&scratch.path().join("a"), &wrong);
    assert!(!refused.success);
    assert!(refused.stderr.contains("unknown or was used"), "{}", refused.stderr);
    assert!(!scratch.path().join("a").exists(), "a refused join left a directory");

    let token = scratch.path().join("token");
    run_ok(&[
        "--json",
        "ps",
        "token",
        "--config",
        config,
        "--out",
        token.to_str().unwrap(),
    ]);
    let first = join(&scratch.path().join("b"), &token);
    assert!(first.success, "{}{}", first.stdout, first.stderr);
    let again = join(&scratch.path().join("c"), &token);
    assert!(
        !again.success && again.stderr.contains("unknown or was used"),
        "{}",
        again.stderr
    );
    assert!(!scratch.path().join("c").exists());
    let listed = run_ok(&["--json", "ps", "list", "--config", config]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // A pinned fingerprint that does not match refuses the configuration server.
    run_ok(&[
        "--json",
        "ps",
        "token",
        "--config",
        config,
        "--out",
        scratch.path().join("t2").to_str().unwrap(),
    ]);
    let mismatched = ferryctl(&[
        "init",
        scratch.path().join("d").to_str().unwrap(),
        "--join",
        &site.management,
        "--join-token-file",
        scratch.path().join("t2").to_str().unwrap(),
        "--fingerprint",
        &format!("{}AB", "AB:".repeat(31)),
        "--server-name",
        "127.0.0.1",
    ]);
    assert!(!mismatched.success);
    assert!(!scratch.path().join("d").exists());
    // ps token and ps list belong to the configuration server.
    let on_process_server = ferryctl(&["ps", "token", "--config", scratch.path().join("b").to_str().unwrap()]);
    assert!(
        !on_process_server.success && on_process_server.stderr.contains("is a process server"),
        "{}",
        on_process_server.stderr
    );
}

#[tokio::test]
async fn new_machines_go_to_the_least_loaded_healthy_process_server_and_replicate_there() {
    let site = Appliance::init(|c| c);
    let _config_ferryd = Ferryd::start(&site).await;
    let config = site.dir.to_str().unwrap();
    let ps2 = site
        .join("ps-2")
        .unwrap_or_else(|run| panic!("join failed: {}", run.stderr));
    let _ps2_ferryd = Ferryd::start(&ps2).await;
    // Joined, but its ferryd is not running: unhealthy, never given machines.
    let ps3 = site
        .join("ps-3")
        .unwrap_or_else(|run| panic!("join failed: {}", run.stderr));
    let listed = run_ok(&["--json", "ps", "list", "--config", config]);
    let health: Vec<(String, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["healthy"].as_bool().unwrap()))
        .collect();
    assert_eq!(health, [("ps-2".to_string(), true), ("ps-3".to_string(), false)]);

    // Fewest machines first, the configuration server on a tie: here, ps-2, here.
    let agents: Vec<ferry_tests::Agent> = (0..3).map(|_| ferry_tests::Agent::register(&site)).collect();
    let endpoints: Vec<String> = agents.iter().map(|a| a.identity().data_endpoint).collect();
    assert_eq!(endpoints[1], ps2.data, "{endpoints:?}");
    assert_ne!(endpoints[0], ps2.data);
    assert_ne!(endpoints[2], ps2.data);
    assert!(
        endpoints.iter().all(|e| *e != ps3.data),
        "an unreachable process server got a machine"
    );
    let machines = run_ok(&["--json", "machines", "--config", config]);
    let placed = machines
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["data_endpoint"] == ps2.data.as_str())
        .count();
    assert_eq!(placed, 1, "{machines}");
    // Each ferryd says its role; the configuration server lists its site.
    let status = run_ok(&["--json", "status", "--config", config]);
    assert_eq!(status["role"], "configuration_server");
    let site_servers: Vec<(String, u64)> = status["process_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["machines"].as_u64().unwrap()))
        .collect();
    assert_eq!(site_servers, [("ps-2".to_string(), 1), ("ps-3".to_string(), 0)]);
    let text = ferryctl(&["status", "--config", config]);
    assert!(
        text.stdout
            .contains("configuration server of a site with 2 more process server(s)"),
        "{}",
        text.stdout
    );
    let ps2_status = run_ok(&["--json", "status", "--config", ps2.dir.to_str().unwrap()]);
    assert_eq!(ps2_status["role"], "process_server");
    assert_eq!(ps2_status["config_server"], site.management.as_str());

    // The machine placed on ps-2 replicates through it into the site's vault.
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("web.img");
    let bytes: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&image, &bytes).unwrap();
    agents[1].configure(&[&image], "");
    let reports = super::failover::passes(&agents[1], &[]);
    let points = super::failover::wait_for_points(&site, &reports);
    let disk = points[0]["disk_id"].as_str().unwrap();
    let restored = super::failover::restored(
        config,
        disk,
        &["--point", points[0]["bookmark_id"].as_str().unwrap()],
        &scratch.path().join("restored.raw"),
    );
    assert!(restored == bytes, "the disk replicated through ps-2 does not restore");
    let on_ps2 = run_ok(&["--json", "disks", "--config", ps2.dir.to_str().unwrap()]);
    assert!(
        on_ps2.to_string().contains(disk),
        "ps-2 does not hold the disk: {on_ps2}"
    );
}
