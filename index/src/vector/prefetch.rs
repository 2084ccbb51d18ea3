//! Cache prefetch hints. A graph search spends most of its time waiting for
//! vectors to come from memory, one neighbour after another; asking for all of an
//! element's neighbours at once lets those loads overlap (as hnswlib does).

/// Cache line size on the CPUs we run on.
const LINE: usize = 64;

/// Asks the CPU to start loading `bytes` bytes from `ptr` into its caches. A hint
/// only: it never reads, never faults, and any address is allowed.
#[inline]
pub fn prefetch(ptr: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes).step_by(LINE) {
        // SAFETY: a prefetch does not access memory (no fault, whatever the
        // address), and SSE is part of the x86-64 baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                ptr.wrapping_add(offset) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, bytes);
}

/// [`prefetch`] of a vector.
#[inline]
pub fn prefetch_vector(v: &[f32]) {
    prefetch(v.as_ptr() as *const u8, std::mem::size_of_val(v));
}
