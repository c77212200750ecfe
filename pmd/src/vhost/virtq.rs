//! Split virtqueues as the device side sees them: validation of a ring before it
//! goes live, and the burst dequeue (guest tx → mbufs) and enqueue (mbufs → guest
//! rx) of the data path.
//!
//! Everything the guest controls is read once into a local copy and checked before
//! use: ring indexes against the ring size, descriptor indexes against the table,
//! chain length against the table size (so a loop ends), every buffer address
//! against the guest's memory table, and the WRITE flag against the direction.
//! A violation is a [`GuestError`]: the queue is stopped and the error counted;
//! nothing is read or written outside the guest's regions.

use super::log::{DirtyLog, RingLog};
use super::mem::{FastTable, GuestMemory};
use super::notify::Irq;
use crate::mempool::{Mbuf, MempoolCache, DATA_ROOM};
use crate::offload::{csum, Caps, NetHdr, GSO_NONE};
use crate::prefetch;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_ring;

// The flag words are 16 bits; virtio-bindings declares the values as u32.
pub const VRING_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
pub const VRING_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
pub const VRING_DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
pub const VRING_USED_F_NO_NOTIFY: u16 = virtio_ring::VRING_USED_F_NO_NOTIFY as u16;
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
/// Largest ring the virtio spec allows for split rings.
pub const MAX_RING: u32 = 32768;
/// Descriptors of one chain the data path copies through; longer chains are
/// still validated to their end.
pub(super) const MAX_SEGS: usize = 64;

/// Most descriptors one chain may have, indirect table included (DPDK keeps 256
/// segments per chain, Linux vhost 1024): a longer chain is a guest error, so a chain
/// costs a bounded number of descriptor reads.
pub const MAX_CHAIN: u32 = 256;
/// Most receive chains one frame may take with mergeable buffers (DPDK allows the
/// ring's size): a 9018-byte jumbo frame fits in 256 chains of 36 bytes, so only a
/// guest that posts tiny buffers on purpose exceeds it (a guest error).
pub const MAX_MRG_CHAINS: u16 = 256;
/// Descriptor reads one burst may spend on chains that are not a single descriptor;
/// the burst stops there and the rest waits for the next poll (room for at least one
/// chain of `MAX_CHAIN`).
pub const BURST_DESC_BUDGET: u32 = 4096;

/// Why a queue was stopped: the guest broke the virtio rules. Each variant carries
/// what the guest gave, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestError {
    /// The avail index ran further ahead of the last one processed than the ring holds.
    AvailAhead {
        idx: u16,
        last: u16,
        size: u32,
    },
    /// A head descriptor index not in the descriptor table.
    HeadOutOfTable {
        index: u16,
        size: u32,
    },
    /// A `next` index not in the table (descriptor table or indirect table).
    NextOutOfTable {
        index: u16,
        size: u32,
    },
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table, chained, or not the first.
    IndirectMisplaced,
    /// An indirect table whose length is not a multiple of 16, or longer than the ring.
    IndirectLength {
        len: u32,
        ring: u32,
    },
    IndirectOutside {
        addr: u64,
        len: u32,
    },
    /// A chain that loops, or is longer than its table or than [`MAX_CHAIN`].
    ChainTooLong {
        limit: u32,
    },
    ReadOnlyInReceive {
        addr: u64,
    },
    WritableInTransmit {
        addr: u64,
    },
    BufferOutside {
        addr: u64,
        len: u32,
    },
    EmptyChain {
        head: u16,
    },
    /// With mergeable buffers, a frame of `len` bytes would need more than
    /// [`MAX_MRG_CHAINS`] receive chains.
    ReceiveTooFragmented {
        len: usize,
    },
    /// The guest's memory file shrank or could not be faulted in (SIGBUS).
    MemoryGone,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use GuestError::*;
        match *self {
            AvailAhead { idx, last, size } => write!(
                f,
                "avail index is further ahead than the ring size (avail idx {idx}, last processed {last}, ring {size})"
            ),
            HeadOutOfTable { index, size } => {
                write!(f, "descriptor index out of the table ({index} of {size})")
            }
            NextOutOfTable { index, size } => {
                write!(f, "next descriptor index out of the table ({index} of {size})")
            }
            IndirectNotNegotiated => {
                write!(f, "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
            }
            IndirectMisplaced => write!(f, "indirect descriptor nested, chained or not first"),
            IndirectLength { len, ring } => write!(
                f,
                "indirect table length is not a multiple of 16 in range ({len} bytes, ring of {ring})"
            ),
            IndirectOutside { addr, len } => {
                write!(f, "indirect table outside guest memory ({addr:#x}+{len})")
            }
            ChainTooLong { limit } => write!(
                f,
                "descriptor chain loops or is longer than its table (limit {limit})"
            ),
            ReadOnlyInReceive { addr } => {
                write!(f, "read-only descriptor in a receive chain ({addr:#x})")
            }
            WritableInTransmit { addr } => {
                write!(f, "device-writable descriptor in a transmit chain ({addr:#x})")
            }
            BufferOutside { addr, len } => {
                write!(f, "descriptor buffer outside guest memory ({addr:#x}+{len})")
            }
            EmptyChain { head } => write!(f, "zero-length descriptor chain (head {head})"),
            ReceiveTooFragmented { len } => write!(
                f,
                "receive buffers too small: a {len}-byte frame needs more than {MAX_MRG_CHAINS} chains"
            ),
            MemoryGone => write!(
                f,
                "guest memory vanished under the ring (the memory file shrank or could not be faulted in)"
            ),
        }
    }
}

/// Why a ring cannot go live: its size or placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    Size(u32),
    Outside {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    Misaligned(RingAddrs),
    /// A packed ring's SET_VRING_BASE index past the ring.
    Base {
        base: u32,
        size: u32,
    },
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RingError::Size(s) => {
                write!(
                    f,
                    "ring size {s} is not in 1..={MAX_RING} (a power of two for split rings)"
                )
            }
            RingError::Outside { what, addr, len } => {
                write!(f, "{what} {addr:#x}+{len} is outside guest memory")
            }
            RingError::Misaligned(a) => write!(f, "ring addresses misaligned: {a:x?}"),
            RingError::Base { base, size } => {
                write!(
                    f,
                    "ring base {base:#x} names a descriptor past the ring of {size}"
                )
            }
        }
    }
}

/// Negotiated features that change how a ring is walked.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingFeatures {
    pub event_idx: bool,
    pub mrg_rxbuf: bool,
    pub indirect: bool,
    /// virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: usize,
    /// The longest frame the guest may send (the port's MTU, `port::max_frame`);
    /// longer ones are dropped and counted in [`RxCounts::mtu`].
    pub max_frame: usize,
    /// The guest may send offload requests (`VIRTIO_NET_F_CSUM` or `HOST_TSO*`
    /// negotiated): dequeue reads each frame's virtio-net header.
    pub host_offload: bool,
    /// What the guest takes in received frames (`GUEST_CSUM`, `GUEST_TSO4/6`,
    /// `GUEST_ECN`): enqueue writes a frame's offload header only if it covers it.
    pub guest_caps: Caps,
}

