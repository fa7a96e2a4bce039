//! One storage suite, run unchanged against the local directory and against a real Azurite.
//!
//! Azurite's endpoint comes from `FERRY_TEST_AZURITE_ENDPOINT` (set by `scripts/test.sh`,
//! which starts it). Without it the Azure half is skipped with a message, unless
//! `FERRY_REQUIRE_AZURITE=1` (as in CI), where a missing Azurite fails the run.

use bytes::Bytes;
use ferry_storage::faults::{Fault, FaultInjecting};
use ferry_storage::local::LocalDirectory;
use ferry_storage::retry::{RetryPolicy, Retrying};
use ferry_storage::{
    list_all, open_target, AzureCredentialConfig, AzureTargetConfig, ObjectStorage, Operation, PermanentKind, Secret,
    StorageError, TargetConfig,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Fixture {
    storage: Arc<dyn ObjectStorage>,
    _dir: Option<tempfile::TempDir>,
}

fn local() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDirectory::open(dir.path().join("target"), true).unwrap();
    Fixture {
        storage: Arc::new(storage),
        _dir: Some(dir),
    }
}

pub fn azurite_endpoint() -> Option<String> {
    match std::env::var("FERRY_TEST_AZURITE_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ if std::env::var("FERRY_REQUIRE_AZURITE").as_deref() == Ok("1") => {
            panic!("FERRY_REQUIRE_AZURITE=1 but FERRY_TEST_AZURITE_ENDPOINT is not set: start Azurite (scripts/test.sh does)")
        }
        _ => None,
    }
}

fn unique_container() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("suite-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn azure_config(endpoint: &str, container: &str, key: &str, create: bool) -> AzureTargetConfig {
    AzureTargetConfig {
        account: AZURITE_ACCOUNT.into(),
        container: container.into(),
        endpoint: Some(endpoint.into()),
        create_container: create,
        request_timeout_secs: 30,
        credential: AzureCredentialConfig::SharedKey {
            account_key: Secret::new(key),
        },
    }
}

async fn azure() -> Option<Fixture> {
    let endpoint = azurite_endpoint()?;
    let config = TargetConfig::Azure(azure_config(&endpoint, &unique_container(), AZURITE_KEY, true));
    let storage = open_target(&config, RetryPolicy::default())
        .await
        .expect("Azurite container opens");
    Some(Fixture { storage, _dir: None })
}

/// Each case becomes `local::case` and `azure::case`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod local_backend {
            $(#[tokio::test] async fn $case() { super::cases::$case(&*super::local().storage).await; })*
        }
        mod azure_backend {
            $(#[tokio::test] async fn $case() {
                match super::azure().await {
                    Some(fixture) => super::cases::$case(&*fixture.storage).await,
                    None => eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh starts Azurite)"),
                }
            })*
        }
    };
}

suite!(
    put_get_head_overwrite,
    ranges,
    listing_scope_order_and_pages,
    delete_is_idempotent,
    invalid_names_are_refused_before_io,
    large_and_concurrent_puts,
    paced_puts_land_whole_and_keep_the_rate,
    directories_one_level_down,
    put_new_creates_once,
    leases_follow_blob_semantics
);

mod cases {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    pub async fn put_get_head_overwrite(s: &dyn ObjectStorage) {
        let name = "ferry/v1/disks/d/log/a.fseal";
        assert!(matches!(s.get(name).await, Err(StorageError::NotFound { .. })));
        assert!(matches!(s.head(name).await, Err(StorageError::NotFound { .. })));
        s.put(name, pattern(1000, 1)).await.unwrap();
        assert_eq!(s.get(name).await.unwrap(), pattern(1000, 1));
        assert_eq!(s.head(name).await.unwrap().size_bytes, 1000);
        s.put(name, pattern(10, 2)).await.unwrap();
        assert_eq!(
            s.get(name).await.unwrap(),
            pattern(10, 2),
            "a second put replaces the object"
        );
        s.put("empty", Bytes::new()).await.unwrap();
        assert_eq!(s.get("empty").await.unwrap().len(), 0);
    }

