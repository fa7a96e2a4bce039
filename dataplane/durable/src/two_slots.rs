//! A small record rewritten in place, in one of two fixed slots of one file, so that an
//! update creates no inode and no directory entry: the cache's release watermarks, rewritten
//! for every disk many times a minute (a new file per update made ext4 without a journal
//! scan past every recently deleted inode, and cost a rename and a directory fsync each).
//!
//! ```text
//! slot 0: [0, slot_bytes)   slot 1: [slot_bytes, 2 × slot_bytes)
//! each:   a [`crate::checked`] record of { generation, value }; what follows it in the
//!         slot (an older, longer record's tail) is not read: the header gives the length
//! ```
//!
//! Generation g goes to slot g mod 2 and is `fdatasync`ed before [`write()`] returns (or, with
//! [`write_unsynced`], made durable by the caller before it writes the file again). A crash
//! mid-write can tear only the slot being written, whose other slot holds generation g − 1,
//! the state before this write; [`read_latest`] returns the valid slot with the higher
//! generation. Generations are the caller's: each write must use the last one written (or
//! read back) plus one. Limits: a record must fit its slot (an error otherwise); the file is
//! `2 × slot_bytes` long.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::checked;

#[derive(Serialize, Deserialize)]
struct Slotted<T> {
    generation: u64,
    value: T,
}

/// Writes `value` as `generation` into its slot of `path` (created when missing, which the
/// caller makes durable with a directory fsync; the return value says whether it was
/// created), and `fdatasync`s it.
pub fn write<T: Serialize>(
    path: &Path,
    slot_bytes: usize,
    magic: [u8; 8],
    version: u32,
    generation: u64,
    value: &T,
) -> io::Result<bool> {
    let (file, created) = place(path, slot_bytes, magic, version, generation, value)?;
    file.sync_data()?;
    Ok(created)
}

/// [`write()`] without its `fdatasync`, for a caller that makes many such files durable at
/// once (one `syncfs` of their file system). Until that returns, the record may be lost or
/// torn by a crash, and the caller must not write `path` again nor act on the new value.
pub fn write_unsynced<T: Serialize>(
    path: &Path,
    slot_bytes: usize,
    magic: [u8; 8],
    version: u32,
    generation: u64,
    value: &T,
) -> io::Result<bool> {
    place(path, slot_bytes, magic, version, generation, value).map(|(_, created)| created)
}

/// Encodes the record and writes it into its slot: the open file, and whether it was created.
fn place<T: Serialize>(
    path: &Path,
    slot_bytes: usize,
    magic: [u8; 8],
    version: u32,
    generation: u64,
    value: &T,
) -> io::Result<(File, bool)> {
    let record = checked::encode(magic, version, &Slotted { generation, value })?;
    if record.len() > slot_bytes {
        return Err(io::Error::other(format!(
            "{}: a {} byte record does not fit a {slot_bytes} byte slot",
            path.display(),
            record.len()
        )));
    }
    let (file, created) = open_or_create(path, slot_bytes)?;
    file.write_all_at(&record, (generation % 2) * slot_bytes as u64)?;
    Ok((file, created))
}

fn open_or_create(path: &Path, slot_bytes: usize) -> io::Result<(File, bool)> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => Ok((file, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.set_len(2 * slot_bytes as u64)?;
            Ok((file, true))
        }
        Err(e) => Err(e),
    }
}

/// The valid slot, among those whose value `accept` takes, with the higher generation:
/// `Ok(None)` when the file is missing or no slot holds such a record.
pub fn read_latest<T: DeserializeOwned>(
    path: &Path,
    slot_bytes: usize,
    magic: [u8; 8],
    version: u32,
    accept: impl Fn(&T) -> bool,
) -> io::Result<Option<(u64, T)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The two slots at most, whatever else a damaged file holds.
    let mut bytes = Vec::with_capacity(2 * slot_bytes);
    io::Read::read_to_end(&mut io::Read::take(file, 2 * slot_bytes as u64), &mut bytes)?;
    let mut latest: Option<(u64, T)> = None;
    for slot in bytes.chunks(slot_bytes).take(2) {
        if let Ok((record, _)) = checked::decode_prefix::<Slotted<T>>(slot, magic, version) {
            if accept(&record.value)
                && latest
                    .as_ref()
                    .is_none_or(|(generation, _)| record.generation > *generation)
            {
                latest = Some((record.generation, record.value));
            }
        }
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 8] = *b"TESTSLOT";
    const SLOT: usize = 4096;

    #[test]
    fn the_latest_generation_wins_and_a_torn_slot_leaves_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.slots");
        assert!(read_latest::<String>(&path, SLOT, MAGIC, 1, |_| true)
            .unwrap()
            .is_none());
        assert!(write(&path, SLOT, MAGIC, 1, 1, &"one".to_string()).unwrap(), "created");
        assert!(!write(&path, SLOT, MAGIC, 1, 2, &"two".to_string()).unwrap());
        assert!(!write(&path, SLOT, MAGIC, 1, 3, &"three, longer".to_string()).unwrap());
        // Unsynced (the caller syncs the file system): placed the same way.
        assert!(!write_unsynced(&path, SLOT, MAGIC, 1, 4, &"4".to_string()).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        assert_eq!(
            read_latest::<String>(&path, SLOT, MAGIC, 1, |_| true).unwrap(),
            Some((4, "4".to_string()))
        );
        // A record the caller does not accept is passed over for the other slot.
        assert_eq!(
            read_latest::<String>(&path, SLOT, MAGIC, 1, |v| v != "4").unwrap(),
            Some((3, "three, longer".to_string()))
        );
        // Generation 5 torn half way through its slot (slot 1): generation 4 is what is left.
        let record = checked::encode(
            MAGIC,
            1,
            &Slotted {
                generation: 5,
                value: "five".to_string(),
            },
        )
        .unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&record[..record.len() / 2], SLOT as u64).unwrap();
        assert_eq!(
            read_latest::<String>(&path, SLOT, MAGIC, 1, |_| true).unwrap(),
            Some((4, "4".to_string()))
        );
        // Another kind of record or version is not taken for one.
        assert!(read_latest::<String>(&path, SLOT, *b"OTHRSLOT", 1, |_| true)
            .unwrap()
            .is_none());
        assert!(read_latest::<String>(&path, SLOT, MAGIC, 2, |_| true)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_record_larger_than_its_slot_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.slots");
        write(&path, SLOT, MAGIC, 1, 1, &"small".to_string()).unwrap();
        let error = write(&path, SLOT, MAGIC, 1, 2, &"x".repeat(SLOT)).unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
        assert_eq!(
            read_latest::<String>(&path, SLOT, MAGIC, 1, |_| true).unwrap(),
            Some((1, "small".to_string()))
        );
    }
}
