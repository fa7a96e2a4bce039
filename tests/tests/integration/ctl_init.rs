//! `ferryctl init` and `ferryctl vault check` on the local target and on Azurite.

use ferry_format::names::VAULT_JSON;
use ferry_format::{VaultDescriptor, VaultKey};
use ferry_tests::{azurite_endpoint, ferryctl, unique_container, AZURITE_ACCOUNT, AZURITE_KEY};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn init_creates_a_private_appliance_and_a_vault() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let run = ferryctl(&["--json", "init", s(&dir)]);
    assert!(run.success, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["joined_existing_vault"], false);

    // Owner-only everything.
    assert_eq!(mode(&dir), 0o700);
    for file in [
        "ferry.toml",
        "vault.key",
        "passphrase",
        "pki/ca.pem",
        "pki/ca.key",
        "pki/server.pem",
        "pki/server.key",
    ] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    // The key file holds the FORMATS.md text form; the target's vault.json checks against it.
    let key = VaultKey::parse_text(&std::fs::read_to_string(dir.join("vault.key")).unwrap()).unwrap();
    let vault = VaultDescriptor::parse(&std::fs::read(dir.join("target").join(VAULT_JSON)).unwrap()).unwrap();
    assert_eq!(vault.vault_id.to_string(), report["vault_id"].as_str().unwrap());
    assert!(vault.open(&key).is_ok());
    // The config is the documented default, loadable, naming ports 9443 and 443.
    let config_text = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    assert!(
        config_text.contains("data_listen = \"0.0.0.0:9443\"")
            && config_text.contains("management_listen = \"0.0.0.0:443\"")
    );
    ferry_config::ApplianceConfig::load(&dir.join("ferry.toml")).unwrap();
    let passphrase = std::fs::read_to_string(dir.join("passphrase")).unwrap();
    assert_eq!(passphrase.trim().len(), 29);
    // No staging directory is left beside it.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    let check = ferryctl(&["vault", "check", "--config", s(&dir)]);
    assert!(
        check.success && check.stdout.contains("matches"),
        "{}{}",
        check.stdout,
        check.stderr
    );

    // The ferry.toml itself is taken for its directory; a wrong path says what --config takes, once.
    let by_file = ferryctl(&["vault", "check", "--config", s(&dir.join("ferry.toml"))]);
    assert!(
        by_file.success && by_file.stdout.contains("matches"),
        "{}",
        by_file.stderr
    );
    let wrong = ferryctl(&["vault", "check", "--config", s(&dir.join("vault.key"))]);
    assert!(!wrong.success, "{}", wrong.stdout);
    assert_eq!(wrong.stderr.matches("Not a directory").count(), 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("--config takes the appliance directory"),
        "{}",
        wrong.stderr
    );

    // The next steps, with this appliance's certificate pinned.
    let steps: Vec<&str> = report["next_steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(steps[0], format!("ferryd --config {}", s(&dir)));
    assert!(
        steps[1].starts_with("ferry-agent register --server ")
            && steps[1].ends_with(&format!(
                "--fingerprint {}",
                report["server_cert_sha256"].as_str().unwrap()
            )),
        "{steps:?}"
    );
    let text = ferryctl(&["init", s(&tmp.path().join("text"))]);
    assert!(
        text.stdout.contains("Next:")
            && text
                .stdout
                .contains(&format!("ferryd --config {}", s(&tmp.path().join("text")))),
        "{}",
        text.stdout
    );

    let again = ferryctl(&["init", s(&dir)]);
    assert!(
        !again.success && again.stderr.contains("refusing to overwrite"),
        "{}",
        again.stderr
    );
}

/// The package's way: the directory exists (made by postinst, owned by the `ferry` user, whose
/// parent /var/lib that user cannot write), empty; init fills it in place.
#[test]
fn init_fills_an_existing_empty_directory_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ferry");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = ferryctl(&["--json", "init", s(&dir)]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(mode(&dir), 0o700);
    let mut entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["ferry.toml", "passphrase", "pki", "target", "vault.key"]);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "nothing staged beside it"
    );
    let check = ferryctl(&["vault", "check", "--config", s(&dir)]);
    assert!(check.success, "{}", check.stderr);
    // Now it is not empty: a second init is refused and changes nothing.
    let again = ferryctl(&["init", s(&dir)]);
    assert!(!again.success && again.stderr.contains("not empty"), "{}", again.stderr);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);
}

#[test]
fn a_second_appliance_joins_only_with_the_vault_key() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("shared-target");
    let first = tmp.path().join("first");
    assert!(ferryctl(&["init", s(&first), "--target-dir", s(&target)]).success);
    let vault_before = std::fs::read(target.join(VAULT_JSON)).unwrap();

    let second = tmp.path().join("second");
    let refused = ferryctl(&["init", s(&second), "--target-dir", s(&target)]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("wrong vault key") && refused.stderr.contains("Nothing was written"),
        "{}",
        refused.stderr
    );
    assert!(!second.exists(), "a refused init leaves no appliance directory");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "and no staging directory"
    );
    assert_eq!(
        std::fs::read(target.join(VAULT_JSON)).unwrap(),
        vault_before,
        "and the vault is untouched"
    );

    let key_file = first.join("vault.key");
    let joined = ferryctl(&[
        "--json",
        "init",
        s(&second),
        "--target-dir",
        s(&target),
        "--vault-key-file",
        s(&key_file),
    ]);
    assert!(joined.success, "{}", joined.stderr);
    assert_eq!(joined.json()["joined_existing_vault"], true);
    assert_eq!(std::fs::read(target.join(VAULT_JSON)).unwrap(), vault_before);
}

