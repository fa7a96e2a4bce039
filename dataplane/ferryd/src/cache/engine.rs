//! The cache's write engines, behind one small trait (STYLE.md 7): io_uring (the `io-uring`
//! crate, owned by the cache thread) and a plain pwritev + fdatasync engine for kernels or
//! sandboxes without io_uring. `auto` picks io_uring when a ring can be created.
//!
//! A call writes a group of aligned buffers at their offsets in one file and returns only
//! after `fdatasync` succeeded: every byte of the group is durable or the call failed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use ferry_config::config::CacheEngine;

/// One write: the file offset and the bytes (both 4096-aligned for O_DIRECT).
pub type Write<'a> = (u64, &'a [u8]);

pub trait WriteEngine: Send {
    fn name(&self) -> &'static str;
    /// Writes every buffer at its offset, then fdatasyncs the file.
    fn write_and_sync(&mut self, file: &File, writes: &[Write<'_>]) -> io::Result<()>;
}

/// Chooses the engine the configuration asks for.
pub fn select(choice: CacheEngine) -> io::Result<Box<dyn WriteEngine>> {
    match choice {
        CacheEngine::Psync => Ok(Box::new(PsyncEngine)),
        CacheEngine::IoUring => Ok(Box::new(IoUringEngine::new()?)),
        CacheEngine::Auto => match IoUringEngine::new() {
            Ok(engine) => Ok(Box::new(engine)),
            Err(e) => {
                tracing::info!(error = %e, "io_uring is unavailable; the cache uses pwritev + fdatasync");
                Ok(Box::new(PsyncEngine))
            }
        },
    }
}

/// pwritev over runs of contiguous buffers, then fdatasync.
pub struct PsyncEngine;

/// Most iovecs one pwritev takes (Linux IOV_MAX).
const IOV_MAX: usize = 1024;

impl PsyncEngine {
    fn write_run(file: &File, offset: u64, buffers: &[&[u8]]) -> io::Result<()> {
        let slices: Vec<io::IoSlice<'_>> = buffers.iter().map(|b| io::IoSlice::new(b)).collect();
        let total: usize = buffers.iter().map(|b| b.len()).sum();
        let written = rustix::io::pwritev(file, &slices, offset)?;
        if written < total {
            // A short write: finish the rest buffer by buffer.
            let mut done = written;
            let mut at = offset;
            for buffer in buffers {
                let skip = done.min(buffer.len());
                done -= skip;
                if skip < buffer.len() {
                    file.write_all_at(&buffer[skip..], at + skip as u64)?;
                }
                at += buffer.len() as u64;
            }
        }
        Ok(())
    }
}

impl WriteEngine for PsyncEngine {
    fn name(&self) -> &'static str {
        "psync"
    }

    fn write_and_sync(&mut self, file: &File, writes: &[Write<'_>]) -> io::Result<()> {
        let mut start = 0;
        while start < writes.len() {
            // Extend the run while the next buffer continues where this one ends.
            let mut end = start + 1;
            let mut next_offset = writes[start].0 + writes[start].1.len() as u64;
            while end < writes.len() && end - start < IOV_MAX && writes[end].0 == next_offset {
                next_offset += writes[end].1.len() as u64;
                end += 1;
            }
            let buffers: Vec<&[u8]> = writes[start..end].iter().map(|(_, b)| *b).collect();
            Self::write_run(file, writes[start].0, &buffers)?;
            start = end;
        }
        file.sync_data()
    }
}

/// io_uring: one write SQE per buffer, submitted together, then one fdatasync SQE.
pub struct IoUringEngine {
    ring: io_uring::IoUring,
}

const RING_ENTRIES: u32 = 256;

impl IoUringEngine {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            ring: io_uring::IoUring::new(RING_ENTRIES)?,
        })
    }

    /// Submits `sqes` and waits for all of them; returns each completion's result by index.
    fn run(&mut self, sqes: &[io_uring::squeue::Entry]) -> io::Result<Vec<i32>> {
        let mut results = vec![0i32; sqes.len()];
        for chunk in sqes.chunks(RING_ENTRIES as usize) {
            for sqe in chunk {
                // SAFETY: the buffers the entries point at outlive the wait below.
                unsafe {
                    self.ring
                        .submission()
                        .push(sqe)
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?
                };
            }
            let mut completed = 0;
            while completed < chunk.len() {
                self.ring.submit_and_wait(chunk.len() - completed)?;
                for cqe in self.ring.completion() {
                    let index = cqe.user_data() as usize;
                    if let Some(slot) = results.get_mut(index) {
                        *slot = cqe.result();
                    }
                    completed += 1;
                }
            }
        }
        Ok(results)
    }
}

