//! The sidecar's global allocator: mimalloc, entered through its plain `malloc` family
//! whenever the alignment asked for is at most a machine word.
//!
//! Why not the `mimalloc` crate's allocator: it passes every Rust allocation to
//! `mi_malloc_aligned`, and mimalloc 3 serves that from its fast path only for blocks of at
//! most 1 KiB. A larger block (a request's future moved into its box, an HTTP/2 stream's
//! task, a read buffer) went through the generic aligned path and over-allocated by the
//! alignment: about 130 instructions more, 3.5 to 4.6 times per proxied request in each
//! sidecar (callgrind, `benches/README.md`). Every mimalloc block is word-aligned, so a
//! word's alignment needs no aligned entry point at all.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every block mimalloc hands out is aligned to at least this (its size classes are whole
/// words, and a page's first block is aligned to 16 bytes). Not so in a debug build of
/// mimalloc with guard pages (`MIMALLOC_GUARDED_*`), whose guarded blocks end at a page
/// boundary: `libmimalloc-sys`'s `debug` feature must stay off.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module comment).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc function with the same contract (`malloc`,
// `calloc`, `realloc`, `free` and their aligned forms). The plain forms are used only when
// `layout.align() <= WORD`, which every mimalloc block satisfies; `mi_free` frees blocks from
// either form, and a block is reallocated with the form it was allocated with, since a
// layout's alignment does not change across `realloc`.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = if layout.align() <= WORD {
            mi::mi_malloc(layout.size())
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align())
        };
        p.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = if layout.align() <= WORD {
            mi::mi_zalloc(layout.size())
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align())
        };
        p.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size)
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
        };
        p.cast()
    }
}

extern "C" {
    /// mimalloc's own: frees what its heaps hold unused and returns it to the system.
    fn mi_collect(force: bool);
}

/// Hands the memory mimalloc's heaps hold unused back to the system (start-up leaves freed
/// memory in its pages; an idle sidecar keeps ~0.25 MB less once it is returned).
pub fn release_unused() {
    // SAFETY: mimalloc (linked through `libmimalloc-sys`) defines mi_collect; it takes no
    // pointers and may be called from any thread at any time.
    unsafe { mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around mimalloc's class boundaries (the 1 KiB fast-path limit, 4 KiB natural
    /// alignment, its large and huge blocks) with every alignment a Rust type or buffer asks for.
    #[test]
    fn blocks_are_aligned_hold_their_bytes_and_survive_realloc() {
        #[rustfmt::skip]
        let sizes = [
            1, 3, 8, 15, 16, 24, 40, 63, 64, 65, 100, 1000, 1024, 1025, 1031, 2048, 3000, 4096,
            4488, 8191, 8192, 8199, 65_536, 100_003, 1 << 20, (4 << 20) + 5,
        ];
        let aligns = [1, 2, 4, 8, 16, 32, 64, 128, 4096];
        for &size in &sizes {
            for &align in &aligns {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout; every pointer is used within its size and
                // freed once with the layout it was allocated with.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null(), "{size} bytes, align {align}");
                    assert_eq!(p as usize % align, 0, "{size} bytes, align {align}");
                    std::ptr::write_bytes(p, 0xa5, size);

                    let grown = Allocator.realloc(p, layout, size * 2 + 1);
                    assert!(!grown.is_null(), "grown {size}, align {align}");
                    assert_eq!(grown as usize % align, 0, "grown {size}, align {align}");
                    let kept = std::slice::from_raw_parts(grown, size);
                    assert!(kept.iter().all(|&b| b == 0xa5), "{size}, align {align}");
                    let grown_layout = Layout::from_size_align(size * 2 + 1, align).unwrap();
                    let shrunk = Allocator.realloc(grown, grown_layout, size.div_ceil(2));
                    assert!(!shrunk.is_null(), "shrunk {size}, align {align}");
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size}, align {align}");
                    let kept = std::slice::from_raw_parts(shrunk, size.div_ceil(2));
                    assert!(
                        kept.iter().all(|&b| b == 0xa5),
                        "shrunk {size}, align {align}"
                    );
                    let shrunk_layout = Layout::from_size_align(size.div_ceil(2), align).unwrap();
                    Allocator.dealloc(shrunk, shrunk_layout);

                    let z = Allocator.alloc_zeroed(layout);
                    assert!(!z.is_null(), "zeroed {size}, align {align}");
                    assert_eq!(z as usize % align, 0, "zeroed {size}, align {align}");
                    let zeroed = std::slice::from_raw_parts(z, size);
                    assert!(
                        zeroed.iter().all(|&b| b == 0),
                        "zeroed {size}, align {align}"
                    );
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
