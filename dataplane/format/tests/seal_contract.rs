//! FORMATS.md section 3: sealed objects round-trip, are bound to their name and key, reject
//! every corruption, and interoperate with an independent AES-GCM implementation.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ferry_format::seal::{self, Codec, SealError, SealedHeader, Sealer, Unsealer};
use ferry_format::{Keyring, ObjectKey, VaultKey, SEALED_HEADER_LEN};
use proptest::prelude::*;
use uuid::Uuid;

const NAME: &str =
    "ferry/v1/disks/0f8fad5b-d9cb-469f-a165-70867728950e/log/00000000000000000001-00000000000000000002.fseal";

fn key() -> ObjectKey {
    Keyring::new(VaultKey::from_bytes([9; 32]), Uuid::from_u128(1)).disk_key(Uuid::from_u128(2))
}

fn compressible(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"ferry replicates disks "[i % 23]).collect()
}

fn random(len: usize) -> Vec<u8> {
    let mut state = 0x9e3779b97f4a7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn round_trip_picks_the_codec() {
    let key = key();
    let mut sealer = Sealer::new(1).unwrap();
    for (plain, codec) in [
        (compressible(100_000), Codec::Zstd),
        (random(100_000), Codec::Stored),
        (Vec::new(), Codec::Stored),
    ] {
        let sealed = sealer.seal(&key, NAME, &plain).unwrap();
        let header = SealedHeader::parse(&sealed).unwrap();
        assert_eq!(header.codec, codec);
        assert_eq!(header.plain_len, plain.len() as u64);
        if codec == Codec::Zstd {
            assert!(header.body_len < plain.len() as u64 / 10);
        }
        assert_eq!(seal::unseal(&key, NAME, &sealed).unwrap(), plain);
    }
}

#[test]
fn parts_seal_like_one_buffer() {
    let key = key();
    let plain = compressible(300_000);
    let parts: Vec<&[u8]> = plain.chunks(70_001).collect();
    let mut sealer = Sealer::new(3).unwrap();
    let sealed = sealer.seal_parts(&key, NAME, &parts).unwrap();
    assert_eq!(SealedHeader::parse(&sealed).unwrap().codec, Codec::Zstd);
    assert_eq!(seal::unseal(&key, NAME, &sealed).unwrap(), plain);
    let noise = random(200_000);
    let parts: Vec<&[u8]> = noise.chunks(50_000).collect();
    let sealed = sealer.seal_parts(&key, NAME, &parts).unwrap();
    assert_eq!(SealedHeader::parse(&sealed).unwrap().codec, Codec::Stored);
    assert_eq!(seal::unseal(&key, NAME, &sealed).unwrap(), noise);
}

/// A reused output buffer (larger, and full of an earlier object's bytes) changes nothing: the
/// object unseals to its own plaintext, compressed or stored, and is exactly as long as one
/// sealed into a fresh buffer.
#[test]
fn a_reused_output_buffer_leaves_no_trace() {
    let key = key();
    let mut sealer = Sealer::new(1).unwrap();
    let mut spare = vec![0xA5u8; 2_000_000];
    for plain in [compressible(300_000), random(200_000), compressible(10), Vec::new()] {
        let parts: Vec<&[u8]> = plain.chunks(70_001).collect();
        let fresh_len = sealer.seal_parts(&key, NAME, &parts).unwrap().len();
        let sealed = sealer.seal_parts_into(&key, NAME, &parts, spare).unwrap();
        assert_eq!(seal::unseal(&key, NAME, &sealed).unwrap(), plain);
        assert_eq!(sealed.len(), fresh_len, "nothing of the old contents is kept");
        spare = sealed;
        spare.resize(spare.capacity(), 0x5A); // dirty it again for the next round
    }
}

#[test]
fn nonces_are_fresh() {
    let key = key();
    let mut sealer = Sealer::new(1).unwrap();
    let a = sealer.seal(&key, NAME, b"same").unwrap();
    let b = sealer.seal(&key, NAME, b"same").unwrap();
    assert_ne!(
        SealedHeader::parse(&a).unwrap().nonce,
        SealedHeader::parse(&b).unwrap().nonce
    );
}

#[test]
fn bound_to_name_and_key() {
    let sealed = seal::seal(&key(), NAME, &compressible(5000), 1).unwrap();
    let moved = NAME.replace("00000000000000000002", "00000000000000000003");
    assert_eq!(
        seal::unseal(&key(), &moved, &sealed),
        Err(SealError::AuthenticationFailed)
    );
    let other_disk = Keyring::new(VaultKey::from_bytes([9; 32]), Uuid::from_u128(1)).disk_key(Uuid::from_u128(3));
    assert_eq!(
        seal::unseal(&other_disk, NAME, &sealed),
        Err(SealError::AuthenticationFailed)
    );
    let other_vault = Keyring::new(VaultKey::from_bytes([9; 32]), Uuid::from_u128(4)).disk_key(Uuid::from_u128(2));
    assert_eq!(
        seal::unseal(&other_vault, NAME, &sealed),
        Err(SealError::AuthenticationFailed)
    );
}

#[test]
fn header_checks_name_the_problem() {
    let sealed = seal::seal(&key(), NAME, &compressible(5000), 1).unwrap();
    let with = |at: usize, value: u8| {
        let mut raw = sealed.clone();
        raw[at] = value;
        seal::unseal(&key(), NAME, &raw).unwrap_err()
    };
    assert_eq!(with(0, b'X'), SealError::BadMagic);
    assert_eq!(with(8, 7), SealError::UnknownCodec(7));
    assert_eq!(with(9, 2), SealError::UnknownCipher(2));
    assert_eq!(with(10, 1), SealError::ReservedNotZero);
    assert_eq!(with(12, 1), SealError::UnknownKeyGeneration(1));
    assert!(matches!(with(36, sealed[36] ^ 1), SealError::LengthMismatch { .. }));
    assert_eq!(
        with(35, 0x40),
        SealError::TooLarge(u64::from_le_bytes(sealed[28..36].try_into().unwrap()) | 0x40 << 56)
    );
    assert_eq!(
        with(28, sealed[28] ^ 1),
        SealError::AuthenticationFailed,
        "plain_len is authenticated"
    );
    assert!(matches!(
        seal::unseal(&key(), NAME, &sealed[..50]),
        Err(SealError::TooShort { len: 50 })
    ));
}

/// What aws-lc-rs seals, the independent RustCrypto `aes-gcm` opens.
#[test]
fn aes_gcm_opens_what_we_seal() {
    let key = key();
    let plain = compressible(200_000);
    let sealed = seal::seal(&key, NAME, &plain, 1).unwrap();
    let header = SealedHeader::parse(&sealed).unwrap();
    let mut aad = sealed[..SEALED_HEADER_LEN].to_vec();
    aad.extend_from_slice(NAME.as_bytes());
    let cipher = Aes256Gcm::new_from_slice(key.expose_bytes()).unwrap();
    let body = cipher
        .decrypt(
            Nonce::from_slice(&header.nonce),
            Payload {
                msg: &sealed[SEALED_HEADER_LEN..],
                aad: &aad,
            },
        )
        .expect("aes-gcm opens an aws-lc-rs sealing");
    assert_eq!(zstd::bulk::decompress(&body, plain.len()).unwrap(), plain);
}

/// What the independent `aes-gcm` seals by the FORMATS.md recipe, we open.
#[test]
fn we_open_what_aes_gcm_seals() {
    let key = key();
    let plain = compressible(50_000);
    let body = zstd::bulk::compress(&plain, 3).unwrap();
    let nonce = [5u8; 12];
    let mut header = Vec::with_capacity(SEALED_HEADER_LEN);
    header.extend_from_slice(b"FERRYSL1");
    header.extend_from_slice(&[1, 1, 0, 0]);
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&nonce);
    header.extend_from_slice(&(plain.len() as u64).to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut aad = header.clone();
    aad.extend_from_slice(NAME.as_bytes());
    let cipher = Aes256Gcm::new_from_slice(key.expose_bytes()).unwrap();
    let ciphertext_and_tag = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: &body, aad: &aad })
        .unwrap();
    let mut sealed = header;
    sealed.extend_from_slice(&ciphertext_and_tag);
    assert_eq!(Unsealer::new().unseal(&key, NAME, &sealed).unwrap(), plain);
}