/// What a dequeue counted besides the frames: drops by reason, and frames that
/// carry offload requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCounts {
    /// Frames with offload metadata (`Traffic::rx_offload`).
    pub offload: u64,
    /// Dropped: an offload header that does not hold (`drop_offload`).
    pub bad_offload: u64,
    /// Spread over more descriptors than are copied, or no buffer large enough.
    pub oversize: u64,
    /// Longer than the port's MTU allows.
    pub mtu: u64,
    /// Longer than a small buffer while no large one was free.
    pub no_mbuf: u64,
}

/// Ring addresses as the frontend gave them (its virtual addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// A ring that passed validation, with host pointers into guest memory.
pub struct LiveRing {
    mask: u16,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    last_avail: u16,
    last_used: u16,
    feat: RingFeatures,
    /// Frames up to this long are copied into a small mbuf in line; longer ones go
    /// to `dequeue_long` (min of the MTU's frame and an mbuf's data room).
    fast_payload: u64,
    table: FastTable,
    hint: usize,
    /// How this ring interrupts its guest (never a write to the guest's fd from here:
    /// see `notify`).
    irq: Option<Irq>,
    /// Descriptor reads left in this burst for chains walked by `collect`.
    budget: u32,
    /// Used entries were published since the guest was last considered for an
    /// interrupt (the used index then). Dequeue settles this at its next call rather
    /// than at once: the fence the check needs would otherwise wait for this burst's
    /// stores to guest memory to reach the guest's core.
    owed: Option<u16>,
    error: Option<GuestError>,
    /// The guest's kick eventfd (a duplicate, closed with the ring), for an idle PMD
    /// thread to wait on (`arm_kick`).
    kick: Option<std::os::fd::OwnedFd>,
    /// Dirty-page logging while the guest migrates (`VHOST_F_LOG_ALL`): every page
    /// this ring writes is marked, once per burst.
    log: Option<Box<RingLog>>,
    /// Keeps the mappings the pointers above point into alive.
    mem: Arc<GuestMemory>,
}

// SAFETY: the pointers point into mappings kept alive by `mem`; a LiveRing is used
// by one thread at a time (its queue's PMD thread; for transmit, the tx lock holder or
// the sole PMD thread; the control thread only after a grace period, and in Drop).
unsafe impl Send for LiveRing {}

/// A descriptor of a guest-given indirect table that is not 8-aligned, read byte-wise.
///
/// # Safety
/// `p` must point at 16 readable bytes (inside guest memory).
#[cold]
#[inline(never)]
unsafe fn read_desc_unaligned(p: *const u8) -> Desc {
    // SAFETY: the caller gives 16 readable bytes at p; read once.
    let raw: [u8; 16] = unsafe { std::ptr::read_volatile(p as *const [u8; 16]) };
    Desc {
        addr: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(raw[14..16].try_into().unwrap()),
    }
}

/// Copies a chain's segments, after its first `hdr` bytes, into `dst`.
///
/// # Safety
/// Every segment must be `len` readable bytes, and `dst` must have at least as many
/// bytes as the segments hold after the header.
#[inline(never)]
pub(super) unsafe fn copy_segments(segs: &[Seg], hdr: u64, dst: &mut [u8]) {
    let mut skip = hdr;
    let mut off = 0usize;
    for s in segs {
        let mut len = s.len as u64;
        let mut src = s.ptr;
        if skip > 0 {
            let k = skip.min(len);
            skip -= k;
            len -= k;
            // SAFETY: k <= len, inside the segment.
            src = unsafe { src.add(k as usize) };
        }
        if len == 0 {
            continue;
        }
        // SAFETY: the segment lies in guest memory (checked in collect); dst has
        // payload bytes and the segments after the header add up to payload.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr().add(off), len as usize) };
        off += len as usize;
    }
}

/// Writes a virtio-net header for a frame in one chain: zeros, and num_buffers = 1
/// when the header has that field (12 bytes).
///
/// # Safety
/// `p` must have `hdr_len` (10 or 12) writable bytes.
#[inline(always)]
pub(super) unsafe fn write_net_header(p: *mut u8, hdr_len: usize) {
    // SAFETY: the caller gives hdr_len >= 10 writable bytes at p.
    unsafe {
        std::ptr::write_unaligned(p as *mut u64, 0);
        if hdr_len == 12 {
            std::ptr::write_unaligned(p.add(8) as *mut u32, u32::from_le_bytes([0, 0, 1, 0]));
        } else {
            std::ptr::write_unaligned(p.add(8) as *mut u16, 0);
        }
    }
}

/// Writes header and frame into one receive buffer: num_buffers (bytes 10-11 of a
/// 12-byte header) is 1, and with `OL` the frame's offload header goes first.
///
/// # Safety
/// `p` must have `hdr_len` (10 or 12) + `frame.len()` writable bytes.
#[inline(always)]
pub(super) unsafe fn fill_single<const OL: bool>(
    p: *mut u8,
    hdr_len: usize,
    frame: &[u8],
    net: &NetHdr,
) {
    // SAFETY: the caller gives hdr_len + frame.len() writable bytes at p.
    unsafe {
        write_net_header(p, hdr_len);
        if OL && !net.is_plain() {
            std::ptr::copy_nonoverlapping(net.to_bytes().as_ptr(), p, NetHdr::LEN);
        }
        std::ptr::copy_nonoverlapping(frame.as_ptr(), p.add(hdr_len), frame.len());
    }
}

/// The header of a frame that asks for no offload.
pub(super) const PLAIN: NetHdr = NetHdr {
    flags: 0,
    gso_type: 0,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
};

/// What `dequeue_long` made of a frame.
pub(super) enum Long {
    Frame(Mbuf),
    Drop(LongDrop),
    /// No buffer free: the frame stays on the ring.
    NoBuffer,
}

pub(super) enum LongDrop {
    Mtu,
    Oversize,
    NoBuffer,
}

/// Avail entries a burst reads ahead.
const AHEAD: usize = 32;

/// The next avail entries of a burst, read once: their heads, and for each that is
/// the common single-descriptor chain its checked segment (a null `ptr` otherwise).
struct Ahead {
    n: usize,
    heads: [u16; AHEAD],
    segs: [Seg; AHEAD],
}

/// One copied-out descriptor.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Clone, Copy)]
pub(super) struct Seg {
    pub(super) ptr: *mut u8,
    pub(super) len: u32,
}

