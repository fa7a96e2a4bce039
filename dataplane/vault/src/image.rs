//! Disk image files: replayed records written in place, zero ranges punched as holes so an
//! image stays sparse (written as zeros where the file system cannot punch), large aligned
//! pieces written past the page cache ([`DirectWriter`]), and finding the data between the
//! holes again.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;

use crate::log::RecordSink;

/// Makes `offset .. offset + length` of `file` read as zeros.
pub fn zero_range(file: &File, offset: u64, length: u64) -> std::io::Result<()> {
    let hole = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    if rustix::fs::fallocate(file, hole, offset, length).is_ok() {
        return Ok(());
    }
    // No hole punching here: write zeros, a megabyte at a time.
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < length {
        let n = (length - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// The next extent of data (not a hole) of `file` at or after `at` and before `end`:
/// `(start, end of the data)`, or None when only holes are left. Where the file system cannot
/// tell (no SEEK_DATA), everything counts as data.
pub fn data_extent(file: &File, at: u64, end: u64) -> std::io::Result<Option<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    if at >= end {
        return Ok(None);
    }
    let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
        Ok(start) if start >= end => return Ok(None),
        Ok(start) => start,
        Err(rustix::io::Errno::NXIO) => return Ok(None), // no data at or after `at`
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok(Some((at, end))),
        Err(e) => return Err(e.into()),
    };
    let hole = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
        Ok(hole) => hole.min(end),
        Err(_) => end,
    };
    Ok(Some((start, hole)))
}

/// A restore's output: records go straight into the image.
pub struct ImageFile<'a>(pub &'a File);

impl RecordSink for ImageFile<'_> {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        zero_range(self.0, offset, length)
    }
}

/// O_DIRECT's alignment for offsets, lengths and memory (the largest logical sector size).
const DIRECT_ALIGNMENT: usize = 4096;

/// Writes large pieces of an image (a base's chunks) with O_DIRECT, through a second
/// descriptor of the same file: a restore writes each of those bytes once, and copying them
/// into the page cache cost more than the write itself (`copy_folio_from_iter_atomic` was 48%
/// of a base fill on the project's VM, `perf record`). Pieces that are not 4 KiB-aligned, and
/// file systems without O_DIRECT, go through the page cache as before; the kernel keeps the
/// two coherent. Memory: one aligned buffer as large as the largest piece.
pub struct DirectWriter<'a> {
    image: &'a File,
    direct: Option<File>,
    buffer: Vec<u8>,
}

impl<'a> DirectWriter<'a> {
    pub fn new(image: &'a File) -> Self {
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(format!("/proc/self/fd/{}", image.as_raw_fd()))
            .ok();
        DirectWriter {
            image,
            direct,
            buffer: Vec::new(),
        }
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let aligned = offset.is_multiple_of(DIRECT_ALIGNMENT as u64)
            && data.len().is_multiple_of(DIRECT_ALIGNMENT)
            && !data.is_empty();
        if let (true, Some(direct)) = (aligned, &self.direct) {
            if self.buffer.len() < data.len() + DIRECT_ALIGNMENT {
                self.buffer = vec![0u8; data.len() + DIRECT_ALIGNMENT];
            }
            let start = self.buffer.as_ptr().align_offset(DIRECT_ALIGNMENT);
            let window = &mut self.buffer[start..start + data.len()];
            window.copy_from_slice(data);
            match direct.write_all_at(window, offset) {
                Ok(()) => return Ok(()),
                // The file system refuses O_DIRECT after all: the page cache from now on.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.image.write_all_at(data, offset)
    }
}

/// Reads large pieces of a file or device past the page cache (O_DIRECT through a second
/// descriptor): a failback reads the whole original disk once to compare it, and copying it
/// through the page cache (and zeroing fresh pages for its holes) cost more than hashing it
/// (`perf record`: 55% of a failback in the kernel's copy and memset). Where O_DIRECT is
/// refused, reads go through the cache. Memory: one aligned buffer as large as the largest read.
pub struct DirectReader<'a> {
    file: &'a File,
    direct: Option<File>,
    buffer: Vec<u8>,
}

impl<'a> DirectReader<'a> {
    pub fn new(file: &'a File) -> Self {
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok();
        DirectReader {
            file,
            direct,
            buffer: Vec::new(),
        }
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The `length` bytes at `offset` (which must be 4 KiB-aligned for O_DIRECT; a short end
    /// of file is read whole and cut).
    pub fn read_at(&mut self, offset: u64, length: usize) -> std::io::Result<&[u8]> {
        let rounded = length.next_multiple_of(DIRECT_ALIGNMENT);
        if self.buffer.len() < rounded + DIRECT_ALIGNMENT {
            self.buffer = vec![0u8; rounded + DIRECT_ALIGNMENT];
        }
        let start = self.buffer.as_ptr().align_offset(DIRECT_ALIGNMENT);
        if let (true, Some(direct)) = (offset.is_multiple_of(DIRECT_ALIGNMENT as u64), &self.direct) {
            let window = &mut self.buffer[start..start + rounded];
            let mut done = 0;
            let outcome = loop {
                if done >= length {
                    break Ok(());
                }
                match direct.read_at(&mut window[done..], offset + done as u64) {
                    Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match outcome {
                Ok(()) => return Ok(&self.buffer[start..start + length]),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        let window = &mut self.buffer[start..start + length];
        self.file.read_exact_at(window, offset)?;
        Ok(&self.buffer[start..start + length])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_reads_give_the_bytes_written_including_a_short_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut reader = DirectReader::new(&file);
        assert_eq!(reader.read_at(0, 8192).unwrap(), &bytes[..8192]);
        assert_eq!(reader.read_at(8192, 4096 + 100).unwrap(), &bytes[8192..]);
        assert_eq!(
            reader.read_at(100, 50).unwrap(),
            &bytes[100..150],
            "unaligned: through the cache"
        );
        assert!(reader.read_at(8192, 8192).is_err(), "past the end");
    }

    #[test]
    fn direct_and_buffered_pieces_land_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("image"))
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let mut writer = DirectWriter::new(&file);
        writer.write_at(&[1u8; 65536], 65536).unwrap(); // aligned: direct where possible
        writer.write_at(&[2u8; 100], 4096 * 3 + 7).unwrap(); // unaligned: buffered
        writer.write_at(&[3u8; 8192], 0).unwrap();
        let mut back = vec![0u8; 1 << 20];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..8192].iter().all(|&b| b == 3));
        assert!(back[4096 * 3 + 7..4096 * 3 + 107].iter().all(|&b| b == 2));
        assert!(back[65536..131072].iter().all(|&b| b == 1));
        assert!(back[131072..].iter().all(|&b| b == 0));
    }
}
