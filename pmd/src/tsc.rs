//! The CPU's cycle counter, for PMD cycle accounting.

/// Reads the time-stamp counter on x86_64 (nanoseconds since first use elsewhere).
#[inline(always)]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter; it touches no memory and is present on every x86_64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

/// Cycle-counter ticks that `n` dependent one-cycle additions take on this core: a
/// measure of how fast the core runs right now, whatever it is waiting on (on a
/// virtual machine the host can run a vCPU at a fraction of the counter's rate for
/// seconds at a time). A core at the counter's rate takes one tick per addition; a
/// core in turbo fewer.
#[inline(never)]
pub fn add_chain(n: u64) -> u64 {
    let t0 = cycles();
    let mut x = 0u64;
    for _ in 0..n {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: one register addition; no memory, no flags anyone reads.
        unsafe {
            std::arch::asm!("add {0}, 1", inout(reg) x, options(nomem, nostack));
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            x = std::hint::black_box(x + 1);
        }
    }
    std::hint::black_box(x);
    cycles().wrapping_sub(t0)
}
