//! Writing a local-target object without the page cache: its whole 4 KiB blocks go out with
//! O_DIRECT from a pooled, aligned 1 MiB staging buffer, the last partial block (if any)
//! through the page cache, written first.
//!
//! Why the partial block first: it sets the file's final size while the file is still small,
//! so the O_DIRECT writes after it land inside the file and change no size, and XFS gives a
//! small file no speculative preallocation past its end. Written last, it extended a file
//! already past 64 KiB, XFS preallocated beyond it, and closing the file trimmed that again in
//! a transaction of its own: 5% of the local writer thread under asr-sizing (issue 11).
//!
//! Why: a buffered `write` copies every byte into freshly allocated page-cache pages. While
//! a backlog drained into the local target that copy (`copy_folio_from_iter_atomic`) was 13%
//! of the machine's CPU on the project's 2-core VM, about 2 ns per written byte, taken from
//! the seal workers (issue 11, `perf record -a` during `perf/scenarios/drain.toml`). Copying
//! into a staging buffer that stays resident costs a user-space memcpy instead.
//!
//! Durability is the caller's, as before: O_DIRECT puts the blocks on the device, but the
//! file's size and allocation, and the device's volatile cache, are made durable by the
//! `syncfs` rounds of [`crate::group_sync`], which every put waits for.
//!
//! File systems that refuse O_DIRECT (`fcntl` answers EINVAL) get buffered writes. Limit: a
//! device whose logical block is larger than [`ALIGNMENT`] (none of NVMe, virtio, Azure
//! disks) would refuse the writes themselves, and the put would fail with that error. Memory:
//! at most [`STAGING_KEPT`] staging buffers of [`STAGING_BYTES`] stay pooled; a put holds one
//! while it writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use rustix::fs::OFlags;

/// The O_DIRECT alignment used for offsets, lengths and memory (the common logical block
/// size of NVMe and virtio disks and the page size).
pub const ALIGNMENT: usize = 4096;
/// Bytes staged and written per O_DIRECT `pwrite`.
pub const STAGING_BYTES: usize = 1 << 20;
/// Staging buffers kept for reuse at most (32 MiB).
pub const STAGING_KEPT: usize = 32;

static STAGING_POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A staging buffer: `STAGING_BYTES` aligned bytes inside a slightly larger vector, back to the
/// pool when dropped.
struct Staging(Vec<u8>);

impl Staging {
    fn take() -> Self {
        let pooled = STAGING_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Self(pooled.unwrap_or_else(|| vec![0u8; STAGING_BYTES + ALIGNMENT]))
    }

    fn window(&mut self) -> &mut [u8] {
        let offset = self.0.as_ptr().align_offset(ALIGNMENT);
        &mut self.0[offset..offset + STAGING_BYTES]
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut pool = STAGING_POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < STAGING_KEPT {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

/// Switches `file` to O_DIRECT; false (and the file unchanged) where the file system refuses.
fn try_enable(file: &File) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    match rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `data` at offset 0 of the empty `file`, opened for buffered writes: the partial last
/// block first through the page cache, then the whole blocks with O_DIRECT where the file
/// system takes it (buffered where it refuses). Returns whether O_DIRECT was used.
pub fn write_object(file: &File, data: &[u8]) -> io::Result<bool> {
    let aligned_len = data.len() / ALIGNMENT * ALIGNMENT;
    if aligned_len < data.len() {
        file.write_all_at(&data[aligned_len..], aligned_len as u64)?;
    }
    if aligned_len == 0 {
        return Ok(false);
    }
    if !try_enable(file)? {
        file.write_all_at(&data[..aligned_len], 0)?;
        return Ok(false);
    }
    let mut staging = Staging::take();
    let window = staging.window();
    let mut at = 0;
    while at < aligned_len {
        let n = (aligned_len - at).min(STAGING_BYTES);
        window[..n].copy_from_slice(&data[at..at + n]);
        file.write_all_at(&window[..n], at as u64)?;
        at += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_reads_back_whole_through_direct_and_tail_writes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3 * STAGING_BYTES + 5000))
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let lengths = [
            0,
            1,
            ALIGNMENT - 1,
            ALIGNMENT,
            ALIGNMENT + 1,
            STAGING_BYTES,
            STAGING_BYTES + 3,
            3 * STAGING_BYTES + 5000,
        ];
        let mut direct_seen = false;
        for len in lengths {
            let path = dir.path().join(format!("object-{len}"));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            direct_seen |= write_object(&file, &data[..len]).unwrap();
            drop(file);
            assert_eq!(std::fs::read(&path).unwrap(), &data[..len], "length {len}");
        }
        // ext4, XFS and tmpfs (since Linux 6.6) take O_DIRECT: CI's file systems all do.
        assert!(direct_seen, "the test directory's file system refused O_DIRECT");
        assert!(STAGING_POOL.lock().unwrap().len() <= STAGING_KEPT);
    }
}