    pub async fn ranges(s: &dyn ObjectStorage) {
        let data = pattern(100_000, 3);
        s.put("r/obj", data.clone()).await.unwrap();
        assert_eq!(s.get_range("r/obj", 0..100_000).await.unwrap(), data);
        assert_eq!(s.get_range("r/obj", 4096..8192).await.unwrap(), data.slice(4096..8192));
        assert_eq!(
            s.get_range("r/obj", 99_999..100_000).await.unwrap(),
            data.slice(99_999..)
        );
        let past = s.get_range("r/obj", 99_000..100_001).await.unwrap_err();
        assert_eq!(past.permanent_kind(), Some(PermanentKind::InvalidRequest), "{past}");
        assert!(matches!(
            s.get_range("r/missing", 0..1).await,
            Err(StorageError::NotFound { .. })
        ));
    }

    pub async fn listing_scope_order_and_pages(s: &dyn ObjectStorage) {
        let mut names: Vec<String> = (0..23).map(|i| format!("p/log/{i:020}.fseal")).collect();
        names.push("p/log/sub/x.fseal".into());
        for name in &names {
            s.put(name, Bytes::from_static(b"x")).await.unwrap();
        }
        s.put("p/logs-sibling", Bytes::from_static(b"y")).await.unwrap();
        s.put("q/other", Bytes::from_static(b"z")).await.unwrap();
        names.sort();
        let listed: Vec<String> = list_all(s, "p/log/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            listed, names,
            "everything below the prefix, recursively, in byte order, nothing beside it"
        );
        let first = s.list_page("p/log/", None, 10).await.unwrap();
        assert_eq!(first.len(), 10);
        let second = s.list_page("p/log/", Some(&first[9].name), 10).await.unwrap();
        assert_eq!(second[0].name, names[10]);
        assert_eq!(s.list_page("p/log/", Some(&names[23]), 10).await.unwrap().len(), 0);
        assert!(s.list_page("nothing/", None, 10).await.unwrap().is_empty());
        assert_eq!(list_all(s, "").await.unwrap().len(), names.len() + 2);
        assert!(matches!(
            s.list_page("p/log", None, 10).await,
            Err(StorageError::InvalidName { .. })
        ));
    }

    pub async fn delete_is_idempotent(s: &dyn ObjectStorage) {
        s.put("d/x", Bytes::from_static(b"1")).await.unwrap();
        s.delete("d/x").await.unwrap();
        assert!(matches!(s.get("d/x").await, Err(StorageError::NotFound { .. })));
        s.delete("d/x").await.unwrap();
        s.delete("d/never-existed").await.unwrap();
    }

    pub async fn invalid_names_are_refused_before_io(s: &dyn ObjectStorage) {
        for bad in [
            "../escape",
            "a/../../etc/passwd",
            "/abs",
            "a//b",
            "a/.tmp",
            "sp ace",
            "",
        ] {
            let put = s.put(bad, Bytes::from_static(b"x")).await;
            assert!(
                matches!(put, Err(StorageError::InvalidName { .. })),
                "put {bad:?}: {put:?}"
            );
            assert!(
                matches!(s.get(bad).await, Err(StorageError::InvalidName { .. })),
                "get {bad:?}"
            );
            assert!(
                matches!(s.delete(bad).await, Err(StorageError::InvalidName { .. })),
                "delete {bad:?}"
            );
        }
        assert!(list_all(s, "").await.unwrap().is_empty(), "nothing was written");
    }

    pub async fn large_and_concurrent_puts(s: &dyn ObjectStorage) {
        let big = pattern(8 << 20, 5);
        s.put("big/object", big.clone()).await.unwrap();
        assert_eq!(s.get("big/object").await.unwrap(), big);
        let puts = (0..32).map(|i| s.put_owned(format!("many/{i:03}"), pattern(4096 + i, i as u8)));
        for result in futures::future::join_all(puts).await {
            result.unwrap();
        }
        let listed = list_all(s, "many/").await.unwrap();
        assert_eq!(listed.len(), 32);
        for (i, meta) in listed.iter().enumerate() {
            assert_eq!(meta.size_bytes, 4096 + i as u64);
        }
    }

