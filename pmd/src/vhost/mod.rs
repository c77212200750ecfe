//! vhost-user ports: a guest's virtio-net device whose rings this process polls.
//!
//! The control side ([`protocol`]) runs one thread per port that speaks the
//! vhost-user protocol (as server or client) and turns the frontend's messages into
//! validated [`virtq::LiveRing`]s. The data side is [`VhostUserPort`]'s
//! [`Port`](crate::port::Port) implementation, called by PMD threads.
//!
//! Hand-over between the two is lock-free for the PMD: each virtqueue has a slot
//! with a `live` flag. The control thread clears the flag, waits out a grace period
//! ([`crate::rcu`]), and only then changes or drops the ring (and unmaps memory).

pub mod driver;
pub mod log;
pub mod mem;
pub mod notify;
pub mod packed;
pub mod protocol;
pub mod ring;
pub mod virtq;

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod tests;

use crate::mempool::{Mbuf, MempoolCache};
use crate::port::{Port, PortStats, Traffic, TxLane, TxLock};
use crate::ratelimit::RateLimit;
use crate::rcu::Rcu;
use notify::{Notifier, NotifierThread};
use ring::Ring;
use std::cell::UnsafeCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Who listens on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The switch listens; QEMU connects (QEMU `-chardev socket,path=...` without server).
    Server,
    /// The switch connects, and reconnects when the peer goes away and comes back.
    Client,
}

#[derive(Clone, Debug)]
pub struct VhostConfig {
    pub name: String,
    pub path: PathBuf,
    pub mode: Mode,
    /// Queue pairs offered to the guest.
    pub queues: usize,
    /// Most bytes of guest memory the frontend may have this port map.
    pub max_memory: u64,
    /// Group and mode of a server-mode socket (unused in client mode).
    pub socket_perms: crate::sockperm::SocketPerms,
    /// The port's MTU: longer frames from the guest are dropped (`drop_mtu`), and a
    /// frontend's `NET_SET_MTU` above it is refused.
    pub mtu: u16,
}

/// Where a virtqueue is, in one place.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingState {
    /// No ring, or one being changed by the control thread.
    Down = 0,
    /// PMD threads may use the ring.
    Live = 1,
    /// The guest broke a rule (the ring, if any, is kept until the control thread takes
    /// it down; PMD threads no longer touch it).
    Broken = 2,
}

impl RingState {
    fn from_u8(v: u8) -> RingState {
        match v {
            1 => RingState::Live,
            2 => RingState::Broken,
            _ => RingState::Down,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            RingState::Down => "down",
            RingState::Live => "live",
            RingState::Broken => "broken",
        }
    }
}

/// One virtqueue as PMD threads see it.
pub struct VringSlot {
    /// A [`RingState`]. PMD threads use `ring` only while it is `Live`; the control
    /// thread sets it `Down` and waits a grace period before it changes or drops the
    /// ring; a PMD thread that finds the guest broke a rule moves it `Live` → `Broken`.
    state: AtomicU8,
    /// Serialises tx among PMD threads (never taken by the control thread; not taken by
    /// a sole PMD thread, see `TxLane`).
    tx_lock: TxLock,
    ring: UnsafeCell<Option<Ring>>,
    /// The ring in `ring` marks what it writes in a dirty log (control thread's note,
    /// for `ctl show`).
    pub logging: AtomicBool,
    /// The ring in `ring` is a packed one (control thread's note, for `ctl show`).
    pub packed: AtomicBool,
}

// SAFETY: access to `ring` follows the protocol above: the control thread only after
// setting the state to Down and a grace period; a PMD thread only while it is Live, for
// rx queues only the one PMD the queue is assigned to, for tx queues only under
// `tx_lock` (or by the only PMD thread).
unsafe impl Sync for VringSlot {}

