//! The committed test vectors (docs/test-vectors/v1.json, described in docs/TEST-VECTORS.md):
//! fixed keys, nonces and inputs, so another implementation can check itself byte for byte.
//!
//! `FERRY_REGENERATE_VECTORS=1 cargo test -p ferry-format --test vectors` rewrites the file;
//! otherwise this test checks that the implementation still agrees with it.

use bytes::Bytes;
use ferry_format::batch::{self, reseal_crcs, DiskGeometry, Record};
use ferry_format::names::ObjectName;
use ferry_format::seal::{Codec, SealedHeader, Sealer, Unsealer};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind, Keyring, VaultKey};
use serde_json::{json, Value};
use std::path::PathBuf;
use uuid::Uuid;

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/test-vectors/v1.json")
}

const VAULT_ID: &str = "6a1f8b0e-8a8c-4b5e-9d0c-1b2a3c4d5e6f";
const DISK_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const GROUP_ID: &str = "9b2d6c1e-3f4a-4e5b-8c7d-0a1b2c3d4e5f";

fn vault_key() -> VaultKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    VaultKey::from_bytes(bytes)
}

fn keyring() -> Keyring {
    Keyring::new(vault_key(), Uuid::parse_str(VAULT_ID).unwrap())
}

fn bookmark(id: &str, kind: BookmarkKind, tag: Option<&str>) -> Bookmark {
    Bookmark {
        id: BookmarkId::new(id).unwrap(),
        kind,
        tag: tag.map(String::from),
        group_id: None,
    }
}

