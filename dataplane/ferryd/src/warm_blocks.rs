//! A bounded cache of recently freed medium-sized heap blocks (over 4 KiB, up to 64 KiB) in
//! front of the global allocator, so that the next allocation of that size reuses memory that
//! is already mapped and in the CPU's caches instead of pages the allocator has just given back
//! to the OS.
//!
//! Why: ferryd sets mimalloc's purge delay to 0 (freed memory goes back to the OS at once,
//! which keeps peak RSS inside the memory budget; see main.rs). The receive path allocates and
//! frees a block of this size for about every 16 KiB that arrives: h2's frame buffer grows in
//! frame-sized steps as DATA frames are split off it, and rustls hands plaintext out in
//! record-sized vectors. Each such block came back from the OS, so the first write to it took
//! a page fault and a page clear: 15% of the ingest thread's samples in steady
//! (docs/BENCHMARKS.md). A few MiB of blocks kept warm remove those faults without keeping
//! the large buffers (records, sealed objects) resident, which the purge delay is for.
//!
//! Limits: at most [`BYTES_PER_CLASS`] (4 MiB) of blocks per size class (8, 16, 32 and 64 KiB;
//! 16 MiB in all) are held; beyond that, blocks go back to the inner allocator. A request is
//! served from a class only if its alignment is at most 16 bytes (what the classes' blocks are
//! allocated with). Each class is guarded by a flag taken with one compare-and-swap and never
//! waited on: a thread that finds it taken uses the inner allocator instead, so no thread ever
//! spins on another (a holder preempted on this 2-core machine would stall it).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes kept per size class at most (so 16 MiB in all): a 1 MiB batch arrives as 64 frames
/// of 16 KiB, each in a 32 KiB block, and a few connections' batches are consumed at once.
pub const BYTES_PER_CLASS: usize = 4 << 20;

/// Room for the smallest class's blocks; larger classes use the first [`limit`] slots.
const SLOTS: usize = BYTES_PER_CLASS / CLASS_SIZES[0];

/// The classes' block sizes; a request uses the first class at least its size. Requests of
/// 4 KiB or less and over 64 KiB go straight to the inner allocator.
const CLASS_SIZES: [usize; 4] = [8 << 10, 16 << 10, 32 << 10, 64 << 10];
const SMALLEST_CACHED: usize = (4 << 10) + 1;
const CLASS_ALIGN: usize = 16;

struct Class {
    taken: AtomicBool,
    /// Guarded by `taken`.
    slots: UnsafeCell<Slots>,
}

struct Slots {
    len: usize,
    blocks: [*mut u8; SLOTS],
}

// SAFETY: `slots` is only touched by the thread that set `taken` (see `with_slots`).
unsafe impl Sync for Class {}

impl Class {
    const fn new() -> Self {
        Self {
            taken: AtomicBool::new(false),
            slots: UnsafeCell::new(Slots {
                len: 0,
                blocks: [null_mut(); SLOTS],
            }),
        }
    }

    /// Runs `f` on the slots if no other thread holds them; `None` if one does.
    fn with_slots<R>(&self, f: impl FnOnce(&mut Slots) -> R) -> Option<R> {
        if self
            .taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        // SAFETY: `taken` was false and is now ours: no other reference to the slots exists
        // until it is released below.
        let result = f(unsafe { &mut *self.slots.get() });
        self.taken.store(false, Ordering::Release);
        Some(result)
    }
}

/// The cache around an inner allocator (mimalloc in ferryd).
pub struct WarmBlocks<A> {
    inner: A,
    classes: [Class; CLASS_SIZES.len()],
}

impl<A> WarmBlocks<A> {
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            classes: [Class::new(), Class::new(), Class::new(), Class::new()],
        }
    }
}

/// The class index for a layout, if it is cached.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > CLASS_ALIGN || layout.size() < SMALLEST_CACHED {
        return None;
    }
    CLASS_SIZES.iter().position(|&size| layout.size() <= size)
}

/// Blocks of `class` kept at most.
fn limit(class: usize) -> usize {
    BYTES_PER_CLASS / CLASS_SIZES[class]
}

fn class_layout(class: usize) -> Layout {
    // SAFETY: the sizes are non-zero multiples of the power-of-two alignment, far from overflow.
    unsafe { Layout::from_size_align_unchecked(CLASS_SIZES[class], CLASS_ALIGN) }
}

