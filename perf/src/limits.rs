//! `ferry-perf limits`: this machine's per-core ceilings for the stages of ferryd's hot path
//! (../shared/LIMITS.md), measured on the same generated data the load uses, and the ideal
//! end-to-end ceiling they imply.
//!
//! Each stage runs on one thread, best of `repetitions`: zstd at the configured level (4 MiB
//! chunks), AES-256-GCM (aws-lc-rs, as ferryd seals), CRC-32C, O_DIRECT append of 1 MiB writes
//! with an fdatasync every 8 MiB in the cache directory (wall-clock MB/s and the CPU it costs),
//! and TLS 1.3 receive over loopback (rustls + aws-lc-rs, the CPU of the receiving thread).
//!
//! The ideal ceiling is the sum of the per-byte CPU costs of one input byte's trip: TLS
//! receive + cache append + zstd + AES-GCM on the compressed bytes + a TLS send of the
//! compressed bytes (the upload; modelled as costing what a receive does) = ns per byte;
//! per core 1000/ns MB/s, times the cores. Real runs do more (HTTP, batching, bookkeeping):
//! a run's fraction of this ceiling says how much of the machine the design leaves unused.

use anyhow::Context;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::datagen::{DataGenerator, Mix};

const CHUNK: usize = 4 << 20;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Stage {
    pub name: String,
    pub mb_per_s: f64,
    /// CPU nanoseconds per input byte on the thread that does the work.
    pub cpu_ns_per_byte: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Limits {
    pub compression_level: i32,
    pub mix: String,
    pub compression_ratio: f64,
    pub stages: Vec<Stage>,
    pub cores: usize,
    /// CPU ns per input byte of the ideal hot path.
    pub ideal_ns_per_byte: f64,
    pub ideal_mb_per_s_per_core: f64,
    pub ideal_mb_per_s: f64,
}

impl Limits {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Thread CPU seconds (user + system) of the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Runs `work` `repetitions` times over `bytes` and keeps the fastest (wall clock, CPU).
fn best(repetitions: usize, bytes: usize, mut work: impl FnMut()) -> Stage {
    let mut best_wall = f64::MAX;
    let mut best_cpu = f64::MAX;
    for _ in 0..repetitions.max(1) {
        let cpu = thread_cpu_seconds();
        let started = Instant::now();
        work();
        best_wall = best_wall.min(started.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(thread_cpu_seconds() - cpu);
    }
    Stage {
        name: String::new(),
        mb_per_s: bytes as f64 / 1e6 / best_wall,
        cpu_ns_per_byte: best_wall.min(best_cpu.max(1e-9)) * 1e9 / bytes as f64,
    }
}

fn named(mut stage: Stage, name: &str) -> Stage {
    stage.name = name.to_string();
    stage
}

/// Options for [`measure`].
pub struct Probe<'a> {
    pub level: i32,
    pub mix: Mix,
    pub mix_name: &'a str,
    /// Where the O_DIRECT append runs (ferryd's cache directory, or any directory on it).
    pub cache_dir: &'a Path,
    /// Bytes per stage pass (64 MiB is plenty; the quick probe in `run` uses less).
    pub bytes: usize,
    pub repetitions: usize,
}

pub fn measure(probe: &Probe) -> anyhow::Result<Limits> {
    let mut data = vec![0u8; probe.bytes.max(CHUNK)];
    DataGenerator::new(1, probe.mix).fill(&mut data);
    let bytes = data.len();

    // zstd, bulk API, 4 MiB chunks, as ferryd seals.
    let mut compressor = zstd::bulk::Compressor::new(probe.level).context("zstd")?;
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(CHUNK)];
    let mut compressed = 0usize;
    let zstd_stage = best(probe.repetitions, bytes, || {
        compressed = 0;
        for chunk in data.chunks(CHUNK) {
            compressed += compressor.compress_to_buffer(chunk, &mut out).unwrap_or(chunk.len());
        }
    });
    let ratio = bytes as f64 / compressed.max(1) as f64;

    // AES-256-GCM in place, aws-lc-rs.
    let key = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &[7u8; 32]).context("AES key")?,
    );
    let mut buffer = data[..CHUNK].to_vec();
    let aes_stage = best(probe.repetitions, bytes, || {
        for _ in 0..bytes / CHUNK {
            let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key([1u8; 12]);
            let _ = key.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), &mut buffer);
        }
    });

    let mut sink = 0u32;
    let crc_stage = best(probe.repetitions, bytes, || {
        for chunk in data.chunks(CHUNK) {
            sink ^= crc32c::crc32c(chunk);
        }
    });
    std::hint::black_box(sink);

    let append_stage = direct_append(probe.cache_dir, &data, probe.repetitions)?;
    let tls_stage = tls_receive(bytes.clamp(64 << 20, 256 << 20), probe.repetitions)?;

    let ideal_ns = tls_stage.cpu_ns_per_byte
        + append_stage.cpu_ns_per_byte
        + zstd_stage.cpu_ns_per_byte
        + aes_stage.cpu_ns_per_byte / ratio
        + tls_stage.cpu_ns_per_byte / ratio;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Limits {
        compression_level: probe.level,
        mix: probe.mix_name.to_string(),
        compression_ratio: ratio,
        stages: vec![
            named(zstd_stage, &format!("zstd level {}", probe.level)),
            named(aes_stage, "AES-256-GCM (aws-lc-rs)"),
            named(crc_stage, "CRC-32C"),
            named(append_stage, "cache append (O_DIRECT 1 MiB, fdatasync / 8 MiB)"),
            named(tls_stage, "TLS 1.3 receive, loopback"),
        ],
        cores,
        ideal_ns_per_byte: ideal_ns,
        ideal_mb_per_s_per_core: 1000.0 / ideal_ns,
        ideal_mb_per_s: 1000.0 / ideal_ns * cores as f64,
    })
}

