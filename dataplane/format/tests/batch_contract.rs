//! PROTOCOL.md section 3, rule by rule: each violation earns exactly its error code, valid
//! batches decode to what was encoded, and every corruption is caught.

use bytes::Bytes;
use ferry_format::batch::{self, reseal_crcs, BatchErrorCode, DiskGeometry, Record, RECORD_KIND_WRITE};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind};
use proptest::prelude::*;

const DISK: DiskGeometry = DiskGeometry {
    size_bytes: 1 << 20,
    sector_size: 512,
};
const MAX: u32 = 64 * 1024;

fn code_of(batch: Bytes, seq: u64) -> BatchErrorCode {
    match batch::decode(batch, seq, DISK, MAX) {
        Ok(_) => panic!("batch was accepted"),
        Err(e) => e.code,
    }
}

fn bookmark(id: &str) -> Bookmark {
    Bookmark {
        id: BookmarkId::new(id).unwrap(),
        kind: BookmarkKind::Crash,
        tag: None,
        group_id: None,
    }
}

fn valid() -> Bytes {
    let mut enc = BatchEncoder::new(3, 1_700_000_000_000);
    enc.write(4096, &[7u8; 1024]).zero(0, 512).bookmark(&bookmark("bm-1"));
    enc.finish()
}

fn patched(batch: &Bytes, at: usize, bytes: &[u8], fix_crcs: bool) -> Bytes {
    let mut raw = batch.to_vec();
    raw[at..at + bytes.len()].copy_from_slice(bytes);
    if fix_crcs {
        reseal_crcs(&mut raw);
    }
    Bytes::from(raw)
}

#[test]
fn valid_batch_decodes_without_copying_write_data() {
    let bytes = valid();
    let decoded = batch::decode(bytes.clone(), 3, DISK, MAX).unwrap();
    assert_eq!(decoded.header.record_count, 3);
    assert_eq!(decoded.bytes, bytes);
    let Record::Write { offset, data } = &decoded.records[0] else {
        panic!("first record is not a WRITE")
    };
    assert_eq!((*offset, data.len()), (4096, 1024));
    // The WRITE data points into the received buffer: zero-copy.
    let inside = bytes.as_ptr_range();
    assert!(inside.contains(&data.as_ptr()));
    assert_eq!(decoded.records[1], Record::Zero { offset: 0, length: 512 });
    assert_eq!(decoded.bookmarks().next().unwrap().id.as_str(), "bm-1");
}

#[test]
fn header_violations_are_malformed_batch() {
    let b = valid();
    assert_eq!(
        code_of(b.slice(..39), 3),
        BatchErrorCode::MalformedBatch,
        "short header"
    );
    assert_eq!(
        code_of(patched(&b, 0, b"FRB2", true), 3),
        BatchErrorCode::MalformedBatch,
        "magic"
    );
    assert_eq!(
        code_of(patched(&b, 4, &2u16.to_le_bytes(), true), 3),
        BatchErrorCode::MalformedBatch,
        "version"
    );
    assert_eq!(
        code_of(patched(&b, 6, &1u16.to_le_bytes(), true), 3),
        BatchErrorCode::MalformedBatch,
        "flags"
    );
    assert_eq!(
        code_of(b.clone(), 4),
        BatchErrorCode::MalformedBatch,
        "seq differs from the path"
    );
    assert_eq!(
        code_of(patched(&b, 8, &0u64.to_le_bytes(), true), 0),
        BatchErrorCode::MalformedBatch,
        "seq 0"
    );
    assert_eq!(
        code_of(patched(&b, 24, &0u32.to_le_bytes(), true), 3),
        BatchErrorCode::MalformedBatch,
        "zero records"
    );
    assert_eq!(
        code_of(patched(&b, 24, &2u32.to_le_bytes(), true), 3),
        BatchErrorCode::MalformedBatch,
        "fewer records than counted"
    );
    assert_eq!(
        code_of(patched(&b, 24, &4u32.to_le_bytes(), true), 3),
        BatchErrorCode::MalformedBatch,
        "more records than counted"
    );
    let mut extended = b.to_vec();
    extended.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        code_of(Bytes::from(extended.clone()), 3),
        BatchErrorCode::MalformedBatch,
        "body longer than payload_len"
    );
    let payload_len = (extended.len() - 40) as u32;
    extended[28..32].copy_from_slice(&payload_len.to_le_bytes());
    reseal_crcs(&mut extended);
    assert_eq!(
        code_of(Bytes::from(extended), 3),
        BatchErrorCode::MalformedBatch,
        "payload_len covers bytes no record owns"
    );
}

