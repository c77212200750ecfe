//! AF_PACKET ports: a TPACKET_V3 mmap ring pair on any Linux interface.
//!
//! The fallback NIC driver, for interfaces or kernels where AF_XDP cannot run. The
//! kernel copies each received frame into a block of the rx ring, and the port copies it
//! into an mbuf; to send, the port copies the mbuf into a frame of the tx ring and kicks
//! the kernel once per burst. Frames the kernel received with their VLAN tag stripped
//! into metadata get the tag put back. Frames this socket sends are not received back
//! (PACKET_IGNORE_OUTGOING), and the interface is put in promiscuous mode for as long as
//! the socket is open. The port carries the interface's MTU as it was at open, and
//! longer frames (jumbo frames above an mbuf) are received into large buffers.
//!
//! Offloads (PACKET_VNET_HDR): every frame in either ring has a virtio-net header in
//! front, as on a tap device. A frame the kernel received with a partial checksum
//! (the host's own stack, or a veth peer's, with checksum offload) or as one large
//! GRO/GSO segment arrives with that request as metadata; frames sent may ask the
//! kernel to complete a checksum or cut a TSO frame, so TCP from a tap port or a
//! guest leaves through this port in 64 KiB frames, cut by the kernel (in software
//! or by the NIC) rather than by the switch. Tx slots are sized for such a frame.

use super::{add_promisc, getsockopt_int, kick_tx, os_err, setsockopt, socket, NicError, RingMap};
use crate::mempool::{Mbuf, MempoolCache, LARGE_DATA_ROOM};
use crate::offload::{Caps, NetHdr};
use crate::port::{max_frame, Port, PortStats, Traffic, TxLane, TxLock};
use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Debug)]
pub struct PacketConfig {
    pub name: String,
    pub iface: String,
}

const BLOCK_SIZE: u32 = 1 << 17;
const RX_BLOCKS: u32 = 32;
/// A partly filled rx block is handed to us after this many milliseconds.
const RX_RETIRE_MS: u32 = 1;
/// The rx ring's nominal frame size (V3 packs frames into blocks regardless).
const RX_FRAME: u32 = 2048;
const TX_FRAMES: u32 = 256;
/// Where packet data starts in a tx frame: the V3 header, aligned.
const TX_DATA: usize = (std::mem::size_of::<libc::tpacket3_hdr>() + libc::TPACKET_ALIGNMENT - 1)
    & !(libc::TPACKET_ALIGNMENT - 1);
/// A tx frame slot, one block each: the header, the virtio-net header and the
/// longest frame a buffer holds (a TSO frame), in whole pages (16 of them: 256 slots
/// take 16 MiB).
const TX_FRAME: u32 = ((TX_DATA + NetHdr::LEN + LARGE_DATA_ROOM) as u32).next_multiple_of(4096);

/// Where the rx side is in the ring: touched only by the PMD that polls the port.
struct RxCursor {
    block: u32,
    /// Packets of the current block already taken, and the offset of the next one.
    taken: u32,
    next: usize,
}

pub struct AfPacketPort {
    cfg: PacketConfig,
    /// The interface's MTU when the port opened.
    mtu: u16,
    fd: OwnedFd,
    ring: RingMap,
    rx: UnsafeCell<RxCursor>,
    tx_next: UnsafeCell<u32>,
    tx_lock: TxLock,
    stats: PortStats,
}

// SAFETY: `rx` is only touched by the one PMD thread polling the port's single rx queue
// (the Port contract) and `tx_next` only under `tx_lock`; the ring is shared with the
// kernel through per-frame status words accessed atomically.
unsafe impl Sync for AfPacketPort {}

