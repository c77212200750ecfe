//! Per-PMD-thread counters: busy and idle cycles, packets, cycles per packet, and
//! the traffic of each port as this thread saw it.
//!
//! A PMD thread is the only writer of its own `PmdStats` (plain relaxed stores, no
//! read-modify-write); the control plane reads them and sums ports over threads.

use pmd::Traffic;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One port's [`Traffic`] as a PMD thread last published it.
#[derive(Default)]
pub struct PublishedTraffic([AtomicU64; 5]);

impl PublishedTraffic {
    /// Stores `t` (only the owning PMD thread calls this).
    pub fn publish(&self, t: &Traffic) {
        let v = [
            t.rx_packets,
            t.rx_bytes,
            t.tx_packets,
            t.tx_bytes,
            t.tx_flood,
        ];
        for (c, v) in self.0.iter().zip(v) {
            c.store(v, Relaxed);
        }
    }
    pub fn read(&self) -> Traffic {
        let v = self.0.each_ref().map(|c| c.load(Relaxed));
        Traffic {
            rx_packets: v[0],
            rx_bytes: v[1],
            tx_packets: v[2],
            tx_bytes: v[3],
            tx_flood: v[4],
        }
    }
}

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
    /// Per port (by port number): what this thread received and sent on it.
    pub traffic: Box<[PublishedTraffic]>,
}

impl PmdStats {
    pub fn new(ports: usize) -> PmdStats {
        PmdStats {
            traffic: (0..ports).map(|_| PublishedTraffic::default()).collect(),
            ..PmdStats::default()
        }
    }
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
