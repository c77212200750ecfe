//! The burst rx/tx interface every port driver implements, and per-port counters.

use crate::mempool::{Mbuf, MempoolCache};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};

/// Most packets moved by one rx or tx burst.
pub const BURST: usize = 32;

/// A switch port: a set of rx queues polled by PMD threads and tx queues they send on.
///
/// `rx_burst` on one queue is only ever called by the one PMD thread that queue is
/// assigned to; `tx_burst` may be called by any PMD thread (drivers serialise tx on a
/// queue among PMD threads themselves, unless [`TxFrom::only_pmd`] says there is one).
/// Neither blocks on the control plane. Both count what they move in the caller's
/// [`Traffic`], plain integers the PMD thread owns: no atomic read-modify-write on the
/// data path.
pub trait Port: Send + Sync {
    fn name(&self) -> &str;
    /// Number of rx queues (each can be assigned to a PMD thread).
    fn rx_queues(&self) -> usize;
    /// Receives up to `out.len()` packets from queue `q` into `out`, returns how many.
    /// A zero-length `out` only completes work left from earlier bursts (interrupts
    /// owed to the peer), which a PMD thread does while backpressure keeps it from
    /// receiving.
    fn rx_burst(
        &self,
        q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize;
    /// Sends packets from the front of `pkts` on a tx queue picked from `from.pmd`;
    /// returns how many were sent (the driver now owns them, and frees them into
    /// `cache`); the rest stay with the caller.
    fn tx_burst(
        &self,
        from: TxFrom,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize;
    /// Whether the port can carry traffic now (a guest is attached and its rings are live).
    fn is_up(&self) -> bool;
    fn stats(&self) -> &PortStats;
    /// One line describing the port's state for `vswitch ctl show`.
    fn describe(&self) -> String;
}

/// The PMD thread calling `tx_burst`.
#[derive(Clone, Copy, Debug)]
pub struct TxFrom {
    /// Its index: picks the tx queue.
    pub pmd: usize,
    /// It is the switch's only PMD thread, so no other thread transmits: no tx lock.
    pub only_pmd: bool,
}

/// Traffic counters one PMD thread keeps for one port, as plain integers; it
/// publishes them to the control plane now and then (see `switch::stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames flooded out of this port (broadcast, multicast, unknown unicast).
    pub tx_flood: u64,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_flood += o.tx_flood;
    }
}

/// A test-and-set spin lock guarding one tx queue among PMD threads; taken only when
/// more than one PMD thread exists (a locked instruction drains the store buffer, so
/// an uncontended lock still costs a wait for every store to guest memory before it).
pub(crate) struct TxLock(AtomicBool);

impl TxLock {
    pub fn new() -> TxLock {
        TxLock(AtomicBool::new(false))
    }
    #[inline]
    pub fn lock(&self, from: TxFrom) -> TxGuard<'_> {
        if from.only_pmd {
            return TxGuard(None);
        }
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        TxGuard(Some(self))
    }
}

pub(crate) struct TxGuard<'a>(Option<&'a TxLock>);

impl Drop for TxGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(l) = self.0 {
            l.0.store(false, Ordering::Release);
        }
    }
}

/// Counters of one port that are not [`Traffic`]: drops and errors, rare events
/// counted with relaxed atomics by whichever thread sees them, read by the control plane.
#[derive(Default)]
pub struct PortStats {
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
    /// (name, value) pairs in a stable order, for printing, with the port's traffic
    /// (summed over PMD threads) first.
    pub fn snapshot(&self, t: &Traffic) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets", t.rx_packets),
            ("rx_bytes", t.rx_bytes),
            ("tx_packets", t.tx_packets),
            ("tx_bytes", t.tx_bytes),
            ("tx_flood", t.tx_flood),
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
