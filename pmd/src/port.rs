//! The burst rx/tx interface every port driver implements, and per-port counters.

use crate::mempool::{Mbuf, MempoolCache};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};

/// Most packets moved by one rx or tx burst.
pub const BURST: usize = 32;

/// A port's MTU unless configured (or read from its interface), as OVS and Linux.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU a port may have (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// The largest MTU a port may have: jumbo frames of 9000 bytes of IP, as OVS-DPDK's
/// usual ceiling.
pub const MAX_MTU: u16 = 9000;

/// The longest frame a port of MTU `mtu` sends or receives: the Ethernet header and
/// room for one VLAN tag on top of the MTU (OVS's `MTU_TO_FRAME_LEN`, with the 4 bytes
/// it counts as CRC). An access port pushes a tag onto a full-size frame, so a frame
/// within this limit at ingress stays within it at egress.
#[inline]
pub const fn max_frame(mtu: u16) -> usize {
    mtu as usize + 14 + 4
}

/// A switch port: a set of rx queues polled by PMD threads and tx queues they send on.
///
/// `rx_burst` on one queue is only ever called by the one PMD thread that queue is
/// assigned to; `tx_burst` may be called by any PMD thread (drivers serialise tx on a
/// queue among PMD threads themselves, unless the [`TxLane`] is the only one).
/// Neither blocks on the control plane. Both count what they move in the caller's
/// [`Traffic`], plain integers the PMD thread owns: no atomic read-modify-write on the
/// data path.
pub trait Port: Send + Sync {
    fn name(&self) -> &str;
    /// Number of rx queues (each can be assigned to a PMD thread).
    fn rx_queues(&self) -> usize;
    /// Receives up to `out.len()` packets from queue `q` into `out`, returns how many.
    fn rx_burst(
        &self,
        q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize;
    /// Sends packets from the front of `pkts` on a tx queue picked from `lane.pmd()`;
    /// returns how many were sent (the driver now owns them, and frees them into
    /// `cache`); the rest stay with the caller.
    fn tx_burst(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize;
    /// `tx_burst` for a burst that may hold frames with offload metadata (the switch
    /// only hands a port such frames when `tx_offloads` covers them). A driver that
    /// reads the metadata only here keeps its plain path free of the test.
    fn tx_burst_offload(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        self.tx_burst(lane, cache, pkts, tr)
    }
    /// Completes what earlier bursts on rx queue `q` left owed (a vhost-user guest's
    /// interrupt), without receiving: a PMD thread calls it for queues that
    /// backpressure keeps it from polling. Same caller rule as `rx_burst`.
    fn settle(&self, _q: usize) {}
    /// Whether the port can carry traffic now (a guest is attached and its rings are live).
    fn is_up(&self) -> bool;
    fn stats(&self) -> &PortStats;
    /// One line describing the port's state for `vswitch ctl show`.
    fn describe(&self) -> String;
    /// The port's MTU: frames longer than [`max_frame`] of it are dropped at its rx
    /// (by the driver) and before its tx (by the switch), and counted in `drop_mtu`.
    fn mtu(&self) -> u16 {
        DEFAULT_MTU
    }
    /// The offloads this port takes on frames it sends (as its peer negotiated them,
    /// so it may change while the port runs): frames asking for more get the
    /// switch's software fallback first.
    fn tx_offloads(&self) -> crate::offload::Caps {
        crate::offload::Caps::NONE
    }
    /// Before the PMD thread polling rx queue `q` sleeps (see [`crate::idle`]): what
    /// ends its sleep when the queue has frames. A port whose queue must be told to
    /// signal (a vhost-user ring asks its guest for kicks) does so here, and undoes it
    /// in `disarm_wake`, which follows every `Wake::Fd`. Same caller rule as `rx_burst`.
    fn arm_wake(&self, _q: usize) -> crate::idle::Wake {
        crate::idle::Wake::Timeout
    }
    /// After the sleep: the queue back to plain polling; `ready`: its fd was readable.
    fn disarm_wake(&self, _q: usize, _ready: bool) {}
    /// Whether the port has work of its own beyond moving the switch's frames (an
    /// underlay answering ARP, a tunnel aging its table): then every PMD thread calls
    /// [`Port::service`] at its housekeeping point, every few dozen iterations and
    /// after each sleep. Asked once, when the port joins the switch.
    fn wants_service(&self) -> bool {
        false
    }
    /// The port's own work (see `wants_service`); may transmit on `lane`. Called by
    /// any PMD thread, concurrently; returns the frames it sent.
    fn service(&self, _lane: &TxLane, _cache: &mut MempoolCache, _tr: &mut Traffic) -> usize {
        0
    }
    /// Whether the port is a tunnel underlay (its stations are the underlay
    /// network's, not the overlay's).
    fn is_underlay(&self) -> bool {
        false
    }
    /// The driver's name as in the configuration (`"vhost-user"`, `"af-xdp"`, ...).
    fn driver(&self) -> &'static str;
    /// Numbers about the port's state beyond its counters, for metrics and JSON:
    /// (name, value), e.g. `("connections", 2)`. None by default.
    fn gauges(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A PMD thread's right to transmit: its index picks the tx queue, and when it is the
/// process's only transmitter, tx takes no lock. Made only by [`TxLane::for_pmds`], for
/// all PMD threads at once; a lane is `Send` (it moves into its thread) but neither
/// `Sync` nor `Clone`, so one thread at a time uses it, and while a sole lane exists no
/// other lane can be made.
pub struct TxLane {
    pmd: usize,
    sole: bool,
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

/// Lanes alive in this process, and whether one of them is a sole lane.
static LANES: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

impl TxLane {
    /// One lane per PMD thread. With one PMD thread and no other lane alive, that lane
    /// is sole. Panics if a sole lane is alive (its holder takes no lock).
    pub fn for_pmds(n: usize) -> Vec<TxLane> {
        let mut g = LANES.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            !g.1,
            "a sole transmit lane is alive: no other lane may be made"
        );
        let sole = n == 1 && g.0 == 0;
        g.0 += n;
        g.1 = sole;
        (0..n)
            .map(|pmd| TxLane {
                pmd,
                sole,
                _not_sync: std::marker::PhantomData,
            })
            .collect()
    }
    /// The PMD thread's index.
    pub fn pmd(&self) -> usize {
        self.pmd
    }
    /// Whether this is the process's only transmitter.
    pub fn is_sole(&self) -> bool {
        self.sole
    }
}

impl Drop for TxLane {
    fn drop(&mut self) {
        let mut g = LANES.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if self.sole {
            g.1 = false;
        }
    }
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
    /// Frames received asking for checksum or segmentation offload (carrying
    /// offload metadata). A driver that attaches metadata counts it here: the PMD
    /// thread reads this to know that a burst needs the egress step.
    pub rx_offload: u64,
    /// Segments made in software for this port from TSO frames it cannot take.
    pub tx_segments: u64,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_flood += o.tx_flood;
        self.rx_offload += o.rx_offload;
        self.tx_segments += o.tx_segments;
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
    pub fn lock(&self, lane: &TxLane) -> TxGuard<'_> {
        if lane.sole {
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
    /// Frames longer than the port's MTU allows, at its rx or before its tx.
    pub drop_mtu: AtomicU64,
    /// Frames whose offload request could not be carried out (a header that does not
    /// match the frame, an unsupported type): at the rx of the port that sent them, or
    /// before the tx of the port they were for.
    pub drop_offload: AtomicU64,
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
    /// Frames the port's VLAN mode refused: received in a VLAN it does not carry (or
    /// tagged on an access port), or unicast to it in such a VLAN.
    pub drop_vlan: AtomicU64,
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
            ("rx_offload", t.rx_offload),
            ("tx_segments", t.tx_segments),
            ("drop_tx_full", Self::get(&self.drop_tx_full)),
            ("drop_tx_down", Self::get(&self.drop_tx_down)),
            ("drop_oversize", Self::get(&self.drop_oversize)),
            ("drop_mtu", Self::get(&self.drop_mtu)),
            ("drop_offload", Self::get(&self.drop_offload)),
            ("drop_no_mbuf", Self::get(&self.drop_no_mbuf)),
            ("drop_hairpin", Self::get(&self.drop_hairpin)),
            ("drop_runt", Self::get(&self.drop_runt)),
            ("learn_refused", Self::get(&self.learn_refused)),
            ("guest_errors", Self::get(&self.guest_errors)),
            ("drop_vlan", Self::get(&self.drop_vlan)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::TxLane;

    // One test: lanes are process-wide state.
    #[test]
    fn a_lane_is_sole_only_when_it_is_the_only_one() {
        let two = TxLane::for_pmds(2);
        assert!(two.iter().all(|l| !l.is_sole()));
        assert_eq!(two.iter().map(|l| l.pmd()).collect::<Vec<_>>(), [0, 1]);
        let one = TxLane::for_pmds(1);
        assert!(!one[0].is_sole(), "other lanes are alive: it must lock");
        drop(two);
        drop(one);
        let sole = TxLane::for_pmds(1);
        assert!(sole[0].is_sole());
        let more = std::panic::catch_unwind(|| TxLane::for_pmds(1));
        assert!(more.is_err(), "no lane may be made beside a sole one");
        drop(sole);
        assert!(!TxLane::for_pmds(2)[0].is_sole());
        assert!(TxLane::for_pmds(1)[0].is_sole());
    }
}
