//! AF_XDP ports: the kernel-bypass driver for Linux interfaces.
//!
//! Each rx/tx queue pair of the interface gets an AF_XDP socket. Every socket registers
//! the switch's whole mbuf pool as its UMEM (in unaligned-chunk mode, one chunk per
//! mbuf slot), so the NIC (zero-copy) or the kernel (copy mode) writes each frame
//! straight into an mbuf, and mbufs from any port are sent without a copy in userspace.
//!
//! Ownership of buffers: an mbuf put on the fill ring or the tx ring is *lent* to the
//! kernel ([`Mempool::lend`]); it comes back from the rx ring or the completion ring
//! ([`Mempool::reclaim`]). Each queue keeps a flag per pool slot saying which buffers
//! the kernel holds, so that when the port closes they all go back to the pool.
//!
//! The XDP program ([`super::bpf`]) is attached through a bpf link owned by the port:
//! dropping the port, or the process dying in any way, detaches it. Promiscuous mode is
//! held the same way ([`super::Promisc`]).

use super::{bpf, kick_tx, os_err, setsockopt, socket, wake_rx, NicError, Promisc, RingMap};
use crate::mempool::{Mbuf, Mempool, MempoolCache};
use crate::port::{Port, PortStats, Traffic, TxLane, TxLock};
use crate::prefetch;
use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

/// Which XDP hook to attach to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native if the driver has it, generic otherwise.
    Auto,
    Native,
    Generic,
}

/// Whether the sockets bind in zero-copy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Zero-copy where the driver supports it, copy mode otherwise.
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug)]
pub struct XdpConfig {
    pub name: String,
    pub iface: String,
    pub queues: usize,
    pub xdp_mode: XdpMode,
    pub zero_copy: ZeroCopy,
}

/// Ring sizes (entries). The fill ring is kept full, so each queue lends this many
/// mbufs to the kernel for receiving.
/// Where the kernel puts a received frame in its chunk (XDP_PACKET_HEADROOM).
const XDP_HEADROOM: usize = 256;
/// The longest frame one UMEM chunk (an mbuf slot) holds after the kernel's headroom.
pub const MAX_FRAME: usize = crate::mempool::BUF_SIZE - XDP_HEADROOM;
const FILL_SIZE: u32 = 2048;
const RX_SIZE: u32 = 2048;
const TX_SIZE: u32 = 1024;
const COMP_SIZE: u32 = 2048;
/// The fill ring is topped up once this many slots are free; on a busy poll, its
/// free slots are read only once this many frames were received since the last
/// top-up (see `rx_burst`).
const REFILL_BATCH: u32 = 32;
/// How long a bind keeps retrying a queue that is busy (see `open_queue`).
const BIND_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// Bits of an unaligned-mode address that hold the chunk's base.
const ADDR_MASK: u64 = (1 << 48) - 1;

/// One of the four rings of an AF_XDP socket, mapped from the kernel.
struct XRing {
    _map: RingMap,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    size: u32,
    /// Our copy of the index we advance (producer for fill/tx, consumer for rx/comp).
    local: u32,
}

impl XRing {
    fn map(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        elem: usize,
        pgoff: i64,
    ) -> Result<XRing, std::io::Error> {
        let len = off.desc as usize + size as usize * elem;
        let map = RingMap::map(fd, len, pgoff)?;
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the mapping of `len` bytes.
            unsafe { map.ptr.add(o as usize) }
        };
        let (producer, consumer, flags, desc) = (
            at(off.producer) as *const AtomicU32,
            at(off.consumer) as *const AtomicU32,
            at(off.flags) as *const AtomicU32,
            at(off.desc),
        );
        Ok(XRing {
            _map: map,
            producer,
            consumer,
            flags,
            desc,
            mask: size - 1,
            size,
            local: 0,
        })
    }
    #[inline]
    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points at the ring's aligned u32 producer index inside the mapping,
        // which lives as long as self.
        unsafe { &*self.producer }
    }
    #[inline]
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as in `prod`, for the consumer index.
        unsafe { &*self.consumer }
    }
    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as in `prod`, for the flags word.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
    /// Producer side: slots free for us to fill.
    #[inline]
    fn free(&self) -> u32 {
        self.size - self.local.wrapping_sub(self.cons().load(Ordering::Acquire))
    }
    /// Consumer side: entries ready for us.
    #[inline]
    fn ready(&self) -> u32 {
        self.prod().load(Ordering::Acquire).wrapping_sub(self.local)
    }
    #[inline]
    fn addr_slot(&self, i: u32) -> *mut u64 {
        // SAFETY: (i & mask) < size, inside the descriptor array of u64 entries.
        unsafe { (self.desc as *mut u64).add((i & self.mask) as usize) }
    }
    #[inline]
    fn desc_slot(&self, i: u32) -> *mut libc::xdp_desc {
        // SAFETY: (i & mask) < size, inside the descriptor array of xdp_desc entries.
        unsafe { (self.desc as *mut libc::xdp_desc).add((i & self.mask) as usize) }
    }
}

