//! The burst rx/tx interface every port driver implements, and per-port counters.

use crate::mempool::{Mbuf, MempoolCache};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Most packets moved by one rx or tx burst.
pub const BURST: usize = 32;

/// A switch port: a set of rx queues polled by PMD threads and tx queues they send on.
///
/// `rx_burst` on one queue is only ever called by the one PMD thread that queue is
/// assigned to; `tx_burst` may be called by any PMD thread (drivers serialise tx on a
/// queue among PMD threads themselves). Neither blocks on the control plane.
pub trait Port: Send + Sync {
    fn name(&self) -> &str;
    /// Number of rx queues (each can be assigned to a PMD thread).
    fn rx_queues(&self) -> usize;
    /// Receives up to `out.len()` packets from queue `q` into `out`, returns how many.
    fn rx_burst(&self, q: usize, cache: &mut MempoolCache, out: &mut [Option<Mbuf>]) -> usize;
    /// Sends packets from the front of `pkts` on a tx queue picked from `txq_hint`;
    /// returns how many were sent (the driver now owns them, and frees them into
    /// `cache`); the rest stay with the caller.
    fn tx_burst(
        &self,
        txq_hint: usize,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
    ) -> usize;
    /// Whether the port can carry traffic now (a guest is attached and its rings are live).
    fn is_up(&self) -> bool;
    fn stats(&self) -> &PortStats;
    /// One line describing the port's state for `vswitch ctl show`.
    fn describe(&self) -> String;
}

/// Counters of one port. Written by PMD threads with relaxed atomics (each counter
/// has one writer per PMD thread), read by the control plane.
#[derive(Default)]
pub struct PortStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames flooded out of this port (broadcast, multicast, unknown unicast).
    pub tx_flood: AtomicU64,
    /// Dropped because the guest rx ring stayed full past the retry budget.
    pub drop_tx_full: AtomicU64,
    /// Dropped because the port was down (no guest or rings not live).
    pub drop_tx_down: AtomicU64,
    /// Received frames dropped because they were larger than an mbuf, or the guest's
    /// rx buffer was too small without mergeable buffers.
    pub drop_oversize: AtomicU64,
    /// Dropped because the mbuf pool was empty.
    pub drop_no_mbuf: AtomicU64,
    /// Frames whose destination was learned on the port they came from.
    pub drop_hairpin: AtomicU64,
    /// Frames too short to be Ethernet.
    pub drop_runt: AtomicU64,
    /// Source MACs not learned because the table or this port's share of it was full.
    pub learn_refused: AtomicU64,
    /// Queues marked broken because the guest broke the virtio rules.
    pub guest_errors: AtomicU64,
}

impl PortStats {
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Relaxed);
        }
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
    /// (name, value) pairs in a stable order, for printing.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets", Self::get(&self.rx_packets)),
            ("rx_bytes", Self::get(&self.rx_bytes)),
            ("tx_packets", Self::get(&self.tx_packets)),
            ("tx_bytes", Self::get(&self.tx_bytes)),
            ("tx_flood", Self::get(&self.tx_flood)),
            ("drop_tx_full", Self::get(&self.drop_tx_full)),
            ("drop_tx_down", Self::get(&self.drop_tx_down)),
            ("drop_oversize", Self::get(&self.drop_oversize)),
            ("drop_no_mbuf", Self::get(&self.drop_no_mbuf)),
            ("drop_hairpin", Self::get(&self.drop_hairpin)),
            ("drop_runt", Self::get(&self.drop_runt)),
            ("learn_refused", Self::get(&self.learn_refused)),
            ("guest_errors", Self::get(&self.guest_errors)),
        ]
    }
}