impl VringSlot {
    fn new() -> VringSlot {
        VringSlot {
            state: AtomicU8::new(RingState::Down as u8),
            tx_lock: TxLock::new(),
            ring: UnsafeCell::new(None),
            logging: AtomicBool::new(false),
            packed: AtomicBool::new(false),
        }
    }
    pub fn state(&self) -> RingState {
        RingState::from_u8(self.state.load(Ordering::SeqCst))
    }
    /// Live (not down, not broken).
    #[inline]
    pub fn usable(&self) -> bool {
        self.state.load(Ordering::SeqCst) == RingState::Live as u8
    }
    /// Sets the state, returning the one before (control thread).
    fn set(&self, s: RingState) -> RingState {
        RingState::from_u8(self.state.swap(s as u8, Ordering::SeqCst))
    }
    /// Live → Broken; false if it was not live (the control thread took it down).
    fn mark_broken(&self) -> bool {
        self.state
            .compare_exchange(
                RingState::Live as u8,
                RingState::Broken as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

/// State shared by a port's control thread and the PMD threads.
pub struct Shared {
    pub cfg: VhostConfig,
    pub rcu: Arc<Rcu>,
    /// Virtqueues: 2*q is queue pair q's guest-rx ring (our tx), 2*q+1 its guest-tx ring (our rx).
    pub vrings: Box<[VringSlot]>,
    pub stats: PortStats,
    pub connected: AtomicBool,
    /// Connected and some receive ring usable: kept by whoever changes either, so the
    /// data path reads one flag.
    up: AtomicBool,
    pub connections: AtomicU64,
    pub stop: AtomicBool,
    /// Delivers the guest's interrupts (PMD threads never write to guest fds).
    pub notifier: Arc<Notifier>,
    /// Guest errors and refused requests logged per window.
    pub log_limit: RateLimit,
    /// Connections and disconnections logged per window.
    pub conn_log_limit: RateLimit,
    /// Dropped frames logged per window.
    pub drop_log_limit: RateLimit,
    /// The offloads the connected guest takes in received frames (`offload::Caps`
    /// bits, from its `GUEST_*` features): what the switch may hand it as it is.
    pub tx_caps: AtomicU8,
    /// A guest announcement to send (`SEND_RARP` after a live migration): its MAC in
    /// the low 48 bits and [`RARP_PENDING`]; 0 when none. Taken by the PMD thread
    /// polling rx queue 0, which injects the frame as if the guest had sent it.
    rarp: AtomicU64,
    /// Announcements injected.
    pub rarp_sent: AtomicU64,
    /// `VHOST_F_LOG_ALL` is negotiated: the guest is being migrated away.
    pub logging: AtomicBool,
    /// The dirty log area, for `ctl show` and metrics (the control plane's copy).
    pub dirty_log: std::sync::Mutex<Option<Arc<log::DirtyLog>>>,
}

/// Marks `Shared::rarp` as holding an announcement.
const RARP_PENDING: u64 = 1 << 48;

impl Shared {
    /// Records the offloads the guest negotiated (control thread, on SET_FEATURES and
    /// when the connection ends).
    pub fn set_tx_caps(&self, c: crate::offload::Caps) {
        self.tx_caps.store(c.bits(), Ordering::Relaxed);
    }

    /// SEND_RARP: the guest, now running behind this port, is to be announced with
    /// the MAC in the first 6 bytes of the 8-byte payload (QEMU copies it there).
    pub fn announce(&self, payload: u64) {
        let b = payload.to_le_bytes();
        let mac = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
        tracing::info!(port = %self.cfg.name, mac = %format_mac(mac), "announcing a migrated guest (RARP)");
        self.rarp.store(mac | RARP_PENDING, Ordering::Release);
    }

    /// Rings that mark the pages they write in a dirty log now.
    pub fn logging_rings(&self) -> usize {
        self.vrings
            .iter()
            .filter(|v| v.logging.load(Ordering::Relaxed))
            .count()
    }

    /// Recomputes `up` after a ring or the connection changed. A PMD thread marking a
    /// ring broken can race with the control thread doing this; the stale value then
    /// lasts until the next change, during which tx finds no usable ring and the
    /// port's frames are dropped after `tx_stall` like any stuck guest's (bounded).
    pub fn update_up(&self) {
        let up = self.connected.load(Ordering::SeqCst)
            && self.vrings.iter().step_by(2).any(|v| v.usable());
        self.up.store(up, Ordering::SeqCst);
    }
}

/// A vhost-user port.
pub struct VhostUserPort {
    shared: Arc<Shared>,
    /// The control thread (only the control plane touches this lock).
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The interrupt thread, stopped after the control thread.
    irq_thread: std::sync::Mutex<Option<NotifierThread>>,
}

impl VhostUserPort {
    /// Opens the port: binds (server) or starts connecting (client) at once and
    /// starts its control thread. Errors if a server socket cannot be bound.
    pub fn open(cfg: VhostConfig, rcu: Arc<Rcu>) -> Result<VhostUserPort, String> {
        let queues = cfg.queues.max(1);
        let notifier = Notifier::new(&cfg.name, 2 * queues);
        let irq_thread = NotifierThread::spawn(notifier.clone())
            .map_err(|e| format!("port {}: interrupt thread: {e}", cfg.name))?;
        let shared = Arc::new(Shared {
            vrings: (0..2 * queues).map(|_| VringSlot::new()).collect(),
            cfg: VhostConfig { queues, ..cfg },
            rcu,
            stats: PortStats::default(),
            connected: AtomicBool::new(false),
            up: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            notifier,
            log_limit: RateLimit::new(),
            conn_log_limit: RateLimit::new(),
            drop_log_limit: RateLimit::new(),
            tx_caps: AtomicU8::new(0),
            rarp: AtomicU64::new(0),
            rarp_sent: AtomicU64::new(0),
            logging: AtomicBool::new(false),
            dirty_log: std::sync::Mutex::new(None),
        });
        let thread = protocol::spawn(shared.clone())?;
        Ok(VhostUserPort {
            shared,
            thread: std::sync::Mutex::new(Some(thread)),
            irq_thread: std::sync::Mutex::new(Some(irq_thread)),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Tells the control thread to stop, without waiting for it (see [`Self::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the control thread: rings are taken down, the connection closed and a
    /// server socket removed.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
        drop(
            self.irq_thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    /// Sends frames on the PMD's queue pair (`OL`: the burst may hold frames with
    /// offload metadata, whose virtio-net header goes to the guest).
    #[inline(always)]
    fn send<const OL: bool>(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let nq = self.shared.cfg.queues;
        // The PMD's queue pair, or the next usable one: the guest may use fewer queue
        // pairs than offered, or have broken one.
        let first = lane.pmd() % nq;
        let Some(q) = (0..nq)
            .map(|k| (first + k) % nq)
            .find(|&q| self.shared.vrings[2 * q].usable())
        else {
            return 0;
        };
        let idx = 2 * q;
        let slot = &self.shared.vrings[idx];
        let _g = slot.tx_lock.lock(lane);
        // SAFETY: live is set and tx_lock is held (or this is the only PMD thread): no
        // other thread touches this ring.
        let Some(ring) = (unsafe { &mut *slot.ring.get() }) else {
            return 0;
        };
        let mut too_big = 0u64;
        let n = if OL {
            ring.enqueue_offload(pkts, cache, &mut tr.tx_bytes, &mut too_big)
        } else {
            ring.enqueue(pkts, cache, &mut tr.tx_bytes, &mut too_big)
        };
        tr.tx_packets += n as u64 - too_big;
        if too_big != 0 {
            PortStats::add(&self.shared.stats.drop_oversize, too_big);
        }
        if let Some(e) = ring.error() {
            self.report(slot, idx, e);
        }
        n
    }

    /// Receives the pending announcement (see [`Shared::announce`]) as the guest's
    /// own frame: a RARP request from its MAC, as QEMU and DPDK build it.
    #[cold]
    #[inline(never)]
    fn inject_rarp(
        &self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        if out.is_empty() {
            return 0;
        }
        let Some(mut m) = cache.alloc() else {
            return 0; // it stays pending for the next poll
        };
        let v = self.shared.rarp.swap(0, Ordering::Acquire);
        let frame = rarp_frame(v.to_be_bytes()[2..8].try_into().unwrap());
        m.set_len(frame.len()).copy_from_slice(&frame);
        tr.rx_packets += 1;
        tr.rx_bytes += frame.len() as u64;
        self.shared.rarp_sent.fetch_add(1, Ordering::Relaxed);
        out[0] = Some(m);
        1
    }

    /// Counts the frames a dequeue dropped, and logs MTU drops (rate-limited): a
    /// guest whose MTU is larger than its port's is a configuration error to see.
    #[cold]
    #[inline(never)]
    fn count_drops(&self, d: virtq::RxCounts) {
        let s = &self.shared;
        PortStats::add(&s.stats.drop_oversize, d.oversize);
        PortStats::add(&s.stats.drop_mtu, d.mtu);
        PortStats::add(&s.stats.drop_no_mbuf, d.no_mbuf);
        PortStats::add(&s.stats.drop_offload, d.bad_offload);
        if d.mtu != 0 {
            if let Some(suppressed) = s.drop_log_limit.allow() {
                tracing::warn!(port = %s.cfg.name, mtu = s.cfg.mtu, frames = d.mtu, suppressed,
                    "guest sent frames longer than the port's MTU allows; dropped");
            }
        }
    }

    #[cold]
    fn report(&self, slot: &VringSlot, idx: usize, e: virtq::GuestError) {
        if slot.mark_broken() {
            PortStats::add(&self.shared.stats.guest_errors, 1);
            if let Some(suppressed) = self.shared.log_limit.allow() {
                tracing::error!(port = %self.shared.cfg.name, vring = idx, suppressed, "guest error, queue stopped: {e}");
            }
            self.shared.update_up();
        }
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Port for VhostUserPort {
    fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    fn rx_queues(&self) -> usize {
        self.shared.cfg.queues
    }

    #[inline]
    fn rx_burst(
        &self,
        q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        if q == 0 && self.shared.rarp.load(Ordering::Relaxed) != 0 {
            return self.inject_rarp(cache, out, tr);
        }
        let idx = 2 * q + 1;
        let Some(slot) = self.shared.vrings.get(idx) else {
            return 0;
        };
        if !slot.usable() {
            return 0;
        }
        // SAFETY: live is set and this queue is polled by exactly one PMD thread (the
        // scheduler assigns each rx queue once), so this is the only access.
        let Some(ring) = (unsafe { &mut *slot.ring.get() }) else {
            return 0;
        };
        let mut drops = virtq::RxCounts::default();
        let n = ring.dequeue(cache, out, &mut drops, &mut tr.rx_bytes);
        tr.rx_packets += n as u64;
        tr.rx_offload += std::mem::take(&mut drops.offload);
        if drops != virtq::RxCounts::default() {
            self.count_drops(drops);
        }
        if let Some(e) = ring.error() {
            self.report(slot, idx, e);
        }
        n
    }

    #[inline]
    fn tx_burst(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        self.send::<false>(lane, cache, pkts, tr)
    }

    fn tx_burst_offload(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        self.send::<true>(lane, cache, pkts, tr)
    }

    fn tx_offloads(&self) -> crate::offload::Caps {
        crate::offload::Caps::from_bits(self.shared.tx_caps.load(Ordering::Relaxed))
    }

    fn settle(&self, q: usize) {
        let Some(slot) = self.shared.vrings.get(2 * q + 1) else {
            return;
        };
        if !slot.usable() {
            return;
        }
        // SAFETY: as in rx_burst: live is set and only this queue's PMD thread calls this.
        if let Some(ring) = unsafe { &mut *slot.ring.get() } {
            if ring.error().is_none() {
                ring.settle();
            }
        }
    }

    fn arm_wake(&self, q: usize) -> crate::idle::Wake {
        let Some(slot) = self.shared.vrings.get(2 * q + 1) else {
            return crate::idle::Wake::Timeout;
        };
        if !slot.usable() {
            return crate::idle::Wake::Timeout;
        }
        // SAFETY: as in rx_burst: live is set and only this queue's PMD thread calls this.
        match unsafe { &mut *slot.ring.get() } {
            Some(ring) if ring.error().is_none() => ring.arm_kick(),
            _ => crate::idle::Wake::Timeout,
        }
    }

    fn disarm_wake(&self, q: usize, ready: bool) {
        let Some(slot) = self.shared.vrings.get(2 * q + 1) else {
            return;
        };
        // A ring taken down meanwhile waits for this thread's next quiescent point
        // before it is changed: it is not touched.
        if !slot.usable() {
            return;
        }
        // SAFETY: as in rx_burst: live is set and only this queue's PMD thread calls this.
        if let Some(ring) = unsafe { &mut *slot.ring.get() } {
            ring.disarm_kick(ready);
        }
    }

    fn is_up(&self) -> bool {
        // Up while the guest has a receive ring we can deliver to (kept in one flag).
        self.shared.up.load(Ordering::Relaxed)
    }

    fn stats(&self) -> &PortStats {
        &self.shared.stats
    }

    fn driver(&self) -> &'static str {
        "vhost-user"
    }

    fn mtu(&self) -> u16 {
        self.shared.cfg.mtu
    }

    fn gauges(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared;
        let count = |st: RingState| s.vrings.iter().filter(|v| v.state() == st).count() as u64;
        vec![
            ("connected", s.connected.load(Ordering::Relaxed) as u64),
            ("connections", s.connections.load(Ordering::Relaxed)),
            ("vrings_live", count(RingState::Live)),
            ("vrings_down", count(RingState::Down)),
            ("vrings_broken", count(RingState::Broken)),
            ("irq_sent", s.notifier.sent.load(Ordering::Relaxed)),
            ("irq_dropped", s.notifier.dropped.load(Ordering::Relaxed)),
            ("dirty_logging", s.logging.load(Ordering::Relaxed) as u64),
            ("dirty_log_rings", s.logging_rings() as u64),
            (
                "dirty_log_outside",
                s.dirty_log
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map_or(0, |l| l.outside()),
            ),
            ("rarp_sent", s.rarp_sent.load(Ordering::Relaxed)),
        ]
    }

    fn describe(&self) -> String {
        let s = &self.shared;
        let rings: Vec<String> = s
            .vrings
            .iter()
            .map(|v| v.state().name().to_string())
            .collect();
        format!(
            "driver=vhost-user mode={} path={} queues={} mtu={} connected={} connections={} vrings=[{}] layout={} irq_sent={} irq_dropped={} dirty_log={} rarp_sent={}",
            match s.cfg.mode {
                Mode::Server => "server",
                Mode::Client => "client",
            },
            s.cfg.path.display(),
            s.cfg.queues,
            s.cfg.mtu,
            s.connected.load(Ordering::Relaxed),
            s.connections.load(Ordering::Relaxed),
            rings.join(","),
            if s.vrings.iter().any(|v| v.packed.load(Ordering::Relaxed)) {
                "packed"
            } else {
                "split"
            },
            s.notifier.sent.load(Ordering::Relaxed),
            s.notifier.dropped.load(Ordering::Relaxed),
            s.logging_rings(),
            s.rarp_sent.load(Ordering::Relaxed),
        )
    }
}

/// A MAC in the low 48 bits of `v`, as text.
fn format_mac(v: u64) -> String {
    let b = v.to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

/// The frame that announces a station after it moved (RFC 903 reverse request, as
/// QEMU's `announce_self` and DPDK's `make_rarp_packet` send it): broadcast from
/// `mac`, asking for `mac`'s address, padded to the 60-byte minimum.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes()); // ETH_P_RARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}