/// Picks the mbufs a queue lends to the fill ring. In zero-copy mode the NIC DMAs
/// into a chunk as one run of pages, and the kernel drops a fill entry whose chunk
/// crosses onto a page that is not physically contiguous with the one before (it is
/// then lent until the socket closes). So while zero-copy is possible, an mbuf whose
/// slot crosses a page boundary of the pool is never lent: it is parked here instead,
/// out of circulation until the queue closes (with hugepages, one slot in about 960).
struct Lender {
    /// True while chunks that cross a page boundary must not be lent.
    zero_copy: bool,
    /// Mbufs kept back; each at most once, so at most the pool's crossing slots.
    parked: Vec<Mbuf>,
}

impl Lender {
    fn new(pool: &Mempool, zero_copy: bool) -> Lender {
        let crossing = if zero_copy {
            (0..pool.capacity())
                .filter(|&i| pool.slot_crosses_page(i))
                .count()
        } else {
            0
        };
        Lender {
            zero_copy,
            // Reserved up front: parking never allocates on the PMD's path.
            parked: Vec::with_capacity(crossing),
        }
    }

    /// The next mbuf from `alloc` that can go on the fill ring.
    #[inline]
    fn next(&mut self, pool: &Mempool, alloc: &mut impl FnMut() -> Option<Mbuf>) -> Option<Mbuf> {
        loop {
            let m = alloc()?;
            if !(self.zero_copy && pool.slot_crosses_page(m.index())) {
                return Some(m);
            }
            // Each mbuf is parked once and never handed out again, so this ends.
            self.parked.push(m);
        }
    }

    /// Copy mode after all: every chunk is usable; the parked mbufs go back to the pool.
    fn copy_mode(&mut self, pool: &Mempool) {
        self.zero_copy = false;
        self.release(pool);
    }

    /// Gives the parked mbufs back to the pool.
    fn release(&mut self, pool: &Mempool) {
        for m in self.parked.drain(..) {
            pool.free(m);
        }
    }
}

/// The rx half of a queue: fill and rx rings, touched only by the PMD that polls it.
struct RxSide {
    fill: XRing,
    rx: XRing,
    lender: Lender,
    /// Frames received since the fill ring was last topped up. In copy mode each took
    /// a fill entry (the kernel also takes some for frames it drops, and a zero-copy
    /// driver takes them ahead of frames), so this tells roughly when a refill is due
    /// without reading the kernel's fill consumer index (see `rx_burst`).
    taken: u32,
}

impl RxSide {
    /// Tops the fill ring up if a batch of its slots is free. `taken` starts again
    /// from zero only once the ring is full: when the pool ran short, the next busy
    /// poll tries again.
    #[inline]
    fn refill(&mut self, pool: &Mempool, lent: &[AtomicU8], cache: &mut MempoolCache) {
        let free = self.fill.free();
        if free < REFILL_BATCH {
            return;
        }
        if self.lend_to_fill(pool, lent, free, || cache.alloc()) == free {
            self.taken = 0;
        }
    }

    /// Lends up to `n` mbufs taken from `alloc` to the kernel on the fill ring, where
    /// `n` is at most the ring's free slots; marks each in `lent`. Returns how many.
    fn lend_to_fill(
        &mut self,
        pool: &Mempool,
        lent: &[AtomicU8],
        n: u32,
        mut alloc: impl FnMut() -> Option<Mbuf>,
    ) -> u32 {
        let first = self.fill.local;
        for _ in 0..n {
            let Some(m) = self.lender.next(pool, &mut alloc) else {
                break;
            };
            let (addr, _) = pool.lend(m);
            lent[(addr / crate::mempool::BUF_SIZE as u64) as usize].store(1, Ordering::Relaxed);
            // SAFETY: one of the n free slots of the fill ring; the kernel reads none past
            // the producer index published below.
            unsafe { self.fill.addr_slot(self.fill.local).write(chunk_base(addr)) };
            self.fill.local = self.fill.local.wrapping_add(1);
        }
        self.fill.prod().store(self.fill.local, Ordering::Release);
        self.fill.local.wrapping_sub(first)
    }
}

