//! zstd on small change sets: what its size-dependent parameters cost and buy.
//!
//! zstd picks its parameters by input size: at level 1 an input above 256 KiB gets a minimum
//! match of 7, one at or below 256 KiB a minimum match of 6 (and at or below 128 KiB smaller
//! tables). Many small disks (perf/scenarios/asr-sizing.toml) make change sets of 100-300 KB,
//! so their seal workers run that slower, tighter mode. This prints, for change sets of 64 KiB
//! to 1 MiB built as asr-sizing builds its batches (random 4 KiB-aligned slices of the mixed
//! data, writes of 4-256 KiB), zstd's CPU per byte and ratio with its own choice (`default`),
//! with the large-input minimum match pinned (`min_match`) and with every large-input
//! parameter but the window pinned (`pinned`), at levels 1, 3 and -1 (docs/BENCHMARKS.md,
//! nineteenth step). Best of 5 rounds over 400 change sets each; single thread.
//!
//! Run: `cargo run --release -p ferry-benches --example zstd_small_inputs`

use ferry_harness::datagen::{DataGenerator, Mix, Rng};
use std::time::Instant;
use zstd::zstd_safe::{zstd_sys, CCtx, CParameter};

/// asr-sizing's write sizes and their weights.
const WRITE_SIZES: [(usize, u64); 4] = [(4096, 50), (16384, 25), (65536, 20), (262144, 5)];
const CHANGE_SETS: usize = 400;
const ROUNDS: usize = 5;

fn main() {
    let pool = DataGenerator::new(1, Mix::MIXED).bytes(64 << 20);
    let mut rng = Rng::new(7);
    for target in [64usize << 10, 128 << 10, 200 << 10, 1 << 20] {
        let change_sets: Vec<Vec<u8>> = (0..CHANGE_SETS).map(|_| change_set(&pool, &mut rng, target)).collect();
        let total: usize = change_sets.iter().map(Vec::len).sum();
        for level in [1, 3, -1] {
            // SAFETY: a pure function of its arguments (zstd's parameter table); size 0 = unknown,
            // which selects the row for inputs above 256 KiB.
            let large = unsafe { zstd_sys::ZSTD_getCParams(level, 0, 0) };
            let variants = [
                ("default", vec![]),
                ("min_match", vec![CParameter::MinMatch(large.minMatch)]),
                (
                    "pinned",
                    vec![
                        CParameter::MinMatch(large.minMatch),
                        CParameter::HashLog(large.hashLog),
                        CParameter::ChainLog(large.chainLog),
                        CParameter::SearchLog(large.searchLog),
                        CParameter::TargetLength(large.targetLength),
                        CParameter::Strategy(large.strategy),
                    ],
                ),
            ];
            for (name, parameters) in variants {
                let (seconds, compressed) = best_of(&change_sets, level, &parameters);
                println!(
                    "level {level:>2}  {:>5} KiB  {name:<10} {:.3} ns/B  ratio {:.3}",
                    target >> 10,
                    seconds * 1e9 / total as f64,
                    total as f64 / compressed as f64
                );
            }
        }
    }
}

/// A change set of about `target` bytes made as asr-sizing's load makes batches.
fn change_set(pool: &[u8], rng: &mut Rng, target: usize) -> Vec<u8> {
    let weights: u64 = WRITE_SIZES.iter().map(|(_, w)| w).sum();
    let mut set = Vec::with_capacity(target + (256 << 10));
    while set.len() < target {
        let mut pick = rng.next() % weights;
        let size = WRITE_SIZES
            .iter()
            .find(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map_or(4096, |(size, _)| *size)
            .min(target - set.len())
            .max(4096);
        let from = (rng.next() as usize % ((pool.len() - size) / 4096)) * 4096;
        set.extend_from_slice(&pool[from..from + size]);
    }
    set
}

/// The fastest of [`ROUNDS`] passes over `change_sets` (seconds) and the compressed bytes.
fn best_of(change_sets: &[Vec<u8>], level: i32, parameters: &[CParameter]) -> (f64, usize) {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .expect("a valid level");
    for parameter in parameters {
        cctx.set_parameter(*parameter).expect("a valid parameter");
    }
    let mut out = vec![0u8; 2 << 20];
    let mut best = f64::MAX;
    let mut compressed = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        compressed = 0;
        for set in change_sets {
            compressed += cctx.compress2(&mut out[..], set).expect("compresses");
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    (best, compressed)
}