// SAFETY: every block handed out is either the inner allocator's answer for the same layout
// (outside the classes) or a block of the class's size and alignment, which is at least the
// request's; a block is only ever given back to the inner allocator with the layout it was
// allocated with (the class layout for class blocks, whose class follows from the request's
// layout as `dealloc` receives it).
unsafe impl<A: GlobalAlloc> GlobalAlloc for WarmBlocks<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            None => unsafe { self.inner.alloc(layout) },
            Some(class) => {
                let cached = self.classes[class]
                    .with_slots(|slots| {
                        if slots.len == 0 {
                            return null_mut();
                        }
                        slots.len -= 1;
                        slots.blocks[slots.len]
                    })
                    .unwrap_or(null_mut());
                if cached.is_null() {
                    unsafe { self.inner.alloc(class_layout(class)) }
                } else {
                    cached
                }
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            None => unsafe { self.inner.dealloc(ptr, layout) },
            Some(class) => {
                let kept = self.classes[class]
                    .with_slots(|slots| {
                        if slots.len == limit(class) {
                            return false;
                        }
                        slots.blocks[slots.len] = ptr;
                        slots.len += 1;
                        true
                    })
                    .unwrap_or(false);
                if !kept {
                    unsafe { self.inner.dealloc(ptr, class_layout(class)) }
                }
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            None => unsafe { self.inner.alloc_zeroed(layout) },
            Some(_) => {
                let ptr = unsafe { self.alloc(layout) };
                if !ptr.is_null() {
                    unsafe { ptr.write_bytes(0, layout.size()) };
                }
                ptr
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (of the layout): the caller guarantees `new_size` with `layout.align()` is a
        // valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            // The block already has room: a class block is the class's whole size.
            (Some(old), Some(new)) if old == new => ptr,
            _ => {
                let fresh = unsafe { self.alloc(new_layout) };
                if !fresh.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    // Each test has a cache of its own: tests run in parallel, and one test's blocks must
    // not be taken by another between a free and the allocation that expects it back.

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_cover_only_medium_sizes_with_small_alignment() {
        assert_eq!(class_of(layout(4096, 8)), None);
        assert_eq!(class_of(layout(4097, 8)), Some(0));
        assert_eq!(class_of(layout(8192, 16)), Some(0));
        assert_eq!(class_of(layout(16393, 1)), Some(2));
        assert_eq!(class_of(layout(65536, 8)), Some(3));
        assert_eq!(class_of(layout(65537, 8)), None);
        assert_eq!(class_of(layout(16384, 4096)), None);
    }

    #[test]
    fn a_freed_block_is_handed_out_again_and_holds_its_whole_class() {
        static CACHE: WarmBlocks<System> = WarmBlocks::new(System);
        let wanted = layout(20_000, 8);
        unsafe {
            let first = CACHE.alloc(wanted);
            assert!(!first.is_null());
            first.write_bytes(0xab, 32 << 10); // the whole class block is usable
            CACHE.dealloc(first, wanted);
            let second = CACHE.alloc(layout(30_000, 16));
            assert_eq!(second, first, "the same class reuses the block just freed");
            CACHE.dealloc(second, layout(30_000, 16));
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        static CACHE: WarmBlocks<System> = WarmBlocks::new(System);
        let wanted = layout(12_000, 8);
        unsafe {
            let dirty = CACHE.alloc(wanted);
            dirty.write_bytes(0xff, 12_000);
            CACHE.dealloc(dirty, wanted);
            let zeroed = CACHE.alloc_zeroed(wanted);
            assert!((0..12_000).all(|i| *zeroed.add(i) == 0));
            CACHE.dealloc(zeroed, wanted);
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_out_of_them() {
        static CACHE: WarmBlocks<System> = WarmBlocks::new(System);
        unsafe {
            let mut size = 100;
            let mut ptr = CACHE.alloc(layout(size, 8));
            for (i, byte) in (0..size).enumerate() {
                *ptr.add(i) = byte as u8;
            }
            for next in [6_000, 7_000, 20_000, 70_000, 200_000, 9_000, 50] {
                ptr = CACHE.realloc(ptr, layout(size, 8), next);
                assert!(!ptr.is_null());
                for i in 0..size.min(next).min(50) {
                    assert_eq!(*ptr.add(i), i as u8, "byte {i} after {size} -> {next}");
                }
                size = next;
            }
            CACHE.dealloc(ptr, layout(size, 8));
        }
    }

    #[test]
    fn a_full_class_gives_blocks_back_and_threads_share_it_safely() {
        static CACHE: WarmBlocks<System> = WarmBlocks::new(System);
        let wanted = layout(60_000, 16);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || unsafe {
                    for round in 0..200 {
                        // Each block carries a tag unique to its holder: a block handed
                        // out twice would have its tag overwritten by the second holder.
                        let blocks: Vec<(*mut u8, u64)> = (0..limit(3) + 8)
                            .map(|i| {
                                let b = CACHE.alloc(wanted);
                                assert!(!b.is_null());
                                let tag = (t << 32 | round << 16 | i) as u64;
                                b.write_bytes(0x5a, 60_000);
                                (b as *mut u64).write(tag);
                                (b, tag)
                            })
                            .collect();
                        for &(b, tag) in &blocks {
                            assert_eq!((b as *const u64).read(), tag, "a block was handed out twice");
                            assert_eq!(*b.add(59_999), 0x5a);
                        }
                        for (b, _) in blocks {
                            CACHE.dealloc(b, wanted);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let held = CACHE.classes[3].with_slots(|s| s.len).unwrap();
        assert!(held > 0 && held <= limit(3), "{held} blocks held");
    }
}
