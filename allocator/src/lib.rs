//! The process allocator of Meridian's binaries: mimalloc, asked the way its fast paths
//! expect.
//!
//! The `mimalloc` crate's allocator hands every allocation to `mi_malloc_aligned`, whatever
//! its alignment. In mimalloc 3 that call takes its fast path only when the size is at most
//! 1 KiB and a free block of the size class is at hand; otherwise (a request's boxed future,
//! a buffer, or any allocation landing on a page whose free list has just run out) it falls
//! to a generic path that, for a size that is not a power of two, *over-allocates* by the
//! alignment and marks the page as holding interior pointers: about 210 instructions instead
//! of 20, and a block of the wrong size class. The gateway's request path met that path
//! about seven times per request (callgrind, docs/BENCHMARKS.md).
//!
//! Every size class of mimalloc is a multiple of 8 bytes (of 16 above 16), and every page's
//! first block is 16-byte aligned, so a plain `mi_malloc` of a size that is a multiple of
//! an alignment of at most 16 is aligned already: those requests (nearly all of them) go to
//! the plain calls, the rest to the aligned ones. A plain block that came back misaligned
//! anyway (which mimalloc's layout rules out) is given back and asked for again aligned, so
//! the guarantee does not rest on that reasoning alone.
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: meridian_allocator::Mimalloc = meridian_allocator::Mimalloc;
//!
//! let orders: Vec<u64> = (0..1000).collect();
//! assert_eq!(orders.iter().sum::<u64>(), 499_500);
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The alignment every block of a size class that is a multiple of it already has.
const NATURAL_ALIGNMENT: usize = 16;

/// mimalloc as the global allocator.
pub struct Mimalloc;

/// Whether a block of `size` bytes from mimalloc's size classes is aligned to `align` (a
/// power of two, as every `Layout`'s is: masked rather than divided, since the compiler
/// cannot know that and `is_multiple_of` costs a division on every allocation).
#[inline]
fn naturally_aligned(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGNMENT && size & (align - 1) == 0
}

/// Whether `ptr` is aligned to `align` (a power of two).
#[inline]
fn is_aligned(ptr: *mut c_void, align: usize) -> bool {
    ptr as usize & (align - 1) == 0
}

/// A block for `layout` from `plain` when a size class aligns it already, from `aligned`
/// otherwise; a plain block found misaligned is given back and asked for again aligned.
///
/// # Safety
/// `plain` and `aligned` are mimalloc's plain and aligned calls of one kind (both zeroing or
/// neither), so that either block is what the caller asked for and `mi_free` takes it.
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if naturally_aligned(size, align) {
        // SAFETY: the plain calls take any size; the block is checked below.
        let block = unsafe { plain(size) };
        if is_aligned(block, align) {
            return block.cast();
        }
        // SAFETY: the block came from mimalloc just now and is not used.
        unsafe { mi_free(block) };
    }
    // SAFETY: `align` is a power of two (Layout guarantees it).
    unsafe { aligned(size, align).cast() }
}

// SAFETY: every block comes from mimalloc (plain or aligned calls, which share one free:
// `mi_free` takes both), is at least `layout.size()` bytes and is aligned to
// `layout.align()`: the aligned calls guarantee it, and a plain block is checked and
// replaced by an aligned one when it is not. Null is returned only when mimalloc returns it.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the plain and the aligned allocation of the same kind.
        unsafe { allocate(layout, mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the plain and the aligned zeroed allocation.
        unsafe { allocate(layout, mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller gives back a block this allocator handed out.
        unsafe { mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if naturally_aligned(new_size, align) {
            // SAFETY: `ptr` is a live block of this allocator (the caller's promise). On
            // failure mi_realloc returns null and leaves the block as it was.
            let moved = unsafe { mi_realloc(ptr.cast(), new_size) };
            if moved.is_null() || is_aligned(moved, align) {
                return moved.cast();
            }
            // The contents are in `moved` now: copy them to an aligned block.
            // SAFETY: `moved` holds `new_size` bytes of the caller's data (the first
            // min(old, new) of which are meaningful; copying all is fine, both are that
            // long); the new block is fresh and does not overlap it.
            unsafe {
                let aligned = mi_malloc_aligned(new_size, align);
                if !aligned.is_null() {
                    std::ptr::copy_nonoverlapping(moved.cast::<u8>(), aligned.cast::<u8>(), new_size);
                }
                mi_free(moved);
                return aligned.cast();
            }
        }
        // SAFETY: as above, with mimalloc keeping the alignment.
        unsafe { mi_realloc_aligned(ptr.cast(), new_size, align).cast() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout up to 4 KiB with every alignment up to 4 KiB: the block is aligned,
    /// writable over its whole size, survives growing and shrinking, and is given back.
    #[test]
    fn every_block_is_aligned_and_whole_across_sizes_and_alignments() {
        let allocator = Mimalloc;
        for align in (0..=12).map(|shift| 1usize << shift) {
            for size in (1..=4096).step_by(7).chain([align, 2 * align, 3 * align]) {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: a non-zero size; each block is written within its size and freed once.
                unsafe {
                    let block = allocator.alloc(layout);
                    assert!(!block.is_null() && is_aligned(block.cast(), align), "{size} bytes aligned to {align}");
                    std::ptr::write_bytes(block, 0xA5, size);
                    let grown = allocator.realloc(block, layout, size * 3);
                    assert!(!grown.is_null() && is_aligned(grown.cast(), align), "{size} grown, aligned to {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5), "{size} bytes kept when growing");
                    let shrunk = allocator.realloc(grown, Layout::from_size_align_unchecked(size * 3, align), size);
                    assert!(is_aligned(shrunk.cast(), align));
                    assert!((0..size).all(|i| *shrunk.add(i) == 0xA5), "{size} bytes kept when shrinking");
                    allocator.dealloc(shrunk, layout);
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null() && is_aligned(zeroed.cast(), align));
                    assert!((0..size).all(|i| *zeroed.add(i) == 0), "{size} bytes zeroed");
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }

    #[test]
    fn only_multiples_of_small_alignments_take_the_plain_calls() {
        assert!(naturally_aligned(48, 8));
        assert!(naturally_aligned(7440, 16));
        assert!(naturally_aligned(3, 1));
        assert!(!naturally_aligned(24, 16), "a 24-byte class is only 8-aligned");
        assert!(!naturally_aligned(128, 32));
        assert!(!naturally_aligned(8, 16));
    }
}
