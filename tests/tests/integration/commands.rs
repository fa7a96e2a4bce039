//! Management commands with the real ferryd, a running ferry-agent and ferryctl: `pass-now`,
//! a `bookmark` carrying a group id into its recovery point, and a `resync` of one disk, each
//! reported back; the long poll answers only the machine's own certificate, waits, and refuses
//! what does not fit.

use ferry_tests::{ferryctl, Agent, Appliance, Ferryd};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::failover::{run_ok, wait_for_points};

/// Runs `ferryctl --json command ...` and returns the report (the command must succeed).
fn command(config: &str, machine: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "command", "--config", config, "--machine", machine];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--wait", "180"]);
    run_ok(&all)
}

#[tokio::test]
async fn commands_reach_a_running_agent_and_come_back_with_their_bookmarks() {
    let appliance = Appliance::init(|c| c);
    let _ferryd = Ferryd::start(&appliance).await;
    let agent = Agent::register(&appliance);
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("disk.img");
    let mut data = vec![0u8; 8 << 20];
    ferry_harness::datagen::DataGenerator::new(4, ferry_harness::datagen::Mix::MIXED).fill(&mut data);
    std::fs::write(&image, &data).unwrap();
    // The schedule alone would make one pass an hour: every later pass is a command's.
    agent.configure(
        &[&image],
        "[bookmarks]\ncrash_interval_secs = 3600\napp_interval_secs = 0\n",
    );
    let mut child = agent.spawn(false);
    let deadline = Instant::now() + Duration::from_secs(120);
    let disk = loop {
        let status = agent.status();
        if let Some(disk) = status
            .as_ref()
            .filter(|s| s["disks"][0]["last_bookmark"].is_object())
            .and_then(|s| s["disks"][0]["disk_id"].as_str())
        {
            break disk.to_string();
        }
        assert!(Instant::now() < deadline, "no first pass: {}", agent.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    let config = appliance.dir.to_str().unwrap();
    let machine = agent.identity().machine_id.to_string();
    let prefix = &machine[..8];

    let done = command(config, prefix, &["pass-now"]);
    assert_eq!(done["outcome"]["ok"], true, "{done}");
    assert_eq!(done["outcome"]["bookmarks"][0]["disk_id"], disk.as_str());

    let group = Uuid::new_v4();
    let done = command(
        config,
        prefix,
        &["bookmark", "--kind", "crash", "--group", &group.to_string()],
    );
    assert_eq!(done["outcome"]["ok"], true, "{done}");
    let bookmark = &done["outcome"]["bookmarks"][0];
    let report = serde_json::json!([{"disk_id": disk, "bookmark_id": bookmark["bookmark_id"]}]);
    let point = &wait_for_points(&appliance, report.as_array().unwrap())[0];
    assert_eq!(point["group_id"], group.to_string().as_str(), "{point}");
    assert_eq!(point["kind"], "crash");

    let done = command(
        config,
        prefix,
        &["resync", "--disk", &disk, "--reason", "checking the copy"],
    );
    assert_eq!(done["outcome"]["ok"], true, "{done}");
    let report = serde_json::json!([{"disk_id": disk, "bookmark_id": done["outcome"]["bookmarks"][0]["bookmark_id"]}]);
    let point = &wait_for_points(&appliance, report.as_array().unwrap())[0];
    assert!(
        point["tag"]
            .as_str()
            .unwrap_or_default()
            .ends_with("resync: checking the copy"),
        "{point}"
    );

    // Refused before anything is queued.
    for (args, says) in [
        (vec!["bookmark"], "needs its kind"),
        (vec!["pass-now", "--disk", &disk], "resync commands only"),
        (vec!["pass-now", "--kind", "app"], "bookmark commands only"),
    ] {
        let mut all = vec!["command", "--config", config, "--machine", prefix];
        all.extend_from_slice(&args);
        let refused = ferryctl(&all);
        assert!(
            !refused.success && refused.stderr.contains(says),
            "{args:?}: {}",
            refused.stderr
        );
    }
    let unknown = ferryctl(&["command", "--config", config, "--machine", "ffffffff", "pass-now"]);
    assert!(!unknown.success && unknown.stderr.contains("no machine registered here"));
    let log = run_ok(&["--json", "command", "--config", config, "--machine", prefix, "--log"]);
    assert_eq!(log["results"].as_array().unwrap().len(), 3, "{log}");
    assert_eq!(log["pending"], serde_json::json!([]));

    // The long poll: only the machine itself, and it waits for the time asked.
    let identity = agent.identity();
    let as_machine = |id: &ferry_client::Identity| {
        let tls = ferry_client::tls::ca_verified(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))).unwrap();
        ferry_client::DataClient::new(&appliance.management, tls)
    };
    let path = format!("/v1/machines/{machine}/commands?wait_s=1");
    let get = ferry_client::control::Method::GET;
    let other = appliance.register("other").await;
    let refused = as_machine(&other)
        .raw(get.clone(), &path, "application/json", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(refused.status, 403);
    let anonymous = {
        let tls = ferry_client::tls::ca_verified(&identity.ca_pem, None).unwrap();
        ferry_client::DataClient::new(&appliance.management, tls)
    };
    let refused = anonymous
        .raw(get.clone(), &path, "application/json", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(refused.status, 401);
    let mine = as_machine(&identity);
    let waited = mine
        .raw(get.clone(), &path, "application/json", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(waited.status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&waited.body).unwrap(),
        serde_json::json!({"commands": []})
    );
    let too_long = mine
        .raw(
            get,
            &format!("/v1/machines/{machine}/commands?wait_s=61"),
            "application/json",
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(too_long.status, 400);
    let unknown_result = mine
        .post_json::<_, serde_json::Value>(
            &format!("/v1/machines/{machine}/commands/{}/result", Uuid::new_v4()),
            &serde_json::json!({"ok": true, "message": "done"}),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown_result.status(), Some(404));

    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
    assert!(child.wait().unwrap().success(), "{}", agent.log_text());
}