impl AfPacketPort {
    pub fn open(cfg: PacketConfig) -> Result<AfPacketPort, NicError> {
        let iface = cfg.iface.as_str();
        let ifindex = super::ifindex(iface)?;
        let mtu = super::iface_mtu(iface)?;
        if mtu > crate::port::MAX_MTU {
            return Err(NicError(format!(
                "interface {iface:?}: MTU {mtu} is more than a port carries ({}): lower it with \
                 `ip link set {iface} mtu {}`",
                crate::port::MAX_MTU,
                crate::port::MAX_MTU
            )));
        }
        let e = |what: &str, x| os_err(iface, what, x);
        // Protocol 0: receive nothing until bound to the interface below.
        let fd = socket(iface, libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &(libc::tpacket_versions::TPACKET_V3 as i32),
        )
        .map_err(|x| e("TPACKET_V3", x))?;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32)
            .map_err(|x| e("PACKET_IGNORE_OUTGOING", x))?;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32)
            .map_err(|x| e("PACKET_QDISC_BYPASS", x))?;
        // A malformed tx frame is skipped and its slot given back, not left stuck.
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_LOSS, &1i32)
            .map_err(|x| e("PACKET_LOSS", x))?;
        // The kernel sends ring frames only while their bytes fit the socket's send
        // buffer, and leaves the rest for the next kick: with 64 KiB frames the
        // default (about 200 KiB) would leave a burst waiting for traffic that may not
        // come. Room for the whole ring: SO_SNDBUFFORCE needs CAP_NET_ADMIN (an
        // AF_PACKET socket needs only CAP_NET_RAW); without it SO_SNDBUF, capped by
        // net.core.wmem_max, and a warning when that leaves less than the ring.
        let sndbuf = (TX_FRAMES * TX_FRAME) as i32;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &sndbuf).is_err() {
            if let Err(x) = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &sndbuf) {
                tracing::warn!(port = %cfg.name, iface, "send buffer: {x}");
            }
            // The kernel reports twice what it grants (bookkeeping overhead).
            let got = getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0) / 2;
            if got < sndbuf {
                tracing::warn!(port = %cfg.name, iface, bytes = got, want = sndbuf,
                    "send buffer smaller than the tx ring (no CAP_NET_ADMIN; raise net.core.wmem_max): bursts of large frames may wait for the next one");
            }
        }
        // Before the rings: a virtio-net header in front of every frame.
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1i32)
            .map_err(|x| e("PACKET_VNET_HDR", x))?;
        let rxreq = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE,
            tp_block_nr: RX_BLOCKS,
            tp_frame_size: RX_FRAME,
            tp_frame_nr: BLOCK_SIZE / RX_FRAME * RX_BLOCKS,
            tp_retire_blk_tov: RX_RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &rxreq)
            .map_err(|x| e("rx ring", x))?;
        let txreq = libc::tpacket_req3 {
            tp_block_size: TX_FRAME,
            tp_block_nr: TX_FRAMES,
            tp_frame_size: TX_FRAME,
            tp_frame_nr: TX_FRAMES,
            tp_retire_blk_tov: 0,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &txreq)
            .map_err(|x| e("tx ring", x))?;
        let len = (BLOCK_SIZE * RX_BLOCKS + TX_FRAMES * TX_FRAME) as usize;
        let ring = RingMap::map(&fd, len, 0).map_err(|x| e("mapping the rings", x))?;
        let sll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: ifindex as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: sll is a valid sockaddr_ll of the length passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(e("bind", std::io::Error::last_os_error()));
        }
        add_promisc(&fd, ifindex).map_err(|x| e("promiscuous mode", x))?;
        tracing::info!(port = %cfg.name, iface, mtu, "af-packet port open");
        Ok(AfPacketPort {
            cfg,
            mtu,
            fd,
            ring,
            rx: UnsafeCell::new(RxCursor {
                block: 0,
                taken: 0,
                next: 0,
            }),
            tx_next: UnsafeCell::new(0),
            tx_lock: TxLock::new(),
            stats: PortStats::default(),
        })
    }

    #[inline]
    fn block(&self, b: u32) -> *mut u8 {
        // SAFETY: b < RX_BLOCKS, so the block lies inside the rx part of the mapping.
        unsafe { self.ring.ptr.add((b * BLOCK_SIZE) as usize) }
    }

    #[inline]
    fn block_status(&self, b: u32) -> &AtomicU32 {
        let off = std::mem::offset_of!(libc::tpacket_block_desc, hdr);
        // SAFETY: the block descriptor's first header word is an aligned u32 inside the
        // block, written by the kernel and by us only through this atomic.
        unsafe { &*(self.block(b).add(off) as *const AtomicU32) }
    }

    #[inline]
    fn tx_frame(&self, i: u32) -> *mut u8 {
        // SAFETY: i < TX_FRAMES, so the frame lies inside the tx part of the mapping.
        unsafe {
            self.ring
                .ptr
                .add((BLOCK_SIZE * RX_BLOCKS + i * TX_FRAME) as usize)
        }
    }
}

