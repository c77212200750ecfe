//! Per-PMD-thread counters: busy and idle cycles, packets, and cycles per packet.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Written only by its PMD thread (plain stores), read by the control plane.
#[derive(Default)]
pub struct PmdStats {
    pub core: AtomicU64,
    /// Cycles spent in iterations that moved at least one packet.
    pub busy_cycles: AtomicU64,
    /// Cycles spent in iterations that found nothing to do.
    pub idle_cycles: AtomicU64,
    /// Packets received and processed.
    pub packets: AtomicU64,
    pub iterations: AtomicU64,
    /// Iterations that skipped rx because an output queue was backed up.
    pub backpressure: AtomicU64,
}

impl PmdStats {
    pub fn cycles_per_packet(&self) -> f64 {
        let p = self.packets.load(Relaxed);
        if p == 0 {
            0.0
        } else {
            self.busy_cycles.load(Relaxed) as f64 / p as f64
        }
    }
}

pub use pmd::tsc::cycles;
