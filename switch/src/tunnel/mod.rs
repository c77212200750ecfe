//! VXLAN tunnel ports: one port per VNI on an underlay NIC port, with head-end
//! replication to remote endpoints and a MAC → endpoint table learned from what
//! comes out of the tunnel, as Linux's vxlan device and OVS's userspace tunnels.
//!
//! [`header`] puts on and takes off the outer headers, [`neigh`] resolves next hops
//! with ARP, [`underlay`] is the NIC port that holds the endpoint's IP. A
//! [`VxlanPort`] is a switch port like any other: the switch learns inner MACs on it
//! and floods to it; inside, the port knows which remote endpoint each MAC is behind
//! (its own table, learned at decapsulation, aged as the switch's) and sends unicast
//! to that one, and broadcast, multicast and unknown unicast to every endpoint of its
//! flood list (the configured remotes; Linux's all-zero FDB entries).
//!
//! Each VNI is its own port, so its own learning domain in the switch; a port's VLAN
//! mode maps the VNI to a VLAN of the switch (an access port with `tag = N`) when the
//! VNI should share a domain with other ports.

pub mod header;
pub mod neigh;
pub mod underlay;

use crate::fdb::{Fdb, Learned, Mac};
use header::{encap, outer_ip_len, Outer, OVERHEAD};
use neigh::Lookup;
use pmd::port::{PortStats, Traffic, TxLane, BURST};
use pmd::rcu::Rcu;
use pmd::{Mbuf, Mempool, MempoolCache, Port};
use rtrb::{Consumer, Producer, RingBuffer};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::sync::Mutex;
use underlay::{AttachError, UnderlayPort};

/// Remote endpoints one tunnel knows at most (configured and learned).
pub const MAX_REMOTES: usize = 256;
/// Inner MACs one tunnel's table holds at most.
const MAC_CAPACITY: usize = 8192;
/// Seconds an inner MAC stays bound to its endpoint unseen: Linux's vxlan default.
pub const DEFAULT_AGING_SECS: u32 = 300;
/// Decapsulated frames waiting for the tunnel port's rx burst, at most.
const RX_QUEUE: usize = 1024;

/// A tunnel port's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    pub name: String,
    pub vni: u32,
    pub dst_port: u16,
    /// The flood list: where broadcast, multicast and unknown unicast go.
    pub remotes: Vec<Ipv4Addr>,
    /// Whether frames from endpoints not in `remotes` are taken (and their endpoint
    /// learned), as Linux's vxlan device does; else dropped and counted.
    pub learn_remotes: bool,
    /// Seconds an inner MAC stays bound to its endpoint unseen.
    pub aging_secs: u32,
}

/// What a tunnel counts of its own.
#[derive(Default)]
pub struct TunnelStats {
    /// Frames from an endpoint not in the list (and `learn_remotes` off).
    pub drop_unknown_remote: AtomicU64,
    /// Frames not sent because the next hop's MAC was not known yet (an ARP request
    /// went out), or the neighbour table was full.
    pub drop_neigh: AtomicU64,
    /// Frames not sent: no route to the endpoint (off-link, no gateway).
    pub drop_no_route: AtomicU64,
    /// Decapsulated frames dropped: the tunnel port's queue was full.
    pub drop_rx_full: AtomicU64,
    /// Encapsulated frames longer than the underlay's MTU allows.
    pub drop_underlay_mtu: AtomicU64,
    /// Frames sent to one endpoint (known unicast) and to the flood list.
    pub tx_unicast: AtomicU64,
    pub tx_flooded: AtomicU64,
}

/// The remote endpoints: a fixed table of addresses (0: free), each marked whether
/// it is on the flood list. Written by the control plane and by the PMD thread that
/// decapsulates (learned endpoints), read by any PMD thread.
struct Remotes {
    ips: Box<[AtomicU32]>,
    flood: Box<[AtomicBool]>,
}

