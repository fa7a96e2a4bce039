//! Small helpers for the tools that start ferryd and measure what it stores (ferry-perf and
//! `ferryctl demo`): a free loopback port, waiting for a child to listen, bytes under a directory,
//! one value from ferryd's /metrics.

use anyhow::bail;
use std::process::Child;
use std::time::{Duration, Instant};

/// Ports handed out for listeners: below Linux's ephemeral range (32768-60999), so an
/// outgoing connection's local port cannot take a port between choosing it and binding it
/// (a bench once failed with "Address already in use" on a port the kernel had just given to
/// a client); bind(0) would pick from inside that range.
const LISTEN_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port free now, for a listener a test or tool starts next. Ports are tried from
/// a point that differs per call and per process, and each port handed out is claimed for the
/// calling process's life (a file naming its pid under the temporary directory), so two live
/// processes never get the same port between choosing it and binding it (tests running side
/// by side did, now and then).
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(LISTEN_PORTS.end - LISTEN_PORTS.start);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for step in 0..span {
        let port = LISTEN_PORTS.start + ((seed.wrapping_add(step * 7_919)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && claim_port(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {LISTEN_PORTS:?}")
}

/// Claims `port` for this process: false when a live process claimed it already.
fn claim_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join("ferry-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // no claims possible: the bind check alone
    }
    let path = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                use std::io::Write;
                return file.write_all(me.to_string().as_bytes()).is_ok();
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                let alive =
                    owner.is_some_and(|pid| pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return false;
                }
                // Its claimer is gone (or never wrote its pid): take it over.
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => return true,
        }
    }
    false
}

/// Waits (at most 60 s) until `address` accepts connections; fails early if `child` exits.
pub fn wait_listening(address: &str, mut child: Option<&mut Child>, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(address).is_err() {
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            bail!("{what} exited during start ({status})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {address} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Total bytes of the files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// The value of metric `name` (no labels) from ferryd's `/metrics` at `address`, if it answers.
pub fn scrape_metric(address: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
}