pub(super) const NO_SEG: Seg = Seg {
    ptr: std::ptr::null_mut(),
    len: 0,
};

/// Drains a ring's kick eventfd after its PMD thread woke on it. One that cannot be
/// drained without blocking is given up: the ring is then polled on timeouts only.
pub(super) fn drain_kick(kick: &mut Option<std::os::fd::OwnedFd>) {
    use std::os::fd::AsRawFd;
    if let Some(k) = kick {
        if !crate::idle::drain_eventfd(k.as_raw_fd()) {
            tracing::warn!(
                "a kick eventfd cannot be read without blocking; polling the ring on timeouts"
            );
            *kick = None;
        }
    }
}

/// What became of one chain a guest transmitted.
pub(super) enum Taken {
    Frame(Mbuf),
    /// Dropped and counted: the chain is returned used.
    Dropped,
    /// No buffer free: the chain stays on the ring for the next poll.
    Wait,
}

/// Makes the frame in a transmitted chain's first `nseg` segments (`sizes`: bytes in
/// the segments stored, bytes in the whole chain) an mbuf, as either ring layout found
/// it: its virtio-net header (`fit.0` bytes) read and checked (`OL`), frames up to
/// `fit.1` bytes copied in line, longer ones through `dequeue_long`. The caller reads
/// `fit` once per burst. Drops are counted in `drops`, the
/// frame's bytes in `bytes`.
#[inline(always)]
pub(super) fn frame_from_chain<const OL: bool, const N: usize>(
    feat: &RingFeatures,
    (hdr, fast_payload): (u64, u64),
    cache: &mut MempoolCache,
    (segs, nseg): (&[Seg; N], usize),
    (stored, total): (u64, u64),
    (drops, bytes): (&mut RxCounts, &mut u64),
) -> Taken {
    let payload = total.saturating_sub(hdr);
    let net = if OL {
        match net_header(&segs[..nseg]) {
            Ok(h) => h,
            Err(d) => {
                match d {
                    LongDrop::Mtu => drops.mtu += 1,
                    _ => drops.bad_offload += 1,
                }
                return Taken::Dropped;
            }
        }
    } else {
        NetHdr::default()
    };
    let mut m = if payload > fast_payload || stored != total {
        let gso = OL && net.gso_type != GSO_NONE;
        match dequeue_long(feat, cache, &segs[..nseg], payload, stored != total, gso) {
            Long::Frame(m) => m,
            Long::Drop(d) => {
                match d {
                    LongDrop::Mtu => drops.mtu += 1,
                    LongDrop::Oversize => drops.oversize += 1,
                    LongDrop::NoBuffer => drops.no_mbuf += 1,
                }
                return Taken::Dropped;
            }
            Long::NoBuffer => return Taken::Wait,
        }
    } else {
        let Some(mut m) = cache.alloc() else {
            return Taken::Wait;
        };
        let dst = m.set_len(payload as usize);
        if nseg == 1 && segs[0].len as u64 >= hdr {
            // SAFETY: the segment lies in guest memory (checked) and holds hdr + payload
            // bytes; dst has payload bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    segs[0].ptr.add(hdr as usize),
                    dst.as_mut_ptr(),
                    payload as usize,
                )
            };
        } else {
            // SAFETY: every segment was checked in guest memory; dst has payload bytes,
            // what the segments hold after the header.
            unsafe { copy_segments(&segs[..nseg], hdr, dst) };
        }
        m
    };
    if OL && !net.is_plain() {
        m.set_offload(net);
        drops.offload += 1;
    }
    *bytes += payload;
    Taken::Frame(m)
}

/// A frame longer than the in-line path takes: over the MTU or `MAX_SEGS`
/// descriptors (dropped), else copied into a large buffer.
#[cold]
#[inline(never)]
pub(super) fn dequeue_long(
    feat: &RingFeatures,
    cache: &mut MempoolCache,
    segs: &[Seg],
    payload: u64,
    cut: bool,
    gso: bool,
) -> Long {
    if cut {
        return Long::Drop(LongDrop::Oversize);
    }
    // A TSO frame is longer than the MTU by design (its segments were checked).
    if payload > feat.max_frame as u64 && !gso {
        return Long::Drop(LongDrop::Mtu);
    }
    if payload > DATA_ROOM as u64 && cache.pool().large_capacity() == 0 {
        return Long::Drop(LongDrop::Oversize); // waiting would not help
    }
    let Some(mut m) = cache.alloc_for(payload as usize) else {
        // No small buffer: the frame waits, as in the in-line path. No large one:
        // dropped, so that a guest slow to take jumbo frames (holding large
        // buffers in its queues) cannot block other guests' rings behind one.
        return if payload > DATA_ROOM as u64 {
            Long::Drop(LongDrop::NoBuffer)
        } else {
            Long::NoBuffer
        };
    };
    if m.capacity() < payload as usize {
        cache.free(m);
        return Long::Drop(LongDrop::Oversize);
    }
    let dst = m.set_len(payload as usize);
    // SAFETY: collect checked every segment in guest memory; dst has payload bytes,
    // what the segments hold after the header.
    unsafe { copy_segments(segs, feat.hdr_len as u64, dst) };
    Long::Frame(m)
}

/// The virtio-net header at the start of a chain (its first 10 bytes, wherever the
/// segments split them), checked: an offload this switch takes; a bad one is
/// `Oversize` here, counted as `bad_offload` by the caller.
#[inline]
pub(super) fn net_header(segs: &[Seg]) -> Result<NetHdr, LongDrop> {
    let mut b = [0u8; NetHdr::LEN];
    let mut at = 0;
    for s in segs {
        let k = (s.len as usize).min(b.len() - at);
        // SAFETY: the segment lies in guest memory (checked by collect or
        // look_ahead) and has at least k bytes.
        unsafe { std::ptr::copy_nonoverlapping(s.ptr, b.as_mut_ptr().add(at), k) };
        at += k;
        if at == b.len() {
            break;
        }
    }
    let h = NetHdr::parse(&b);
    if h.is_plain() {
        return Ok(NetHdr::default());
    }
    // Its segments' length is checked against each output port's by the egress
    // step, from the real headers (the sender's hdr_len is only a hint).
    h.check().map_err(|_| LongDrop::Oversize)?;
    Ok(h)
}

/// The header a frame gets in a guest's receive ring: the constant plain one in a
/// burst without offload metadata (`OL` false: nothing is built or looked at per
/// frame), else, in `own`, as `offload_for_guest` decides. `None`: the frame is to be
/// dropped.
#[inline(always)]
pub(super) fn header_for_guest<'a, const OL: bool>(
    guest_caps: Caps,
    slot: &mut Option<Mbuf>,
    own: &'a mut NetHdr,
) -> Option<&'a NetHdr> {
    if !OL {
        return Some(&PLAIN);
    }
    *own = offload_for_guest(guest_caps, slot.as_mut().expect("tx slots are filled"))?;
    Some(own)
}