/// (description, disk size, sector size, max_batch_bytes, seq, batch bytes, expected outcome)
fn batch_cases() -> Vec<(&'static str, u64, u32, u32, u64, Bytes, &'static str)> {
    let mut valid = BatchEncoder::new(1, 1_790_000_000_000);
    valid.write(0, &[0xAB; 1024]).zero(4096, 8192).bookmark(&bookmark(
        "crash-0001",
        BookmarkKind::Crash,
        Some("every 5 min"),
    ));
    let valid = valid.finish();
    let mut sector4k = BatchEncoder::new(7, 1_790_000_000_123);
    sector4k
        .write(8192, &(0..4096u32).map(|i| (i % 251) as u8).collect::<Vec<_>>())
        .bookmark(&bookmark("app.nightly_2026-11-28", BookmarkKind::App, None));
    let sector4k = sector4k.finish();
    let mut flags = valid.to_vec();
    flags[6] = 1;
    reseal_crcs(&mut flags);
    let mut payload_flip = valid.to_vec();
    let last = payload_flip.len() - 1;
    payload_flip[last] ^= 0x01;
    let mut out_of_range = BatchEncoder::new(1, 0);
    out_of_range.write(1 << 20, &[1; 512]);
    let mut bad_bookmark = BatchEncoder::new(1, 0);
    bad_bookmark.raw_record(3, 24, 0, br#"{"id":"a b","kind":"app"}"#[..24].as_ref());
    let mut too_large = BatchEncoder::new(1, 0);
    too_large.write(0, &[2; 4096]);
    vec![
        (
            "valid: WRITE, ZERO, crash BOOKMARK",
            1 << 20,
            512,
            16 << 20,
            1,
            valid.clone(),
            "ok",
        ),
        (
            "valid: 4096-byte sectors, app BOOKMARK",
            1 << 24,
            4096,
            16 << 20,
            7,
            sector4k,
            "ok",
        ),
        (
            "flags = 1 (reserved), CRCs recomputed",
            1 << 20,
            512,
            16 << 20,
            1,
            Bytes::from(flags),
            "malformed_batch",
        ),
        (
            "last payload byte flipped",
            1 << 20,
            512,
            16 << 20,
            1,
            Bytes::from(payload_flip),
            "crc_mismatch",
        ),
        (
            "WRITE ends past the disk",
            1 << 20,
            512,
            16 << 20,
            1,
            out_of_range.finish(),
            "out_of_range",
        ),
        (
            "BOOKMARK id with a space",
            1 << 20,
            512,
            16 << 20,
            1,
            bad_bookmark.finish(),
            "bad_bookmark",
        ),
        (
            "payload above max_batch_bytes 1024",
            1 << 20,
            512,
            1024,
            1,
            too_large.finish(),
            "too_large",
        ),
        (
            "seq 2 sent to the path of seq 1",
            1 << 20,
            512,
            16 << 20,
            2,
            valid,
            "malformed_batch",
        ),
    ]
}

fn records_json(records: &[Record]) -> Value {
    Value::Array(
        records
            .iter()
            .map(|r| match r {
                Record::Write { offset, data } => json!({"kind": "write", "offset": offset, "length": data.len()}),
                Record::Zero { offset, length } => json!({"kind": "zero", "offset": offset, "length": length}),
                Record::Bookmark(b) => {
                    json!({"kind": "bookmark", "id": b.id.as_str(), "bookmark_kind": b.kind.as_str(), "tag": b.tag})
                }
            })
            .collect(),
    )
}

/// (object name, plaintext, zstd level, nonce byte)
fn sealed_cases() -> Vec<(String, Vec<u8>, i32, u8)> {
    let disk = Uuid::parse_str(DISK_ID).unwrap();
    let group = Uuid::parse_str(GROUP_ID).unwrap();
    let batches: Vec<u8> = batch_cases()[0].5.to_vec();
    let disk_json = format!(
        r#"{{"format":1,"disk_id":"{DISK_ID}","machine_id":"5e0c2d7a-1b3f-4c6d-8e9f-0a1b2c3d4e5f","name":"sda","size_bytes":1048576,"sector_size":512,"write_ordered":false,"created_unix_ms":1790000000000}}"#
    );
    let point_json = format!(
        r#"{{"format":1,"disk_id":"{DISK_ID}","seq":1,"bookmark_id":"crash-0001","kind":"crash","tag":"every 5 min","group_id":null,"source_time_unix_ms":1790000000000,"created_unix_ms":1790000000500}}"#
    );
    let group_json = format!(
        r#"{{"format":1,"group_id":"{GROUP_ID}","bookmark_id":"g-1","kind":"app","tag":null,"members":[{{"disk_id":"{DISK_ID}","seq":1}}]}}"#
    );
    let random: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    vec![
        (
            ObjectName::DiskMeta { disk_id: disk }.to_string(),
            disk_json.into_bytes(),
            1,
            1,
        ),
        (
            ObjectName::Log {
                disk_id: disk,
                epoch: 0,
                first_seq: 1,
                last_seq: 1,
            }
            .to_string(),
            batches,
            1,
            2,
        ),
        (
            ObjectName::Point {
                disk_id: disk,
                epoch: 0,
                seq: 1,
                bookmark_id: BookmarkId::new("crash-0001").unwrap(),
            }
            .to_string(),
            point_json.into_bytes(),
            3,
            3,
        ),
        (
            ObjectName::GroupPoint {
                group_id: group,
                created_unix_ms: 1_790_000_000_900,
                bookmark_id: BookmarkId::new("g-1").unwrap(),
            }
            .to_string(),
            group_json.into_bytes(),
            1,
            4,
        ),
        (
            ObjectName::BaseChunk {
                disk_id: disk,
                seq: 1,
                index: 0,
            }
            .to_string(),
            random,
            1,
            5,
        ),
        (
            ObjectName::BaseChunk {
                disk_id: disk,
                seq: 1,
                index: 1,
            }
            .to_string(),
            Vec::new(),
            1,
            6,
        ),
    ]
}

fn generate() -> Value {
    let ring = keyring();
    let disk = Uuid::parse_str(DISK_ID).unwrap();
    let mut sealed = Vec::new();
    for (name, plain, level, nonce_byte) in sealed_cases() {
        let parsed = ObjectName::parse(&name).unwrap();
        let key = ring.key_for(&parsed);
        let bytes = Sealer::new(level)
            .unwrap()
            .seal_parts_with_nonce(&key, &name, &[&plain], [nonce_byte; 12])
            .unwrap();
        let header = SealedHeader::parse(&bytes).unwrap();
        sealed.push(json!({
            "name": name,
            "key": if parsed.disk_id().is_some() { "disk" } else { "vault" },
            "zstd_level": level,
            "codec": header.codec as u8,
            "nonce_hex": hex::encode([nonce_byte; 12]),
            "plaintext_hex": hex::encode(&plain),
            "sealed_hex": hex::encode(&bytes),
        }));
    }
    let batches: Vec<Value> = batch_cases()
        .into_iter()
        .map(|(description, size, sector, max, seq, bytes, outcome)| {
            let mut entry = json!({
                "description": description,
                "disk": {"size_bytes": size, "sector_size": sector},
                "max_batch_bytes": max,
                "path_seq": seq,
                "batch_hex": hex::encode(&bytes),
                "expect": outcome,
            });
            if outcome == "ok" {
                let decoded = batch::decode(
                    bytes,
                    seq,
                    DiskGeometry {
                        size_bytes: size,
                        sector_size: sector,
                    },
                    max,
                )
                .unwrap();
                entry["records"] = records_json(&decoded.records);
            }
            entry
        })
        .collect();
    json!({
        "format": 1,
        "about": "Ferry format v1 test vectors: see docs/TEST-VECTORS.md",
        "vault": {
            "vault_key_text": vault_key().to_text(),
            "vault_id": VAULT_ID,
            "key_check": vault_key().key_check(),
            "vault_object_key_hex": hex::encode(ring.vault_object_key().expose_bytes()),
            "disk_id": DISK_ID,
            "disk_key_hex": hex::encode(ring.disk_key(disk).expose_bytes()),
        },
        "sealed": sealed,
        "batches": batches,
    })
}

#[test]
fn committed_vectors_agree_with_the_implementation() {
    let path = vectors_path();
    if std::env::var("FERRY_REGENERATE_VECTORS").as_deref() == Ok("1") {
        let text = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        eprintln!("wrote {}", path.display());
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("docs/test-vectors/v1.json exists")).unwrap();

    // Keys.
    let v = &committed["vault"];
    let key = VaultKey::parse_text(v["vault_key_text"].as_str().unwrap()).unwrap();
    assert_eq!(key.key_check(), v["key_check"].as_str().unwrap());
    let ring = Keyring::new(key, Uuid::parse_str(v["vault_id"].as_str().unwrap()).unwrap());
    let disk = Uuid::parse_str(v["disk_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        hex::encode(ring.disk_key(disk).expose_bytes()),
        v["disk_key_hex"].as_str().unwrap()
    );
    assert_eq!(
        hex::encode(ring.vault_object_key().expose_bytes()),
        v["vault_object_key_hex"].as_str().unwrap()
    );

    // Sealed objects: each opens to its plaintext; stored ones reseal byte for byte.
    let sealed = committed["sealed"].as_array().unwrap();
    assert_eq!(sealed.len(), sealed_cases().len());
    let mut codecs = std::collections::HashSet::new();
    for entry in sealed {
        let name = entry["name"].as_str().unwrap();
        let key = ring.key_for(&ObjectName::parse(name).unwrap());
        let bytes = hex::decode(entry["sealed_hex"].as_str().unwrap()).unwrap();
        let plain = hex::decode(entry["plaintext_hex"].as_str().unwrap()).unwrap();
        assert_eq!(Unsealer::new().unseal(&key, name, &bytes).unwrap(), plain, "{name}");
        let header = SealedHeader::parse(&bytes).unwrap();
        codecs.insert(header.codec as u8);
        assert_eq!(header.codec as u8 as u64, entry["codec"].as_u64().unwrap());
        if header.codec == Codec::Stored {
            let level = entry["zstd_level"].as_i64().unwrap() as i32;
            let resealed = Sealer::new(level)
                .unwrap()
                .seal_parts_with_nonce(&key, name, &[&plain], header.nonce)
                .unwrap();
            assert_eq!(resealed, bytes, "{name}: a stored object reseals identically");
        }
    }
    assert_eq!(codecs.len(), 2, "vectors cover both codecs");

    // Batches: each gets its documented outcome.
    for entry in committed["batches"].as_array().unwrap() {
        let description = entry["description"].as_str().unwrap();
        let geometry = DiskGeometry {
            size_bytes: entry["disk"]["size_bytes"].as_u64().unwrap(),
            sector_size: entry["disk"]["sector_size"].as_u64().unwrap() as u32,
        };
        let bytes = Bytes::from(hex::decode(entry["batch_hex"].as_str().unwrap()).unwrap());
        let result = batch::decode(
            bytes,
            entry["path_seq"].as_u64().unwrap(),
            geometry,
            entry["max_batch_bytes"].as_u64().unwrap() as u32,
        );
        match entry["expect"].as_str().unwrap() {
            "ok" => assert_eq!(
                records_json(&result.unwrap().records),
                entry["records"],
                "{description}"
            ),
            code => assert_eq!(result.unwrap_err().code.as_str(), code, "{description}"),
        }
    }
    // And the generator still produces what is committed for everything deterministic.
    let fresh = generate();
    assert_eq!(fresh["vault"], committed["vault"]);
    assert_eq!(fresh["batches"], committed["batches"]);
}