    /// An object of several slices lands whole and byte-exact, replaces an older one, and
    /// takes at least the time the cap demands (wall clock: the promise itself, measured from
    /// below, so a slow machine cannot fail it). An unlimited bucket is a plain put.
    pub async fn paced_puts_land_whole_and_keep_the_rate(s: &dyn ObjectStorage) {
        let rate = 2_000_000u64;
        let bucket = ferry_storage::TokenBucket::new(rate);
        let name = "ferry/v1/disks/d/log/paced.fseal";
        s.put(name, pattern(100, 9)).await.unwrap();
        let data = pattern(5_000_001, 7); // 3 slices of 2 MB, the last one short
        let started = std::time::Instant::now();
        s.put_paced(name, data.clone(), &bucket).await.unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(s.get(name).await.unwrap(), data, "the paced object is whole");
        // A full bucket admits the first second's worth at once; the other 3 MB wait.
        let least = (data.len() as u64 - rate) as f64 / rate as f64;
        assert!(
            elapsed >= least * 0.98,
            "5 MB at 2 MB/s went in {elapsed:.2} s (at least {least:.2} s)"
        );
        let small = pattern(1000, 1);
        s.put_paced("p/small", small.clone(), &bucket).await.unwrap();
        assert_eq!(s.get("p/small").await.unwrap(), small);
        let unlimited = ferry_storage::TokenBucket::unlimited();
        s.put_paced("p/free", data.clone(), &unlimited).await.unwrap();
        assert_eq!(s.get("p/free").await.unwrap(), data);
        assert_eq!(
            list_all(s, "p/").await.unwrap().len(),
            2,
            "no temporaries or pieces are listed"
        );
    }

    pub async fn directories_one_level_down(s: &dyn ObjectStorage) {
        for name in ["d/a/x", "d/a/y/z", "d/b/q", "d/c", "e/f"] {
            s.put(name, pattern(10, 1)).await.unwrap();
        }
        assert_eq!(s.list_directories("d/").await.unwrap(), ["d/a/", "d/b/"]);
        assert_eq!(s.list_directories("d/a/").await.unwrap(), ["d/a/y/"]);
        assert_eq!(s.list_directories("").await.unwrap(), ["d/", "e/"]);
        assert!(s.list_directories("missing/").await.unwrap().is_empty());
        assert!(s.list_directories("d").await.is_err(), "a prefix ends with '/'");
    }

    pub async fn put_new_creates_once(s: &dyn ObjectStorage) {
        let name = "ferry/v1/disks/d/owners/0000000001.fseal";
        assert!(s.put_new(name, pattern(100, 1)).await.unwrap(), "created");
        assert!(
            !s.put_new(name, pattern(50, 2)).await.unwrap(),
            "a second creator loses"
        );
        assert_eq!(s.get(name).await.unwrap(), pattern(100, 1), "and changes nothing");
        // Racing creators: exactly one wins.
        let racers = (0..8u8).map(|i| s.put_new("race/obj", pattern(64, i)));
        let won = futures::future::join_all(racers).await;
        assert_eq!(won.iter().filter(|w| matches!(w, Ok(true))).count(), 1, "{won:?}");
        assert_eq!(
            list_all(s, "race/").await.unwrap().len(),
            1,
            "no temporaries are listed"
        );
    }

