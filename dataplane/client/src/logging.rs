//! The one logging set-up of Ferry's daemons (ferryd, ferry-agent): levels from `FERRY_LOG`
//! (default `info`), to stderr, as text or, with `FERRY_LOG_FORMAT=json`, one JSON object per
//! line. Text has ANSI colours only when stderr is a terminal: a log file or the journal gets
//! plain text a person (or grep) can read.

use std::io::IsTerminal;

pub fn init() {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    if std::env::var("FERRY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