/// The header a frame with offload metadata gets in this guest's ring: its own,
/// when the ring negotiated what it asks for; else (the guest renegotiated since
/// the switch step looked) plain, with the checksum completed here. `None`: a TSO
/// frame the guest cannot take, or a checksum that does not fit the frame (drop).
#[inline]
pub(super) fn offload_for_guest(guest_caps: Caps, m: &mut Mbuf) -> Option<NetHdr> {
    let Some(h) = m.offload() else {
        return Some(NetHdr::default());
    };
    if guest_caps.covers(h.needs()) {
        return Some(h);
    }
    if h.gso_type != GSO_NONE {
        return None;
    }
    csum::complete(m.data_mut(), h.csum_start, h.csum_offset).ok()?;
    m.clear_offload();
    Some(NetHdr::default())
}

impl LiveRing {
    /// Validates a ring's placement and builds its live state.
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        feat: RingFeatures,
        irq: Option<Irq>,
    ) -> Result<LiveRing, RingError> {
        if size == 0 || size > MAX_RING || !size.is_power_of_two() {
            return Err(RingError::Size(size));
        }
        let s = size as u64;
        let desc_len = 16 * s;
        let avail_len = 6 + 2 * s;
        let used_len = 6 + 8 * s;
        let place = |what, addr, len| {
            mem.uva_to_host(addr, len)
                .ok_or(RingError::Outside { what, addr, len })
        };
        let desc = place("descriptor table", addrs.desc, desc_len)?;
        let avail = place("avail ring", addrs.avail, avail_len)?;
        let used = place("used ring", addrs.used, used_len)?;
        // Alignment of what we will access (the host pointers), not only of the
        // frontend's addresses: they differ if its user_addr and mmap_offset do.
        if !(desc as usize).is_multiple_of(16)
            || !(avail as usize).is_multiple_of(2)
            || !(used as usize).is_multiple_of(4)
        {
            return Err(RingError::Misaligned(addrs));
        }
        let table = mem.fast_table();
        let mut r = LiveRing {
            mask: (size - 1) as u16,
            desc,
            avail,
            used,
            last_avail: base,
            last_used: base,
            feat,
            fast_payload: feat.max_frame.min(DATA_ROOM) as u64,
            table,
            hint: 0,
            irq,
            budget: BURST_DESC_BUDGET,
            owed: None,
            error: None,
            kick: None,
            log: None,
            mem,
        };
        // This device completes every avail entry in the burst that consumed it, so
        // the used index in guest memory is exactly where processing stopped. QEMU
        // sends that as the base; DPDK virtio-user always sends 0, also when it comes
        // back after a reconnect with its rings as they were. Trust the used index, as
        // DPDK's vhost library does (the guest can only hurt itself with it: every
        // later read is checked against the ring size).
        let used_idx = r.read_used_idx();
        if used_idx != base {
            // Debug, not warn: DPDK virtio-user does this on every reconnect, and a
            // frontend repeating SET_VRING_BASE must not fill the log.
            tracing::debug!(
                base,
                used_idx,
                "vring base differs from the used index; continuing from the used index"
            );
        }
        r.last_avail = used_idx;
        r.last_used = used_idx;
        if !feat.event_idx {
            r.write_used_flags(VRING_USED_F_NO_NOTIFY);
        }
        Ok(r)
    }

    #[inline(always)]
    fn ring_size(&self) -> u32 {
        self.mask as u32 + 1
    }

    /// Gives the ring its guest's kick eventfd (see `arm_kick`).
    pub fn with_kick(mut self, kick: Option<std::os::fd::OwnedFd>) -> LiveRing {
        self.kick = kick;
        self
    }

    /// Has the ring mark the guest pages it writes in `area` (live migration);
    /// `used_gpa` is the used ring's guest-physical address (`log_guest_addr`), or
    /// `None` to find it from the ring's placement. The used ring is marked at once:
    /// `new` may have written its flags.
    pub fn with_log(mut self, area: Arc<DirtyLog>, used_gpa: Option<u64>) -> LiveRing {
        let used_len = 6 + 8 * self.ring_size() as u64;
        let gpa = used_gpa.or_else(|| self.table.host_to_gpa(self.used));
        let Some(gpa) = gpa else {
            debug_assert!(false, "the used ring was validated inside guest memory");
            return self;
        };
        let mut log = Box::new(RingLog::new(area, self.table, gpa, used_len));
        log.wrote_used();
        log.flush();
        self.log = Some(log);
        self
    }

    /// Whether this ring marks what it writes in a dirty log.
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// After a write to the used ring: marks it, and writes out what the burst marked.
    #[cold]
    fn log_used_now(&mut self) {
        if let Some(l) = self.log.as_deref_mut() {
            l.wrote_used();
            l.flush();
        }
    }

    /// Before its PMD thread sleeps: asks the guest to kick when it adds buffers
    /// (`avail_event` at the next index with EVENT_IDX, else `VRING_USED_F_NO_NOTIFY`
    /// cleared), then looks again: the kick fd to wait on (open while the ring lives),
    /// or `Pending` when buffers came meanwhile, or `Timeout` without a kick fd
    /// (nothing armed in either case).
    pub fn arm_kick(&mut self) -> crate::idle::Wake {
        use crate::idle::Wake;
        use std::os::fd::AsRawFd;
        let Some(fd) = self.kick.as_ref().map(|k| k.as_raw_fd()) else {
            return Wake::Timeout;
        };
        if self.feat.event_idx {
            self.write_avail_event(self.last_avail);
        } else {
            self.write_used_flags(0);
        }
        if self.log.is_some() {
            self.log_used_now();
        }
        // The request must be visible before the avail index is read again, or a
        // buffer added in between is neither seen nor kicked about.
        fence(Ordering::SeqCst);
        if self.read_avail_idx() != self.last_avail {
            self.disarm_kick(false);
            return Wake::Pending;
        }
        Wake::Fd(fd)
    }

    /// After the sleep: kicks off again (`avail_event` put a whole index space behind,
    /// so the guest comes to it only after 65535 more buffers), and the kick fd
    /// drained if it was readable (`kicked`). A kick fd that cannot be drained
    /// without blocking is given up: the ring is then polled on timeouts only.
    pub fn disarm_kick(&mut self, kicked: bool) {
        if self.feat.event_idx {
            self.write_avail_event(self.last_avail.wrapping_sub(1));
        } else {
            self.write_used_flags(VRING_USED_F_NO_NOTIFY);
        }
        if self.log.is_some() {
            self.log_used_now();
        }
        if kicked {
            drain_kick(&mut self.kick);
        }
    }

    /// The next avail index to process (what GET_VRING_BASE returns).
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// The rule the guest broke, once it broke one; the ring does nothing after that.
    pub fn error(&self) -> Option<GuestError> {
        self.error
    }

    #[cold]
    fn fail(&mut self, e: GuestError) {
        self.error = Some(e);
    }

    #[inline(always)]
    fn read_avail_idx(&self) -> u16 {
        // SAFETY: avail+2..avail+4 lies inside the validated avail ring, 2-aligned.
        unsafe { std::ptr::read_volatile(self.avail.add(2) as *const u16) }
    }
    #[inline(always)]
    fn read_avail_flags(&self) -> u16 {
        // SAFETY: avail+0..2 inside the validated avail ring.
        unsafe { std::ptr::read_volatile(self.avail as *const u16) }
    }
    #[inline(always)]
    fn read_avail_entry(&self, i: u16) -> u16 {
        let off = 4 + 2 * (i & self.mask) as usize;
        // SAFETY: (i & mask) < ring size, so the entry is inside the validated avail ring.
        unsafe { std::ptr::read_volatile(self.avail.add(off) as *const u16) }
    }
    #[inline(always)]
    fn read_used_event(&self) -> u16 {
        let off = 4 + 2 * self.ring_size() as usize;
        // SAFETY: used_event follows the ring entries inside the validated avail ring (6 + 2*size bytes).
        unsafe { std::ptr::read_volatile(self.avail.add(off) as *const u16) }
    }
    #[inline(always)]
    fn read_used_idx(&self) -> u16 {
        // SAFETY: used+2..4 inside the validated used ring, 4-aligned.
        unsafe { std::ptr::read_volatile(self.used.add(2) as *const u16) }
    }
    #[inline(always)]
    fn write_used_idx(&mut self, v: u16) {
        // SAFETY: as in read_used_idx.
        unsafe { std::ptr::write_volatile(self.used.add(2) as *mut u16, v) }
    }
    #[inline(always)]
    fn write_avail_event(&mut self, v: u16) {
        let off = 4 + 8 * self.ring_size() as usize;
        // SAFETY: avail_event follows the used elements inside the validated used ring
        // (6 + 8*size bytes), 2-aligned.
        unsafe { std::ptr::write_volatile(self.used.add(off) as *mut u16, v) }
    }
    fn write_used_flags(&mut self, v: u16) {
        // SAFETY: used+0..2 inside the validated used ring.
        unsafe { std::ptr::write_volatile(self.used as *mut u16, v) }
    }
    #[inline(always)]
    fn write_used_elem(&mut self, i: u16, id: u16, len: u32) {
        let off = 4 + 8 * (i & self.mask) as usize;
        // SAFETY: (i & mask) < ring size: the 8-byte element is inside the validated used ring, 4-aligned.
        unsafe {
            std::ptr::write_volatile(self.used.add(off) as *mut u32, id as u32);
            std::ptr::write_volatile(self.used.add(off + 4) as *mut u32, len);
        }
    }

    /// Number of new avail entries, checked against the ring size.
    #[inline(always)]
    fn pending(&self) -> Result<u16, GuestError> {
        let idx = self.read_avail_idx();
        if self.mem.is_poisoned() {
            // The read above may have faulted and found zeros (see `sigbus`).
            return Err(GuestError::MemoryGone);
        }
        let n = idx.wrapping_sub(self.last_avail);
        if n as u32 > self.ring_size() {
            return Err(GuestError::AvailAhead {
                idx,
                last: self.last_avail,
                size: self.ring_size(),
            });
        }
        // Read descriptors only after seeing the index that published them.
        fence(Ordering::Acquire);
        Ok(n)
    }

    #[inline(always)]
    fn read_desc(&self, table: *const u8, i: u16) -> Desc {
        let p = table.wrapping_add(16 * i as usize);
        if !(p as usize).is_multiple_of(8) {
            // SAFETY: as below, the 16 bytes at p are inside guest memory.
            return unsafe { read_desc_unaligned(p) };
        }
        // SAFETY: callers pass i < the table's entry count and a table that lies in guest
        // memory, so the 16 bytes are inside it; p is 8-aligned. Each word is read once
        // (volatile), so the guest cannot change a field between its check and its use.
        let (a, b) = unsafe {
            (
                std::ptr::read_volatile(p as *const u64),
                std::ptr::read_volatile(p.add(8) as *const u64),
            )
        };
        let b = u64::from_le(b);
        Desc {
            addr: u64::from_le(a),
            len: b as u32,
            flags: (b >> 32) as u16,
            next: (b >> 48) as u16,
        }
    }

    /// Reads the next `n` (at most [`AHEAD`]) avail entries and prefetches their
    /// descriptors, all at once; then checks each with `single` and prefetches the
    /// first and last line of its buffer. A burst so waits about twice for the guest's
    /// core rather than twice per frame. Each entry and descriptor is read once here
    /// and used from the result: the guest cannot change them between check and use.
    #[inline]
    fn look_ahead(&mut self, n: u16, writable: bool) -> Ahead {
        let n = (n as usize).min(AHEAD);
        let size = self.ring_size();
        prefetch::write(self.used_elem_ptr(self.last_used));
        let mut a = Ahead {
            n,
            heads: [0; AHEAD],
            segs: [NO_SEG; AHEAD],
        };
        for (i, h) in a.heads[..n].iter_mut().enumerate() {
            *h = self.read_avail_entry(self.last_avail.wrapping_add(i as u16));
            if (*h as u32) < size {
                // SAFETY: h < ring size: the descriptor lies in the validated table.
                prefetch::read(unsafe { self.desc.add(16 * *h as usize) });
            }
        }
        for i in 0..n {
            if let Some(seg) = self.single(a.heads[i], writable) {
                let last = seg.ptr.wrapping_add(seg.len.min(128) as usize - 1);
                if writable {
                    prefetch::write(seg.ptr);
                    prefetch::write(last);
                } else {
                    prefetch::read(seg.ptr);
                    prefetch::read(last);
                }
                a.segs[i] = seg;
            }
        }
        a
    }

    #[inline(always)]
    fn used_elem_ptr(&self, i: u16) -> *const u8 {
        // SAFETY: (i & mask) < ring size: inside the validated used ring.
        unsafe { self.used.add(4 + 8 * (i & self.mask) as usize) }
    }

    /// The common chain, checked in line: `head` is one descriptor (no NEXT, no
    /// INDIRECT) in the right direction, non-empty, inside guest memory. Anything
    /// else returns `None` and goes to `collect`, which reads and checks it all again.
    #[inline(always)]
    fn single(&mut self, head: u16, writable: bool) -> Option<Seg> {
        if head as u32 >= self.ring_size() {
            return None;
        }
        let d = self.read_desc(self.desc, head);
        let want = if writable { VRING_DESC_F_WRITE } else { 0 };
        let mask = VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE;
        if d.flags & mask != want || d.len == 0 {
            return None;
        }
        let ptr = self.table.translate(d.addr, d.len, &mut self.hint)?;
        Some(Seg { ptr, len: d.len })
    }

    /// Walks the chain at `head`, checking every descriptor, and stores as many
    /// translated segments as `segs` holds. Returns (segments stored, bytes in them, bytes in the chain).
    /// Every descriptor read is taken from the burst's budget (see `has_budget`).
    #[inline(never)]
    fn collect(
        &mut self,
        head: u16,
        writable: bool,
        segs: &mut [Seg],
    ) -> Result<(usize, u64, u64), GuestError> {
        let mut table = self.desc;
        let mut table_len = self.ring_size();
        let mut idx = head;
        if idx as u32 >= table_len {
            return Err(GuestError::HeadOutOfTable {
                index: idx,
                size: table_len,
            });
        }
        // Descriptors read, indirect one included: bounded by the table and MAX_CHAIN.
        let mut seen = 0u32;
        let mut indirect = false;
        let (mut nseg, mut stored, mut total) = (0usize, 0u64, 0u64);
        loop {
            seen += 1;
            if seen > table_len.min(MAX_CHAIN) + indirect as u32 {
                self.budget = self.budget.saturating_sub(seen);
                return Err(GuestError::ChainTooLong {
                    limit: table_len.min(MAX_CHAIN),
                });
            }
            let d = self.read_desc(table, idx);
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                (table, table_len) = self.indirect_table(&d, indirect || seen != 1)?;
                indirect = true;
                idx = 0;
                continue;
            }
            if (d.flags & VRING_DESC_F_WRITE != 0) != writable {
                return Err(if writable {
                    GuestError::ReadOnlyInReceive { addr: d.addr }
                } else {
                    GuestError::WritableInTransmit { addr: d.addr }
                });
            }
            let ptr = self.table.translate(d.addr, d.len, &mut self.hint).ok_or(
                GuestError::BufferOutside {
                    addr: d.addr,
                    len: d.len,
                },
            )?;
            total += d.len as u64;
            if nseg < segs.len() {
                segs[nseg] = Seg { ptr, len: d.len };
                nseg += 1;
                stored += d.len as u64;
            }
            if d.flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            idx = d.next;
            if idx as u32 >= table_len {
                return Err(GuestError::NextOutOfTable {
                    index: idx,
                    size: table_len,
                });
            }
        }
        self.budget = self.budget.saturating_sub(seen);
        if total == 0 {
            return Err(GuestError::EmptyChain { head });
        }
        Ok((nseg, stored, total))
    }

    /// Checks an indirect descriptor (`misplaced`: nested, or not the chain's first)
    /// and returns its table and entry count.
    fn indirect_table(
        &mut self,
        d: &Desc,
        misplaced: bool,
    ) -> Result<(*const u8, u32), GuestError> {
        if !self.feat.indirect {
            return Err(GuestError::IndirectNotNegotiated);
        }
        if misplaced || d.flags & VRING_DESC_F_NEXT != 0 {
            return Err(GuestError::IndirectMisplaced);
        }
        // Longer than the ring is refused (Linux's vhost does the same), so an indirect
        // chain costs no more reads than a direct one.
        if d.len == 0 || !d.len.is_multiple_of(16) || d.len / 16 > self.ring_size() {
            return Err(GuestError::IndirectLength {
                len: d.len,
                ring: self.ring_size(),
            });
        }
        let t = self.table.translate(d.addr, d.len, &mut self.hint).ok_or(
            GuestError::IndirectOutside {
                addr: d.addr,
                len: d.len,
            },
        )?;
        Ok((t, d.len / 16))
    }

    /// Whether the burst may walk one more full chain (see [`BURST_DESC_BUDGET`]).
    #[inline(always)]
    fn has_budget(&self) -> bool {
        self.budget > MAX_CHAIN
    }

    /// Moves up to `out.len()` frames the guest transmitted into fresh mbufs (large
    /// ones for frames longer than an mbuf's data room). Frames over the MTU, or over
    /// [`MAX_SEGS`] descriptors, are dropped and counted in `drops`; when the pool
    /// runs dry, the rest stay on the ring. First it interrupts the guest if the
    /// previous call published used entries the guest asked to hear about.
    /// Returns the number of mbufs stored at the front of `out` (their bytes are added
    /// to `bytes`).
    #[inline]
    pub fn dequeue(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        drops: &mut RxCounts,
        bytes: &mut u64,
    ) -> usize {
        // Rings without host offloads (testpmd's, a guest with them off) run the burst
        // without a header read per frame.
        if self.feat.host_offload {
            self.dequeue_burst::<true>(cache, out, drops, bytes)
        } else {
            self.dequeue_burst::<false>(cache, out, drops, bytes)
        }
    }

    #[inline(always)]
    fn dequeue_burst<const OL: bool>(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        drops: &mut RxCounts,
        bytes: &mut u64,
    ) -> usize {
        if self.error.is_some() {
            return 0;
        }
        self.settle();
        self.budget = BURST_DESC_BUDGET;
        let n = match self.pending() {
            Ok(n) => n.min(out.len() as u16),
            Err(e) => {
                self.fail(e);
                return 0;
            }
        };
        if n == 0 {
            return 0;
        }
        let n = n.min(AHEAD as u16);
        let ahead = self.look_ahead(n, false);
        let mut segs = [NO_SEG; MAX_SEGS];
        let mut got = 0usize;
        let mut done = 0u16;
        let fit = (self.feat.hdr_len as u64, self.fast_payload);
        while done < n {
            let head = ahead.heads[done as usize];
            let fast = ahead.segs[done as usize];
            let (nseg, stored, total) = if !fast.ptr.is_null() {
                segs[0] = fast;
                (1, fast.len as u64, fast.len as u64)
            } else {
                if !self.has_budget() {
                    break; // the rest waits for the next poll
                }
                match self.collect(head, false, &mut segs) {
                    Ok(v) => v,
                    Err(e) => {
                        self.fail(e);
                        break;
                    }
                }
            };
            match frame_from_chain::<OL, MAX_SEGS>(
                &self.feat,
                fit,
                cache,
                (&segs, nseg),
                (stored, total),
                (drops, bytes),
            ) {
                Taken::Frame(m) => {
                    out[got] = Some(m);
                    got += 1;
                }
                Taken::Dropped => {}
                Taken::Wait => break, // an empty pool loses nothing: the rest waits
            }
            self.write_used_elem(self.last_used.wrapping_add(done), head, 0);
            done += 1;
        }
        if self.mem.is_poisoned() {
            // Some of these frames were read from memory that vanished: deliver none.
            for m in out[..got].iter_mut() {
                cache.free(m.take().expect("stored above"));
            }
            got = 0;
            self.fail(GuestError::MemoryGone);
        }
        // A ring the guest just broke is not polled again: settle it now.
        self.publish_used(done, done, self.error.is_none());
        got
    }

    /// Whether used entries were published that the guest was not yet considered for an
    /// interrupt about (the control thread passes this on when it replaces the ring).
    pub fn owes(&self) -> bool {
        self.owed.is_some()
    }

    /// Interrupts the guest for used entries published earlier, if it asked for it.
    #[inline]
    pub fn settle(&mut self) {
        if let Some(old) = self.owed.take() {
            self.maybe_signal(old, self.last_used);
        }
    }

    /// Consumes `n` avail entries whose used elements are written, publishes them and
    /// signals the guest if it asked for it, at once or (`defer`) at the next `settle`.
    #[inline]
    fn publish_used(&mut self, n_avail: u16, n_used: u16, defer: bool) {
        self.last_avail = self.last_avail.wrapping_add(n_avail);
        if n_used == 0 {
            return;
        }
        let old = self.last_used;
        let new = old.wrapping_add(n_used);
        self.last_used = new;
        // Used elements must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.write_used_idx(new);
        if self.log.is_some() {
            self.log_used_now();
        }
        if defer {
            self.owed.get_or_insert(old);
        } else {
            self.maybe_signal(old, new);
        }
    }

    #[inline]
    fn maybe_signal(&self, old: u16, new: u16) {
        let Some(irq) = &self.irq else { return };
        let notify = if self.feat.event_idx {
            // The used index store must be visible before reading where the guest wants
            // its next interrupt, or an interrupt can be missed.
            fence(Ordering::SeqCst);
            let ev = self.read_used_event();
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            fence(Ordering::SeqCst);
            self.read_avail_flags() & VRING_AVAIL_F_NO_INTERRUPT == 0
        };
        if notify {
            irq.raise();
        }
    }

    /// Copies frames from the front of `pkts` into the guest's receive buffers.
    /// Returns how many were consumed: delivered, or dropped because the guest's
    /// buffer cannot hold them (counted in `too_big`). Stops at the first frame for
    /// which the ring has no room; that frame and the rest stay in `pkts`.
    ///
    /// As DPDK's `virtio_dev_rx` shapes it: the common one-descriptor chain is copied
    /// in line; any other frame first reserves its chains (`reserve`), then is copied
    /// into them (`copy_reserved`), then completed (used elements). Nothing of a frame
    /// is written to the guest before all its chains are known to fit.
    #[inline]
    pub fn enqueue(
        &mut self,
        pkts: &mut [Option<Mbuf>],
        cache: &mut MempoolCache,
        bytes: &mut u64,
        too_big: &mut u64,
    ) -> usize {
        self.enqueue_burst::<false>(pkts, cache, bytes, too_big)
    }

    /// `enqueue` for a burst that may hold frames with offload metadata: their
    /// virtio-net header says what the guest is to take as it is (a partial checksum,
    /// a TSO frame). A frame asking for what this ring did not negotiate (the guest
    /// renegotiated since the switch step looked) has its checksum completed here, or,
    /// a TSO frame, is dropped and counted in `too_big`.
    pub fn enqueue_offload(
        &mut self,
        pkts: &mut [Option<Mbuf>],
        cache: &mut MempoolCache,
        bytes: &mut u64,
        too_big: &mut u64,
    ) -> usize {
        self.enqueue_burst::<true>(pkts, cache, bytes, too_big)
    }

    #[inline(always)]
    fn enqueue_burst<const OL: bool>(
        &mut self,
        pkts: &mut [Option<Mbuf>],
        cache: &mut MempoolCache,
        bytes: &mut u64,
        too_big: &mut u64,
    ) -> usize {
        if self.error.is_some() {
            return 0;
        }
        let avail = match self.pending() {
            Ok(n) => n,
            Err(e) => {
                self.fail(e);
                return 0;
            }
        };
        if avail == 0 || pkts.is_empty() {
            return 0;
        }
        self.budget = BURST_DESC_BUDGET;
        let ahead = self.look_ahead(avail.min(pkts.len() as u16), true);
        // Made on the first frame that needs it: the common path never touches it.
        let mut rsv: Option<Reserved> = None;
        let mut used = 0u16; // avail entries consumed and used elements written
        let mut consumed = 0usize;
        let mut own = NetHdr::default();
        for slot in pkts.iter_mut() {
            // Plain bursts refer to one constant header: nothing is built per frame.
            let Some(net) = header_for_guest::<OL>(self.feat.guest_caps, slot, &mut own) else {
                *too_big += 1;
                consumed += 1;
                cache.free(slot.take().expect("checked"));
                continue;
            };
            let frame = slot.as_ref().expect("tx slots are filled").data();
            if (used as usize) < ahead.n && self.copy_single::<OL>(&ahead, used, frame, net) {
                used += 1;
            } else {
                let head_at = |k: u16| {
                    if ((used + k) as usize) < ahead.n {
                        Some(ahead.heads[(used + k) as usize])
                    } else {
                        None
                    }
                };
                let rsv = rsv.get_or_insert_with(Reserved::new);
                match self.reserve(frame.len(), avail - used, head_at, used, rsv) {
                    Ok(true) => {
                        // SAFETY: reserve checked every segment: writable guest memory
                        // with room for the header and the frame.
                        unsafe { copy_reserved(rsv, self.feat.hdr_len, frame, net) };
                        if let Some(l) = self.log.as_deref_mut() {
                            log_reserved(l, rsv, self.feat.hdr_len + frame.len());
                        }
                        for c in 0..rsv.chains {
                            let (head, len) = (rsv.heads[c], rsv.written[c]);
                            self.write_used_elem(self.last_used.wrapping_add(used), head, len);
                            used += 1;
                        }
                    }
                    Ok(false) => {
                        // One chain per frame and it is too small: the frame is dropped,
                        // the chain left for a frame that fits.
                        *too_big += 1;
                        consumed += 1;
                        cache.free(slot.take().expect("checked"));
                        continue;
                    }
                    Err(None) => break, // no room (or budget): this frame waits
                    Err(Some(e)) => {
                        self.fail(e);
                        break;
                    }
                }
            }
            *bytes += frame.len() as u64;
            consumed += 1;
            cache.free(slot.take().expect("checked"));
        }
        if self.mem.is_poisoned() {
            self.fail(GuestError::MemoryGone);
        }
        if self.log.is_some() {
            self.log_singles(&ahead, used);
        }
        self.publish_used(used, used, false);
        consumed
    }

    /// Dirty logging, once per burst: marks the one-descriptor buffers of the
    /// look-ahead's first `used` entries (`copy_single` writes those; a frame that
    /// went to `reserve` instead marked its own segments, and marking a buffer twice,
    /// or whole, is harmless).
    #[cold]
    #[inline(never)]
    fn log_singles(&mut self, ahead: &Ahead, used: u16) {
        let Some(l) = self.log.as_deref_mut() else {
            return;
        };
        // At most what one frame can write (a guest's buffer may be far longer).
        let most = self.feat.hdr_len + crate::mempool::LARGE_DATA_ROOM;
        for seg in &ahead.segs[..ahead.n.min(used as usize)] {
            if !seg.ptr.is_null() {
                l.wrote(seg.ptr, (seg.len as usize).min(most));
            }
        }
    }

    /// The common case: the look-ahead's entry `k` is one writable descriptor with room
    /// for header and frame. Copies and writes its used element; false if it is not.
    #[inline(always)]
    fn copy_single<const OL: bool>(
        &mut self,
        ahead: &Ahead,
        k: u16,
        frame: &[u8],
        net: &NetHdr,
    ) -> bool {
        let hdr_len = self.feat.hdr_len;
        let need = hdr_len + frame.len();
        let seg = ahead.segs[k as usize];
        if seg.ptr.is_null() || (seg.len as usize) < need || (hdr_len != 12 && hdr_len != 10) {
            return false;
        }
        // SAFETY: seg is writable guest memory (checked) with room for need = hdr_len
        // (12 or 10) + frame bytes.
        unsafe { fill_single::<OL>(seg.ptr, hdr_len, frame, net) };
        self.write_used_elem(
            self.last_used.wrapping_add(k),
            ahead.heads[k as usize],
            need as u32,
        );
        true
    }

    /// Reserves the receive chains a frame of `len` bytes (plus header) needs, from
    /// the `room` avail entries after the `done` already used in this burst (`head_at`
    /// gives those the look-ahead read). Ok(true): reserved in `rsv`; Ok(false): the
    /// frame does not fit one chain and mergeable buffers are off; Err(None): not
    /// enough room or budget now; Err(Some): the guest broke a rule.
    #[inline(never)]
    fn reserve(
        &mut self,
        len: usize,
        room: u16,
        head_at: impl Fn(u16) -> Option<u16>,
        done: u16,
        rsv: &mut Reserved,
    ) -> Result<bool, Option<GuestError>> {
        let need = (self.feat.hdr_len + len) as u64;
        rsv.clear();
        let mut have = 0u64;
        while have < need {
            let k = rsv.chains as u16;
            if k >= room || !self.has_budget() {
                return Err(None);
            }
            if rsv.full() {
                return Err(Some(GuestError::ReceiveTooFragmented { len }));
            }
            let head = head_at(k)
                .unwrap_or_else(|| self.read_avail_entry(self.last_avail.wrapping_add(done + k)));
            let (n, stored, _) = self
                .collect(head, true, &mut rsv.segs[rsv.nseg..])
                .map_err(Some)?;
            if !self.feat.mrg_rxbuf && stored < need {
                return Ok(false);
            }
            rsv.push_chain(head, 1, n, stored.min(need - have) as u32);
            have += stored;
        }
        Ok(true)
    }
}