    pub async fn leases_follow_blob_semantics(s: &dyn ObjectStorage) {
        use ferry_storage::{LeaseAnswer::*, LeaseOp};
        let (a, b) = (
            "0f8fad5b-d9cb-469f-a165-70867728950e".to_string(),
            "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_string(),
        );
        let acquire = |id: &String, secs| LeaseOp::Acquire {
            lease_id: id.clone(),
            duration_secs: secs,
        };
        let renew = |id: &String| LeaseOp::Renew { lease_id: id.clone() };
        let release = |id: &String| LeaseOp::Release { lease_id: id.clone() };
        let name = "ferry/v1/disks/d/lease";
        assert_eq!(
            s.lease(name, acquire(&a, 60)).await.unwrap(),
            Granted,
            "a missing object is made and leased"
        );
        assert_eq!(
            s.lease(name, acquire(&a, 60)).await.unwrap(),
            Granted,
            "acquiring again is idempotent"
        );
        assert_eq!(
            s.lease(name, acquire(&b, 60)).await.unwrap(),
            Refused,
            "one holder at a time"
        );
        assert_eq!(s.lease(name, renew(&a)).await.unwrap(), Granted);
        assert_eq!(s.lease(name, renew(&b)).await.unwrap(), Refused);
        assert_eq!(
            s.lease(name, release(&b)).await.unwrap(),
            Refused,
            "only the holder releases"
        );
        assert_eq!(s.lease(name, release(&a)).await.unwrap(), Granted);
        assert_eq!(
            s.lease(name, acquire(&b, 15)).await.unwrap(),
            Granted,
            "released: free for the next"
        );
        assert_eq!(
            s.lease(name, renew(&a)).await.unwrap(),
            Refused,
            "a's lease is lost for good"
        );
        let bad = s
            .lease(
                name,
                LeaseOp::Renew {
                    lease_id: "not-a-uuid".into(),
                },
            )
            .await;
        assert!(bad.is_err(), "a lease id that is not a UUID is refused");
        let short = s.lease(name, acquire(&a, 5)).await;
        assert!(short.is_err(), "a lease shorter than 15 s is refused");
        // Wall clock: b's 15 s lease runs out unless renewed, and then a may take it.
        let started = std::time::Instant::now();
        assert_eq!(s.lease(name, acquire(&a, 15)).await.unwrap(), Refused);
        tokio::time::sleep(std::time::Duration::from_secs(16)).await;
        assert_eq!(
            s.lease(name, acquire(&a, 15)).await.unwrap(),
            Granted,
            "expired after {:?}",
            started.elapsed()
        );
        assert_eq!(
            s.lease(name, renew(&b)).await.unwrap(),
            Refused,
            "an expired lease taken by another is lost"
        );
    }

    trait PutOwned {
        fn put_owned(&self, name: String, data: Bytes) -> impl std::future::Future<Output = Result<(), StorageError>>;
    }
    impl PutOwned for dyn ObjectStorage + '_ {
        async fn put_owned(&self, name: String, data: Bytes) -> Result<(), StorageError> {
            self.put(&name, data).await
        }
    }
}

// ---- Backend-specific failures: missing containers, bad credentials, retries. ----

#[tokio::test]
async fn local_missing_target_directory_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let missing = LocalDirectory::open(dir.path().join("absent"), false).unwrap_err();
    assert_eq!(
        missing.permanent_kind(),
        Some(PermanentKind::ContainerMissing),
        "{missing}"
    );
    let root = dir.path().join("target");
    let storage = LocalDirectory::open(&root, true).unwrap();
    storage.put("a/b", Bytes::from_static(b"1")).await.unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let put = storage.put("a/b", Bytes::from_static(b"2")).await.unwrap_err();
    assert_eq!(put.permanent_kind(), Some(PermanentKind::ContainerMissing), "{put}");
    let get = storage.get("a/b").await.unwrap_err();
    assert_eq!(get.permanent_kind(), Some(PermanentKind::ContainerMissing), "{get}");
    assert!(!root.exists(), "a failed put does not recreate the target");
}

#[tokio::test]
async fn local_files_are_private_and_temporaries_invisible() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDirectory::open(dir.path().join("t"), true).unwrap();
    storage.put("x/y/z", Bytes::from_static(b"secret")).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("t/x/y/z")), 0o600);
    assert_eq!(mode(&dir.path().join("t/x/y")), 0o700);
    // What a crash in the middle of a put leaves behind:
    std::fs::write(dir.path().join("t/x/y/.z.0123.tmp"), b"partial").unwrap();
    assert_eq!(list_all(&storage, "").await.unwrap().len(), 1);
    assert_eq!(storage.remove_stray_temporaries().unwrap(), 1);
    assert_eq!(storage.get("x/y/z").await.unwrap(), Bytes::from_static(b"secret"));
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
        total_budget_ms: 10_000,
    }
}

