//! ferryctl status, disks and machines against a running ferryd: the numbers match a known
//! workload, the control socket is owner-only, and a stopped ferryd gives a clear error.

use bytes::Bytes;
use ferry_client::{BatchSender, DiskSpec, RetryPolicy};
use ferry_format::bookmark::{Bookmark, BookmarkId, BookmarkKind};
use ferry_format::BatchEncoder;
use ferry_tests::{ferryctl, Appliance, Ferryd};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn batches(count: u64) -> (Vec<(u64, Bytes)>, u64) {
    let mut total = 0;
    let batches = (1..=count)
        .map(|seq| {
            let mut encoder = BatchEncoder::new(seq, ferry_client::clock::now_unix_ms());
            encoder.write(seq * 4096, &vec![seq as u8; 8192]);
            if seq == count {
                encoder.bookmark(&Bookmark {
                    id: BookmarkId::new("last").unwrap(),
                    kind: BookmarkKind::Crash,
                    tag: None,
                    group_id: None,
                });
            }
            let batch = encoder.finish();
            total += batch.len() as u64;
            (seq, batch)
        })
        .collect();
    (batches, total)
}

/// `GET /metrics`, as Prometheus would scrape it.
async fn scrape(address: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("text/plain; version=0.0.4"),
        "{answer}"
    );
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name` (with its labels, if any) in an exposition text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
}

fn status(appliance: &Appliance) -> serde_json::Value {
    let run = ferryctl(&["--json", "status", "--config", appliance.dir.to_str().unwrap()]);
    assert!(run.success, "{}", run.stderr);
    run.json()
}

#[tokio::test]
async fn status_disks_and_machines_match_a_known_workload() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let socket = appliance.dir.join("ferryd.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the control socket is owner-only");

    let machine = appliance.register("web-01").await;
    let client = machine.data_client().unwrap();
    let mut total = 0;
    let disks = [Uuid::new_v4(), Uuid::new_v4()];
    for (i, disk) in disks.iter().enumerate() {
        let spec = DiskSpec {
            name: format!("disk-{i}"),
            size_bytes: 1 << 30,
            sector_size: 4096,
            write_ordered: true,
            reprotect_from: None,
        };
        client.put_disk(*disk, &spec).await.unwrap();
        let (work, bytes) = batches(10 + i as u64);
        total += bytes;
        BatchSender::new(client.clone(), *disk, 4, RetryPolicy::default())
            .send_all(work)
            .await
            .unwrap();
    }
    // Uploads follow the acks; wait until the status says everything is stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let shown = status(&appliance);
        if shown["uploaded_bytes"].as_u64() == Some(total) && shown["cache"]["backlog_bytes"] == 0 {
            break shown;
        }
        assert!(Instant::now() < deadline, "uploads never caught up: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["health"], "ok");
    assert_eq!(shown["alerts"], serde_json::json!([]));
    let utilisation = &shown["utilisation"];
    assert_eq!(utilisation["upload_concurrency"], 32, "the default, from ferry.toml");
    assert_eq!(utilisation["uploads_in_flight"], 0, "everything is stored");
    assert!(utilisation["seal_workers"].as_u64().unwrap() >= 1);
    assert_eq!(
        shown["ingested_bytes"].as_u64(),
        Some(total),
        "every acknowledged byte counted once"
    );
    assert!(shown["ingest"]["last_60s_mb_per_s"].as_f64().unwrap() > 0.0, "{shown}");
    // The engine chosen at start is shown (DESIGN.md), and matches the log's.
    let engine = shown["cache"]["engine"].as_str().unwrap().to_string();
    assert!(engine == "io_uring" || engine == "pwritev", "{shown}");
    let listed = shown["disks"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (i, disk) in listed.iter().enumerate() {
        let count = 10 + i as u64;
        assert_eq!(disk["name"], format!("disk-{i}"));
        assert_eq!(
            (disk["durable_seq"].as_u64(), disk["uploaded_seq"].as_u64()),
            (Some(count), Some(count))
        );
        assert_eq!(disk["backlog_bytes"], 0);
        assert_eq!(disk["latest_point"], "last");
        assert!(disk["rpo_secs"].as_f64().is_some(), "{disk}");
        assert_eq!(disk["state"], "replicating");
    }
    let run = ferryctl(&["status", "--config", appliance.dir.to_str().unwrap()]);
    assert!(
        run.success && run.stdout.contains(": ok") && run.stdout.contains("disk-1"),
        "{}",
        run.stdout
    );
    let human = run.stdout.clone();
    let run = ferryctl(&["--json", "disks", "--config", appliance.dir.to_str().unwrap()]);
    assert_eq!(run.json().as_array().map(Vec::len), Some(2));

    let metrics = scrape(&appliance.metrics).await;
    assert_eq!(sample(&metrics, "ferry_ingest_batches_total"), Some(21.0), "{metrics}");
    assert_eq!(sample(&metrics, "ferry_ingest_bytes_total"), Some(total as f64));
    assert_eq!(sample(&metrics, "ferry_upload_bytes_total"), Some(total as f64));
    assert_eq!(sample(&metrics, "ferry_ack_latency_seconds_count"), Some(21.0));
    assert_eq!(
        sample(&metrics, "ferry_ack_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(21.0)
    );
    // Everything is stored and released: each share of the memory budget is back to nothing.
    for share in [
        "ferry_ingest_body_bytes",
        "ferry_resident_batch_bytes",
        "ferry_change_set_bytes_in_flight",
    ] {
        assert_eq!(sample(&metrics, share), Some(0.0), "{share}: {metrics}");
    }
    let uploads = sample(&metrics, "ferry_upload_latency_seconds_count").unwrap();
    assert!(uploads >= 2.0, "one change set per disk at least: {uploads}");
    assert!(
        sample(&metrics, "ferry_compression_ratio").unwrap() > 1.0,
        "repeated bytes compress"
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("ferry_disk_rpo_seconds{"))
            .count(),
        2
    );
    // No secret in anything ferryd shows.
    let mut everything = appliance.everything_shown().await;
    everything.push(human);
    appliance.assert_no_secrets(&everything, &[machine.key_pem.lines().nth(1).unwrap()]);

    assert!(ferryd.terminate().await.success());
    assert!(!socket.exists(), "ferryd removes its socket on a clean stop");
    let run = ferryctl(&["status", "--config", appliance.dir.to_str().unwrap()]);
    assert!(
        !run.success && run.stderr.contains("is ferryd running"),
        "{}",
        run.stderr
    );
}

/// `passphrase --rotate` takes effect at the next registration without a restart; the old
/// passphrase is refused; machines already registered keep working. `vault export-key`
/// prints the key file's text form, with a warning on stderr only.
#[tokio::test]
async fn passphrase_rotation_and_key_export() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let dir = appliance.dir.to_str().unwrap();
    let before = appliance.passphrase();
    let earlier = appliance.register("before").await;

    let shown = ferryctl(&["passphrase", "--config", dir]);
    assert!(shown.success);
    assert_eq!(shown.stdout.trim(), before);
    let rotated = ferryctl(&["--json", "passphrase", "--rotate", "--config", dir]);
    assert!(rotated.success, "{}", rotated.stderr);
    let after = rotated.json()["passphrase"].as_str().unwrap().to_string();
    assert_ne!(after, before);
    assert_eq!(appliance.passphrase(), after, "written to the passphrase file");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(appliance.dir.join("passphrase"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "still owner-only");

    let old = ferry_client::register(&appliance.management, None, "late", &before).await;
    assert_eq!(
        old.err().and_then(|e| e.code()),
        Some(ferry_client::api::ErrorCode::BadPassphrase)
    );
    ferry_client::register(&appliance.management, None, "late", &after)
        .await
        .expect("the new passphrase registers at once");
    earlier
        .data_client()
        .unwrap()
        .health()
        .await
        .expect("a machine registered before the rotation still connects");

    let exported = ferryctl(&["vault", "export-key", "--config", dir]);
    assert!(exported.success, "{}", exported.stderr);
    let key_file = std::fs::read_to_string(appliance.dir.join("vault.key")).unwrap();
    assert_eq!(exported.stdout.trim(), key_file.trim());
    assert!(exported.stderr.contains("WARNING") && !exported.stderr.contains(key_file.trim()));
    let missing = ferryctl(&["vault", "export-key", "--config", "/nonexistent/appliance"]);
    assert!(
        !missing.success && missing.stderr.contains("reading the vault key"),
        "{}",
        missing.stderr
    );
}

/// `drain` refuses new data at once, returns when the cache is empty, and `--resume` ends it.
#[tokio::test]
async fn drain_empties_the_cache_then_resume_accepts_data() {
    // Slow uploads (200 ms a call, every 4th a 503 retried), so the drain has something to wait for.
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start_with_env(&appliance, &[("FERRY_TEST_FAULTS", "503:4:200")]).await;
    let dir = appliance.dir.to_str().unwrap();
    let machine = appliance.register("db-01").await;
    let client = machine.data_client().unwrap();
    let disk = Uuid::new_v4();
    let spec = DiskSpec {
        name: "data".into(),
        size_bytes: 1 << 30,
        sector_size: 4096,
        write_ordered: true,
        reprotect_from: None,
    };
    client.put_disk(disk, &spec).await.unwrap();
    let (work, _) = batches(20);
    BatchSender::new(client.clone(), disk, 4, RetryPolicy::default())
        .send_all(work)
        .await
        .unwrap();
    let run = ferryctl(&["drain", "--config", dir]);
    assert!(run.success, "{}", run.stderr);
    assert!(run.stdout.contains("cache drained"), "{}", run.stdout);
    let shown = status(&appliance);
    assert_eq!(
        (shown["draining"].as_bool(), shown["health"].as_str()),
        (Some(true), Some("warning")),
        "a drain is a health line, not ok"
    );
    assert_eq!(shown["alerts"][0]["code"], "draining");
    assert_eq!(shown["cache"]["backlog_bytes"], 0);
    assert_eq!(shown["disks"][0]["uploaded_seq"], 20);
    assert_eq!(shown["disks"][0]["state"], "draining");
    let text = ferryctl(&["status", "--config", dir]);
    assert!(text.success, "{}", text.stderr);
    let first_line = text.stdout.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("warning, DRAINING") && first_line.contains("ferryctl drain --resume"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("  draining\n"),
        "the disk's state: {}",
        text.stdout
    );

    let mut next = BatchEncoder::new(21, ferry_client::clock::now_unix_ms());
    next.write(0, &[1u8; 4096]);
    let refused = client.put_batch(disk, 21, next.finish()).await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(503), Some(ferry_client::api::ErrorCode::Draining))
    );
    assert!(
        refused.to_string().contains("draining for maintenance") && !refused.to_string().contains("shutting down"),
        "agents are told why: {refused}"
    );

    let run = ferryctl(&["drain", "--resume", "--config", dir]);
    assert!(run.success, "{}", run.stderr);
    let mut next = BatchEncoder::new(21, ferry_client::clock::now_unix_ms());
    next.write(0, &[1u8; 4096]);
    assert_eq!(client.put_batch(disk, 21, next.finish()).await.unwrap().durable_seq, 21);
    let shown = status(&appliance);
    assert_eq!(
        (shown["health"].as_str(), shown["disks"][0]["state"].as_str()),
        (Some("ok"), Some("replicating"))
    );
}

/// Text logs written to a file (or the journal) carry no ANSI colour codes: ferryd's and
/// ferry-agent's stderr is a file here, not a terminal.
#[tokio::test]
async fn text_logs_in_a_file_have_no_escape_codes() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let agent = ferry_tests::Agent::register(&appliance);
    let image = appliance.dir.join("small.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    agent.configure(&[&image], "");
    let run = agent.run_once(&[]);
    assert!(run.success, "{}", run.stderr);
    assert!(ferryd.terminate().await.success());
    for (who, log) in [("ferryd", appliance.log()), ("ferry-agent", agent.log_text())] {
        assert!(log.contains("INFO"), "{who} logged: {log}");
        assert!(!log.contains('\u{1b}'), "{who}'s log file has escape codes: {log:?}");
    }
}

/// `FERRY_LOG_FORMAT=json`: every line of ferryd's log is one JSON object with a level, a
/// message and the event's fields.
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start_with_env(&appliance, &[("FERRY_LOG_FORMAT", "json")]).await;
    let machine = appliance.register("json-logs").await;
    assert!(ferryd.terminate().await.success());
    let log = appliance.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["fields"]["message"].is_string()));
    let registered = lines
        .iter()
        .find(|l| l["fields"]["message"] == "machine registered")
        .expect("the registration is logged");
    assert_eq!(registered["fields"]["machine_id"], machine.machine_id.to_string());
    assert!(lines.iter().any(|l| l["fields"]["message"] == "ferryd stopped cleanly"));
    appliance.assert_no_secrets(&[log], &[]);
}

fn tune(appliance: &Appliance, args: &[&str]) -> ferry_tests::Run {
    let mut all = vec!["--json", "tune", "--config", appliance.dir.to_str().unwrap()];
    all.extend_from_slice(args);
    ferryctl(&all)
}

/// Polls `ferryctl tune` until `check` holds for what the running pipeline uses.
async fn wait_in_effect(appliance: &Appliance, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = tune(appliance, &[]);
        assert!(run.success, "{}", run.stderr);
        let state = run.json();
        if check(&state["in_effect"]) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never took effect: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ferryctl tune` changes the running pipeline (seen in its own accounting: upload permits,
/// live seal workers, the token bucket's rate), survives a restart through ferry.toml, refuses
/// bad values without touching anything, and `--reset` restores the defaults.
#[tokio::test]
async fn tune_takes_effect_survives_a_restart_and_resets() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let config = appliance.dir.join("ferry.toml");
    let run = tune(
        &appliance,
        &[
            "upload_concurrency=4",
            "worker_threads=1",
            "compression_level=5",
            "flush_delay_ms=200",
        ],
    );
    assert!(run.success, "{}", run.stderr);
    let values = run.json()["values"].clone();
    assert_eq!(
        (
            &values["upload_concurrency"],
            &values["worker_threads"],
            &values["compression_level"]
        ),
        (&serde_json::json!(4), &serde_json::json!(1), &serde_json::json!(5))
    );
    // The answer already shows the change in effect (ferryd waits for the pipeline to apply
    // it); a seal worker that is one too many leaves after its current job.
    let in_effect = run.json()["in_effect"].clone();
    assert_eq!(
        (
            &in_effect["upload_concurrency"],
            &in_effect["compression_level"],
            &in_effect["flush_delay_ms"]
        ),
        (&serde_json::json!(4), &serde_json::json!(5), &serde_json::json!(200)),
        "{in_effect}"
    );
    wait_in_effect(&appliance, "the tuning", |e| {
        e["upload_concurrency"] == 4
            && e["seal_workers"] == 1
            && e["compression_level"] == 5
            && e["flush_delay_ms"] == 200
    })
    .await;
    assert_eq!(status(&appliance)["utilisation"]["upload_concurrency"], 4);
    let schedule = r#"[{"days":["sun","mon","tue","wed","thu","fri","sat"],"start_hour":0,"end_hour":24,"cap_bytes_per_sec":1234567}]"#;
    let run = tune(
        &appliance,
        &[
            "bandwidth_cap_bytes_per_sec=50000000",
            &format!("bandwidth_schedule={schedule}"),
        ],
    );
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.json()["in_effect"]["bandwidth_cap_bytes_per_sec"], 1234567);

    // Bad values: a clear message naming the key, and nothing changed.
    let before = std::fs::read_to_string(&config).unwrap();
    for (bad, expected) in [
        (
            "upload_concurrency=0",
            "pipeline.upload_concurrency: must be between 1 and 1024",
        ),
        ("compression_level=99", "pipeline.compression_level"),
        ("cache_size=5", "cache_size is not a setting of ferry.toml"),
        (
            "window=8",
            "ingest.window cannot change while ferryd runs: edit it in ferry.toml, then restart ferryd",
        ),
        (
            "bandwidth_schedule=[{\"days\":[\"someday\"],\"start_hour\":1,\"end_hour\":2,\"cap_bytes_per_sec\":1}]",
            "pipeline.bandwidth_schedule",
        ),
        ("change_set_bytes=lots", "not a value"),
    ] {
        let run = tune(&appliance, &[bad]);
        assert!(!run.success, "{bad} was accepted");
        assert!(
            run.stdout.contains(expected) || run.stderr.contains(expected),
            "{bad}: {}{}",
            run.stdout,
            run.stderr
        );
    }
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        before,
        "a refused change leaves ferry.toml alone"
    );

    // Data still flows through the tuned pipeline.
    let machine = appliance.register("tuned").await;
    let client = machine.data_client().unwrap();
    let disk = Uuid::new_v4();
    let spec = DiskSpec {
        name: "d".into(),
        size_bytes: 1 << 30,
        sector_size: 4096,
        write_ordered: true,
        reprotect_from: None,
    };
    client.put_disk(disk, &spec).await.unwrap();
    let (work, _) = batches(6);
    BatchSender::new(client.clone(), disk, 4, RetryPolicy::default())
        .send_all(work)
        .await
        .unwrap();

    // A restart reads the tuned ferry.toml.
    assert!(ferryd.terminate().await.success());
    let _ferryd = Ferryd::start(&appliance).await;
    let values = tune(&appliance, &[]).json()["values"].clone();
    assert_eq!(
        (&values["upload_concurrency"], &values["compression_level"]),
        (&serde_json::json!(4), &serde_json::json!(5))
    );
    wait_in_effect(&appliance, "the tuning after a restart", |e| {
        e["upload_concurrency"] == 4 && e["seal_workers"] == 1
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get_disk(disk).await.unwrap().uploaded_seq < 6 {
        assert!(Instant::now() < deadline, "the tuned pipeline did not upload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let run = tune(&appliance, &["--reset"]);
    assert!(run.success, "{}", run.stderr);
    let state = run.json();
    assert_eq!(state["values"], state["defaults"]);
    wait_in_effect(&appliance, "the reset", |e| {
        e["upload_concurrency"] == 32 && e["bandwidth_cap_bytes_per_sec"] == 0
    })
    .await;
}