#[test]
fn compression_levels_are_validated() {
    assert!(Sealer::new(-5).is_ok());
    assert!(Sealer::new(22).is_ok());
    assert!(matches!(Sealer::new(23), Err(SealError::Compress(_))));
    let mut s = Sealer::new(1).unwrap();
    assert!(s.set_level(1000).is_err());
    assert_eq!(s.level(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_bit_flip_and_truncation_is_rejected(plain in prop::collection::vec(0u8..4, 0..48)) {
        let key = key();
        let sealed = seal::seal(&key, NAME, &plain, 1).unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut raw = sealed.clone();
            raw[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(seal::unseal(&key, NAME, &raw).is_err(), "flip of bit {} accepted", bit);
        }
        for len in 0..sealed.len() {
            prop_assert!(seal::unseal(&key, NAME, &sealed[..len]).is_err(), "truncation to {} accepted", len);
        }
    }

    #[test]
    fn round_trip(plain in prop::collection::vec(any::<u8>(), 0..5000), level in -3i32..6) {
        let key = key();
        let sealed = Sealer::new(level).unwrap().seal(&key, NAME, &plain).unwrap();
        prop_assert_eq!(seal::unseal(&key, NAME, &sealed).unwrap(), plain);
    }

    #[test]
    fn arbitrary_input_never_panics(mut raw in prop::collection::vec(any::<u8>(), 0..300), fix in any::<bool>()) {
        if fix && raw.len() >= 60 {
            raw[..8].copy_from_slice(b"FERRYSL1");
            raw[8] %= 2;
            raw[9] = 1;
            raw[10..16].fill(0);
            let body_len = (raw.len() - 60) as u64;
            raw[36..44].copy_from_slice(&body_len.to_le_bytes());
        }
        let _ = seal::unseal(&key(), NAME, &raw);
    }
}