#[tokio::test]
async fn transient_faults_are_retried_until_success() {
    let fixture = local();
    let faulty = Arc::new(FaultInjecting::new(fixture.storage.clone()));
    let storage = Retrying::new(faulty.clone(), fast_retries(8));
    for fault in [
        Fault::ServerBusy,
        Fault::InternalError,
        Fault::Throttled,
        Fault::Timeout,
        Fault::ConnectionReset,
    ] {
        let before = storage.retries();
        faulty.fail_next(3, fault, Some(Operation::Put));
        storage.put("r/x", Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(storage.retries() - before, 3, "{fault:?}");
    }
    assert_eq!(faulty.injected(), 15);
    // The write went through but its answer was lost: the retry rewrites the same object.
    faulty.fail_next(1, Fault::TimeoutAfterSuccess, Some(Operation::Put));
    storage.put("r/y", Bytes::from_static(b"w")).await.unwrap();
    assert_eq!(storage.get("r/y").await.unwrap(), Bytes::from_static(b"w"));
}

#[tokio::test]
async fn retries_are_bounded_and_permanent_errors_are_not_retried() {
    let fixture = local();
    let faulty = Arc::new(FaultInjecting::new(fixture.storage.clone()));
    let storage = Retrying::new(faulty.clone(), fast_retries(4));
    faulty.fail_next(100, Fault::ServerBusy, None);
    let exhausted = storage.put("r/x", Bytes::from_static(b"v")).await.unwrap_err();
    assert!(exhausted.is_transient());
    assert_eq!(faulty.injected(), 4, "exactly max_attempts attempts");
    faulty.fail_next(100, Fault::AuthenticationFailed, None);
    let auth = storage.get("r/x").await.unwrap_err();
    assert_eq!(auth.permanent_kind(), Some(PermanentKind::AuthenticationFailed));
    assert_eq!(faulty.injected(), 5, "a permanent error is tried once");
    faulty.clear();
    faulty.fail_every(2, Fault::ServerBusy, None);
    for i in 0..10 {
        storage.put(&format!("e/{i}"), Bytes::from_static(b"v")).await.unwrap();
    }
    assert_eq!(list_all(&storage, "e/").await.unwrap().len(), 10);
    let budget = Retrying::new(
        faulty.clone(),
        RetryPolicy {
            max_attempts: 50,
            initial_backoff_ms: 50,
            max_backoff_ms: 50,
            total_budget_ms: 120,
        },
    );
    faulty.fail_next(100, Fault::ServerBusy, None);
    let before = faulty.injected();
    assert!(budget
        .put("r/z", Bytes::from_static(b"v"))
        .await
        .unwrap_err()
        .is_transient());
    assert!(
        faulty.injected() - before < 50,
        "the time budget ends retrying before max_attempts"
    );
}

#[tokio::test]
async fn azure_missing_container_and_wrong_key_are_permanent() {
    let Some(endpoint) = azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set");
        return;
    };
    let missing = TargetConfig::Azure(azure_config(&endpoint, &unique_container(), AZURITE_KEY, false));
    let error = open_target(&missing, fast_retries(3)).await.unwrap_err();
    assert_eq!(error.permanent_kind(), Some(PermanentKind::ContainerMissing), "{error}");

    let container = unique_container();
    let good = open_target(
        &TargetConfig::Azure(azure_config(&endpoint, &container, AZURITE_KEY, true)),
        fast_retries(3),
    )
    .await
    .unwrap();
    good.put("k/x", Bytes::from_static(b"v")).await.unwrap();
    let wrong_key = &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64]);
    let bad = ferry_storage::azure::AzureBlob::connect(&azure_config(&endpoint, &container, wrong_key, false))
        .await
        .unwrap_err();
    assert_eq!(bad.permanent_kind(), Some(PermanentKind::AuthenticationFailed), "{bad}");
    assert!(!bad.to_string().contains(wrong_key.as_str()));
    let malformed =
        ferry_storage::azure::AzureBlob::connect(&azure_config(&endpoint, &container, "not base64!", false))
            .await
            .unwrap_err();
    assert_eq!(
        malformed.permanent_kind(),
        Some(PermanentKind::AuthenticationFailed),
        "{malformed}"
    );
    assert!(malformed.to_string().contains("not valid base64"), "{malformed}");
    // An endpoint that does not answer: one sentence that says what to check.
    let nobody = format!("http://127.0.0.1:{}/devstoreaccount1", {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    });
    let unreachable = ferry_storage::azure::AzureBlob::connect(&azure_config(&nobody, &container, AZURITE_KEY, false))
        .await
        .unwrap_err();
    assert!(unreachable.is_transient(), "{unreachable}");
    assert!(
        unreachable.to_string().contains("no answer from the endpoint"),
        "{unreachable}"
    );
}

