//! What `ferryctl preflight` measures on the machine itself: cores, memory, the cache file
//! system (its type, O_DIRECT writes and their rate, free space), io_uring, the kernel's clock
//! discipline, and whether a TCP port is taken. Each probe returns a number or a reason and
//! leaves nothing behind (the cache probe's file is removed whatever happens).

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// MemTotal of /proc/meminfo, bytes.
pub fn memory_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/meminfo has no MemTotal")?;
    Ok(kib * 1024)
}

/// The cache file system as statfs sees it.
pub struct FileSystem {
    pub kind: &'static str,
    /// Held in memory only (tmpfs, ramfs): nothing in it survives a reboot.
    pub volatile: bool,
    pub size_bytes: u64,
    pub available_bytes: u64,
}

pub fn file_system(path: &Path) -> Result<FileSystem> {
    let stat = rustix::fs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    let magic = stat.f_type as u64;
    let (kind, volatile) = match magic {
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0x0102_1994 => ("tmpfs", true),
        0x8584_58F6 => ("ramfs", true),
        0x794C_7630 => ("overlayfs", false),
        0x6969 => ("nfs", false),
        0x2FC1_2FC1 => ("zfs", false),
        0x6573_5546 => ("fuse", false),
        _ => ("other", false),
    };
    let block = stat.f_bsize as u64;
    Ok(FileSystem {
        kind,
        volatile,
        size_bytes: stat.f_blocks as u64 * block,
        available_bytes: stat.f_bavail as u64 * block,
    })
}

/// Whether the ext4 file system holding `path` has a journal: `Some(false)` when it has none,
/// `None` when that cannot be told. A mounted journal shows in `/proc/fs/jbd2/` as
/// `{device}-{inode}`, the device named as in `/sys/dev/block/{major}:{minor}`. Why it
/// matters: without a journal, ext4 makes every new inode skip the inodes deleted in the
/// last minutes, reading each one's table block (docs/SIZING.md, "Which file system").
pub fn ext4_has_journal(path: &Path) -> Option<bool> {
    let dev = rustix::fs::stat(path).ok()?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let device = link.file_name()?.to_str()?.to_string();
    let journals = match std::fs::read_dir("/proc/fs/jbd2") {
        Ok(entries) => entries,
        // jbd2 not even loaded: no journal is mounted anywhere.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    let prefix = format!("{device}-");
    Some(journals.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .is_some_and(|inode| !inode.is_empty() && inode.bytes().all(|b| b.is_ascii_digit()))
    }))
}

/// The nearest existing directory at or above `path` (before init the cache directory may not
/// exist yet; its file system is its parent's).
pub fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    while !current.is_dir() {
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent.to_path_buf(),
            _ => return PathBuf::from("/"),
        }
    }
    current
}

/// Writes `total` bytes with O_DIRECT in 1 MiB pieces and fdatasyncs, in a temporary file in
/// `dir` that is removed afterwards: Ok(MB/s), or Err with why O_DIRECT did not work.
pub fn direct_write_mb_s(dir: &Path, total: usize) -> Result<f64, String> {
    const PIECE: usize = 1 << 20;
    const ALIGN: usize = 4096;
    let path = dir.join(format!(".ferry-preflight-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&path)
            .map_err(|e| format!("opening with O_DIRECT: {e}"))?;
        // An aligned window of a plain buffer: O_DIRECT needs 4096-aligned memory.
        let mut buffer = vec![0u8; PIECE + ALIGN];
        let offset = buffer.as_ptr().align_offset(ALIGN);
        let piece = &mut buffer[offset..offset + PIECE];
        piece.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        let started = Instant::now();
        for _ in 0..total.div_ceil(PIECE) {
            file.write_all(piece).map_err(|e| format!("an O_DIRECT write: {e}"))?;
        }
        file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        Ok(total.div_ceil(PIECE) as f64 * PIECE as f64 / seconds / 1e6)
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Whether this kernel (and sandbox) lets a process set up an io_uring.
pub fn io_uring() -> Result<(), String> {
    io_uring::IoUring::new(8).map(|_| ()).map_err(|e| e.to_string())
}

/// The kernel's clock discipline (adjtimex): synchronised, and its estimated maximum error.
pub struct Clock {
    pub synchronised: bool,
    pub max_error: Duration,
}

pub fn clock() -> Result<Clock> {
    // SAFETY: adjtimex with modes = 0 only reads the kernel's state into the zeroed struct.
    let mut state: libc::timex = unsafe { std::mem::zeroed() };
    let answer = unsafe { libc::adjtimex(&mut state) };
    if answer < 0 {
        return Err(std::io::Error::last_os_error()).context("adjtimex");
    }
    Ok(Clock {
        synchronised: answer != libc::TIME_ERROR && state.status & libc::STA_UNSYNC == 0,
        max_error: Duration::from_micros(state.maxerror.max(0) as u64),
    })
}

/// Whether something accepts TCP connections at `address` (a listen address: 0.0.0.0 and ::
/// are asked on loopback).
pub fn port_taken(address: &str) -> Result<bool> {
    let mut socket: std::net::SocketAddr = address
        .parse()
        .with_context(|| format!("{address} is not an IP address and port"))?;
    if socket.ip().is_unspecified() {
        socket.set_ip(match socket {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)).is_ok())
}

/// Bytes of the regular files below `dir` (the cache's own segments count as room it has).
pub fn bytes_below(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_below(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