/// Segments most receive chains of one frame may bring (over all its chains).
const RESERVE_SEGS: usize = 256;

/// The receive chains reserved for one frame: heads (a packed ring's buffer ids),
/// the descriptors each took (packed rings), their segments in order, and how many
/// bytes each chain gets.
pub(super) struct Reserved {
    pub(super) chains: usize,
    pub(super) heads: [u16; MAX_MRG_CHAINS as usize],
    pub(super) descs: [u16; MAX_MRG_CHAINS as usize],
    pub(super) written: [u32; MAX_MRG_CHAINS as usize],
    pub(super) nseg: usize,
    pub(super) segs: [Seg; RESERVE_SEGS],
}

impl Reserved {
    pub(super) fn new() -> Reserved {
        Reserved {
            chains: 0,
            heads: [0; MAX_MRG_CHAINS as usize],
            descs: [0; MAX_MRG_CHAINS as usize],
            written: [0; MAX_MRG_CHAINS as usize],
            nseg: 0,
            segs: [NO_SEG; RESERVE_SEGS],
        }
    }
    pub(super) fn clear(&mut self) {
        self.chains = 0;
        self.nseg = 0;
    }
    /// Whether another chain may be reserved (`MAX_MRG_CHAINS`, and room for segments).
    pub(super) fn full(&self) -> bool {
        self.chains == MAX_MRG_CHAINS as usize || self.nseg == self.segs.len()
    }
    pub(super) fn push_chain(&mut self, head: u16, descs: u16, nseg: usize, bytes: u32) {
        self.heads[self.chains] = head;
        self.descs[self.chains] = descs;
        self.written[self.chains] = bytes;
        self.chains += 1;
        self.nseg += nseg;
    }
}