#[test]
fn record_violations() {
    let enc = |f: &dyn Fn(&mut BatchEncoder)| {
        let mut e = BatchEncoder::new(1, 0);
        f(&mut e);
        e.finish()
    };
    use BatchErrorCode::*;
    let cases: Vec<(&str, Bytes, BatchErrorCode)> = vec![
        (
            "unknown kind",
            enc(&|e| {
                e.raw_record(9, 512, 0, &[]);
            }),
            MalformedBatch,
        ),
        (
            "reserved bytes",
            {
                let b = enc(&|e| {
                    e.zero(0, 512);
                });
                patched(&b, 41, &[1], true)
            },
            MalformedBatch,
        ),
        (
            "write too long",
            enc(&|e| {
                e.raw_record(RECORD_KIND_WRITE, 4 * 1024 * 1024 + 512, 0, &[]);
            }),
            MalformedBatch,
        ),
        (
            "write data past payload",
            enc(&|e| {
                e.raw_record(RECORD_KIND_WRITE, 1024, 0, &[0u8; 512]);
            }),
            MalformedBatch,
        ),
        (
            "write length 0",
            enc(&|e| {
                e.raw_record(RECORD_KIND_WRITE, 0, 0, &[]);
            }),
            OutOfRange,
        ),
        (
            "write unaligned offset",
            enc(&|e| {
                e.write(100, &[0u8; 512]);
            }),
            OutOfRange,
        ),
        (
            "write unaligned length",
            enc(&|e| {
                e.write(0, &[0u8; 500]);
            }),
            OutOfRange,
        ),
        (
            "write past the end",
            enc(&|e| {
                e.write((1 << 20) - 512, &[0u8; 1024]);
            }),
            OutOfRange,
        ),
        (
            "zero length 0",
            enc(&|e| {
                e.raw_record(2, 0, 0, &[]);
            }),
            OutOfRange,
        ),
        (
            "zero past the end",
            enc(&|e| {
                e.zero(1 << 20, 512);
            }),
            OutOfRange,
        ),
        (
            "zero offset overflows",
            enc(&|e| {
                e.raw_record(2, 512, u64::MAX - 511, &[]);
            }),
            OutOfRange,
        ),
        (
            "bookmark offset",
            enc(&|e| {
                e.raw_record(3, 2, 8, b"{}");
            }),
            MalformedBatch,
        ),
        (
            "bookmark too long",
            enc(&|e| {
                e.raw_record(3, 4097, 0, &[b' '; 4097]);
            }),
            BadBookmark,
        ),
        (
            "bookmark not json",
            enc(&|e| {
                e.raw_record(3, 3, 0, b"abc");
            }),
            BadBookmark,
        ),
        (
            "bookmark missing kind",
            enc(&|e| {
                e.raw_record(3, 10, 0, br#"{"id":"a"}"#);
            }),
            BadBookmark,
        ),
        (
            "bookmark bad id",
            enc(&|e| {
                e.raw_record(3, 25, 0, br#"{"id":"a/b","kind":"app"}"#);
            }),
            BadBookmark,
        ),
        (
            "bookmark past payload",
            enc(&|e| {
                e.raw_record(3, 100, 0, br#"{"id":"a","kind":"app"}"#);
            }),
            MalformedBatch,
        ),
    ];
    for (what, batch, expected) in cases {
        let got = batch::decode(batch, 1, DISK, MAX).map(|_| ()).map_err(|e| e.code);
        assert_eq!(got, Err(expected), "{what}");
    }
}

#[test]
fn crc_and_size_violations() {
    let b = valid();
    let last = b.len() - 1;
    assert_eq!(
        code_of(patched(&b, last, &[b[last] ^ 1], false), 3),
        BatchErrorCode::CrcMismatch,
        "payload"
    );
    assert_eq!(
        code_of(patched(&b, 36, &[b[36] ^ 1], false), 3),
        BatchErrorCode::CrcMismatch,
        "header crc field"
    );
    assert_eq!(
        code_of(patched(&b, 16, &[b[16] ^ 1], false), 3),
        BatchErrorCode::CrcMismatch,
        "header field"
    );
    let mut big = BatchEncoder::new(1, 0);
    big.write(0, &vec![1u8; MAX as usize]);
    let err = batch::decode(big.finish(), 1, DISK, MAX).unwrap_err();
    assert_eq!((err.code, err.code.http_status()), (BatchErrorCode::TooLarge, 413));
}

#[test]
fn encoder_splits_large_writes_and_zeros() {
    let disk = DiskGeometry {
        size_bytes: 16 << 30,
        sector_size: 4096,
    };
    let mut enc = BatchEncoder::new(1, 0);
    enc.write(0, &vec![3u8; 9 * 1024 * 1024]).zero(0, 5 << 30);
    assert_eq!(enc.record_count(), 3 + 3);
    let decoded = batch::decode(enc.finish(), 1, disk, 32 << 20).unwrap();
    let written: usize = decoded
        .records
        .iter()
        .map(|r| {
            if let Record::Write { data, .. } = r {
                data.len()
            } else {
                0
            }
        })
        .sum();
    let zeroed: u64 = decoded
        .records
        .iter()
        .map(|r| {
            if let Record::Zero { length, .. } = r {
                u64::from(*length)
            } else {
                0
            }
        })
        .sum();
    assert_eq!((written, zeroed), (9 * 1024 * 1024, 5 << 30));
}

#[derive(Clone, Debug)]
enum ModelRecord {
    Write { sector: u64, data: Vec<u8> },
    Zero { sector: u64, sectors: u32 },
    Bookmark { id: String, app: bool, tag: Option<String> },
}

fn model_record() -> impl Strategy<Value = ModelRecord> {
    prop_oneof![
        (0u64..2040, 1usize..8, any::<u8>()).prop_map(|(sector, n, fill)| ModelRecord::Write {
            sector,
            data: (0..n * 512).map(|i| fill.wrapping_add(i as u8)).collect()
        }),
        (0u64..2040, 1u32..8).prop_map(|(sector, sectors)| ModelRecord::Zero { sector, sectors }),
        ("[A-Za-z0-9._-]{1,64}", any::<bool>(), proptest::option::of(".{0,40}"))
            .prop_map(|(id, app, tag)| ModelRecord::Bookmark { id, app, tag }),
    ]
}

fn encode_model(seq: u64, time: u64, records: &[ModelRecord]) -> Bytes {
    let mut enc = BatchEncoder::new(seq, time);
    for r in records {
        match r {
            ModelRecord::Write { sector, data } => enc.write(sector * 512, data),
            ModelRecord::Zero { sector, sectors } => enc.zero(sector * 512, u64::from(*sectors) * 512),
            ModelRecord::Bookmark { id, app, tag } => enc.bookmark(&Bookmark {
                id: BookmarkId::new(id).unwrap(),
                kind: if *app { BookmarkKind::App } else { BookmarkKind::Crash },
                tag: tag.clone(),
                group_id: None,
            }),
        };
    }
    enc.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_of_encode_is_identity(seq in 1u64.., time in any::<u64>(), records in prop::collection::vec(model_record(), 1..12)) {
        let bytes = encode_model(seq, time, &records);
        let decoded = batch::decode(bytes, seq, DISK, MAX).unwrap();
        prop_assert_eq!(decoded.header.seq, seq);
        prop_assert_eq!(decoded.header.source_time_ms, time);
        prop_assert_eq!(decoded.records.len(), records.len());
        for (got, want) in decoded.records.iter().zip(&records) {
            match (got, want) {
                (Record::Write { offset, data }, ModelRecord::Write { sector, data: d }) => {
                    prop_assert_eq!(*offset, sector * 512);
                    prop_assert_eq!(&data[..], &d[..]);
                }
                (Record::Zero { offset, length }, ModelRecord::Zero { sector, sectors }) => {
                    prop_assert_eq!((*offset, *length), (sector * 512, sectors * 512));
                }
                (Record::Bookmark(b), ModelRecord::Bookmark { id, app, tag }) => {
                    prop_assert_eq!(b.id.as_str(), id.as_str());
                    prop_assert_eq!(b.kind == BookmarkKind::App, *app);
                    prop_assert_eq!(&b.tag, tag);
                }
                _ => prop_assert!(false, "record kinds differ"),
            }
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected(records in prop::collection::vec(model_record(), 1..4)) {
        let bytes = encode_model(5, 9, &records);
        for bit in 0..bytes.len() * 8 {
            let mut raw = bytes.to_vec();
            raw[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(batch::decode(Bytes::from(raw), 5, DISK, MAX).is_err(), "flip of bit {} accepted", bit);
        }
        for len in 0..bytes.len() {
            prop_assert!(batch::decode(bytes.slice(..len), 5, DISK, MAX).is_err(), "truncation to {} accepted", len);
        }
    }

    #[test]
    fn arbitrary_input_never_panics(mut raw in prop::collection::vec(any::<u8>(), 0..600), fix in any::<bool>(), seq in 0u64..4) {
        if fix && raw.len() >= 40 {
            raw[0..4].copy_from_slice(b"FRB1");
            reseal_crcs(&mut raw);
        }
        let _ = batch::decode(Bytes::from(raw), seq, DISK, MAX);
    }
}
