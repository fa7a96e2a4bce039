//! ferryd's ingest (PROTOCOL.md) against the real binary: registration and mTLS, every error
//! code with proof that nothing of a rejected batch was stored, SIGKILL crash loops, a full
//! cache, a torn tail, SIGTERM drain, and HTTP/1.1.

use bytes::Bytes;
use ferry_client::{BatchSender, ClientError, DataClient, DiskSpec, RetryPolicy};
use ferry_format::batch::{reseal_crcs, RECORD_KIND_WRITE};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind};
use ferry_tests::{Appliance, Ferryd};
use hyper::Method;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const DISK_BYTES: u64 = 64 << 20;

fn spec() -> DiskSpec {
    DiskSpec {
        name: "sda".into(),
        size_bytes: DISK_BYTES,
        sector_size: 512,
        write_ordered: false,
        reprotect_from: None,
    }
}

/// Batch `seq` of a disk: its content is a function of (disk, seq), so a resend is a retry.
fn batch(disk: Uuid, seq: u64, sectors: usize) -> Bytes {
    let mut enc = BatchEncoder::new(seq, 1_790_000_000_000 + seq);
    let fill = disk.as_bytes()[0] ^ seq as u8;
    let data: Vec<u8> = (0..sectors * 512).map(|i| fill.wrapping_add((i / 512) as u8)).collect();
    enc.write((seq * 4096) % (DISK_BYTES - (1 << 20)), &data);
    enc.finish()
}

/// A default appliance, its ferryd, one registered machine's client, and one disk of it.
async fn one_disk() -> (Appliance, Ferryd, DataClient, Uuid) {
    one_disk_with(&[]).await
}

/// As [`one_disk`], with extra environment for ferryd.
async fn one_disk_with(env: &[(&str, &str)]) -> (Appliance, Ferryd, DataClient, Uuid) {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start_with_env(&appliance, env).await;
    let client = appliance.register("m").await.data_client().unwrap();
    let disk = Uuid::new_v4();
    client.put_disk(disk, &spec()).await.unwrap();
    (appliance, ferryd, client, disk)
}

/// Every storage call fails: the upload pipeline cannot drain the cache, so tests of the
/// cache itself see every batch stay in it.
const STORAGE_DOWN: &[(&str, &str)] = &[("FERRY_TEST_FAULTS", "503:1")];

/// 16 MiB segments (so tests cross segment boundaries); batches up to 4 MiB to fit them.
fn small_segments(config: String) -> String {
    config
        .replace("segment_bytes = 268435456", "segment_bytes = 16777216")
        .replace("max_batch_bytes = 16777216", "max_batch_bytes = 4194304")
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Status { status, code, .. }) => (status, code),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn registration_and_mutual_tls() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;

    let wrong = ferry_client::register(&appliance.management, None, "web-01", "not the passphrase").await;
    assert_eq!(code(wrong), (401, "bad_passphrase".into()));
    let fingerprint = "00".repeat(32);
    let pinned_wrong = ferry_client::register(
        &appliance.management,
        Some(&fingerprint),
        "web-01",
        &appliance.passphrase(),
    )
    .await;
    assert!(
        matches!(pinned_wrong, Err(ClientError::Transport(_))),
        "a wrong fingerprint fails the handshake: {pinned_wrong:?}"
    );

    let web = appliance.register("web-01").await;
    let db = appliance.register("db-01").await;
    assert_ne!(web.machine_id, db.machine_id);
    assert!(appliance
        .dir
        .join(format!("state/machines/{}.meta", web.machine_id))
        .exists());
    let web_client = web.data_client().unwrap();
    assert_eq!(web_client.health().await.unwrap(), "ok");
    let disk = Uuid::new_v4();
    let (status, info) = web_client.put_disk(disk, &spec()).await.unwrap();
    assert_eq!(
        (
            status,
            info.machine_id,
            info.durable_seq,
            info.window,
            info.max_batch_bytes
        ),
        (201, web.machine_id, 0, 16, 16 << 20)
    );
    assert_eq!(
        web_client.put_disk(disk, &spec()).await.unwrap().0,
        200,
        "confirming a disk"
    );

    // No client certificate: health works, data does not.
    let anonymous = appliance.anonymous_client();
    assert_eq!(anonymous.health().await.unwrap(), "ok");
    assert_eq!(code(anonymous.get_disk(disk).await), (401, "unauthenticated".into()));
    // Another machine's disk.
    let db_client = db.data_client().unwrap();
    assert_eq!(code(db_client.get_disk(disk).await), (403, "forbidden".into()));
    assert_eq!(
        code(db_client.put_batch(disk, 1, batch(disk, 1, 1)).await),
        (403, "forbidden".into())
    );
    assert_eq!(code(db_client.put_disk(disk, &spec()).await), (403, "forbidden".into()));
    // A certificate from another appliance's CA: the handshake fails.
    let other = Appliance::init(|c| c);
    let _other_ferryd = Ferryd::start(&other).await;
    let stranger = other.register("stranger").await;
    let tls =
        ferry_client::tls::ca_verified(&appliance.ca_pem(), Some((&stranger.cert_pem, &stranger.key_pem))).unwrap();
    let foreign = DataClient::new(&appliance.data, tls);
    assert!(
        matches!(foreign.get_disk(disk).await, Err(ClientError::Transport(_))),
        "foreign CA refused at the handshake"
    );
    assert_eq!(web_client.get_disk(disk).await.unwrap().durable_seq, 0);
}