/// The tx half: tx and completion rings, touched under the queue's tx lock.
struct TxSide {
    tx: XRing,
    comp: XRing,
}

struct Queue {
    fd: OwnedFd,
    rx: UnsafeCell<RxSide>,
    tx: UnsafeCell<TxSide>,
    tx_lock: TxLock,
    /// 1 for each pool slot the kernel holds through this socket.
    lent: Box<[AtomicU8]>,
}

// SAFETY: `rx` is only touched by the one PMD thread that polls the queue (the Port
// contract), `tx` only under `tx_lock` (which the only PMD thread need not take); the rings themselves are shared with the kernel
// through atomics.
unsafe impl Sync for Queue {}
// SAFETY: the raw pointers point into mappings owned by the queue.
unsafe impl Send for Queue {}

pub struct AfXdpPort {
    cfg: XdpConfig,
    pool: Arc<Mempool>,
    queues: Vec<Queue>,
    stats: PortStats,
    /// The interface's MTU when the port opened.
    mtu: u16,
    mode: &'static str,
    zero_copy: bool,
    // Dropped after the sockets: detaching the program, then the map, then promiscuity.
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    _promisc: Promisc,
}

impl AfXdpPort {
    /// Opens AF_XDP sockets on every queue, loads and attaches the XDP program.
    /// On any error nothing stays attached to the interface.
    pub fn open(cfg: XdpConfig, pool: Arc<Mempool>) -> Result<AfXdpPort, NicError> {
        let iface = cfg.iface.as_str();
        let ifindex = super::ifindex(iface)?;
        let have = super::rx_queue_count(iface);
        if cfg.queues > have {
            return Err(NicError(format!(
                "interface {iface:?}: {} queues configured but the interface has {have} rx queues",
                cfg.queues
            )));
        }
        let mtu = super::iface_mtu(iface)?;
        if crate::port::max_frame(mtu) > MAX_FRAME {
            return Err(NicError(format!(
                "interface {iface:?}: MTU {mtu} is more than an af-xdp port carries ({}: frames of at \
                 most {MAX_FRAME} bytes, one UMEM chunk; XDP multi-buffer is not supported yet): \
                 lower it with `ip link set {iface} mtu {}`, or use driver \"af-packet\"",
                MAX_FRAME - 18,
                MAX_FRAME - 18
            )));
        }
        let try_zero_copy = zero_copy_possible(&cfg, &pool)?;
        let need = cfg.queues as u64 * FILL_SIZE as u64;
        if (pool.available() as u64) < need + 1024 {
            return Err(NicError(format!(
                "interface {iface:?}: the mbuf pool has {} free mbufs; {} queues lend {need} to the kernel \
                 for receiving: raise mempool.mbufs",
                pool.available(),
                cfg.queues
            )));
        }
        let promisc = Promisc::hold(iface, ifindex)?;
        let map = bpf::create_xskmap(cfg.queues as u32)
            .map_err(|e| os_err(iface, "creating the XSKMAP for the XDP program", e))?;
        let mut queues = Vec::new();
        let mut zero_copy = true;
        for q in 0..cfg.queues {
            let (queue, zc) = match open_queue(&cfg, ifindex, q as u32, &pool, try_zero_copy) {
                Ok(x) => x,
                Err(e) => {
                    for q in queues {
                        release(&pool, q);
                    }
                    return Err(e);
                }
            };
            zero_copy &= zc;
            if let Err(e) = bpf::xskmap_set(&map, q as u32, &queue.fd) {
                release(&pool, queue);
                for q in queues {
                    release(&pool, q);
                }
                return Err(os_err(iface, "adding the socket to the XSKMAP", e));
            }
            queues.push(queue);
        }
        let attached = load_and_attach(&cfg, ifindex, &map);
        let (link, prog, mode) = match attached {
            Ok(x) => x,
            Err(e) => {
                for q in queues {
                    release(&pool, q);
                }
                return Err(e);
            }
        };
        tracing::info!(port = %cfg.name, iface, mode, zero_copy, queues = cfg.queues, "af-xdp port open");
        Ok(AfXdpPort {
            cfg,
            pool,
            queues,
            stats: PortStats::default(),
            mtu,
            mode,
            zero_copy,
            _link: link,
            _prog: prog,
            _map: map,
            _promisc: promisc,
        })
    }

