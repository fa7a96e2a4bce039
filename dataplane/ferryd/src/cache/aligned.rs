//! Buffers aligned for O_DIRECT: 4096-byte aligned, a whole number of 4096-byte blocks long.
//!
//! A received batch is copied exactly once, into one of these (after a 64-byte record
//! header); the cache writes it with O_DIRECT from there and hands out [`Bytes`] views of the
//! same memory to readers (the upload pipeline), so nothing downstream copies it again.
//!
//! **Reuse.** A fresh allocation of a batch-sized buffer costs a memset and a page fault per
//! 4 KiB (7% of ferryd under load, measured with `perf`), so freed buffers go to a pool by
//! size class (a class is the length rounded up to an eighth of its power of two, so a class
//! wastes at most 12.5%), and [`AlignedBuf::reused`] takes from it. The pool holds at most
//! its limit: a quarter of the memory budget, set by [`set_pool_limit`] at start and when the
//! budget is tuned (see `memory_budget.rs`), [`DEFAULT_POOL_LIMIT_BYTES`] until then. With
//! 32 MiB, steady (64 disks, 1 MiB batches) still took about 200,000 fresh pages per GB
//! ingested; with a quarter of the default budget (128 MiB), about 100,000. A reused buffer
//! holds an earlier record's bytes: its user overwrites every byte it exposes
//! ([`super::RecordBuffer`] zeroes the header and the padding, the body fills the rest).
//! Memory is always initialised: new buffers are allocated zeroed.

use bytes::Bytes;
use std::alloc::{self, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Mutex;

pub const ALIGNMENT: usize = 4096;

/// Freed buffers kept for reuse at most, in bytes, until [`set_pool_limit`] is called;
/// beyond the limit they go back to the allocator.
pub const DEFAULT_POOL_LIMIT_BYTES: usize = 32 << 20;

static POOL_LIMIT_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(DEFAULT_POOL_LIMIT_BYTES);

/// Sets how many bytes of freed buffers the pool keeps at most; what it holds beyond a lowered
/// limit is freed now.
pub fn set_pool_limit(bytes: u64) {
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    POOL_LIMIT_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
    let mut pool = pool();
    let pool = &mut *pool;
    while pool.bytes > bytes {
        let Some(mut largest) = pool.free.last_entry() else {
            break;
        };
        let capacity = *largest.key();
        match largest.get_mut().pop() {
            Some(FreeBlock(ptr)) => {
                pool.bytes -= capacity;
                // SAFETY: allocated in `reused` with this capacity's layout; owned by the pool.
                unsafe { alloc::dealloc(ptr.as_ptr(), layout(capacity)) }
            }
            None => {
                largest.remove();
            }
        }
    }
}

/// An owned, always initialised, 4096-aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    /// The length exposed (whole blocks).
    len: usize,
    /// The allocation's length: `len`'s size class.
    capacity: usize,
}

// The buffer owns its allocation exclusively; &AlignedBuf only gives shared reads.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

/// Free allocations by capacity, and their total size.
struct Pool {
    free: BTreeMap<usize, Vec<FreeBlock>>,
    bytes: usize,
}

struct FreeBlock(NonNull<u8>);
// A free block is owned by the pool alone.
unsafe impl Send for FreeBlock {}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: BTreeMap::new(),
    bytes: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `len` rounded up to a whole number of blocks.
pub fn round_up(len: usize) -> usize {
    len.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The allocation size for `len` bytes (whole blocks): up to 64 KiB the blocks themselves,
/// above that rounded up to an eighth of the length's power of two.
pub fn size_class(len: usize) -> usize {
    let len = round_up(len.max(1));
    if len <= 64 << 10 {
        return len;
    }
    let step = 1usize << (usize::BITS - 1 - len.leading_zeros() - 3);
    len.div_ceil(step) * step
}

fn layout(capacity: usize) -> Layout {
    // ALIGNMENT is a power of two and capacity a non-zero multiple of it: the layout is valid.
    Layout::from_size_align(capacity, ALIGNMENT).expect("aligned layout")
}

impl AlignedBuf {
    /// A zeroed buffer of at least `len` bytes (rounded up to whole blocks; at least one).
    pub fn zeroed(len: usize) -> Self {
        let mut buf = Self::reused(len);
        buf.as_mut_slice().fill(0);
        buf
    }

    /// A buffer of at least `len` bytes (whole blocks) whose contents are left over from an
    /// earlier use: from the pool when it has one of this size class, else new (zeroed).
    pub fn reused(len: usize) -> Self {
        let len = round_up(len.max(1));
        let capacity = size_class(len);
        let pooled = {
            let mut pool = pool();
            let block = pool.free.get_mut(&capacity).and_then(Vec::pop);
            if block.is_some() {
                pool.bytes -= capacity;
            }
            block
        };
        let ptr = match pooled {
            Some(FreeBlock(ptr)) => ptr,
            None => {
                let layout = layout(capacity);
                // SAFETY: the layout has non-zero size.
                let raw = unsafe { alloc::alloc_zeroed(layout) };
                NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout))
            }
        };
        Self { ptr, len, capacity }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for capacity >= len bytes for the buffer's lifetime, and the
        // memory was zero-initialised when allocated (a reused buffer holds older bytes).
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
        {
            let mut pool = pool();
            if pool.bytes + self.capacity <= POOL_LIMIT_BYTES.load(std::sync::atomic::Ordering::Relaxed) {
                pool.bytes += self.capacity;
                pool.free.entry(self.capacity).or_default().push(FreeBlock(self.ptr));
                return;
            }
        }
        // SAFETY: allocated in `reused` with exactly this layout, and not pooled.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout(self.capacity)) }
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

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class(1), 4096);
        assert_eq!(size_class(64 << 10), 64 << 10);
        assert_eq!(size_class((1 << 20) + 4096), (1 << 20) + (128 << 10));
        for len in (1..4000).map(|i| i * 7919) {
            let class = size_class(len);
            assert!(class >= round_up(len) && class.is_multiple_of(ALIGNMENT), "{len}");
            assert!(class as f64 <= round_up(len) as f64 * 1.125, "{len} -> {class}");
        }
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit_and_a_lowered_limit_frees_the_rest() {
        // nextest runs each test in its own process: the limit set here is this test's alone.
        let len = 5 << 20; // size class 5 MiB
        set_pool_limit(12 << 20);
        let buffers: Vec<_> = (0..4).map(|_| AlignedBuf::reused(len)).collect();
        drop(buffers);
        assert_eq!(pool().bytes, 10 << 20, "two of the four 5 MiB buffers fit under 12 MiB");
        set_pool_limit(6 << 20);
        assert_eq!(pool().bytes, 5 << 20);
        set_pool_limit(0);
        assert_eq!(pool().bytes, 0);
        drop(AlignedBuf::reused(len));
        assert_eq!(pool().bytes, 0, "nothing is kept at a limit of 0");
        set_pool_limit(DEFAULT_POOL_LIMIT_BYTES as u64);
    }

    #[test]
    fn freed_buffers_are_reused_and_zeroed_ones_are_zero() {
        // A size class no other test uses, so the pool's other users do not interfere.
        let len = 3 << 20;
        let mut first = AlignedBuf::reused(len);
        first.as_mut_slice().fill(0xAB);
        let address = first.as_slice().as_ptr();
        drop(first);
        let again = AlignedBuf::reused(len);
        assert_eq!(again.as_slice().as_ptr(), address, "taken from the pool");
        drop(again);
        let zeroed = AlignedBuf::zeroed(len);
        assert!(zeroed.as_slice().iter().all(|b| *b == 0));
    }
}
