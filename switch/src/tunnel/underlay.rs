//! An underlay: a NIC port of the switch that is also a VXLAN tunnel endpoint, as
//! OVS-DPDK's `br-phy` with the endpoint IP on it.
//!
//! It wraps the NIC port and is the port the switch sees. Its rx burst sorts what
//! the NIC received: VXLAN frames to the endpoint's IP go, decapsulated, to the tunnel
//! port of their VNI (a lock-free queue the tunnel's rx burst empties); ARP for the
//! endpoint's IP is answered, and ARP from next hops feeds the neighbour cache;
//! everything else is the NIC port's own traffic, switched as before. Frames this
//! port sends of its own (ARP) wait in an outbox that the next tx burst on the NIC, or
//! a PMD thread's housekeeping ([`Port::service`]), sends.
//!
//! Routing is static and in the config: the endpoint's prefix is on-link, everything
//! else goes to the gateway (OVS mirrors the kernel's table instead; one prefix and a
//! gateway is what a VTEP on a leaf switch's subnet needs, and it cannot drift from
//! what the switch was told).

use super::header::{self, BadOuter, Underlay as Kind};
use super::neigh::{parse_arp, write_arp, Arp, ArpOp, NeighCache};
use super::Tunnel;
use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use pmd::idle::Wake;
use pmd::port::{PortStats, Traffic, TxLane, BURST};
use pmd::{Mbuf, Mempool, MempoolCache, Port};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// Next hops one underlay resolves at most: every remote a tunnel may have, and the
/// gateway.
const NEIGH_SLOTS: usize = super::MAX_REMOTES + 1;
/// How long a next hop's MAC is good for after it was last heard from, and how often
/// an unresolved one is asked for (Linux's base reachable time is 30 s).
const NEIGH_MAX_AGE_NS: u64 = 60_000_000_000;
const NEIGH_RETRY_NS: u64 = 1_000_000_000;
/// ARP frames waiting to be sent, at most.
const OUTBOX: usize = 256;

/// The endpoint an underlay port holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's address and its on-link prefix length.
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Where endpoints outside the prefix are reached.
    pub gateway: Option<Ipv4Addr>,
    /// The NIC's MAC: the source of encapsulated frames and ARP.
    pub mac: [u8; 6],
}

impl Endpoint {
    /// The next hop towards `remote`: itself when on-link, else the gateway.
    #[inline]
    pub fn next_hop(&self, remote: Ipv4Addr) -> Option<Ipv4Addr> {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        if u32::from(remote) & mask == u32::from(self.ip) & mask {
            Some(remote)
        } else {
            self.gateway
        }
    }
}

/// What an underlay counts of its own (beside the NIC port's counters).
#[derive(Default)]
pub struct UnderlayStats {
    pub arp_replies: AtomicU64,
    pub arp_requests: AtomicU64,
    /// Frames to the endpoint that are not valid VXLAN (fragments, bad lengths or
    /// checksum, no I flag).
    pub drop_bad_outer: AtomicU64,
    /// VXLAN frames for a VNI (or UDP port) no tunnel port has.
    pub drop_unknown_vni: AtomicU64,
    /// ARP frames not sent: the outbox or the NIC's tx ring was full, or no mbuf.
    pub drop_arp: AtomicU64,
}

/// The tunnels on one underlay, and their UDP ports, swapped whole when a tunnel port
/// comes or goes.
#[derive(Default)]
struct Tunnels {
    list: Vec<Arc<Tunnel>>,
    ports: Vec<u16>,
}

/// A NIC port that is a tunnel endpoint. See the module's documentation.
pub struct UnderlayPort {
    inner: Arc<dyn Port>,
    ep: Endpoint,
    tunnels: ArcSwap<Tunnels>,
    pub(crate) neigh: NeighCache,
    outbox: ArrayQueue<Mbuf>,
    pool: Arc<Mempool>,
    epoch: Instant,
    pub(crate) stats: UnderlayStats,
}

/// Why a tunnel could not join an underlay.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    /// Another tunnel port of this underlay has this VNI and UDP port.
    Taken { vni: u32, dst_port: u16 },
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Taken { vni, dst_port } => write!(
                f,
                "the underlay already has a tunnel port for VNI {vni} on UDP port {dst_port}"
            ),
        }
    }
}

