//! A run's report as a human table, and its time series as an SVG plot (throughput on the
//! left axis, ack-to-upload lag on the right), written without a plotting library.

use crate::run::Report;

fn opt(value: Option<f64>, digits: usize, unit: &str) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.digits$}{unit}"))
}

pub fn table(r: &Report) -> String {
    let s = &r.scenario;
    let mut out = format!(
        "scenario {} ({} disks on {} machines, target {}, {} data), {}\n",
        s.name, r.disks, s.machines, s.target, s.data, r.machine
    );
    if s.target == "discard" {
        out.push_str("  target discard: change sets are sealed and dropped (the pipeline without storage)\n");
    }
    let rows = [
        (
            "ingested",
            format!(
                "{:.1} MB in {:.1} s ({} batches)",
                r.ingested_bytes as f64 / 1e6,
                r.load_seconds,
                r.batches
            ),
        ),
        ("ingest", format!("{:.1} MB/s", r.ingest_mb_per_s)),
        (
            "upload",
            format!(
                "{:.1} MB/s (drained {:.1} s after the load)",
                r.upload_mb_per_s, r.drain_seconds
            ),
        ),
        (
            "sustained",
            if let Some(o) = &r.overload {
                format!(
                    "overload (hold let go at {:.0} s with {} MB waiting, load stopped at {:.0} s): {:.1} MB/s \
                     uploaded while loaded (ingest {:.1} MB/s, backlog at least {:.0} MB); drain of {:.0} MB {} \
                     alone; {}",
                    o.lifted_at_secs,
                    r.scenario.hold_uploads_mb,
                    o.stopped_at_secs,
                    o.upload_mb_per_s,
                    o.ingest_mb_per_s,
                    o.min_backlog_mb,
                    o.backlog_at_load_end_mb,
                    opt(o.drain_mb_per_s, 1, " MB/s"),
                    o.vs_drain.map_or(
                        "the drain had under 2 s of uploads: too short to compare with".into(),
                        |v| format!("{v:.2} of the drain rate")
                    )
                )
            } else if r.scenario.hold_uploads_mb > 0 {
                format!(
                    "the backlog never reached {} MB during the load (hold let go at its end); \
                     nothing measured under overload",
                    r.scenario.hold_uploads_mb
                )
            } else if r.scenario.hold_uploads {
                format!(
                    "uploads held during the load; drain {} (the pipeline alone), {} of the ceiling",
                    opt(r.drain_upload_mb_per_s, 1, " MB/s"),
                    opt(r.drain_vs_ceiling, 2, "")
                )
            } else {
                format!(
                    "{:.1} MB/s uploaded while loaded; drain {}; {}",
                    r.sustained_upload_mb_per_s,
                    opt(r.drain_upload_mb_per_s, 1, " MB/s"),
                    r.sustained_vs_drain
                        .map_or("the pipeline kept up (no backlog to measure it alone)".into(), |v| {
                            format!("{v:.2} of the drain rate")
                        })
                )
            },
        ),
        (
            "ack latency",
            format!(
                "p50 {} p99 {} p99.9 {}",
                opt(r.ack_ms.p50, 1, " ms"),
                opt(r.ack_ms.p99, 1, " ms"),
                opt(r.ack_ms.p999, 1, " ms")
            ),
        ),
        (
            "ack to storage",
            format!(
                "p50 {} p99 {}",
                opt(r.lag_ms.p50.map(|v| v / 1e3), 2, " s"),
                opt(r.lag_ms.p99.map(|v| v / 1e3), 2, " s")
            ),
        ),
        (
            "ferryd CPU",
            format!(
                "{} s, {} s/GB, {} of the machine",
                opt(r.ferryd_cpu_seconds, 1, ""),
                opt(r.ferryd_cpu_seconds_per_gb, 2, ""),
                opt(r.ferryd_cpu_share.map(|v| v * 100.0), 1, "%")
            ),
        ),
        (
            "CPU vs ideal",
            match (r.cpu_vs_ideal, &r.limits) {
                (Some(v), Some(l)) => format!(
                    "{v:.2}x ({} s/GB against the limits ideal {:.2} ns/B)",
                    opt(r.ferryd_cpu_seconds_per_gb, 2, ""),
                    l.ideal_ns_per_byte
                ),
                _ => "n/a (needs ferryd's CPU and a limits run)".into(),
            },
        ),
        (
            "CPU by thread",
            if r.cpu_by_thread.is_empty() {
                "n/a (needs ferryd's pid)".into()
            } else {
                r.cpu_by_thread
                    .iter()
                    .map(|t| match t.ideal_ns_per_byte {
                        Some(ideal) => format!(
                            "{} {:.2} ns/B ({:.2}x its stages' {:.2})",
                            t.role,
                            t.ns_per_byte,
                            t.ns_per_byte / ideal.max(1e-9),
                            ideal
                        ),
                        None => format!("{} {:.2} ns/B", t.role, t.ns_per_byte),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "page faults",
            opt(r.minor_faults_per_gb, 0, " minor faults per GB ingested"),
        ),
        ("ferryd peak RSS", opt(r.ferryd_peak_rss_mib, 0, " MiB")),
        ("compression", opt(r.compression_ratio, 2, "x")),
        (
            "storage PUTs",
            format!(
                "{} objects, {} per GB, {} per hour",
                r.storage_puts.map_or("-".into(), |p| p.to_string()),
                opt(r.puts_per_gb, 0, ""),
                opt(r.puts_per_hour, 0, "")
            ),
        ),
        (
            "retries",
            if r.retries.is_empty() {
                "none".into()
            } else {
                r.retries
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "progress read",
            match (r.uploads_read_from, r.status_fallbacks) {
                ("control_status", 0) => "from the control socket, one status a poll".into(),
                ("control_status", n) => format!("from the control socket; {n} polls asked each disk instead"),
                _ => format!(
                    "from each disk on the data endpoint: {} requests a poll beside the load (counted in ferryd's CPU)",
                    r.disks
                ),
            },
        ),
        (
            "of the ceiling",
            match (&r.limits, r.fraction_of_ceiling) {
                (Some(l), Some(f)) => format!(
                    "{:.2} of {:.0} MB/s (ferry-perf limits on {} data; load generator on the same cores)",
                    f, l.ideal_mb_per_s, l.mix
                ),
                _ => "n/a".into(),
            },
        ),
    ];
    for (name, value) in rows {
        out.push_str(&format!("  {name:<16} {value}\n"));
    }
    out
}

pub fn svg(r: &Report) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 420.0, 70.0, 70.0, 40.0, 50.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let t_max = r.samples.iter().map(|s| s.t_secs).fold(1.0, f64::max);
    let mb_max = r
        .samples
        .iter()
        .map(|s| s.ingest_mb_per_s.max(s.upload_mb_per_s))
        .fold(1.0, f64::max)
        * 1.1;
    let lag_max = r.samples.iter().filter_map(|s| s.lag_secs).fold(0.1, f64::max) * 1.1;
    let x = |t: f64| left + t / t_max * plot_w;
    let y_mb = |v: f64| top + plot_h - v / mb_max * plot_h;
    let y_lag = |v: f64| top + plot_h - v / lag_max * plot_h;
    let line = |points: Vec<(f64, f64)>, color: &str| {
        let path: Vec<String> = points.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        )
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">ferry-perf {}: {} disks, target {}, {} data</text>\n",
        r.scenario.name, r.disks, r.scenario.target, r.scenario.data
    );
    out.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>\n"
    ));
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let yy = top + plot_h - f * plot_h;
        out.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{:.0}</text>\
             <text x=\"{:.0}\" y=\"{:.0}\">{:.1}</text>\
             <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{:.0}</text>\n",
            left - 6.0,
            yy + 4.0,
            f * mb_max,
            w - right + 6.0,
            yy + 4.0,
            f * lag_max,
            left + f * plot_w,
            h - bottom + 16.0,
            f * t_max
        ));
    }
    out.push_str(&format!(
        "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">seconds</text>\
         <text x=\"14\" y=\"{:.0}\" transform=\"rotate(-90 14 {:.0})\" text-anchor=\"middle\">MB/s</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" transform=\"rotate(90 {:.0} {:.0})\" text-anchor=\"middle\">ack to storage lag, s</text>\n",
        left + plot_w / 2.0,
        h - 12.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        w - 14.0,
        top + plot_h / 2.0,
        w - 14.0,
        top + plot_h / 2.0
    ));
    out.push_str(&line(
        r.samples
            .iter()
            .map(|s| (x(s.t_secs), y_mb(s.ingest_mb_per_s)))
            .collect(),
        "#1f77b4",
    ));
    out.push_str(&line(
        r.samples
            .iter()
            .map(|s| (x(s.t_secs), y_mb(s.upload_mb_per_s)))
            .collect(),
        "#2ca02c",
    ));
    out.push_str(&line(
        r.samples
            .iter()
            .filter_map(|s| s.lag_secs.map(|l| (x(s.t_secs), y_lag(l))))
            .collect(),
        "#d62728",
    ));
    out.push_str(&format!(
        "<text x=\"{0:.0}\" y=\"{1:.0}\" fill=\"#1f77b4\">ingest MB/s</text>\
         <text x=\"{2:.0}\" y=\"{1:.0}\" fill=\"#2ca02c\">upload MB/s</text>\
         <text x=\"{3:.0}\" y=\"{1:.0}\" fill=\"#d62728\">lag (s, right axis)</text>\n</svg>\n",
        left + 10.0,
        top + 16.0,
        left + 110.0,
        left + 215.0
    ));
    out
}
