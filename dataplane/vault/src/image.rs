//! Disk image files: replayed records written in place, zero ranges punched as holes so an
//! image stays sparse (written as zeros where the file system cannot punch), and finding the
//! data between the holes again.

use std::fs::File;
use std::os::unix::fs::FileExt;

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
