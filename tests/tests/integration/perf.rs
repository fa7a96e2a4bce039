//! ferry-perf, briefly (CI's smoke; no timing is asserted): a run against a ferryd it starts
//! drains and reports consistent totals, the discard target is named as such, bad scenarios
//! are refused by key, and the limits probe measures every stage.

use ferry_tests::{binary, Run};
use std::process::Command;

fn perf(args: &[&str]) -> Run {
    Command::new(binary("ferry-perf"))
        .args(args)
        .output()
        .expect("ferry-perf runs")
        .into()
}

/// A 2 s run of `machines` machines with 2 disks each against a ferryd ferry-perf starts,
/// reported as JSON, with `extra` flags.
fn short_run(name: &str, machines: u32, extra: &[&str], out: &std::path::Path) -> Run {
    let machines = machines.to_string();
    let mut args = vec![
        "--json",
        "run",
        "--name",
        name,
        "--machines",
        &machines,
        "--disks-per-machine",
        "2",
        "--duration-secs",
        "2",
        "--no-limits",
        "--poll-ms",
        "200",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    perf(&args)
}

#[test]
fn a_short_run_drains_and_reports_consistent_totals() {
    let out = tempfile::tempdir().unwrap();
    let run = short_run("smoke", 2, &["--bookmark-every-secs", "1"], out.path());
    assert!(run.success, "{}", run.stderr);
    let report = run.json();
    let ingested = report["ingested_bytes"].as_u64().unwrap();
    assert!(ingested > 0, "{report}");
    assert_eq!(report["uploaded_bytes"].as_u64(), Some(ingested), "the backlog drained");
    assert_eq!(report["disks"], 4);
    // Progress came from the control socket, not from requests beside the load.
    assert_eq!(report["uploads_read_from"], "control_status", "{report}");
    assert_eq!(report["status_fallbacks"], 0, "{report}");
    assert!(report["ack_ms"]["p50"].as_f64().is_some() && report["lag_ms"]["p50"].as_f64().is_some());
    let ratio = report["compression_ratio"].as_f64().unwrap();
    assert!(ratio > 1.5 && ratio < 4.0, "mixed data stored sealed: {ratio}");
    assert!(report["ferryd_peak_rss_mib"].as_f64().unwrap() > 0.0);
    // Each of the 4 disks wrote at least its descriptor, a change set and a point.
    let puts = report["storage_puts"].as_u64().unwrap_or(0);
    assert!(puts >= 12, "{report}");
    assert!(report["puts_per_gb"].as_f64().unwrap() > 0.0 && report["puts_per_hour"].as_f64().unwrap() > 0.0);
    assert!(!report["samples"].as_array().unwrap().is_empty());
    // Uploaded while loaded cannot pass what was acknowledged while loaded.
    let sustained = report["sustained_upload_mb_per_s"].as_f64().unwrap();
    assert!(
        sustained >= 0.0 && sustained <= report["ingest_mb_per_s"].as_f64().unwrap(),
        "{report}"
    );
    assert!(
        report["cpu_vs_ideal"].is_null(),
        "no limits run, no ideal to compare with"
    );
    let written: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        written.iter().any(|n| n.starts_with("smoke-") && n.ends_with(".json")),
        "{written:?}"
    );
    let svg = written.iter().find(|n| n.ends_with(".svg")).expect("an SVG plot");
    let svg = std::fs::read_to_string(out.path().join(svg)).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn holding_uploads_leaves_the_load_to_drain_after_it() {
    let out = tempfile::tempdir().unwrap();
    let run = short_run("held", 1, &["--hold-uploads"], out.path());
    assert!(run.success, "{}", run.stderr);
    let report = run.json();
    let ingested = report["ingested_bytes"].as_u64().unwrap() as f64;
    assert_eq!(report["uploaded_bytes"].as_f64(), Some(ingested), "the backlog drained");
    // Held: at most the hold's 1 MB/s (plus one object) went up while the load ran...
    let uploaded_while_loaded =
        report["sustained_upload_mb_per_s"].as_f64().unwrap() * 1e6 * report["load_seconds"].as_f64().unwrap();
    assert!(uploaded_while_loaded < ingested / 2.0, "{report}");
    // ...and the hold was lifted at the load's end: at the held rate the backlog would take
    // `ingested` / 1 MB/s seconds (here minutes); lifted, it drains in a few.
    let held_drain_secs = (ingested - uploaded_while_loaded) / 1e6;
    assert!(
        report["drain_seconds"].as_f64().unwrap() < held_drain_secs / 4.0,
        "{report}"
    );
    assert!(report["drain_upload_mb_per_s"].as_f64().is_some(), "{report}");
    assert!(report["sustained_vs_drain"].is_null(), "nothing to compare while held");
    assert_eq!(report["scenario"]["hold_uploads"], true);
    assert!(
        report["overload"].is_null(),
        "held for the whole load: no overload span"
    );
}

#[test]
fn an_overload_run_lets_go_at_the_backlog_and_stops_the_load_at_half_of_it() {
    let out = tempfile::tempdir().unwrap();
    let run = perf(&[
        "--json",
        "run",
        "--name",
        "overload-smoke",
        "--machines",
        "1",
        "--disks-per-machine",
        "2",
        // The longest the load may run: it is meant to stop long before, by the backlog rule.
        "--duration-secs",
        "60",
        "--hold-uploads-mb",
        "24",
        "--load-nice",
        "19",
        "--no-limits",
        "--poll-ms",
        "100",
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let report = run.json();
    let ingested = report["ingested_bytes"].as_f64().unwrap();
    assert_eq!(report["uploaded_bytes"].as_f64(), Some(ingested), "the backlog drained");
    assert!(ingested >= 24e6, "the hold lasted until 24 MB waited: {report}");
    let overload = &report["overload"];
    let (lifted, stopped) = (
        overload["lifted_at_secs"].as_f64().unwrap(),
        overload["stopped_at_secs"].as_f64().unwrap(),
    );
    let load_seconds = report["load_seconds"].as_f64().unwrap();
    assert!(0.0 < lifted && lifted <= stopped && stopped <= load_seconds, "{report}");
    // Stopped by the rule (the backlog down to 12 MB), not by the 60 s bound.
    assert!(stopped < 60.0 && load_seconds < 60.0, "{report}");
    // Between the lift and the stop the pipeline worked through the held backlog.
    assert!(overload["upload_mb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(overload["ingest_mb_per_s"].as_f64().unwrap() >= 0.0, "{report}");
    assert_eq!(report["scenario"]["hold_uploads_mb"], 24);
    assert_eq!(report["scenario"]["load_nice"], 19);
    assert!(report["sustained_vs_drain"].is_null(), "{report}");
}

#[test]
fn the_discard_target_is_named_and_bad_scenarios_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let run = perf(&[
        "run",
        "--name",
        "discard",
        "--duration-secs",
        "1",
        "--target",
        "discard",
        "--no-limits",
        "--out-dir",
        out_dir,
    ]);
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("target discard: change sets are sealed and dropped"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("compression      2."),
        "ferryd counts what it sealed: {}",
        run.stdout
    );

    let run = perf(&["run", "--window", "0", "--no-limits", "--out-dir", out_dir]);
    assert!(!run.success && run.stderr.contains("window"), "{}", run.stderr);
    let bad = out.path().join("bad.toml");
    std::fs::write(&bad, "machines = 2\nthroughput = 5\n").unwrap();
    let run = perf(&[
        "run",
        "--scenario",
        bad.to_str().unwrap(),
        "--no-limits",
        "--out-dir",
        out_dir,
    ]);
    assert!(!run.success && run.stderr.contains("throughput"), "{}", run.stderr);
    let run = perf(&["run", "--data", "random", "--no-limits", "--out-dir", out_dir]);
    assert!(!run.success && run.stderr.contains("data"), "{}", run.stderr);
    let run = perf(&[
        "run",
        "--hold-uploads",
        "--hold-uploads-mb",
        "100",
        "--no-limits",
        "--out-dir",
        out_dir,
    ]);
    assert!(!run.success && run.stderr.contains("hold_uploads_mb"), "{}", run.stderr);
    let run = perf(&["run", "--load-nice", "20", "--no-limits", "--out-dir", out_dir]);
    assert!(!run.success && run.stderr.contains("load_nice"), "{}", run.stderr);
}

#[test]
fn every_shipped_scenario_parses_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../perf/scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| {
            let scenario = ferry_perf::scenario::Scenario::load(&path).unwrap();
            scenario
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            scenario.name
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "asr-sizing",
            "bursty",
            "drain",
            "incompressible",
            "many-streams",
            "overload",
            "steady"
        ]
    );
}

#[test]
fn the_limits_probe_measures_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let run = perf(&[
        "--json",
        "limits",
        "--mib",
        "8",
        "--repetitions",
        "1",
        "--cache-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let limits = run.json();
    let stages = limits["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 5, "{limits}");
    for stage in stages {
        assert!(
            stage["mb_per_s"].as_f64().unwrap() > 0.0 && stage["cpu_ns_per_byte"].as_f64().unwrap() > 0.0,
            "{stage}"
        );
    }
    let ratio = limits["compression_ratio"].as_f64().unwrap();
    assert!((2.0..3.0).contains(&ratio), "mixed data compresses about 2.4x: {ratio}");
    assert!(limits["ideal_mb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the append probe cleans up"
    );
}

/// `--management`: load a ferryd someone else started (here, the tests' own), CPU and memory
/// read through `--ferryd-pid`.
#[tokio::test]
async fn a_run_against_a_running_ferryd() {
    let appliance = ferry_tests::Appliance::init(|c| c);
    let ferryd = ferry_tests::Ferryd::start(&appliance).await;
    let out = tempfile::tempdir().unwrap();
    let pid = ferryd.pid().to_string();
    let passphrase = appliance.dir.join("passphrase");
    let run = perf(&[
        "--json",
        "run",
        "--name",
        "existing",
        "--duration-secs",
        "1",
        "--no-limits",
        "--poll-ms",
        "200",
        "--management",
        &appliance.management,
        "--data-endpoint",
        &appliance.data,
        "--passphrase-file",
        passphrase.to_str().unwrap(),
        "--ferryd-pid",
        &pid,
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let report = run.json();
    assert!(report["ingested_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["uploaded_bytes"], report["ingested_bytes"]);
    // A ferryd ferry-perf did not make: no control socket it knows, so each disk is asked.
    assert_eq!(report["uploads_read_from"], "data_endpoint", "{report}");
    assert!(report["ferryd_cpu_seconds"].as_f64().unwrap() > 0.0, "{report}");
    drop(ferryd);
}

/// `--target azurite`: ferry-perf starts the Azurite scripts/azurite.sh installed.
#[test]
fn a_run_against_azurite_started_by_ferry_perf() {
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/azurite/node_modules/.bin/azurite-blob")
        .exists();
    if !installed {
        assert!(
            std::env::var("FERRY_REQUIRE_AZURITE").is_err(),
            "FERRY_REQUIRE_AZURITE is set but Azurite is not installed"
        );
        eprintln!("skipped: Azurite is not installed (scripts/azurite.sh installs it)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = perf(&[
        "--json",
        "run",
        "--name",
        "azurite",
        "--duration-secs",
        "1",
        "--target",
        "azurite",
        "--no-limits",
        "--poll-ms",
        "200",
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let report = run.json();
    assert!(report["ingested_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        report["uploaded_bytes"], report["ingested_bytes"],
        "everything reached Azurite"
    );
}