/// 1 MiB O_DIRECT writes into a preallocated file, fdatasync every 8 MiB.
fn direct_append(dir: &Path, data: &[u8], repetitions: usize) -> anyhow::Result<Stage> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".ferry-perf-append-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .with_context(|| format!("opening {} with O_DIRECT (tmpfs cannot)", path.display()))?;
    let _remove = RemoveOnDrop(path.clone());
    let bytes = data.len() / (1 << 20) * (1 << 20);
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes as u64)
        .with_context(|| format!("allocating {bytes} bytes in {}", path.display()))?;
    let mut raw = vec![0u8; (1 << 20) + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let block = &mut raw[start..start + (1 << 20)];
    let mut failed = None;
    let stage = best(repetitions, bytes, || {
        for (i, chunk) in data[..bytes].chunks(1 << 20).enumerate() {
            block.copy_from_slice(chunk);
            if let Err(e) = file.write_all_at(block, (i << 20) as u64) {
                failed = Some(e);
                return;
            }
            if (i + 1) % 8 == 0 {
                let _ = file.sync_data();
            }
        }
        let _ = file.sync_data();
    });
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("O_DIRECT writes in {}", dir.display()));
    }
    Ok(stage)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// TLS 1.3 over loopback: a sender thread writes `bytes` in 1 MiB records; the CPU of the
/// receiving thread per byte is the receive cost.
fn tls_receive(bytes: usize, repetitions: usize) -> anyhow::Result<Stage> {
    let (ca, ca_cert, ca_key) = ferry_config::pki::generate_ca("ferry-perf").context("CA")?;
    let server = ferry_config::pki::generate_server_cert(&["127.0.0.1".into()], &ca_cert, &ca_key).context("cert")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = vec![rustls_pki_types::CertificateDer::from(server.cert_der.clone())];
    let key = rustls_pki_types::pem::PemObject::from_pem_slice(server.key_pem.as_bytes()).context("key")?;
    let server_config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certs, key)?,
    );
    let client_config =
        Arc::new(ferry_client::tls::ca_verified(&ca.cert_pem, None).map_err(|e| anyhow::anyhow!("{e}"))?);
    let mut best_stage: Option<Stage> = None;
    for _ in 0..repetitions.max(1) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let server_config = server_config.clone();
        let receiver = std::thread::spawn(move || -> anyhow::Result<(f64, f64)> {
            let (tcp, _) = listener.accept()?;
            let connection = rustls::ServerConnection::new(server_config)?;
            let mut stream = rustls::StreamOwned::new(connection, tcp);
            let mut buf = vec![0u8; 1 << 20];
            let mut received = 0;
            let cpu = thread_cpu_seconds();
            let started = Instant::now();
            while received < bytes {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                received += n;
            }
            Ok((started.elapsed().as_secs_f64(), thread_cpu_seconds() - cpu))
        });
        let tcp = std::net::TcpStream::connect(address)?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let connection = rustls::ClientConnection::new(client_config.clone(), name)?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let mut payload = vec![0u8; 1 << 20];
        DataGenerator::new(2, Mix::INCOMPRESSIBLE).fill(&mut payload);
        let mut sent = 0;
        while sent < bytes {
            stream.write_all(&payload)?;
            sent += payload.len();
        }
        stream.flush()?;
        let (wall, cpu) = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the TLS receiver panicked"))??;
        let stage = Stage {
            name: String::new(),
            mb_per_s: bytes as f64 / 1e6 / wall,
            cpu_ns_per_byte: cpu * 1e9 / bytes as f64,
        };
        if best_stage
            .as_ref()
            .is_none_or(|b| stage.cpu_ns_per_byte < b.cpu_ns_per_byte)
        {
            best_stage = Some(stage);
        }
    }
    best_stage.context("no TLS measurement")
}

pub fn render(limits: &Limits) -> String {
    let mut out = format!(
        "per-core ceilings, {} data (zstd level {} ratio {:.2}), one thread each, best run\n\n{:<52} {:>10} {:>12}\n",
        limits.mix, limits.compression_level, limits.compression_ratio, "stage", "MB/s", "CPU ns/B"
    );
    for stage in &limits.stages {
        out.push_str(&format!(
            "{:<52} {:>10.0} {:>12.3}\n",
            stage.name, stage.mb_per_s, stage.cpu_ns_per_byte
        ));
    }
    out.push_str(&format!(
        "\nideal hot path (TLS in + append + zstd + AES and TLS out on compressed bytes): {:.2} ns/B\n\
         = {:.0} MB/s per core, {:.0} MB/s on {} cores\n",
        limits.ideal_ns_per_byte, limits.ideal_mb_per_s_per_core, limits.ideal_mb_per_s, limits.cores
    ));
    out
}
