//! Cache prefetch hints: the one place the hot path asks the CPU to start loading
//! memory it will need a few packets later, so that the cache misses of a batch's
//! table lookups overlap instead of stalling one after another.
#![allow(unsafe_code)] // a prefetch instruction; the block says why it is sound

/// Starts loading the cache line holding the start of `item`. A hint only: it
/// changes timing, never results.
#[inline(always)]
pub fn prefetch<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has. The pointer
    // comes from a live reference, and a prefetch neither reads into the program
    // nor writes: it cannot fault and does not count as an access for Rust's
    // memory model.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(item).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

/// Starts loading the cache line holding the first byte of `bytes` (a frame's
/// headers), if there is one.
#[inline(always)]
pub fn prefetch_start(bytes: &[u8]) {
    if let Some(first) = bytes.first() {
        prefetch(first);
    }
}