/// Dirty logging of a frame `copy_reserved` wrote: `len` bytes (header and frame), in
/// order over the reserved segments.
#[cold]
#[inline(never)]
pub(super) fn log_reserved(l: &mut RingLog, rsv: &Reserved, mut len: usize) {
    for sg in &rsv.segs[..rsv.nseg] {
        let k = len.min(sg.len as usize);
        l.wrote(sg.ptr, k);
        len -= k;
        if len == 0 {
            break;
        }
    }
}

/// Writes the virtio-net header (num_buffers = the chains reserved) and the frame
/// across the reserved segments, in order.
///
/// # Safety
/// Every reserved segment must be writable guest memory of its `len`, and together
/// they must hold `hdr_len + frame.len()` bytes.
pub(super) unsafe fn copy_reserved(rsv: &Reserved, hdr_len: usize, frame: &[u8], net: &NetHdr) {
    let mut hdr = [0u8; 12];
    hdr[..NetHdr::LEN].copy_from_slice(&net.to_bytes());
    hdr[10..12].copy_from_slice(&(rsv.chains as u16).to_le_bytes());
    let mut src: [&[u8]; 2] = [&hdr[..hdr_len], frame];
    let mut which = 0;
    for s in &rsv.segs[..rsv.nseg] {
        let mut pos = 0usize;
        while pos < s.len as usize && which < 2 {
            let k = (s.len as usize - pos).min(src[which].len());
            // SAFETY: pos + k <= s.len, inside the writable segment; src has k bytes.
            unsafe { std::ptr::copy_nonoverlapping(src[which].as_ptr(), s.ptr.add(pos), k) };
            pos += k;
            src[which] = &src[which][k..];
            if src[which].is_empty() {
                which += 1;
            }
        }
        if which == 2 {
            break;
        }
    }
}

impl Drop for LiveRing {
    /// A ring taken down owes the guest no interrupt it asked for, and leaves no
    /// dirty page unmarked.
    fn drop(&mut self) {
        self.settle();
        if let Some(l) = self.log.as_deref_mut() {
            l.flush();
        }
    }
}
