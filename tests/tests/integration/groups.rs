//! `ferryctl group` against the real ferryd: consistency groups are created from registered
//! machines (by id prefix), refused when a rule is broken, kept across a restart of ferryd,
//! and deleted.

use ferry_tests::{ferryctl, Appliance, Ferryd};

use super::failover::run_ok;

#[tokio::test]
async fn groups_are_created_checked_kept_and_deleted() {
    let appliance = Appliance::init(|c| c);
    let ferryd = Ferryd::start(&appliance).await;
    let config = appliance.dir.to_str().unwrap();
    let a = appliance.register("db").await.machine_id.to_string();
    let b = appliance.register("app").await.machine_id.to_string();
    let c = appliance.register("web").await.machine_id.to_string();

    let erp = run_ok(&[
        "--json",
        "group",
        "create",
        "erp",
        "--config",
        config,
        "--machine",
        &a[..8],
        "--machine",
        &b,
        "--crash-every",
        "2m",
        "--app-every",
        "1h",
        "--barrier",
        "5s",
    ]);
    assert_eq!(erp["machines"], serde_json::json!([a, b]));
    assert_eq!(
        (
            erp["crash_every_secs"].as_u64(),
            erp["app_every_secs"].as_u64(),
            erp["barrier_secs"].as_u64()
        ),
        (Some(120), Some(3600), Some(5))
    );

    for (args, says) in [
        (vec!["erp", "--machine", &c[..]], "exists"),
        (vec!["web", "--machine", &b[..]], "one group"),
        (vec!["web", "--machine", "ffffffff"], "no machine registered here"),
        (vec!["Web", "--machine", &c[..]], "group name"),
        (vec!["web", "--machine", &c[..], "--crash-every", "10s"], "every 30 s"),
        (vec!["web", "--machine", &c[..], "--barrier", "2m"], "1 to 60"),
        (
            vec!["web", "--machine", &c[..], "--crash-every", "soon"],
            "--crash-every",
        ),
    ] {
        let mut all = vec!["group", "create"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--config", config]);
        let refused = ferryctl(&all);
        assert!(
            !refused.success && refused.stderr.contains(says),
            "{args:?}: {}",
            refused.stderr
        );
    }
    let web = run_ok(&["--json", "group", "create", "web", "--config", config, "--machine", &c]);
    assert_eq!(web["crash_every_secs"], 300, "the default is 5 minutes");

    // Kept across a restart.
    ferryd.terminate().await;
    let _ferryd = Ferryd::start(&appliance).await;
    let listed = run_ok(&["--json", "group", "list", "--config", config]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["erp", "web"]);
    let text = ferryctl(&["group", "list", "--config", config]);
    assert!(
        text.success && text.stdout.contains("erp") && text.stdout.contains(&a[..8]),
        "{}",
        text.stdout
    );

    run_ok(&["--json", "group", "delete", "erp", "--config", config]);
    run_ok(&[
        "--json",
        "group",
        "delete",
        web["group_id"].as_str().unwrap(),
        "--config",
        config,
    ]);
    let gone = ferryctl(&["group", "delete", "erp", "--config", config]);
    assert!(!gone.success && gone.stderr.contains("no group"), "{}", gone.stderr);
    assert_eq!(
        run_ok(&["--json", "group", "list", "--config", config]),
        serde_json::json!([])
    );
}
