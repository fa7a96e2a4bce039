//! Seal and unseal throughput (FORMATS.md sealed objects), next to zstd alone on the same
//! bytes: the question is what sealing adds on top of compression (the AES-GCM pass, the
//! header, the copy-free layout), measured in the same run.
//!
//! `seal_8_parts` seals the same bytes given as 8 separate parts (a change set of 8 batches as
//! they lie in the cache), the seal workers' usual case; `seal_8_parts_reused` also reuses the
//! previous object's output buffer, as the workers do once an upload hands it back.
//!
//! Data: `ferry_harness::datagen` (mixed: zstd-1 ratio 2.37, like LIMITS.md's yardstick; random:
//! incompressible). Objects of 1, 4 and 8 MiB; zstd levels -1, 1 and 3.
//! Run: `cargo bench -p ferry-benches --bench seal` (add `-- seal/mixed/4MiB` to filter).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_format::seal::{Sealer, Unsealer};
use ferry_format::{Keyring, VaultKey};
use ferry_harness::datagen::{DataGenerator, Mix};
use std::time::Duration;
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAME: &str =
    "ferry/v1/disks/0f8fad5b-d9cb-469f-a165-70867728950e/log/00000000000000000001-00000000000000000064.fseal";

fn bench_seal(c: &mut Criterion) {
    let key = Keyring::new(VaultKey::from_bytes([3; 32]), Uuid::from_u128(1)).disk_key(Uuid::from_u128(2));
    for (data_name, mix) in [("mixed", Mix::MIXED), ("random", Mix::INCOMPRESSIBLE)] {
        for size_mib in [1usize, 4, 8] {
            let plain = DataGenerator::new(1, mix).bytes(size_mib << 20);
            let mut group = c.benchmark_group(format!("{data_name}/{size_mib}MiB"));
            group.throughput(Throughput::Bytes(plain.len() as u64));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            for level in [-1, 1, 3] {
                let mut sealer = Sealer::new(level).expect("valid level");
                group.bench_function(BenchmarkId::new("seal", level), |b| {
                    b.iter(|| sealer.seal(&key, NAME, &plain).expect("seals"))
                });
                // A change set as it lies in the cache: one batch after another, 8 parts.
                let parts: Vec<&[u8]> = plain.chunks(plain.len().div_ceil(8)).collect();
                group.bench_function(BenchmarkId::new("seal_8_parts", level), |b| {
                    b.iter(|| sealer.seal_parts(&key, NAME, &parts).expect("seals"))
                });
                // As the seal workers do: the output buffer of the previous object reused.
                let mut spare = Vec::new();
                group.bench_function(BenchmarkId::new("seal_8_parts_reused", level), |b| {
                    b.iter(|| {
                        let sealed = sealer
                            .seal_parts_into(&key, NAME, &parts, std::mem::take(&mut spare))
                            .expect("seals");
                        spare = sealed;
                    })
                });
                let mut cctx = zstd::bulk::Compressor::new(level).expect("valid level");
                let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(plain.len()));
                group.bench_function(BenchmarkId::new("zstd_only", level), |b| {
                    b.iter(|| cctx.compress_to_buffer(&plain, &mut out).expect("compresses"))
                });
                let sealed = sealer.seal(&key, NAME, &plain).expect("seals");
                let mut unsealer = Unsealer::new();
                group.bench_function(BenchmarkId::new("unseal", level), |b| {
                    b.iter(|| unsealer.unseal(&key, NAME, &sealed).expect("unseals"))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench_seal);
criterion_main!(benches);