#[tokio::test]
async fn every_error_code_and_nothing_stored() {
    let (_appliance, _ferryd, client, disk) = one_disk().await;
    let put = |seq: u64, body: Bytes| client.put_batch(disk, seq, body);

    let good1 = batch(disk, 1, 2);
    // Each violation, on seq 1, before anything is stored.
    let mut flags = good1.to_vec();
    flags[6] = 1;
    reseal_crcs(&mut flags);
    assert_eq!(code(put(1, Bytes::from(flags)).await), (400, "malformed_batch".into()));
    let mut flipped = good1.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(code(put(1, Bytes::from(flipped)).await), (400, "crc_mismatch".into()));
    let mut past_end = BatchEncoder::new(1, 0);
    past_end.write(DISK_BYTES, &[1; 512]);
    assert_eq!(code(put(1, past_end.finish()).await), (400, "out_of_range".into()));
    let mut unaligned = BatchEncoder::new(1, 0);
    unaligned.raw_record(RECORD_KIND_WRITE, 100, 0, &[0; 100]);
    assert_eq!(code(put(1, unaligned.finish()).await), (400, "out_of_range".into()));
    let mut bad_bookmark = BatchEncoder::new(1, 0);
    bad_bookmark.raw_record(3, 9, 0, b"{\"id\":1}x");
    assert_eq!(code(put(1, bad_bookmark.finish()).await), (400, "bad_bookmark".into()));
    let mut too_large = BatchEncoder::new(1, 0);
    too_large.write(0, &vec![0u8; (16 << 20) + 512]);
    assert_eq!(code(put(1, too_large.finish()).await), (413, "too_large".into()));
    assert_eq!(
        code(put(1, batch(disk, 2, 1)).await),
        (400, "malformed_batch".into()),
        "header seq differs from the path"
    );
    assert_eq!(
        code(put(1, Bytes::from_static(b"short")).await),
        (400, "malformed_batch".into())
    );
    let raw = client
        .raw(
            Method::PUT,
            "/v1/disks/NOT-A-UUID/batches/1",
            "application/vnd.ferry.batch.v1",
            good1.clone(),
        )
        .await
        .unwrap();
    assert_eq!(raw.status, 400);
    assert!(String::from_utf8_lossy(&raw.body).contains("bad_id"));
    let upper = disk.to_string().to_uppercase();
    let raw = client
        .raw(
            Method::GET,
            &format!("/v1/disks/{upper}"),
            "application/json",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(raw.status, 400, "uppercase UUIDs are bad_id");
    assert_eq!(
        code(client.put_batch(Uuid::new_v4(), 1, good1.clone()).await),
        (404, "unknown_disk".into())
    );
    assert_eq!(code(put(18, batch(disk, 18, 1)).await), (409, "out_of_window".into()));
    match put(18, batch(disk, 18, 1)).await {
        Err(ClientError::Status { expected_seq, .. }) => assert_eq!(expected_seq, Some(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.get_disk(disk).await.unwrap().durable_seq,
        0,
        "nothing of any rejected batch was stored"
    );

    // Now the real batch 1 is accepted: had a rejected one been stored, this would conflict.
    assert_eq!(put(1, good1.clone()).await.unwrap().durable_seq, 1);
    assert_eq!(
        put(1, good1.clone()).await.unwrap().durable_seq,
        1,
        "a retry is answered 200 again"
    );
    assert_eq!(code(put(1, batch(disk, 1, 3)).await), (409, "seq_conflict".into()));
    // Out of order within the window.
    assert_eq!(put(3, batch(disk, 3, 1)).await.unwrap().durable_seq, 1);
    assert_eq!(put(2, batch(disk, 2, 1)).await.unwrap().durable_seq, 3);
    // A bookmark batch.
    let mut with_bookmark = BatchEncoder::new(4, 5);
    with_bookmark.write(0, &[9; 512]).bookmark(&Bookmark {
        id: BookmarkId::new("app-1").unwrap(),
        kind: BookmarkKind::App,
        tag: None,
        group_id: None,
    });
    assert_eq!(put(4, with_bookmark.finish()).await.unwrap().durable_seq, 4);

    // Disks: shrink and incompatible changes are refused; growth is a resize.
    let mut smaller = spec();
    smaller.size_bytes -= 512;
    assert_eq!(code(client.put_disk(disk, &smaller).await), (409, "size_shrink".into()));
    let mut other_sector = spec();
    other_sector.sector_size = 4096;
    assert_eq!(
        code(client.put_disk(disk, &other_sector).await),
        (409, "disk_conflict".into())
    );
    let mut bigger = spec();
    bigger.size_bytes *= 2;
    assert_eq!(
        client.put_disk(disk, &bigger).await.unwrap().1.size_bytes,
        DISK_BYTES * 2
    );
    let mut odd = spec();
    odd.size_bytes = 1000;
    assert_eq!(
        code(client.put_disk(Uuid::new_v4(), &odd).await),
        (400, "bad_request".into())
    );
    let info = client.get_disk(disk).await.unwrap();
    assert_eq!((info.durable_seq, info.size_bytes), (4, DISK_BYTES * 2));
}

/// Every acknowledged batch, per disk.
type Acked = BTreeMap<(Uuid, u64), Bytes>;

async fn stream_until_killed(
    client: DataClient,
    disk: Uuid,
    start: u64,
    acked: std::sync::Arc<std::sync::Mutex<Acked>>,
) {
    let sender = BatchSender::new(
        client,
        disk,
        8,
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        },
    );
    let mut seq = start;
    loop {
        let batches: Vec<(u64, Bytes)> = (seq..seq + 8)
            .map(|s| (s, batch(disk, s, 1 + (s % 16) as usize)))
            .collect();
        let results = futures::future::join_all(batches.iter().map(|(s, b)| sender.send_one(*s, b.clone()))).await;
        let mut failed = false;
        for ((s, b), result) in batches.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    acked.lock().unwrap().insert((disk, s), b);
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            return;
        }
        seq += 8;
    }
}

#[tokio::test]
async fn sigkill_loop_loses_no_acknowledged_batch() {
    // Small segments so the loop crosses segment boundaries.
    let appliance = Appliance::init(small_segments);
    let mut ferryd = Ferryd::start_with_env(&appliance, STORAGE_DOWN).await;
    let machine = appliance.register("m").await;
    let disks: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for disk in &disks {
        machine.data_client().unwrap().put_disk(*disk, &spec()).await.unwrap();
    }
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Acked::new()));
    let mut last_durable: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..20 {
        let mut streams = Vec::new();
        for disk in &disks {
            let client = machine.data_client().unwrap();
            let start = client.get_disk(*disk).await.unwrap().durable_seq + 1;
            streams.push(tokio::spawn(stream_until_killed(client, *disk, start, acked.clone())));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(50 + rng % 250)).await;
        ferryd.kill();
        for stream in streams {
            let _ = tokio::time::timeout(Duration::from_secs(90), stream).await;
        }
        ferryd = Ferryd::start_with_env(&appliance, STORAGE_DOWN).await;
        let client = machine.data_client().unwrap();
        for disk in &disks {
            let durable = client.get_disk(*disk).await.unwrap().durable_seq;
            let previous = last_durable.insert(*disk, durable).unwrap_or(0);
            assert!(
                durable >= previous,
                "round {round}: durable_seq went back from {previous} to {durable}"
            );
            // Acknowledged batches may sit beyond a gap (a lower seq died with the server), so
            // durable_seq must cover the contiguous prefix of acknowledged batches; the read-back
            // at the end checks every acknowledged batch, gap or not.
            let acked = acked.lock().unwrap();
            let mut prefix = 0;
            while acked.contains_key(&(*disk, prefix + 1)) {
                prefix += 1;
            }
            assert!(
                durable >= prefix,
                "round {round}: batches 1..={prefix} were acknowledged but durable_seq is {durable}"
            );
        }
    }
    assert_eq!(ferryd.terminate().await.code(), Some(0));
    // Read every acknowledged batch back from the cache itself.
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 100, "the loop did real work ({} batches)", acked.len());
    let options = ferryd::cache::CacheOptions {
        directory: appliance.dir.join("cache"),
        limit_bytes: 1 << 40,
        segment_bytes: 16 << 20,
        engine: ferry_config::config::CacheEngine::Psync,
        max_batch_bytes: 4 << 20,
        window: 16,
        resident_budget_bytes: 0,
    };
    let (cache, report) = ferryd::cache::Cache::open(options).unwrap();
    assert!(
        report
            .damage
            .iter()
            .all(|d| d.reason.contains("CRC") || d.reason.contains("torn") || d.reason.contains("magic")),
        "{:?}",
        report.damage
    );
    for ((disk, seq), bytes) in acked.iter() {
        assert_eq!(
            cache.read_batch(*disk, *seq).unwrap().as_ref(),
            Some(bytes),
            "acknowledged batch {seq} of {disk}"
        );
    }
}