#[test]
fn vault_check_says_wrong_vault_key_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    assert!(ferryctl(&["init", s(&dir)]).success);
    let other_key = tmp.path().join("other.key");
    std::fs::write(&other_key, VaultKey::generate().unwrap().to_text()).unwrap();
    let target = dir.join("target");

    let check = |target: &Path, key: &Path| {
        ferryctl(&[
            "--json",
            "vault",
            "check",
            "--target-dir",
            s(target),
            "--key-file",
            s(key),
        ])
    };
    let refused = |run: ferry_tests::Run, says: &str| {
        let error = run.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(!run.success && error.contains(says), "expected {says:?}, got {error:?}");
    };

    refused(check(&target, &other_key), "wrong vault key");
    let right = check(&target, &dir.join("vault.key"));
    assert!(right.success, "{}", right.stdout);
    assert_eq!(right.json()["key_matches"], true);

    std::fs::write(&other_key, "not a key").unwrap();
    refused(check(&target, &other_key), "does not hold a vault key");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(check(&empty, &dir.join("vault.key")), "no Ferry vault");
    refused(
        check(&tmp.path().join("nope"), &dir.join("vault.key")),
        "does not exist",
    );
    assert!(!tmp.path().join("nope").exists(), "a check never creates a target");
}

#[test]
fn a_bad_config_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    assert!(ferryctl(&["init", s(&dir)]).success);
    let config = dir.join("ferry.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("upload_concurrency = 32", "upload_concurrency = 0"),
    )
    .unwrap();
    let run = ferryctl(&["vault", "check", "--config", s(&dir)]);
    assert!(
        !run.success && run.stderr.contains("pipeline.upload_concurrency"),
        "{}",
        run.stderr
    );
    std::fs::write(
        &config,
        text.replace("upload_concurrency = 32", "upload_concurency = 32"),
    )
    .unwrap();
    let run = ferryctl(&["vault", "check", "--config", s(&dir)]);
    assert!(
        !run.success && run.stderr.contains("upload_concurency"),
        "{}",
        run.stderr
    );
}

#[test]
fn init_on_azurite_creates_joins_and_refuses() {
    let Some(endpoint) = azurite_endpoint() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("account.key");
    std::fs::write(&key_file, AZURITE_KEY).unwrap();
    let container = unique_container("init");
    let azure = |dir: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "--json",
            "init",
            s(dir),
            "--azure-account",
            AZURITE_ACCOUNT,
            "--azure-container",
            &container,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(["--azure-endpoint", &endpoint, "--azure-key-file", s(&key_file)].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        ferryctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let missing = azure(&tmp.path().join("m"), &[]);
    assert!(
        !missing.success && missing.stdout.contains("container or target directory does not exist"),
        "{}",
        missing.stdout
    );
    // One sentence with the fix, not Azure's raw XML.
    assert!(
        missing.stdout.contains("--create-container")
            && missing.stdout.contains("ContainerNotFound")
            && !missing.stdout.contains("<?xml")
            && !missing.stdout.contains("RequestId"),
        "{}",
        missing.stdout
    );
    let error = missing.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(!error.is_empty() && !error.contains('\n'), "one line: {error}");
    assert!(!tmp.path().join("m").exists());

    let first = tmp.path().join("first");
    let created = azure(&first, &["--create-container"]);
    assert!(created.success, "{}", created.stdout);
    let report = created.json();
    assert!(report["target"].as_str().unwrap().contains(&container));
    let config = std::fs::read_to_string(first.join("ferry.toml")).unwrap();
    assert!(config.contains("kind = \"azure\"") && config.contains("kind = \"shared_key\""));

    let refused = azure(&tmp.path().join("second"), &[]);
    assert!(
        !refused.success && refused.stdout.contains("wrong vault key"),
        "{}",
        refused.stdout
    );
    let joined = azure(
        &tmp.path().join("second"),
        &["--vault-key-file", s(&first.join("vault.key"))],
    );
    assert!(joined.success, "{}", joined.stdout);
    assert_eq!(joined.json()["vault_id"], report["vault_id"]);

    let check = ferryctl(&["vault", "check", "--config", s(&first)]);
    assert!(check.success, "{}", check.stderr);
    let secret_free = std::fs::read_to_string(first.join("ferry.toml")).unwrap();
    assert!(
        secret_free.contains(AZURITE_KEY),
        "the owner-only config holds the key for ferryd"
    );
    assert!(
        !check.stdout.contains(AZURITE_KEY) && !created.stdout.contains(AZURITE_KEY),
        "but no output shows it"
    );
}