impl UnderlayPort {
    pub fn new(inner: Arc<dyn Port>, ep: Endpoint, pool: Arc<Mempool>) -> UnderlayPort {
        UnderlayPort {
            inner,
            ep,
            tunnels: ArcSwap::from_pointee(Tunnels::default()),
            neigh: NeighCache::new(NEIGH_SLOTS, NEIGH_MAX_AGE_NS, NEIGH_RETRY_NS),
            outbox: ArrayQueue::new(OUTBOX),
            pool,
            epoch: Instant::now(),
            stats: UnderlayStats::default(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// Nanoseconds since the underlay was made: the neighbour cache's clock.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn attach(&self, t: Arc<Tunnel>) -> Result<(), AttachError> {
        let cur = self.tunnels.load();
        if cur
            .list
            .iter()
            .any(|o| o.vni == t.vni && o.dst_port == t.dst_port)
        {
            return Err(AttachError::Taken {
                vni: t.vni,
                dst_port: t.dst_port,
            });
        }
        let mut list = cur.list.clone();
        list.push(t);
        self.publish(list);
        Ok(())
    }

    pub(crate) fn detach(&self, t: &Arc<Tunnel>) {
        let list = self
            .tunnels
            .load()
            .list
            .iter()
            .filter(|o| !Arc::ptr_eq(o, t))
            .cloned()
            .collect();
        self.publish(list);
    }

    fn publish(&self, list: Vec<Arc<Tunnel>>) {
        let mut ports: Vec<u16> = list.iter().map(|t| t.dst_port).collect();
        ports.sort_unstable();
        ports.dedup();
        self.tunnels.store(Arc::new(Tunnels { list, ports }));
    }

    /// The NIC's MTU: what encapsulated frames must fit.
    pub fn underlay_mtu(&self) -> u16 {
        self.inner.mtu()
    }

    /// Whether the NIC can send now.
    pub fn nic_up(&self) -> bool {
        self.inner.is_up()
    }

    /// Sends encapsulated frames from the front of `pkts` on the NIC (ARP waiting in
    /// the outbox first); returns how many of `pkts` went.
    #[inline]
    pub(crate) fn send(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
    ) -> usize {
        let mut tr = Traffic::default();
        self.send_outbox(lane, cache);
        self.inner.tx_burst(lane, cache, pkts, &mut tr)
    }

    /// Asks for next hop `ip` (an ARP request, queued in the outbox).
    #[cold]
    pub(crate) fn ask(&self, ip: Ipv4Addr, cache: &mut MempoolCache) {
        let a = Arp {
            op: ArpOp::Request,
            sender_mac: self.ep.mac,
            sender_ip: self.ep.ip,
            target_mac: [0; 6],
            target_ip: ip,
        };
        if self.queue_arp(&a, cache) {
            PortStats::add(&self.stats.arp_requests, 1);
        }
    }

    /// Writes `a` into a new buffer and queues it; false (counted) if it could not.
    fn queue_arp(&self, a: &Arp, cache: &mut MempoolCache) -> bool {
        let Some(mut m) = cache.alloc() else {
            PortStats::add(&self.stats.drop_arp, 1);
            return false;
        };
        let b = m.set_len(60);
        b.fill(0);
        write_arp(a, b);
        match self.outbox.push(m) {
            Ok(()) => true,
            Err(m) => {
                cache.free(m);
                PortStats::add(&self.stats.drop_arp, 1);
                false
            }
        }
    }

    #[inline]
    fn send_outbox(&self, lane: &TxLane, cache: &mut MempoolCache) -> usize {
        if self.outbox.is_empty() {
            return 0;
        }
        self.flush_outbox(lane, cache)
    }

    #[cold]
    fn flush_outbox(&self, lane: &TxLane, cache: &mut MempoolCache) -> usize {
        let mut b: [Option<Mbuf>; 8] = Default::default();
        let mut n = 0;
        while n < b.len() {
            match self.outbox.pop() {
                Some(m) => {
                    b[n] = Some(m);
                    n += 1;
                }
                None => break,
            }
        }
        let mut tr = Traffic::default();
        let sent = self.inner.tx_burst(lane, cache, &mut b[..n], &mut tr);
        for m in b[sent..n].iter_mut().filter_map(Option::take) {
            cache.free(m);
            PortStats::add(&self.stats.drop_arp, 1);
        }
        sent
    }

    /// One ARP frame from the NIC: learned from if its sender is a next hop, answered
    /// if it asks for the endpoint. Returns the frame if it is not for the endpoint
    /// (the NIC port's traffic then).
    fn arp(&self, m: Mbuf, cache: &mut MempoolCache) -> Option<Mbuf> {
        let Some(a) = parse_arp(m.data()) else {
            return Some(m);
        };
        self.neigh.learn(a.sender_ip, a.sender_mac, self.now());
        if a.target_ip != self.ep.ip {
            return Some(m);
        }
        if a.op == ArpOp::Request {
            let reply = Arp {
                op: ArpOp::Reply,
                sender_mac: self.ep.mac,
                sender_ip: self.ep.ip,
                target_mac: a.sender_mac,
                target_ip: a.sender_ip,
            };
            if self.queue_arp(&reply, cache) {
                PortStats::add(&self.stats.arp_replies, 1);
            }
        }
        cache.free(m);
        None
    }

    /// One VXLAN frame to the endpoint: to its tunnel, decapsulated.
    fn decap(&self, mut m: Mbuf, q: usize, t: &Tunnels, k: Kind, cache: &mut MempoolCache) {
        let Kind::Tunnel {
            vni,
            dst_port,
            src_ip,
            inner,
            end,
        } = k
        else {
            unreachable!("decap of a frame that is not a tunnel's")
        };
        let Some(tun) = t
            .list
            .iter()
            .find(|t| t.vni == vni && t.dst_port == dst_port)
        else {
            PortStats::add(&self.stats.drop_unknown_vni, 1);
            return cache.free(m);
        };
        if let Some(mut h) = m.offload() {
            // An af-packet underlay's metadata: a partial checksum of the outer UDP
            // header does not concern the inner frame (cleared); one inside the inner
            // frame moves with it. A segmented outer frame (UDP tunnel GSO) cannot be
            // taken apart here: dropped, counted.
            if h.gso_type != 0 {
                PortStats::add(&self.stats.drop_bad_outer, 1);
                return cache.free(m);
            }
            if h.csum_start as usize >= inner + 14 {
                h.csum_start -= inner as u16;
                m.set_offload(h);
            } else {
                m.clear_offload();
            }
        }
        m.set_len(end);
        m.trim_front(inner);
        tun.receive(m, src_ip, q, cache);
    }
}

impl Port for UnderlayPort {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn rx_queues(&self) -> usize {
        self.inner.rx_queues()
    }
    /// The NIC's burst, less the frames that were the endpoint's (tunnel frames, ARP
    /// for it): those are not counted as the NIC port's traffic.
    fn rx_burst(
        &self,
        q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let n = self.inner.rx_burst(q, cache, out, tr);
        if n == 0 {
            return 0;
        }
        let tunnels = self.tunnels.load();
        let mut keep = 0;
        for i in 0..n {
            let m = out[i].take().expect("rx_burst filled it");
            let len = m.len() as u64;
            let rest = match header::classify(m.data(), self.ep.ip, &tunnels.ports) {
                Kind::Other => Some(m),
                Kind::Arp => self.arp(m, cache),
                k @ Kind::Tunnel { .. } => {
                    self.decap(m, q, &tunnels, k, cache);
                    None
                }
                Kind::Bad(why) => {
                    bad_outer(why);
                    PortStats::add(&self.stats.drop_bad_outer, 1);
                    cache.free(m);
                    None
                }
            };
            match rest {
                Some(m) => {
                    out[keep] = Some(m);
                    keep += 1;
                }
                None => {
                    tr.rx_packets -= 1;
                    tr.rx_bytes -= len;
                }
            }
        }
        keep
    }
    fn tx_burst(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        self.send_outbox(lane, cache);
        self.inner.tx_burst(lane, cache, pkts, tr)
    }
    fn tx_burst_offload(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        self.send_outbox(lane, cache);
        self.inner.tx_burst_offload(lane, cache, pkts, tr)
    }
    fn settle(&self, q: usize) {
        self.inner.settle(q)
    }
    fn is_up(&self) -> bool {
        self.inner.is_up()
    }
    fn stats(&self) -> &PortStats {
        self.inner.stats()
    }
    fn describe(&self) -> String {
        let ep = &self.ep;
        let gw = ep
            .gateway
            .map_or(String::new(), |g| format!(" gateway={g}"));
        let neigh: Vec<String> = self
            .neigh
            .entries(self.now())
            .into_iter()
            .map(|(ip, mac)| match mac {
                Some(m) => format!("{ip}={}", crate::fdb::Mac(m)),
                None => format!("{ip}=?"),
            })
            .collect();
        format!(
            "{} tunnel_ip={}/{}{gw} tunnels={} neighbours=[{}]",
            self.inner.describe(),
            ep.ip,
            ep.prefix,
            self.tunnels.load().list.len(),
            neigh.join(" ")
        )
    }
    fn mtu(&self) -> u16 {
        self.inner.mtu()
    }
    fn tx_offloads(&self) -> pmd::offload::Caps {
        self.inner.tx_offloads()
    }
    fn arm_wake(&self, q: usize) -> Wake {
        self.inner.arm_wake(q)
    }
    fn disarm_wake(&self, q: usize, ready: bool) {
        self.inner.disarm_wake(q, ready)
    }
    fn driver(&self) -> &'static str {
        self.inner.driver()
    }
    fn gauges(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let mut g = self.inner.gauges();
        g.extend([
            ("arp_replies", s.arp_replies.load(Relaxed)),
            ("arp_requests", s.arp_requests.load(Relaxed)),
            ("drop_bad_outer", s.drop_bad_outer.load(Relaxed)),
            ("drop_unknown_vni", s.drop_unknown_vni.load(Relaxed)),
            ("drop_arp", s.drop_arp.load(Relaxed)),
        ]);
        g
    }
    fn wants_service(&self) -> bool {
        true
    }
    fn service(&self, lane: &TxLane, cache: &mut MempoolCache, _tr: &mut Traffic) -> usize {
        self.send_outbox(lane, cache)
    }
    fn is_underlay(&self) -> bool {
        true
    }
}

impl Drop for UnderlayPort {
    fn drop(&mut self) {
        while let Some(m) = self.outbox.pop() {
            self.pool.free(m);
        }
    }
}

/// Logs (rate-limited by the caller's counter being the real record) why an outer
/// header was refused, at debug level.
#[cold]
fn bad_outer(why: BadOuter) {
    tracing::debug!(?why, "underlay: frame to the endpoint dropped");
}

/// A burst's worth of frames, for tunnel ports that build encapsulated bursts.
pub(crate) type Burst = [Option<Mbuf>; BURST];
