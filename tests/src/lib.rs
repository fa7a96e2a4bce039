//! Helpers for the end-to-end tests: finding the workspace's binaries, running them, and
//! reaching the Azurite that `scripts/test.sh` starts.
//!
//! The binaries are the ones `cargo build --workspace --bins` put beside this test binary's
//! directory (`target/<profile>/`); `scripts/test.sh` builds them before running tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Azurite's published development account and key (not secrets).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The path of workspace binary `name`, built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/integration-<hash> -> target/<profile>/<name>
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A finished command's exit status and text.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `ferryctl` with `args`.
pub fn ferryctl(args: &[&str]) -> Run {
    Command::new(binary("ferryctl"))
        .args(args)
        .output()
        .expect("ferryctl runs")
        .into()
}

/// Azurite's account URL, or `None` (the test then skips) unless `FERRY_REQUIRE_AZURITE=1`.
pub fn azurite_endpoint() -> Option<String> {
    match std::env::var("FERRY_TEST_AZURITE_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ if std::env::var("FERRY_REQUIRE_AZURITE").as_deref() == Ok("1") => {
            panic!("FERRY_REQUIRE_AZURITE=1 but FERRY_TEST_AZURITE_ENDPOINT is not set: start Azurite (scripts/test.sh does)")
        }
        _ => {
            eprintln!("skipped: FERRY_TEST_AZURITE_ENDPOINT is not set (scripts/test.sh starts Azurite)");
            None
        }
    }
}

/// A container name no other test uses.
pub fn unique_container(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
