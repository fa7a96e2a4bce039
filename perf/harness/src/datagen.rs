//! Reproducible test data of controlled compressibility.
//!
//! Data is made of 4 KiB blocks (a disk's page size), each one of three kinds, chosen by a
//! seeded xorshift generator so the same seed always gives the same bytes:
//! - **text**: words drawn with a skewed (Zipf-like) frequency from a fixed vocabulary of
//!   pseudo-words, with spaces, punctuation, newlines and numbers, like logs and documents;
//! - **random**: uniformly random bytes, like encrypted or already-compressed files;
//! - **zero**: all zeros, like unused or freshly allocated space.
//!
//! Text blocks alone compress 2.43x at zstd level 1, random blocks 1.0x, zero blocks to a few
//! bytes; the mix of kinds sets the overall ratio. The presets are calibrated against zstd
//! level 1 on 4 MiB chunks (the `calibrated_ratios` test checks them):
//! [`Mix::MIXED`] ≈ 2.4 (the LIMITS.md yardstick data is 2.37), [`Mix::INCOMPRESSIBLE`] ≈ 1.0,
//! [`Mix::HIGHLY_COMPRESSIBLE`] ≈ 8.

pub const BLOCK_BYTES: usize = 4096;

/// Shares of each block kind, in 1/1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub text_per_mille: u32,
    pub random_per_mille: u32,
    pub zero_per_mille: u32,
}

impl Mix {
    pub const MIXED: Mix = Mix {
        text_per_mille: 900,
        random_per_mille: 35,
        zero_per_mille: 65,
    };
    pub const INCOMPRESSIBLE: Mix = Mix {
        text_per_mille: 0,
        random_per_mille: 1000,
        zero_per_mille: 0,
    };
    pub const HIGHLY_COMPRESSIBLE: Mix = Mix {
        text_per_mille: 250,
        random_per_mille: 10,
        zero_per_mille: 740,
    };
}

const _: () = assert!(Mix::MIXED.text_per_mille + Mix::MIXED.random_per_mille + Mix::MIXED.zero_per_mille == 1000);
const _: () = assert!(
    Mix::HIGHLY_COMPRESSIBLE.text_per_mille
        + Mix::HIGHLY_COMPRESSIBLE.random_per_mille
        + Mix::HIGHLY_COMPRESSIBLE.zero_per_mille
        == 1000
);

/// xorshift64*: small, fast, and the same everywhere (also where loads pick sizes and offsets).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

const VOCABULARY_WORDS: usize = 1024;

/// Generates data block by block.
#[derive(Clone, Debug)]
pub struct DataGenerator {
    rng: Rng,
    mix: Mix,
    vocabulary: Vec<Vec<u8>>,
}

impl DataGenerator {
    pub fn new(seed: u64, mix: Mix) -> Self {
        let mut vocabulary_rng = Rng::new(0x5eed_0ff3);
        let vocabulary = (0..VOCABULARY_WORDS)
            .map(|_| {
                let len = 2 + vocabulary_rng.below(9) as usize;
                (0..len).map(|_| b'a' + vocabulary_rng.below(26) as u8).collect()
            })
            .collect();
        Self {
            rng: Rng::new(seed),
            mix,
            vocabulary,
        }
    }

    /// Fills `out` (any length; whole blocks plus a partial last one).
    pub fn fill(&mut self, out: &mut [u8]) {
        for block in out.chunks_mut(BLOCK_BYTES) {
            let roll = self.rng.below(1000) as u32;
            if roll < self.mix.text_per_mille {
                self.text_block(block);
            } else if roll < self.mix.text_per_mille + self.mix.random_per_mille {
                self.random_block(block);
            } else {
                block.fill(0);
            }
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.fill(&mut out);
        out
    }

    fn random_block(&mut self, block: &mut [u8]) {
        for chunk in block.chunks_mut(8) {
            let value = self.rng.next().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }

    fn text_block(&mut self, block: &mut [u8]) {
        let mut at = 0;
        while at < block.len() {
            // Skewed choice: the minimum of three draws favours low indexes (frequent words).
            let draw = |rng: &mut Rng| rng.below(VOCABULARY_WORDS as u64);
            let word_index = draw(&mut self.rng).min(draw(&mut self.rng)).min(draw(&mut self.rng)) as usize;
            let separator = match self.rng.below(16) {
                0 => b'\n',
                1 => b',',
                2 => b'.',
                _ => b' ',
            };
            let number;
            let word: &[u8] = if self.rng.below(12) == 0 {
                number = self.rng.below(1_000_000).to_string().into_bytes();
                &number
            } else {
                &self.vocabulary[word_index]
            };
            for &byte in word.iter().chain(std::iter::once(&separator)) {
                if at == block.len() {
                    break;
                }
                block[at] = byte;
                at += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd1_ratio(mix: Mix) -> f64 {
        let data = DataGenerator::new(42, mix).bytes(16 << 20);
        let compressed: usize = data
            .chunks(4 << 20)
            .map(|chunk| zstd::bulk::compress(chunk, 1).unwrap().len())
            .sum();
        data.len() as f64 / compressed as f64
    }

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(
            DataGenerator::new(7, Mix::MIXED).bytes(100_000),
            DataGenerator::new(7, Mix::MIXED).bytes(100_000)
        );
        assert_ne!(
            DataGenerator::new(7, Mix::MIXED).bytes(100_000),
            DataGenerator::new(8, Mix::MIXED).bytes(100_000)
        );
    }

    #[test]
    #[ignore = "prints the ratio of each block kind, for calibrating the presets"]
    fn block_kind_ratios() {
        let text = zstd1_ratio(Mix {
            text_per_mille: 1000,
            random_per_mille: 0,
            zero_per_mille: 0,
        });
        eprintln!("zstd-1 ratio of text blocks: {text:.2}");
    }

    #[test]
    fn calibrated_ratios() {
        let mixed = zstd1_ratio(Mix::MIXED);
        let incompressible = zstd1_ratio(Mix::INCOMPRESSIBLE);
        let high = zstd1_ratio(Mix::HIGHLY_COMPRESSIBLE);
        eprintln!("zstd-1 ratios: mixed {mixed:.2}, incompressible {incompressible:.3}, highly compressible {high:.2}");
        assert!((2.2..=2.6).contains(&mixed), "mixed {mixed}");
        assert!(
            (0.99..=1.01).contains(&incompressible),
            "incompressible {incompressible}"
        );
        assert!((7.0..=9.0).contains(&high), "highly compressible {high}");
    }
}