#[tokio::test]
async fn full_cache_answers_503_and_resumes_after_release() {
    let appliance = Appliance::init(|c| small_segments(c).replace("limit_bytes = 0", "limit_bytes = 33554432"));
    let ferryd = Ferryd::start_with_env(&appliance, STORAGE_DOWN).await;
    let machine = appliance.register("m").await;
    let client = machine.data_client().unwrap();
    let disk = Uuid::new_v4();
    client.put_disk(disk, &spec()).await.unwrap();
    let mut seq = 1;
    let full = loop {
        match client.put_batch(disk, seq, batch(disk, seq, 2048)).await {
            Ok(_) => seq += 1,
            Err(error) => break error,
        }
        assert!(seq < 100, "a 32 MiB cache fills with 1 MiB batches");
    };
    match &full {
        ClientError::Status {
            status,
            code,
            retry_after_secs,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (503, "cache_full"));
            assert!(retry_after_secs.is_some(), "503 carries Retry-After");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.get_disk(disk).await.unwrap().durable_seq,
        seq - 1,
        "nothing lost, nothing partial"
    );
    assert_eq!(ferryd.terminate().await.code(), Some(0));

    // Everything acknowledged is in the cache.
    let options = ferryd::cache::CacheOptions {
        directory: appliance.dir.join("cache"),
        limit_bytes: 32 << 20,
        segment_bytes: 16 << 20,
        engine: ferry_config::config::CacheEngine::Auto,
        max_batch_bytes: 4 << 20,
        window: 16,
        resident_budget_bytes: 0,
    };
    {
        let (cache, _) = ferryd::cache::Cache::open(options).unwrap();
        for s in 1..seq {
            assert_eq!(cache.read_batch(disk, s).unwrap().unwrap(), batch(disk, s, 2048));
        }
        cache.shutdown();
    }
    // Storage is back: the pipeline uploads, the cache releases, and ingest resumes.
    let _ferryd = Ferryd::start(&appliance).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while client.get_disk(disk).await.unwrap().uploaded_seq < seq - 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pipeline did not drain the cache"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        client
            .put_batch(disk, seq, batch(disk, seq, 2048))
            .await
            .unwrap()
            .durable_seq,
        seq,
        "ingest resumes"
    );
}