impl WriteEngine for IoUringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn write_and_sync(&mut self, file: &File, writes: &[Write<'_>]) -> io::Result<()> {
        use io_uring::{opcode, types};
        let fd = types::Fd(file.as_raw_fd());
        let sqes: Vec<_> = writes
            .iter()
            .enumerate()
            .map(|(index, (offset, buffer))| {
                opcode::Write::new(fd, buffer.as_ptr(), buffer.len() as u32)
                    .offset(*offset)
                    .build()
                    .user_data(index as u64)
            })
            .collect();
        let results = self.run(&sqes)?;
        for ((offset, buffer), result) in writes.iter().zip(results) {
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            let written = result as usize;
            if written < buffer.len() {
                file.write_all_at(&buffer[written..], offset + written as u64)?;
            }
        }
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(0);
        let result = self.run(&[sync])?[0];
        if result < 0 {
            return Err(io::Error::from_raw_os_error(-result));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn engines() -> Vec<Box<dyn WriteEngine>> {
        let mut engines: Vec<Box<dyn WriteEngine>> = vec![Box::new(PsyncEngine)];
        match IoUringEngine::new() {
            Ok(engine) => engines.push(Box::new(engine)),
            Err(e) => eprintln!("io_uring is unavailable here ({e}); testing psync alone"),
        }
        engines
    }

    /// Groups with contiguous and separate buffers, the second after a pause longer than a
    /// clock tick (io_uring then cannot issue the write without blocking, because it must
    /// update the file's times, and hands it to a worker: docs/BENCHMARKS.md, nineteenth
    /// step): every byte lands where it was written, nothing else changes, and the
    /// modification time moves.
    #[test]
    fn groups_after_a_pause_land_whole_and_move_the_modification_time() {
        for mut engine in engines() {
            let name = engine.name();
            let dir = tempfile::tempdir().expect("temporary directory");
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("segment"))
                .expect("segment file");
            file.set_len(64 * 4096).expect("segment length");

            let (first, second, apart) = (vec![1u8; 8192], vec![2u8; 4096], vec![3u8; 4096]);
            engine
                .write_and_sync(&file, &[(0, &first), (8192, &second), (32768, &apart)])
                .unwrap_or_else(|e| panic!("{name}: first group: {e}"));
            std::thread::sleep(Duration::from_millis(30));
            let before_second = SystemTime::now() - Duration::from_secs(1);
            let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
            file.set_modified(long_ago).expect("old modification time");
            let later = vec![4u8; 4096];
            engine
                .write_and_sync(&file, &[(20 * 4096, &later)])
                .unwrap_or_else(|e| panic!("{name}: second group: {e}"));

            let mut stored = vec![0u8; 64 * 4096];
            file.read_exact_at(&mut stored, 0).expect("read back");
            let mut expected = vec![0u8; 64 * 4096];
            expected[..8192].fill(1);
            expected[8192..12288].fill(2);
            expected[32768..36864].fill(3);
            expected[20 * 4096..21 * 4096].fill(4);
            assert!(
                stored == expected,
                "{name}: the segment holds other bytes than were written"
            );
            let modified = file.metadata().and_then(|m| m.modified()).expect("modification time");
            assert!(
                modified >= before_second,
                "{name}: after a write the modification time is {modified:?}, not the write's"
            );
        }
    }
}