impl Remotes {
    fn new() -> Remotes {
        Remotes {
            ips: (0..MAX_REMOTES).map(|_| AtomicU32::new(0)).collect(),
            flood: (0..MAX_REMOTES).map(|_| AtomicBool::new(false)).collect(),
        }
    }
    #[inline]
    fn ip(&self, i: usize) -> Option<Ipv4Addr> {
        match self.ips[i].load(Acquire) {
            0 => None,
            v => Some(Ipv4Addr::from(v)),
        }
    }
    #[inline]
    fn index_of(&self, ip: Ipv4Addr) -> Option<usize> {
        let v = u32::from(ip);
        if v == 0 {
            return None; // a free slot's mark, never an endpoint
        }
        self.ips.iter().position(|s| s.load(Acquire) == v)
    }
    /// The index of `ip`, added if it was not there; `None` when the table is full.
    fn add(&self, ip: Ipv4Addr, flood: bool) -> Option<usize> {
        let v = u32::from(ip);
        if v == 0 {
            return None;
        }
        for (i, s) in self.ips.iter().enumerate() {
            match s.compare_exchange(0, v, AcqRel, Acquire) {
                Ok(_) => {
                    // `fetch_or`: a control plane adding the same endpoint to the
                    // flood list at this moment keeps its mark.
                    self.flood[i].fetch_or(flood, AcqRel);
                    return Some(i);
                }
                Err(cur) if cur == v => {
                    if flood {
                        self.flood[i].store(true, Release);
                    }
                    return Some(i);
                }
                Err(_) => {}
            }
        }
        None
    }
    /// Takes `ip` off the flood list (its slot stays: MACs may still point at it).
    fn unflood(&self, ip: Ipv4Addr) -> bool {
        match self.index_of(ip) {
            Some(i) => self.flood[i].swap(false, AcqRel),
            None => false,
        }
    }
    fn flood_list(&self) -> impl Iterator<Item = (usize, Ipv4Addr)> + '_ {
        (0..MAX_REMOTES).filter_map(|i| {
            let ip = self.ip(i)?;
            self.flood[i].load(Acquire).then_some((i, ip))
        })
    }
}

/// One underlay rx queue's ring into a tunnel.
struct Staging {
    tx: Mutex<Producer<Mbuf>>,
    rx: Mutex<Consumer<Mbuf>>,
}

impl Staging {
    fn new() -> Staging {
        let (tx, rx) = RingBuffer::new(RX_QUEUE);
        Staging {
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
        }
    }
}

/// A tunnel's state shared by its port and its underlay.
pub struct Tunnel {
    pub vni: u32,
    pub dst_port: u16,
    learn_remotes: bool,
    remotes: Remotes,
    /// Inner MAC → endpoint index (the table's "port").
    macs: Fdb,
    /// Decapsulated frames for the port's rx burst: one single-producer,
    /// single-consumer ring per underlay rx queue (the PMD thread polling that queue
    /// pushes, the one polling this port pops; wait-free, unlike a multi-producer
    /// queue whose pop can spin on a preempted pusher). The locks are only ever taken
    /// by those threads (`try_lock`: never waited on).
    rxq: Box<[Staging]>,
    epoch: std::time::Instant,
    /// The last second the MAC table was aged.
    aged: AtomicU32,
    pub stats: TunnelStats,
}

impl Tunnel {
    #[inline]
    fn now_secs(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// A decapsulated frame from endpoint `src`: its source MAC learned, queued for
    /// the port's rx burst. Called by the PMD thread polling the underlay.
    fn receive(&self, m: Mbuf, src: Ipv4Addr, q: usize, cache: &mut MempoolCache) {
        // `header::classify` made sure the inner frame holds an Ethernet header.
        let ep = match self.remotes.index_of(src) {
            Some(i) => i,
            None if self.learn_remotes => match self.remotes.add(src, false) {
                Some(i) => i,
                None => return self.refuse(m, src, cache),
            },
            None => return self.refuse(m, src, cache),
        };
        let smac = Mac::from_slice(&m.data()[6..12]);
        if !smac.is_multicast() {
            let learned = self.macs.learn(smac, 0, ep as u16, self.now_secs());
            if learned == Learned::Moved || learned == Learned::New {
                tracing::debug!(vni = self.vni, mac = %smac, remote = %src, "tunnel: learned");
            }
        }
        let pushed = match self.rxq.get(q).map(|s| s.tx.try_lock()) {
            Some(Ok(mut p)) => p.push(m).map_err(|rtrb::PushError::Full(m)| m),
            _ => Err(m),
        };
        if let Err(m) = pushed {
            PortStats::add(&self.stats.drop_rx_full, 1);
            cache.free(m);
        }
    }

    #[cold]
    fn refuse(&self, m: Mbuf, src: Ipv4Addr, cache: &mut MempoolCache) {
        let n = self.stats.drop_unknown_remote.fetch_add(1, Relaxed);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(vni = self.vni, remote = %src, dropped = n + 1,
                "tunnel: frame from an endpoint not in the remote list dropped");
        }
        cache.free(m);
    }

