//! Cache prefetch hints for the data path: start fetching lines that a burst will
//! read or write, so that their misses overlap instead of following one another.
//!
//! A prefetch never faults and changes no memory; a wrong address only wastes a
//! fetch. Callers still pass only addresses inside memory they have mapped.

/// Starts fetching the line at `p` for reading.
#[inline(always)]
pub fn read<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it does not fault on any address and writes nothing.
    unsafe {
        std::arch::asm!("prefetcht0 [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Starts fetching the line at `p` in a state that allows writing it (PREFETCHW; a
/// CPU without it treats the instruction as a no-op).
#[inline(always)]
pub fn write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW is a hint: it does not fault on any address and writes nothing.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
