//! Fuzzes the PROTOCOL.md batch decoder: no input may panic it, and whatever it accepts must
//! re-encode to the same bytes (the decoder understood every byte it accepted).
#![no_main]

use bytes::Bytes;
use ferry_format::batch::{self, DiskGeometry, Record};
use ferry_format::BatchEncoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let geometry = DiskGeometry { size_bytes: 1 << 30, sector_size: 512 };
    let seq = data.get(8..16).map(|s| u64::from_le_bytes(s.try_into().unwrap())).unwrap_or(1);
    let Ok(decoded) = batch::decode(Bytes::copy_from_slice(data), seq, geometry, 16 << 20) else { return };
    let mut encoder = BatchEncoder::new(decoded.header.seq, decoded.header.source_time_ms);
    for record in &decoded.records {
        match record {
            Record::Write { offset, data } => encoder.write(*offset, data),
            Record::Zero { offset, length } => encoder.zero(*offset, u64::from(*length)),
            // Bookmark JSON is kept as received: re-encode its exact bytes.
            Record::Bookmark(_) => continue,
        };
    }
    if decoded.bookmarks().next().is_none() {
        assert_eq!(&encoder.finish()[..], data, "an accepted batch re-encodes to itself");
    }
});