    /// A control plane's (EVPN's) view of the tunnel: `ip` joins the flood list.
    /// False if the endpoint table is full.
    pub fn flood_add(&self, ip: Ipv4Addr) -> bool {
        self.remotes.add(ip, true).is_some()
    }

    /// `ip` leaves the flood list.
    pub fn flood_remove(&self, ip: Ipv4Addr) -> bool {
        self.remotes.unflood(ip)
    }

    /// The flood list.
    pub fn flood_list(&self) -> Vec<Ipv4Addr> {
        self.remotes.flood_list().map(|(_, ip)| ip).collect()
    }

    /// `mac` is behind endpoint `ip` (learned now, so kept for the table's aging time
    /// unless set again). False if the endpoint or MAC table is full.
    pub fn set_remote_mac(&self, mac: Mac, ip: Ipv4Addr) -> bool {
        let Some(i) = self.remotes.add(ip, false) else {
            return false;
        };
        self.macs.learn(mac, 0, i as u16, self.now_secs()) != Learned::Refused
    }

    /// Forgets where `mac` is (then frames to it are flooded).
    pub fn remove_remote_mac(&self, mac: Mac) -> bool {
        self.macs.forget(mac, 0)
    }

    /// The MAC table: (MAC, endpoint), for `ctl show`.
    pub fn remote_macs(&self) -> Vec<(Mac, Ipv4Addr)> {
        self.macs
            .entries(self.now_secs())
            .into_iter()
            .filter_map(|e| Some((e.mac, self.remotes.ip(e.port as usize)?)))
            .collect()
    }

    /// The endpoints a frame to `dst` goes to: its own if learned, else the flood list.
    #[inline]
    fn unicast_endpoint(&self, dst: &[u8]) -> Option<Ipv4Addr> {
        let mac = Mac::from_slice(dst);
        if mac.is_multicast() {
            return None;
        }
        let i = self.macs.lookup(mac, 0)? as usize;
        self.remotes.ip(i)
    }
}

/// A VXLAN port: see the module's documentation.
pub struct VxlanPort {
    name: String,
    tun: Arc<Tunnel>,
    underlay: Arc<UnderlayPort>,
    pool: Arc<Mempool>,
    rcu: Arc<Rcu>,
    stats: PortStats,
}

impl VxlanPort {
    /// Joins the underlay with the tunnel `cfg` describes.
    pub fn open(
        cfg: &TunnelConfig,
        underlay: Arc<UnderlayPort>,
        pool: Arc<Mempool>,
        rcu: Arc<Rcu>,
    ) -> Result<VxlanPort, AttachError> {
        let remotes = Remotes::new();
        for &r in &cfg.remotes {
            remotes.add(r, true);
        }
        let tun = Arc::new(Tunnel {
            vni: cfg.vni,
            dst_port: cfg.dst_port,
            learn_remotes: cfg.learn_remotes,
            remotes,
            macs: Fdb::new(MAC_CAPACITY, MAX_REMOTES, MAC_CAPACITY, cfg.aging_secs),
            rxq: (0..underlay.rx_queues().max(1))
                .map(|_| Staging::new())
                .collect(),
            epoch: std::time::Instant::now(),
            aged: AtomicU32::new(0),
            stats: TunnelStats::default(),
        });
        underlay.attach(tun.clone())?;
        Ok(VxlanPort {
            name: cfg.name.clone(),
            tun,
            underlay,
            pool,
            rcu,
            stats: PortStats::default(),
        })
    }