    /// The kernel's counters of one socket (drops it saw, empty fill ring).
    fn xdp_stats(&self, q: &Queue) -> Option<libc::xdp_statistics> {
        // SAFETY: xdp_statistics is plain integers; all-zero is a valid value.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: st/len describe a writable buffer of that size.
        let r = unsafe {
            libc::getsockopt(
                q.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        (r == 0).then_some(st)
    }
}

fn load_and_attach(
    cfg: &XdpConfig,
    ifindex: u32,
    map: &OwnedFd,
) -> Result<(OwnedFd, OwnedFd, &'static str), NicError> {
    let iface = cfg.iface.as_str();
    let prog = bpf::load_redirect(map)
        .map_err(|e| NicError(format!("interface {iface:?}: loading the XDP program: {e}")))?;
    let tries: &[(u32, &'static str)] = match cfg.xdp_mode {
        XdpMode::Native => &[(bpf::XDP_FLAGS_DRV_MODE, "native")],
        XdpMode::Generic => &[(bpf::XDP_FLAGS_SKB_MODE, "generic")],
        XdpMode::Auto => &[
            (bpf::XDP_FLAGS_DRV_MODE, "native"),
            (bpf::XDP_FLAGS_SKB_MODE, "generic"),
        ],
    };
    let mut last = None;
    for &(flags, mode) in tries {
        match bpf::attach_xdp(&prog, ifindex, flags) {
            Ok(link) => return Ok((link, prog, mode)),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::EEXIST) =>
            {
                return Err(NicError(format!(
                    "interface {iface:?}: attaching the XDP program ({mode}): {e}: another XDP program \
                     is attached to it (see `ip link show {iface}`)"
                )));
            }
            Err(e) => {
                tracing::debug!(iface, mode, "XDP attach failed: {e}");
                last = Some((mode, e));
            }
        }
    }
    let (mode, e) = last.expect("at least one mode tried");
    Err(os_err(
        iface,
        &format!("attaching the XDP program in {mode} mode"),
        e,
    ))
}

/// Opens, maps, fills and binds the socket of queue `q`. Returns it and whether it
/// bound in zero-copy mode.
fn open_queue(
    cfg: &XdpConfig,
    ifindex: u32,
    q: u32,
    pool: &Arc<Mempool>,
    try_zero_copy: bool,
) -> Result<(Queue, bool), NicError> {
    let iface = cfg.iface.as_str();
    let e = |what: &str, err: std::io::Error| os_err(iface, &format!("queue {q}: {what}"), err);
    let fd = socket(iface, libc::AF_XDP, libc::SOCK_RAW, 0)?;
    let (base, len) = pool.region();
    let reg = libc::xdp_umem_reg {
        addr: base as u64,
        len: len as u64,
        chunk_size: crate::mempool::BUF_SIZE as u32,
        headroom: 0,
        flags: libc::XDP_UMEM_UNALIGNED_CHUNK_FLAG,
        tx_metadata_len: 0,
    };
    setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
        .map_err(|x| e("registering the mbuf pool as UMEM", x))?;
    for (opt, size) in [
        (libc::XDP_UMEM_FILL_RING, FILL_SIZE),
        (libc::XDP_UMEM_COMPLETION_RING, COMP_SIZE),
        (libc::XDP_RX_RING, RX_SIZE),
        (libc::XDP_TX_RING, TX_SIZE),
    ] {
        setsockopt(&fd, libc::SOL_XDP, opt, &size).map_err(|x| e("sizing rings", x))?;
    }
    // SAFETY: plain integers; all-zero is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut olen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: off/olen describe a writable buffer of that size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            &mut off as *mut _ as *mut libc::c_void,
            &mut olen,
        )
    };
    if r < 0 {
        return Err(e("ring offsets", std::io::Error::last_os_error()));
    }
    let u64sz = std::mem::size_of::<u64>();
    let dsz = std::mem::size_of::<libc::xdp_desc>();
    let map = |o, size, elem, pg: u64| XRing::map(&fd, o, size, elem, pg as i64);
    let fill = map(&off.fr, FILL_SIZE, u64sz, libc::XDP_UMEM_PGOFF_FILL_RING)
        .map_err(|x| e("mapping the fill ring", x))?;
    let comp = map(
        &off.cr,
        COMP_SIZE,
        u64sz,
        libc::XDP_UMEM_PGOFF_COMPLETION_RING,
    )
    .map_err(|x| e("mapping the completion ring", x))?;
    let rx = map(&off.rx, RX_SIZE, dsz, libc::XDP_PGOFF_RX_RING as u64)
        .map_err(|x| e("mapping the rx ring", x))?;
    let tx = map(&off.tx, TX_SIZE, dsz, libc::XDP_PGOFF_TX_RING as u64)
        .map_err(|x| e("mapping the tx ring", x))?;
    let lent: Box<[AtomicU8]> = (0..pool.capacity()).map(|_| AtomicU8::new(0)).collect();
    let queue = Queue {
        fd,
        rx: UnsafeCell::new(RxSide {
            fill,
            rx,
            lender: Lender::new(pool, try_zero_copy),
            taken: 0,
        }),
        tx: UnsafeCell::new(TxSide { tx, comp }),
        tx_lock: TxLock::new(),
        lent,
    };
    // Lend the fill ring's worth of mbufs before binding, so frames have somewhere to go.
    {
        // SAFETY: the queue is not shared yet; this is the only access.
        let side = unsafe { &mut *queue.rx.get() };
        side.lend_to_fill(pool, &queue.lent, FILL_SIZE, || pool.alloc());
    }
    let try_bind = |flags: u16| {
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: q,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: sa is a valid sockaddr_xdp of the length passed.
        let r = unsafe {
            libc::bind(
                queue.fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // The kernel releases a dead process's AF_XDP sockets from a workqueue, so right
    // after a crash the queue can still be busy for a moment: retry for a while.
    let deadline = std::time::Instant::now() + BIND_BUSY_WAIT;
    let zc = loop {
        let r = match cfg.zero_copy {
            ZeroCopy::On => try_bind(libc::XDP_ZEROCOPY).map(|_| true),
            ZeroCopy::Off => try_bind(libc::XDP_COPY).map(|_| false),
            ZeroCopy::Auto if !try_zero_copy => try_bind(libc::XDP_COPY).map(|_| false),
            ZeroCopy::Auto => match try_bind(libc::XDP_ZEROCOPY) {
                Ok(()) => Ok(true),
                Err(_) => try_bind(libc::XDP_COPY).map(|_| false),
            },
        };
        match r {
            Err(x)
                if x.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => break r,
        }
    };
    match zc {
        Ok(zc) => {
            if !zc {
                // SAFETY: the queue is not shared yet; this is the only access.
                unsafe { &mut *queue.rx.get() }.lender.copy_mode(pool);
            }
            Ok((queue, zc))
        }
        Err(x) if x.raw_os_error() == Some(libc::EBUSY) => {
            let err = NicError(format!(
                "interface {iface:?}: queue {q}: in use by another AF_XDP socket (another vswitch, \
                 or an AF_XDP program, runs on this interface): {x}"
            ));
            release(pool, queue);
            Err(err)
        }
        Err(x) => {
            let what = if cfg.zero_copy == ZeroCopy::On {
                "binding in zero-copy mode (zero_copy = \"on\"; the driver may not support it)"
            } else {
                "binding the AF_XDP socket"
            };
            let err = e(what, x);
            release(pool, queue);
            Err(err)
        }
    }
}

/// Whether the sockets may bind in zero-copy mode: not with `zero_copy = "off"`, and
/// only with the pool on hugepages. With 4 KiB pages about half the 2176-byte slots
/// cross a page boundary and could not be lent in zero-copy mode, so `"on"` is refused
/// and `"auto"` binds in copy mode.
fn zero_copy_possible(cfg: &XdpConfig, pool: &Mempool) -> Result<bool, NicError> {
    match (cfg.zero_copy, pool.is_huge()) {
        (ZeroCopy::Off, _) => Ok(false),
        (_, true) => Ok(true),
        (ZeroCopy::On, false) => Err(NicError(format!(
            "interface {:?}: zero_copy = \"on\" needs the mbuf pool on hugepages, and it is on \
             {} KiB pages (mempool.hugepages; reserve hugepages with `echo N > /proc/sys/vm/nr_hugepages`): \
             in zero-copy mode the kernel drops a buffer that crosses a page boundary, and about half \
             of the {}-byte mbufs cross a small page's. Or set zero_copy = \"auto\" (copy mode) or \"off\"",
            cfg.iface,
            pool.page_size() / 1024,
            crate::mempool::BUF_SIZE
        ))),
        (ZeroCopy::Auto, false) => {
            tracing::info!(
                port = %cfg.name,
                iface = %cfg.iface,
                "af-xdp: copy mode, since the mbuf pool is not on hugepages (zero-copy needs them)"
            );
            Ok(false)
        }
    }
}

/// Whether the bytes of `m`'s frame lie on more than one page of the pool: in
/// zero-copy mode the kernel refuses such a tx descriptor, and never completes it.
#[inline]
fn frame_crosses_page(pool: &Mempool, m: &Mbuf) -> bool {
    let off = m.data().as_ptr() as u64 - pool.region().0 as u64;
    crate::mempool::crosses_page(off, m.len() as u64, pool.page_size() as u64)
}

/// A copy of `m`'s frame in a fresh mbuf where it does not cross a page (`m` is freed),
/// or `None` (both freed) if the cache has no such mbuf. Rare with hugepages: the
/// frame of one slot in about 960 may cross a 2 MiB boundary.
#[cold]
fn bounce(pool: &Mempool, m: Mbuf, cache: &mut MempoolCache) -> Option<Mbuf> {
    let copy = |cache: &mut MempoolCache| {
        let mut n = cache.alloc()?;
        n.set_len(m.len()).copy_from_slice(m.data());
        Some(n)
    };
    let mut out = copy(cache);
    if let Some(first) = out.take_if(|n| frame_crosses_page(pool, n)) {
        // Taken while `first` is held, so another slot.
        out = copy(cache).filter(|n| !frame_crosses_page(pool, n));
        cache.free(first);
    }
    cache.free(m);
    out
}

/// The chunk an address falls in, as the fill ring wants it (the slot's start).
#[inline]
fn chunk_base(off: u64) -> u64 {
    off - off % crate::mempool::BUF_SIZE as u64
}

/// Closes a queue's socket, then gives every buffer the kernel held back to the pool.
fn release(pool: &Mempool, q: Queue) {
    let Queue {
        fd, rx, tx, lent, ..
    } = q;
    drop(fd);
    let mut rx = rx.into_inner();
    rx.lender.release(pool);
    drop(rx);
    drop(tx);
    for i in 0..lent.len() {
        if let Some(m) = take_back(pool, &lent, i as u64 * crate::mempool::BUF_SIZE as u64, 0) {
            pool.free(m);
        }
    }
}

/// Takes back the buffer at region offset `off` that this queue lent to the kernel,
/// clearing its flag in `lent`. `None` for an offset outside the pool or a buffer the
/// queue does not have out (so a stray or repeated address never makes a second handle).
#[inline]
fn take_back(pool: &Mempool, lent: &[AtomicU8], off: u64, len: u32) -> Option<Mbuf> {
    let flag = lent.get((off / crate::mempool::BUF_SIZE as u64) as usize)?;
    if flag.load(Ordering::Relaxed) == 0 {
        return None;
    }
    flag.store(0, Ordering::Relaxed);
    // SAFETY: the flag said this queue lent the buffer and has not taken it back; it is
    // now cleared, so the buffer is reclaimed once. (Only one side of the queue, rx or
    // tx, ever has a given buffer out.)
    unsafe { pool.reclaim(off, len) }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        for q in self.queues.drain(..) {
            release(&self.pool, q);
        }
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn rx_queues(&self) -> usize {
        self.queues.len()
    }

    #[inline]
    fn rx_burst(
        &self,
        q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let Some(queue) = self.queues.get(q) else {
            return 0;
        };
        // SAFETY: only the PMD thread that polls queue q calls rx_burst(q) (Port contract).
        let side = unsafe { &mut *queue.rx.get() };
        let n = side.rx.ready().min(out.len() as u32);
        let mut bytes = 0u64;
        let mut got = 0;
        for k in 0..n {
            // SAFETY: entries between our consumer index and the kernel's producer index
            // are written by the kernel and released to us by the Acquire load in `ready`.
            let d = unsafe { side.rx.desc_slot(side.rx.local.wrapping_add(k)).read() };
            let off = (d.addr & ADDR_MASK) + (d.addr >> 48);
            // An address we did not lend cannot come from the kernel; skip it if it does.
            if let Some(m) = take_back(&self.pool, &queue.lent, off, d.len) {
                // The kernel (or in zero-copy the NIC) wrote the frame elsewhere:
                // start fetching its header now, so the misses of a burst's frames
                // overlap each other and this poll, instead of each stalling the
                // switch step in turn.
                prefetch::read(m.data().as_ptr());
                bytes += m.len() as u64;
                out[got] = Some(m);
                got += 1;
            }
        }
        side.rx.local = side.rx.local.wrapping_add(n);
        side.rx.cons().store(side.rx.local, Ordering::Release);
        side.taken = side.taken.saturating_add(n);
        // Keep the fill ring stocked. The kernel writes the line holding the fill
        // ring's consumer index and flags as it takes entries, so reading it is a cache
        // miss on most busy polls at low rates: read it on a busy poll only once a
        // refill is due by the frames received, and on every empty poll, which also
        // catches entries the kernel took for frames it dropped and a driver waiting
        // for a wake-up (a full-burst poll still reads it: REFILL_BATCH is a burst).
        if n == 0 || side.taken >= REFILL_BATCH {
            side.refill(&self.pool, &queue.lent, cache);
            if side.fill.needs_wakeup() {
                wake_rx(&queue.fd);
            }
        }
        tr.rx_packets += got as u64;
        tr.rx_bytes += bytes;
        got
    }

    #[inline]
    fn tx_burst(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let queue = &self.queues[lane.pmd() % self.queues.len()];
        let _g = queue.tx_lock.lock(lane);
        // SAFETY: the tx side is only touched under tx_lock, held here (or by the only PMD thread).
        let side = unsafe { &mut *queue.tx.get() };
        // Buffers the kernel has sent come back to the pool.
        let done = side.comp.ready();
        for k in 0..done {
            // SAFETY: completion entries up to the kernel's producer index are ours to read.
            let addr = unsafe { side.comp.addr_slot(side.comp.local.wrapping_add(k)).read() };
            if let Some(m) = take_back(&self.pool, &queue.lent, addr & ADDR_MASK, 0) {
                cache.free(m);
            }
        }
        side.comp.local = side.comp.local.wrapping_add(done);
        side.comp.cons().store(side.comp.local, Ordering::Release);

        // At most a burst per call: a copy-mode socket's wakeup sends at most 32
        // descriptors (the kernel's TX_BATCH_SIZE), so more would wait for the next
        // frame to this port. Segments of a TSO frame come 45 at a time; what is left
        // stays on the switch's queue, which is flushed again next iteration.
        let room = (side.tx.free() as usize).min(crate::port::BURST);
        let (mut sent, mut taken) = (0, 0);
        let mut bytes = 0u64;
        for slot in pkts.iter_mut() {
            if sent == room {
                break;
            }
            let Some(m) = slot.take() else { break };
            taken += 1;
            let m = if m.is_large() {
                // Not reachable through the switch (it drops frames over this port's MTU,
                // and a frame that fits a small buffer is in one), but never lend it.
                PortStats::add(&self.stats.drop_mtu, 1);
                cache.free(m);
                continue;
            } else if self.zero_copy && frame_crosses_page(&self.pool, &m) {
                match bounce(&self.pool, m, cache) {
                    Some(m) => m,
                    None => {
                        PortStats::add(&self.stats.drop_no_mbuf, 1);
                        continue;
                    }
                }
            } else {
                m
            };
            let (addr, len) = self.pool.lend(m);
            queue.lent[(addr / crate::mempool::BUF_SIZE as u64) as usize]
                .store(1, Ordering::Relaxed);
            let d = libc::xdp_desc {
                addr,
                len,
                options: 0,
            };
            // SAFETY: one of the `room` slots the kernel has consumed.
            unsafe { side.tx.desc_slot(side.tx.local).write(d) };
            side.tx.local = side.tx.local.wrapping_add(1);
            bytes += len as u64;
            sent += 1;
        }
        if sent > 0 {
            side.tx.prod().store(side.tx.local, Ordering::Release);
            if side.tx.needs_wakeup() {
                kick_tx(&queue.fd);
            }
        }
        tr.tx_packets += sent as u64;
        tr.tx_bytes += bytes;
        taken
    }

    fn is_up(&self) -> bool {
        true
    }

    fn stats(&self) -> &PortStats {
        &self.stats
    }

    fn arm_wake(&self, q: usize) -> crate::idle::Wake {
        self.queues.get(q).map_or(crate::idle::Wake::Timeout, |x| {
            crate::idle::Wake::Fd(x.fd.as_raw_fd())
        })
    }

    fn driver(&self) -> &'static str {
        "af-xdp"
    }

    fn mtu(&self) -> u16 {
        self.mtu
    }

    fn describe(&self) -> String {
        let (mut dropped, mut ring_full, mut fill_empty) = (0, 0, 0);
        for q in &self.queues {
            if let Some(s) = self.xdp_stats(q) {
                dropped += s.rx_dropped;
                ring_full += s.rx_ring_full;
                fill_empty += s.rx_fill_ring_empty_descs;
            }
        }
        format!(
            "driver=af-xdp iface={} mtu={} link={} queues={} xdp_mode={} zero_copy={} kernel_rx_dropped={dropped} \
             rx_ring_full={ring_full} fill_ring_empty={fill_empty}",
            self.cfg.iface,
            self.mtu,
            super::operstate(&self.cfg.iface),
            self.queues.len(),
            self.mode,
            if self.zero_copy { "on" } else { "off" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hugepage::{HugepagePolicy, HUGEPAGE_SIZE};
    use crate::mempool::{crosses_page, BUF_SIZE};

    fn cfg(zero_copy: ZeroCopy) -> XdpConfig {
        XdpConfig {
            name: "nic".into(),
            iface: "eth9".into(),
            queues: 1,
            xdp_mode: XdpMode::Auto,
            zero_copy,
        }
    }

    /// Everything a lender hands out until the pool is empty.
    fn lend_all(pool: &Mempool, lender: &mut Lender) -> Vec<Mbuf> {
        let mut alloc = || pool.alloc();
        std::iter::from_fn(|| lender.next(pool, &mut alloc)).collect()
    }

    #[test]
    fn zero_copy_never_lends_a_chunk_across_a_page() {
        let pool = Mempool::new(4096, HugepagePolicy::Off).unwrap();
        assert_eq!(pool.page_size(), 4096);
        let crossing = (0..4096).filter(|&i| pool.slot_crosses_page(i)).count();
        // 2176-byte slots on 4 KiB pages: most cross one.
        assert!(crossing > 4096 / 3, "{crossing}");
        let mut lender = Lender::new(&pool, true);
        let lent = lend_all(&pool, &mut lender);
        for m in &lent {
            let off = m.index() as u64 * BUF_SIZE as u64;
            assert_eq!(
                off / 4096,
                (off + BUF_SIZE as u64 - 1) / 4096,
                "slot {} crosses a page",
                m.index()
            );
        }
        assert_eq!(lender.parked.len(), crossing);
        assert_eq!(lent.len() + crossing, 4096, "an mbuf went missing");
        // Parking never grew the vector past what was reserved.
        assert_eq!(lender.parked.capacity(), crossing);
        for m in lent {
            pool.free(m);
        }
        lender.release(&pool);
        assert_eq!(pool.available(), 4096);
    }

    #[test]
    fn copy_mode_lends_every_chunk_and_returns_the_parked() {
        let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let mut lender = Lender::new(&pool, false);
        let lent = lend_all(&pool, &mut lender);
        assert_eq!(lent.len(), 1024);
        for m in lent {
            pool.free(m);
        }
        // Zero-copy refused at bind: what was parked goes back.
        let mut lender = Lender::new(&pool, true);
        let mut alloc = || pool.alloc();
        let some: Vec<Mbuf> = (0..100)
            .map_while(|_| lender.next(&pool, &mut alloc))
            .collect();
        assert!(!lender.parked.is_empty());
        lender.copy_mode(&pool);
        assert!(lender.parked.is_empty());
        assert_eq!(pool.available(), 1024 - some.len());
        let rest = lend_all(&pool, &mut lender);
        assert_eq!(rest.len(), 1024 - some.len(), "copy mode lends any chunk");
        for m in some.into_iter().chain(rest) {
            pool.free(m);
        }
    }

    #[test]
    fn with_hugepages_only_slots_across_2mib_are_kept_back() {
        // 16384 mbufs over 17 hugepages: 16 boundaries inside, each inside a slot.
        let n = (0..16384u64)
            .filter(|i| crosses_page(i * BUF_SIZE as u64, BUF_SIZE as u64, HUGEPAGE_SIZE as u64))
            .count();
        assert_eq!(n, 16);
    }

    #[test]
    fn zero_copy_tx_copies_a_frame_that_crosses_a_page() {
        let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool.clone());
        // Slot 1 is bytes 2176..4352: with the 128-byte headroom a 2000-byte frame
        // spans 2304..4304, across the 4096 boundary.
        let mut all: Vec<Mbuf> = std::iter::from_fn(|| cache.alloc()).collect();
        let mut m = all.remove(all.iter().position(|m| m.index() == 1).unwrap());
        for m in all {
            cache.free(m);
        }
        m.set_len(2000)
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let want = m.data().to_vec();
        assert!(frame_crosses_page(&pool, &m));
        let n = bounce(&pool, m, &mut cache).expect("a slot that fits");
        assert!(!frame_crosses_page(&pool, &n), "slot {}", n.index());
        assert_eq!(n.data(), &want[..]);
        cache.free(n);
        drop(cache);
        assert_eq!(pool.available(), 64, "bounce lost an mbuf");
    }

    #[test]
    fn zero_copy_needs_hugepages() {
        let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let err = zero_copy_possible(&cfg(ZeroCopy::On), &pool).unwrap_err();
        assert!(
            err.0.contains("needs the mbuf pool on hugepages"),
            "{}",
            err.0
        );
        assert!(!zero_copy_possible(&cfg(ZeroCopy::Auto), &pool).unwrap());
        assert!(!zero_copy_possible(&cfg(ZeroCopy::Off), &pool).unwrap());
    }
}
