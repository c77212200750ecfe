//! Per-PMD-thread counters: busy and idle cycles, packets, cycles per packet, and
//! the traffic of each port as this thread saw it.
//!
//! A PMD thread is the only writer of its own `PmdStats` (plain relaxed stores, no
//! read-modify-write); the control plane reads them and sums ports over threads.

use pmd::Traffic;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One port's [`Traffic`] as a PMD thread last published it.
#[derive(Default)]
pub struct PublishedTraffic([AtomicU64; 7]);

impl PublishedTraffic {
    /// Stores `t` (only the owning PMD thread calls this).
    pub fn publish(&self, t: &Traffic) {
        let v = [
            t.rx_packets,
            t.rx_bytes,
            t.tx_packets,
            t.tx_bytes,
            t.tx_flood,
            t.rx_offload,
            t.tx_segments,
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
            rx_offload: v[5],
            tx_segments: v[6],
        }
    }
}

/// Buckets of a burst-size histogram: sizes 0 to 31, and 32 or more.
pub const BURST_BUCKETS: usize = 33;

/// How many rx polls (or tx flushes) moved 0, 1, ... 31, 32 or more frames, as a PMD
/// thread last published it: a closed loop settles in small or large batches, and
/// this shows which.
pub struct BurstSizes([AtomicU64; BURST_BUCKETS]);

impl Default for BurstSizes {
    fn default() -> BurstSizes {
        BurstSizes(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl BurstSizes {
    /// Stores `counts` (only the owning PMD thread calls this).
    pub fn publish(&self, counts: &[u64; BURST_BUCKETS]) {
        for (c, &v) in self.0.iter().zip(counts) {
            c.store(v, Relaxed);
        }
    }
    pub fn read(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// `counts` (a burst-size histogram) as `mean=M zero=Z% 1=N 2=N ... 32+=N`, the
/// mean over the non-empty ones, the buckets that are not 0.
pub fn describe_bursts(counts: &[u64]) -> String {
    let zero = counts.first().copied().unwrap_or(0);
    let (n, frames) = counts
        .iter()
        .enumerate()
        .skip(1)
        .fold((0u64, 0u64), |(n, f), (k, &c)| (n + c, f + k as u64 * c));
    let all = n + zero;
    let mut s = format!(
        "mean={:.1} zero={:.1}%",
        if n == 0 {
            0.0
        } else {
            frames as f64 / n as f64
        },
        if all == 0 {
            0.0
        } else {
            100.0 * zero as f64 / all as f64
        }
    );
    for (k, &c) in counts.iter().enumerate().skip(1).filter(|(_, &c)| c > 0) {
        let last = if k == BURST_BUCKETS - 1 { "+" } else { "" };
        s += &format!(" {k}{last}={c}");
    }
    s
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
    /// Waits of an idle thread (`switch.pmd_sleep_max_us`), those a port ended (frames
    /// came), and the cycles they took (counted in `idle_cycles` too).
    pub sleeps: AtomicU64,
    pub sleep_wakes: AtomicU64,
    pub sleep_cycles: AtomicU64,
    /// Per port (by port number): what this thread received and sent on it.
    pub traffic: Box<[PublishedTraffic]>,
    /// Frames per rx poll (0: an empty poll).
    pub rx_bursts: BurstSizes,
    /// Frames per tx burst to a port (0: its ring took none).
    pub tx_bursts: BurstSizes,
    /// Cycles per loop step (builds with the `step-cycles` feature).
    pub steps: crate::steps::StepCycles,
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