    /// The tunnel's shared state (its remotes and MAC table), for the control plane.
    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tun
    }

    /// Encapsulates `m` to `remote` into `out` (or drops it, counted). `ask` is set to
    /// the next hop to ask for when the cache says so.
    #[inline]
    fn encap_to(
        &self,
        mut m: Mbuf,
        remote: Ipv4Addr,
        now: u64,
        cache: &mut MempoolCache,
    ) -> Option<Mbuf> {
        let ul = &self.underlay;
        let ep = ul.endpoint();
        let Some(nh) = ep.next_hop(remote) else {
            PortStats::add(&self.tun.stats.drop_no_route, 1);
            cache.free(m);
            return None;
        };
        let dst_mac = match ul.neigh.lookup(nh, now) {
            Lookup::Resolved { mac, ask } => {
                if ask {
                    ul.ask(nh, cache);
                }
                mac
            }
            Lookup::Unresolved { ask } => {
                if ask {
                    ul.ask(nh, cache);
                }
                PortStats::add(&self.tun.stats.drop_neigh, 1);
                cache.free(m);
                return None;
            }
            Lookup::Full => {
                PortStats::add(&self.tun.stats.drop_neigh, 1);
                cache.free(m);
                return None;
            }
        };
        let o = Outer {
            src_mac: ep.mac,
            dst_mac,
            src_ip: ep.ip,
            dst_ip: remote,
            dst_port: self.tun.dst_port,
            vni: self.tun.vni,
        };
        match encap(&mut m, &o) {
            Ok(()) => Some(m),
            Err(e) => {
                tracing::debug!(port = %self.name, "tunnel: {e}");
                PortStats::add(&self.stats.drop_oversize, 1);
                cache.free(m);
                None
            }
        }
    }

    /// One frame from the switch into `out` as one or more encapsulated frames.
    #[inline]
    fn one(&self, m: Mbuf, now: u64, cache: &mut MempoolCache, out: &mut Out) {
        if outer_ip_len(m.len()) > out.mtu {
            PortStats::add(&self.tun.stats.drop_underlay_mtu, 1);
            PortStats::add(&self.stats.drop_mtu, 1);
            return cache.free(m);
        }
        if let Some(remote) = self.tun.unicast_endpoint(&m.data()[..6]) {
            if let Some(e) = self.encap_to(m, remote, now, cache) {
                self.push(e, cache, out);
                PortStats::add(&self.tun.stats.tx_unicast, 1);
            }
            return;
        }
        self.flood(m, now, cache, out);
    }

    /// Head-end replication: a copy to each endpoint of the flood list.
    fn flood(&self, m: Mbuf, now: u64, cache: &mut MempoolCache, out: &mut Out) {
        let mut last = None;
        for (_, ip) in self.tun.remotes.flood_list() {
            if let Some(prev) = last.replace(ip) {
                let Some(c) = cache.copy_of(&m) else {
                    PortStats::add(&self.stats.drop_no_mbuf, 1);
                    continue;
                };
                if let Some(e) = self.encap_to(c, prev, now, cache) {
                    self.push(e, cache, out);
                }
            }
        }
        match last {
            Some(ip) => {
                if let Some(e) = self.encap_to(m, ip, now, cache) {
                    self.push(e, cache, out);
                }
                PortStats::add(&self.tun.stats.tx_flooded, 1);
            }
            None => {
                // Nowhere to send it: no remote endpoint configured.
                PortStats::add(&self.tun.stats.drop_no_route, 1);
                cache.free(m)
            }
        }
    }

    /// Adds an encapsulated frame to the burst, sending the burst first when full.
    #[inline]
    fn push(&self, e: Mbuf, cache: &mut MempoolCache, out: &mut Out) {
        if out.n == BURST {
            self.send(cache, out);
        }
        out.lens[out.n] = (e.len() - OVERHEAD) as u16;
        out.buf[out.n] = Some(e);
        out.n += 1;
    }

    /// Sends the burst on the underlay; what it refuses is dropped, counted. Counts
    /// what went in the port's traffic (frames and inner bytes, each copy of a flood).
    fn send(&self, cache: &mut MempoolCache, out: &mut Out) {
        let n = std::mem::take(&mut out.n);
        if n == 0 {
            return;
        }
        let sent = self.underlay.send(out.lane, cache, &mut out.buf[..n]);
        out.tr.tx_packets += sent as u64;
        for m in out.buf[sent..n].iter_mut().filter_map(Option::take) {
            PortStats::add(&self.stats.drop_tx_full, 1);
            cache.free(m);
        }
        out.tr.tx_bytes += out.sent_bytes(sent);
    }
}

/// A burst of encapsulated frames being built for the underlay.
struct Out<'a> {
    lane: &'a TxLane,
    tr: &'a mut Traffic,
    /// The underlay's MTU, read once per burst.
    mtu: usize,
    buf: underlay::Burst,
    n: usize,
    /// Inner bytes of the frames in `buf`, front to back, as they were added.
    lens: [u16; BURST],
}

impl Out<'_> {
    fn sent_bytes(&self, sent: usize) -> u64 {
        self.lens[..sent].iter().map(|&l| l as u64).sum()
    }
}