#[tokio::test]
async fn torn_tail_is_reported_and_the_prefix_served() {
    let (appliance, ferryd, client, disk) = one_disk_with(STORAGE_DOWN).await;
    for seq in 1..=6 {
        client.put_batch(disk, seq, batch(disk, seq, 1)).await.unwrap();
    }
    assert_eq!(ferryd.terminate().await.code(), Some(0));
    let segment = std::fs::read_dir(appliance.dir.join("cache/segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // Records are one block each here: corrupt the data of the sixth.
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let at = 4096 + 5 * 4096 + 300;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x55], at).unwrap();
    drop(file);
    let _ferryd = Ferryd::start_with_env(&appliance, STORAGE_DOWN).await;
    assert_eq!(client.get_disk(disk).await.unwrap().durable_seq, 5);
    let log = appliance.log();
    assert!(
        log.contains("damage") && log.contains(&segment.display().to_string()),
        "the damage is logged with its segment:\n{log}"
    );
    assert_eq!(
        client.put_batch(disk, 6, batch(disk, 6, 1)).await.unwrap().durable_seq,
        6
    );
}

#[tokio::test]
async fn sigterm_drains_and_http1_works() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let machine = appliance.register("m").await;
    let tls = ferry_client::tls::ca_verified(&machine.ca_pem, Some((&machine.cert_pem, &machine.key_pem))).unwrap();
    let http1 = DataClient::new_http1(&appliance.data, tls);
    let disk = Uuid::new_v4();
    http1.put_disk(disk, &spec()).await.unwrap();
    let sender = BatchSender::new(http1.clone(), disk, 4, RetryPolicy::default());
    let durable = sender.send_all((1..=40).map(|s| (s, batch(disk, s, 4)))).await.unwrap();
    assert_eq!(durable, 40);
    assert_eq!(
        ferryd.terminate().await.code(),
        Some(0),
        "SIGTERM exits 0 after draining"
    );
    assert!(appliance.log().contains("stopped cleanly"));
    let _ferryd = Ferryd::start(&appliance).await;
    assert_eq!(sender.resume_point().await.unwrap(), 40);
}

