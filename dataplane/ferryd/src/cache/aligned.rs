//! Buffers aligned for O_DIRECT: 4096-byte aligned, a whole number of 4096-byte blocks long.
//!
//! A received batch is copied exactly once, into one of these (after a 64-byte record
//! header); the cache writes it with O_DIRECT from there and hands out [`Bytes`] views of the
//! same memory to readers (the upload pipeline), so nothing downstream copies it again.

use bytes::Bytes;
use std::alloc::{self, Layout};
use std::ptr::NonNull;

pub const ALIGNMENT: usize = 4096;

/// An owned, zero-initialised, 4096-aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// The buffer owns its allocation exclusively; &AlignedBuf only gives shared reads.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

/// `len` rounded up to a whole number of blocks.
pub fn round_up(len: usize) -> usize {
    len.div_ceil(ALIGNMENT) * ALIGNMENT
}

impl AlignedBuf {
    /// A zeroed buffer of at least `len` bytes (rounded up to whole blocks; at least one).
    pub fn zeroed(len: usize) -> Self {
        let len = round_up(len.max(1));
        // ALIGNMENT is a power of two and len a non-zero multiple of it: the layout is valid.
        let layout = Layout::from_size_align(len, ALIGNMENT).expect("aligned layout");
        // SAFETY: the layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the buffer's lifetime and was zero-initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// A shared, immutable view of the whole buffer; slice it with `Bytes::slice`.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.len, ALIGNMENT),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_frozen_without_copy() {
        let mut buf = AlignedBuf::zeroed(5000);
        assert_eq!(buf.len(), 8192);
        assert_eq!(buf.as_slice().as_ptr() as usize % ALIGNMENT, 0);
        assert!(buf.as_slice().iter().all(|b| *b == 0));
        buf.as_mut_slice()[10] = 7;
        let address = buf.as_slice().as_ptr();
        let bytes = buf.freeze();
        assert_eq!(bytes.as_ptr(), address);
        assert_eq!(bytes[10], 7);
        assert_eq!(bytes.slice(10..11).as_ptr(), unsafe { address.add(10) });
    }
}