impl Port for VxlanPort {
    fn name(&self) -> &str {
        &self.name
    }
    fn rx_queues(&self) -> usize {
        1
    }
    fn rx_burst(
        &self,
        _q: usize,
        _cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let mut n = 0;
        for s in self.tun.rxq.iter() {
            let Ok(mut c) = s.rx.try_lock() else { continue };
            while n < out.len() {
                let Ok(m) = c.pop() else { break };
                tr.rx_bytes += m.len() as u64;
                // A partial inner checksum from an af-packet underlay: the PMD loop
                // runs its egress step for bursts that count one.
                tr.rx_offload += m.has_offload() as u64;
                out[n] = Some(m);
                n += 1;
            }
        }
        tr.rx_packets += n as u64;
        n
    }
    /// Takes every frame of `pkts`: encapsulated frames the underlay's tx ring
    /// refuses are dropped and counted in `drop_tx_full` (they cannot be handed back
    /// as they were given).
    fn tx_burst(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        if !self.underlay.nic_up() {
            return 0;
        }
        let now = self.underlay.now();
        let mut out = Out {
            lane,
            tr,
            mtu: self.underlay.underlay_mtu() as usize,
            buf: Default::default(),
            n: 0,
            lens: [0; BURST],
        };
        for slot in pkts.iter_mut() {
            let Some(m) = slot.take() else { break };
            self.one(m, now, cache, &mut out);
        }
        self.send(cache, &mut out);
        pkts.len()
    }
    fn is_up(&self) -> bool {
        self.underlay.nic_up()
    }
    fn stats(&self) -> &PortStats {
        &self.stats
    }
    fn describe(&self) -> String {
        let remotes: Vec<String> = self
            .tun
            .remotes
            .flood_list()
            .map(|(_, ip)| ip.to_string())
            .collect();
        let mut macs = self.tun.remote_macs();
        macs.sort();
        let mut shown: Vec<String> = macs
            .iter()
            .take(16)
            .map(|(m, ip)| format!("{m}={ip}"))
            .collect();
        if macs.len() > 16 {
            shown.push(format!("+{}", macs.len() - 16));
        }
        format!(
            "vxlan vni={} underlay={} dst_port={} remotes=[{}] macs=[{}] mtu={}",
            self.tun.vni,
            self.underlay.name(),
            self.tun.dst_port,
            remotes.join(" "),
            shown.join(" "),
            self.underlay.underlay_mtu().saturating_sub(OVERHEAD as u16)
        )
    }
    /// The underlay's MTU, not 50 less: the exact limit (an encapsulated frame within
    /// the underlay's MTU) is checked per frame in `tx_burst` and counted as this
    /// port's `drop_mtu`. Reporting the smaller MTU would make the ports' MTUs differ
    /// and turn the switch's per-frame MTU step on for every port's traffic.
    fn mtu(&self) -> u16 {
        self.underlay.underlay_mtu()
    }
    fn driver(&self) -> &'static str {
        "vxlan"
    }
    fn gauges(&self) -> Vec<(&'static str, u64)> {
        let s = &self.tun.stats;
        let l = |c: &AtomicU64| c.load(Relaxed);
        vec![
            ("vni", self.tun.vni as u64),
            ("remote_macs", self.tun.macs.len() as u64),
            ("tx_unicast", l(&s.tx_unicast)),
            ("tx_flooded", l(&s.tx_flooded)),
            ("drop_unknown_remote", l(&s.drop_unknown_remote)),
            ("drop_neigh", l(&s.drop_neigh)),
            ("drop_no_route", l(&s.drop_no_route)),
            ("drop_rx_full", l(&s.drop_rx_full)),
            ("drop_underlay_mtu", l(&s.drop_underlay_mtu)),
        ]
    }
    fn wants_service(&self) -> bool {
        true
    }
    /// Ages the MAC → endpoint table, once a second, by whichever PMD thread comes
    /// first.
    fn service(&self, _lane: &TxLane, _cache: &mut MempoolCache, _tr: &mut Traffic) -> usize {
        let now = self.tun.now_secs();
        let last = self.tun.aged.load(Relaxed);
        if now != last
            && self
                .tun
                .aged
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.tun.macs.age(now);
        }
        0
    }
}

impl Drop for VxlanPort {
    /// Leaves the underlay; once no PMD thread can still be queueing frames for this
    /// tunnel (a grace period), frees what is queued.
    fn drop(&mut self) {
        self.underlay.detach(&self.tun);
        self.rcu.synchronize();
        for s in self.tun.rxq.iter() {
            let mut c = s.rx.lock().unwrap_or_else(|e| e.into_inner());
            while let Ok(m) = c.pop() {
                self.pool.free(m);
            }
        }
    }
}