#[tokio::test]
async fn bad_config_and_a_second_ferryd_are_refused_clearly() {
    let broken = Appliance::init(|c| c.replace("window = 16", "window = 0"));
    let output = std::process::Command::new(ferry_tests::binary("ferryd"))
        .arg("--config")
        .arg(&broken.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("ingest.window"), "{stderr}");

    let appliance = Appliance::init(|c| c);
    let _first = Ferryd::start(&appliance).await;
    let output = std::process::Command::new(ferry_tests::binary("ferryd"))
        .arg("--config")
        .arg(&appliance.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("another ferryd is using the cache"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let machine = appliance.register("m").await;
    machine
        .data_client()
        .unwrap()
        .put_disk(Uuid::new_v4(), &spec())
        .await
        .unwrap();
    // The same machine id, signed by the same CA, but valid only in 2020.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(appliance.dir.join("pki/ca.key")).unwrap()).unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&appliance.ca_pem())
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, machine.machine_id.to_string());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    let expired = params.signed_by(&key, &ca, &ca_key).unwrap();
    let tls =
        ferry_client::tls::ca_verified(&appliance.ca_pem(), Some((&expired.pem(), &key.serialize_pem()))).unwrap();
    let client = DataClient::new(&appliance.data, tls);
    let result = client.get_disk(Uuid::new_v4()).await;
    assert!(
        matches!(result, Err(ClientError::Transport(_))),
        "an expired certificate fails the handshake: {result:?}"
    );
}

/// A small cache fills while storage is down: `ferryctl status` raises the cache alerts in
/// order (warning, then critical) and ingest is throttled (503 cache_full, Retry-After)
/// before the cache is actually full.
#[tokio::test]
async fn a_filling_cache_raises_alerts_and_throttles_before_it_is_full() {
    let limit: u64 = 8 * (16 << 20);
    let appliance =
        Appliance::init(|c| small_segments(c).replace("limit_bytes = 0", &format!("limit_bytes = {limit}")));
    let _ferryd = Ferryd::start_with_env(&appliance, STORAGE_DOWN).await;
    let machine = appliance.register("m").await;
    let client = machine.data_client().unwrap();
    let disk = Uuid::new_v4();
    client.put_disk(disk, &spec()).await.unwrap();
    let status = || {
        let run = ferry_tests::ferryctl(&["--json", "status", "--config", appliance.dir.to_str().unwrap()]);
        assert!(run.success, "{}", run.stderr);
        run.json()
    };
    let alert = |shown: &serde_json::Value, code: &str| {
        shown["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["code"] == code)
            .map(|a| a["severity"].as_str().unwrap().to_string())
    };
    let mut seen = Vec::new();
    let mut seq = 1;
    let refused = loop {
        match client.put_batch(disk, seq, batch(disk, seq, 2048)).await {
            Ok(_) => seq += 1,
            Err(error) => break error,
        }
        let shown = status();
        if let Some(severity) = alert(&shown, "cache_free_low") {
            if seen.last() != Some(&severity) {
                seen.push(severity);
            }
        }
        assert!(seq < 200, "a 128 MiB cache fills with 1 MiB batches");
    };
    assert_eq!(seen, ["warning", "critical"], "warning first, then critical");
    match &refused {
        ClientError::Status {
            status,
            code,
            message,
            retry_after_secs,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (503, "cache_full"));
            assert!(message.contains("throttled") && retry_after_secs.is_some(), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let shown = status();
    assert_eq!(alert(&shown, "ingest_throttled").as_deref(), Some("critical"));
    assert_eq!(alert(&shown, "upload_failing").as_deref(), Some("warning"));
    assert_eq!(shown["health"], "critical");
    assert!(
        shown["cache"]["used_bytes"].as_u64().unwrap() < limit,
        "throttled before full: {}",
        shown["cache"]
    );
    assert_eq!(
        client.get_disk(disk).await.unwrap().durable_seq,
        seq - 1,
        "nothing partial"
    );
}

/// Batch bodies reserve their bytes from the memory budget before they are read: with a
/// budget that leaves room for one 4 MiB body, 16 bodies sent at once get `503 busy` with
/// Retry-After instead of 64 MiB of buffers, and every batch is stored once retried.
#[tokio::test]
async fn many_concurrent_large_bodies_get_busy_instead_of_memory() {
    let appliance = Appliance::init(|config| {
        small_segments(config)
            .replace("change_set_bytes = 8388608", "change_set_bytes = 1048576")
            .replace("memory_budget_bytes = 536870912", "memory_budget_bytes = 10485760")
    });
    let _ferryd = Ferryd::start(&appliance).await;
    let client = appliance.register("m").await.data_client().unwrap();
    let disks: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
    for disk in &disks {
        client.put_disk(*disk, &spec()).await.unwrap();
    }
    let bodies: Vec<Bytes> = disks.iter().map(|d| batch(*d, 1, 8000)).collect(); // ~4 MiB each
    let answers = futures::future::join_all(
        disks
            .iter()
            .zip(&bodies)
            .map(|(disk, body)| client.put_batch(*disk, 1, body.clone())),
    )
    .await;
    let mut busy = 0;
    for answer in &answers {
        match answer {
            Ok(ack) => assert_eq!(ack.durable_seq, 1),
            Err(ClientError::Status {
                status: 503,
                code,
                retry_after_secs,
                ..
            }) if code == "busy" => {
                assert_eq!(*retry_after_secs, Some(1));
                busy += 1;
            }
            Err(other) => panic!("unexpected answer: {other}"),
        }
    }
    assert!(busy > 0, "16 bodies of 4 MiB at once fit a 2.5 MiB ingest budget?");
    for (disk, body) in disks.iter().zip(&bodies) {
        BatchSender::new(client.clone(), *disk, 1, RetryPolicy::default())
            .send_all(vec![(1, body.clone())])
            .await
            .unwrap();
        assert_eq!(client.get_disk(*disk).await.unwrap().durable_seq, 1);
    }
}