#[tokio::test]
async fn azure_sas_credential_works() {
    let Some(endpoint) = azurite_endpoint() else {
        eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set");
        return;
    };
    // A container made with the key, then used through an account SAS signed with that key.
    let container = unique_container();
    open_target(
        &TargetConfig::Azure(azure_config(&endpoint, &container, AZURITE_KEY, true)),
        fast_retries(3),
    )
    .await
    .unwrap();
    let token = account_sas(AZURITE_ACCOUNT, AZURITE_KEY);
    let mut config = azure_config(&endpoint, &container, AZURITE_KEY, false);
    config.credential = AzureCredentialConfig::Sas {
        token: Secret::new(token.clone()),
    };
    let storage = open_target(&TargetConfig::Azure(config.clone()), fast_retries(3))
        .await
        .unwrap();
    storage.put("sas/x", Bytes::from_static(b"via sas")).await.unwrap();
    assert_eq!(storage.get("sas/x").await.unwrap(), Bytes::from_static(b"via sas"));
    let sig = token
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap()
        .to_string();
    assert!(!format!("{config:?}").contains(&sig));
}

/// An account SAS (service b, resource types sco, permissions rwdlac), signed as Azure
/// documents for version 2018-11-09 and later.
fn account_sas(account: &str, key_base64: &str) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.decode(key_base64).unwrap();
    let (permissions, services, resource_types, start, expiry, protocol, version) = (
        "rwdlac",
        "b",
        "sco",
        "2020-01-01T00:00:00Z",
        "2099-01-01T00:00:00Z",
        "https,http",
        "2021-08-06",
    );
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n{start}\n{expiry}\n\n{protocol}\n{version}\n\n"
    );
    let signature = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
        to_sign.as_bytes(),
    );
    let sig = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
    let sig_encoded: String = sig
        .bytes()
        .map(|b| match b {
            b'+' => "%2B".to_string(),
            b'/' => "%2F".to_string(),
            b'=' => "%3D".to_string(),
            other => (other as char).to_string(),
        })
        .collect();
    format!("sv={version}&ss={services}&srt={resource_types}&sp={permissions}&st={start}&se={expiry}&spr={protocol}&sig={sig_encoded}")
}

/// Unmounts the small file system when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn local_full_disk_is_permanent_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("small");
    std::fs::create_dir(&mount_point).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount_point)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        // Mounting needs root (CI runs as root on this project's machines).
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:\t0\t"));
        assert!(!root, "running as root, yet a 1 MiB tmpfs could not be mounted");
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let _unmount = Mounted(mount_point.clone());
    let storage = LocalDirectory::open(mount_point.join("target"), true).unwrap();
    storage
        .put("a/old", Bytes::from_static(b"the old object"))
        .await
        .unwrap();

    let too_big = Bytes::from(vec![7u8; 2 << 20]);
    let error = storage.put("a/new", too_big.clone()).await.unwrap_err();
    assert_eq!(error.permanent_kind(), Some(PermanentKind::NoSpace), "{error}");
    let error = storage.put("a/old", too_big).await.unwrap_err();
    assert_eq!(error.permanent_kind(), Some(PermanentKind::NoSpace), "{error}");

    assert_eq!(
        storage.get("a/old").await.unwrap(),
        Bytes::from_static(b"the old object"),
        "the old object is intact"
    );
    assert_eq!(
        storage.remove_stray_temporaries().unwrap(),
        0,
        "a failed put leaves no temporary file"
    );
    let names: Vec<String> = list_all(&storage, "")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["a/old".to_string()]);
    storage.put("a/new", Bytes::from(vec![1u8; 100_000])).await.unwrap();
}