impl AfPacketPort {
    /// Counts a received frame the kernel cut (longer than a block holds).
    #[cold]
    fn count_cut(&self) {
        PortStats::add(&self.stats.drop_oversize, 1);
    }
}

/// Reads a field of a ring header at `p + off`.
#[inline]
fn rd32(p: *const u8, off: usize) -> u32 {
    // SAFETY: callers pass headers the kernel handed to us (status says so), inside the
    // mapping; read_unaligned copes with any placement.
    unsafe { (p.add(off) as *const u32).read_unaligned() }
}
#[inline]
fn rd16(p: *const u8, off: usize) -> u16 {
    // SAFETY: as in rd32.
    unsafe { (p.add(off) as *const u16).read_unaligned() }
}

impl Port for AfPacketPort {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn rx_queues(&self) -> usize {
        1
    }

    fn rx_burst(
        &self,
        _q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        use std::mem::offset_of;
        // SAFETY: only the PMD thread polling this port's one queue calls rx_burst.
        let cur = unsafe { &mut *self.rx.get() };
        let hdr = offset_of!(libc::tpacket_block_desc, hdr);
        let (num_pkts, first) = (hdr + 4, hdr + 8);
        let mut n = 0;
        let mut bytes = 0u64;
        let limit = max_frame(self.mtu);
        while n < out.len() {
            let st = self.block_status(cur.block);
            if st.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            let b = self.block(cur.block);
            let count = rd32(b, num_pkts);
            if cur.taken == 0 {
                cur.next = rd32(b, first) as usize;
            }
            while cur.taken < count && n < out.len() {
                if cur.next + TX_DATA > BLOCK_SIZE as usize {
                    cur.taken = count; // a header the kernel would never write: skip the block
                    break;
                }
                // SAFETY: the packet header lies inside the block (checked above).
                let p = unsafe { b.add(cur.next) };
                let h = |f| rd32(p, f);
                let next_off = h(offset_of!(libc::tpacket3_hdr, tp_next_offset)) as usize;
                let snap = h(offset_of!(libc::tpacket3_hdr, tp_snaplen)) as usize;
                let wire = h(offset_of!(libc::tpacket3_hdr, tp_len)) as usize;
                let status = h(offset_of!(libc::tpacket3_hdr, tp_status));
                let mac = rd16(p, offset_of!(libc::tpacket3_hdr, tp_mac)) as usize;
                let vlan = status & libc::TP_STATUS_VLAN_VALID != 0;
                let tci = h(offset_of!(libc::tpacket3_hdr, hv1)
                    + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci))
                    as u16;
                let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    rd16(
                        p,
                        offset_of!(libc::tpacket3_hdr, hv1)
                            + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid),
                    )
                } else {
                    0x8100
                };
                cur.taken += 1;
                cur.next += next_off;
                let total = snap + if vlan { 4 } else { 0 };
                if snap < 14
                    || mac < TX_DATA + NetHdr::LEN
                    || cur.next - next_off + mac + snap > BLOCK_SIZE as usize
                {
                    PortStats::add(&self.stats.drop_runt, 1);
                    continue;
                }
                if wire != snap {
                    // Cut by the kernel: longer than a block holds.
                    self.count_cut();
                    continue;
                }
                let mut vh = [0u8; NetHdr::LEN];
                // SAFETY: the virtio-net header lies just before the frame, after the
                // packet header (mac checked above), inside the block.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        p.add(mac - NetHdr::LEN),
                        vh.as_mut_ptr(),
                        vh.len(),
                    )
                };
                let mut vh = NetHdr::parse(&vh);
                if vlan && !vh.is_plain() {
                    // The tag put back moves the offsets after it.
                    vh.csum_start = vh.csum_start.saturating_add(4);
                    if vh.hdr_len != 0 {
                        vh.hdr_len = vh.hdr_len.saturating_add(4);
                    }
                }
                let Some(mut m) = cache.alloc_for(total) else {
                    PortStats::add(&self.stats.drop_no_mbuf, 1);
                    continue;
                };
                if total > m.capacity() {
                    PortStats::add(&self.stats.drop_oversize, 1);
                    cache.free(m);
                    continue;
                }
                // SAFETY: mac + snap bytes from the header lie inside the block (checked).
                let src = unsafe { std::slice::from_raw_parts(p.add(mac), snap) };
                let dst = m.set_len(total);
                if vlan {
                    dst[..12].copy_from_slice(&src[..12]);
                    dst[12..14].copy_from_slice(&tpid.to_be_bytes());
                    dst[14..16].copy_from_slice(&tci.to_be_bytes());
                    dst[16..].copy_from_slice(&src[12..]);
                } else {
                    dst.copy_from_slice(src);
                }
                // Over the MTU (GRO can merge frames past it) without a TSO request,
                // or asking for what cannot be done: dropped and counted.
                if !super::take_vnet_hdr(&self.stats, &mut m, vh, limit, tr) {
                    cache.free(m);
                    continue;
                }
                bytes += total as u64;
                out[n] = Some(m);
                n += 1;
            }
            if cur.taken >= count {
                st.store(libc::TP_STATUS_KERNEL, Ordering::Release);
                cur.block = (cur.block + 1) % RX_BLOCKS;
                cur.taken = 0;
            }
        }
        tr.rx_packets += n as u64;
        tr.rx_bytes += bytes;
        n
    }

    fn tx_burst(
        &self,
        lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let _g = self.tx_lock.lock(lane);
        // SAFETY: tx_next is only touched under tx_lock, held here (or by the only PMD thread).
        let next = unsafe { &mut *self.tx_next.get() };
        let status_off = std::mem::offset_of!(libc::tpacket3_hdr, tp_status);
        let (mut sent, mut ok, mut bytes) = (0, 0u64, 0u64);
        for slot in pkts.iter_mut() {
            let Some(_) = slot.as_ref() else { break };
            let f = self.tx_frame(*next);
            // SAFETY: the status word is an aligned u32 at the start of the frame, shared
            // with the kernel and accessed atomically.
            let st = unsafe { &*(f.add(status_off) as *const AtomicU32) };
            let s = st.load(Ordering::Acquire);
            if s != libc::TP_STATUS_AVAILABLE && s != libc::TP_STATUS_WRONG_FORMAT {
                break; // the kernel has not sent this frame yet: ring full
            }
            let m = slot.take().expect("checked above");
            let len = m.len();
            if len > TX_FRAME as usize - TX_DATA - NetHdr::LEN {
                PortStats::add(&self.stats.drop_oversize, 1);
            } else {
                // What the kernel is to complete or cut (nothing for a plain frame).
                let vh = m.offload().unwrap_or_default().to_bytes();
                let wire = (NetHdr::LEN + len) as u32;
                // SAFETY: the frame is ours (status AVAILABLE), and the virtio-net
                // header and len bytes fit after the packet header (checked above).
                unsafe {
                    let d = f.add(TX_DATA);
                    std::ptr::copy_nonoverlapping(vh.as_ptr(), d, NetHdr::LEN);
                    std::ptr::copy_nonoverlapping(m.data().as_ptr(), d.add(NetHdr::LEN), len);
                    let h = f as *mut libc::tpacket3_hdr;
                    std::ptr::addr_of_mut!((*h).tp_len).write(wire);
                    std::ptr::addr_of_mut!((*h).tp_snaplen).write(wire);
                    std::ptr::addr_of_mut!((*h).tp_next_offset).write(0);
                }
                st.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
                *next = (*next + 1) % TX_FRAMES;
                bytes += len as u64;
                ok += 1;
            }
            cache.free(m);
            sent += 1;
        }
        if bytes > 0 {
            kick_tx(&self.fd);
        }
        tr.tx_packets += ok;
        tr.tx_bytes += bytes;
        sent
    }

    fn is_up(&self) -> bool {
        true
    }

    fn tx_offloads(&self) -> Caps {
        // The kernel's packet socket takes checksum and TSO requests (cutting in
        // software where the device cannot).
        Caps::ALL
    }

    fn stats(&self) -> &PortStats {
        &self.stats
    }

    fn arm_wake(&self, _q: usize) -> crate::idle::Wake {
        // A socket error (ENETDOWN once the interface went down) makes every poll
        // return at once, and only reading it clears it: read it here, or the thread
        // could never sleep again.
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one int into `err`, whose size `len` gives.
        unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        crate::idle::Wake::Fd(self.fd.as_raw_fd())
    }

    fn driver(&self) -> &'static str {
        "af-packet"
    }

    fn mtu(&self) -> u16 {
        self.mtu
    }

    fn describe(&self) -> String {
        format!(
            "driver=af-packet iface={} mtu={} link={} queues=1",
            self.cfg.iface,
            self.mtu,
            super::operstate(&self.cfg.iface)
        )
    }
}
