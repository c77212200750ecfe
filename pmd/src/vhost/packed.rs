//! Packed virtqueues (`VIRTIO_F_RING_PACKED`, virtio 1.1) as the device side sees
//! them: one ring of 16-byte descriptors that the driver makes available and the
//! device marks used in place, each side with a wrap counter, and two event
//! suppression areas.
//!
//! The split ring's rules hold here too (see `virtq`): each descriptor is read once
//! into a local copy and checked (availability against the wrap counter, direction,
//! bounds in guest memory, chain length, indirect tables); a violation stops the
//! ring with a `GuestError`, and nothing outside the guest's regions is touched.
//! What a chain holds becomes a frame (and a frame fills receive chains) through the
//! same functions as in the split ring: offload headers, large buffers and
//! mergeable buffers behave alike in both layouts.
//!
//! This device completes chains in the order it takes them, in the burst that took
//! them: the used descriptors of a burst are written in place, the first one's flags
//! last (after a release fence), so the driver sees a burst whole or not at all.

use super::log::{DirtyLog, RingLog};
use super::mem::{FastTable, GuestMemory};
use super::notify::Irq;
use super::ring::RingBase;
use super::virtq::{
    copy_reserved, drain_kick, fill_single, frame_from_chain, header_for_guest, log_reserved,
    GuestError, Reserved, RingAddrs, RingError, RingFeatures, RxCounts, Seg, Taken,
    BURST_DESC_BUDGET, MAX_CHAIN, MAX_RING, MAX_SEGS, NO_SEG,
};
use crate::mempool::{Mbuf, MempoolCache, DATA_ROOM};
use crate::offload::NetHdr;
use crate::prefetch;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_ring;

const F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
const F_AVAIL: u16 = 1 << virtio_ring::VRING_PACKED_DESC_F_AVAIL;
const F_USED: u16 = 1 << virtio_ring::VRING_PACKED_DESC_F_USED;
const EVENT_ENABLE: u16 = virtio_ring::VRING_PACKED_EVENT_FLAG_ENABLE as u16;
const EVENT_DISABLE: u16 = virtio_ring::VRING_PACKED_EVENT_FLAG_DISABLE as u16;
const EVENT_DESC: u16 = virtio_ring::VRING_PACKED_EVENT_FLAG_DESC as u16;
const WRAP_BIT: u16 = 1 << virtio_ring::VRING_PACKED_EVENT_F_WRAP_CTR;
/// Descriptors a burst looks ahead at to prefetch their buffers.
const AHEAD: usize = 32;

/// A place in the ring: a descriptor index and the wrap counter of its lap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    idx: u16,
    wrap: bool,
}

impl Pos {
    /// As `SET_VRING_BASE` and the event areas write it: index in bits 0-14, wrap
    /// counter in bit 15.
    fn from_bits(v: u16) -> Pos {
        Pos {
            idx: v & !WRAP_BIT,
            wrap: v & WRAP_BIT != 0,
        }
    }
    fn bits(self) -> u16 {
        self.idx | if self.wrap { WRAP_BIT } else { 0 }
    }
    /// `n` (at most the ring's size) descriptors further.
    #[inline(always)]
    fn advance(self, n: u16, size: u16) -> Pos {
        // idx < size <= 32768 and n <= size: no overflow in 16 bits.
        let k = self.idx + n;
        let over = k >= size;
        Pos {
            idx: if over { k - size } else { k },
            wrap: self.wrap ^ over,
        }
    }
}

/// One descriptor as read (once) from the ring or an indirect table.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

impl Desc {
    /// Whether the driver made it available in the lap of wrap counter `wrap`.
    #[inline(always)]
    fn avail_in(&self, wrap: bool) -> bool {
        self.flags & (F_AVAIL | F_USED) == if wrap { F_AVAIL } else { F_USED }
    }
    /// Whether the device marked it used in the lap of wrap counter `wrap`.
    fn used_in(&self, wrap: bool) -> bool {
        (self.flags & F_AVAIL != 0) == wrap && (self.flags & F_USED != 0) == wrap
    }
}

/// A chain taken from the ring: its segments (the first `nseg` of the caller's),
/// bytes in them and in the whole chain, its buffer id, the descriptors it took in
/// the ring and where the next chain starts.
#[derive(Clone, Copy, Debug)]
struct Chain {
    nseg: usize,
    stored: u64,
    total: u64,
    id: u16,
    count: u16,
    next: Pos,
}

/// The next chains of a burst that are one descriptor each, read once by
/// `look_ahead`: their checked segments and buffer ids.
struct Ahead {
    n: usize,
    segs: [Seg; AHEAD],
    ids: [u16; AHEAD],
    /// Where each chain is, and where the one after the last starts.
    pos: [Pos; AHEAD],
    end: Pos,
}

impl Ahead {
    /// Where chain `k` (or, `k == n`, the one after the look-ahead's) starts.
    #[inline(always)]
    fn at(&self, k: usize) -> Pos {
        if k < self.n {
            self.pos[k]
        } else {
            self.end
        }
    }
}

/// Whether a frame's receive chains were reserved.
enum Room {
    /// Reserved in `rsv`; the next chain starts here.
    Fits(Pos),
    /// One chain per frame (no mergeable buffers) and it is too small.
    TooBig,
    /// Not enough chains (or budget) now: the frame waits.
    Wait,
}

/// A validated packed ring with host pointers into guest memory.
pub struct PackedRing {
    size: u16,
    desc: *mut u8,
    /// The driver's event suppression area (whether and where it wants interrupts).
    driver_event: *const u8,
    /// The device's (whether the driver should kick).
    device_event: *mut u8,
    /// Next descriptor to take.
    avail: Pos,
    /// The first used descriptor of the current burst, written but not published
    /// (its slot and flags).
    unpublished: Option<(u16, u16)>,
    /// Where `used` was at the last interrupt decision (`None`: never).
    signalled: Option<u16>,
    feat: RingFeatures,
    fast_payload: u64,
    table: FastTable,
    hint: usize,
    /// Descriptor reads left in this burst (see `BURST_DESC_BUDGET`).
    budget: u32,
    irq: Option<Irq>,
    kick: Option<std::os::fd::OwnedFd>,
    error: Option<GuestError>,
    log: Option<Box<RingLog>>,
    /// The receive chains of one frame (made with the ring: nothing is allocated per
    /// frame); an enqueue burst holds it while it runs.
    rsv: Option<Box<Reserved>>,
    mem: Arc<GuestMemory>,
}

// SAFETY: the pointers point into mappings kept alive by `mem`; a PackedRing is used
// by one thread at a time, as a split `LiveRing` is.
unsafe impl Send for PackedRing {}

impl PackedRing {
    /// Validates the ring's placement (`addrs`: the descriptor ring, and the driver's
    /// and device's event areas in the avail and used fields, as the frontend's
    /// virtual addresses) and resumes at `base` (see `resume`).
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: RingBase,
        feat: RingFeatures,
        irq: Option<Irq>,
    ) -> Result<PackedRing, RingError> {
        // Packed rings need not be a power of two, but must fit the index's 15 bits.
        if size == 0 || size > MAX_RING {
            return Err(RingError::Size(size));
        }
        let len = 16 * size as u64;
        let place = |what, addr, len| {
            mem.uva_to_host(addr, len)
                .ok_or(RingError::Outside { what, addr, len })
        };
        let desc = place("descriptor ring", addrs.desc, len)?;
        let driver_event = place("driver event area", addrs.avail, 4)?;
        let device_event = place("device event area", addrs.used, 4)?;
        if !(desc as usize).is_multiple_of(16)
            || !(driver_event as usize).is_multiple_of(4)
            || !(device_event as usize).is_multiple_of(4)
        {
            return Err(RingError::Misaligned(addrs));
        }
        let mut r = PackedRing {
            size: size as u16,
            desc,
            driver_event,
            device_event,
            avail: Pos::from_bits(WRAP_BIT),
            unpublished: None,
            signalled: None,
            feat,
            fast_payload: feat.max_frame.min(DATA_ROOM) as u64,
            table: mem.fast_table(),
            hint: 0,
            budget: BURST_DESC_BUDGET,
            irq,
            kick: None,
            error: None,
            log: None,
            rsv: Some(Box::new(Reserved::new())),
            mem,
        };
        r.resume(base)?;
        // Polled: the driver need not kick.
        r.write_device_event(EVENT_DISABLE);
        Ok(r)
    }

    /// Where to resume. A base this switch's own ring stopped at is exact. A
    /// frontend's (SET_VRING_BASE: the next avail index and its wrap counter in bits
    /// 0-15; QEMU adds the used ones in bits 16-31, equal here, as this device
    /// completes what it takes in the same burst) may be stale: QEMU keeps the one of
    /// the last GET_VRING_BASE, so after the switch restarted or crashed it sends an
    /// old one (it has "no reference like avail idx in shared memory" for packed
    /// rings). And 0 is index 0 of either lap: DPDK virtio-user sends it for a new
    /// ring (the first lap, wrap counter 1).
    ///
    /// So a frontend's base is checked against the ring (`fits`, exact when every
    /// chain is one descriptor); when it does not fit, the ring says where the device
    /// stopped (`found_in_ring`). A ring that holds chains of several descriptors
    /// cannot be read that way: its frontend's base is taken as it is, as DPDK does.
    fn resume(&mut self, base: RingBase) -> Result<(), RingError> {
        let v = base.value();
        let pos = Pos::from_bits(v as u16);
        if pos.idx >= self.size {
            return Err(RingError::Base {
                base: v,
                size: self.size as u32,
            });
        }
        if v >> 16 != 0 && v as u16 != (v >> 16) as u16 {
            tracing::warn!(
                base = format_args!("{v:#x}"),
                "packed ring base: the used position differs from the avail one; this \
                 device completes in order and resumes both at the avail one"
            );
        }
        self.avail = match base {
            RingBase::Stopped(_) => pos,
            RingBase::Frontend(_) => self.checked(pos, v),
        };
        Ok(())
    }

    /// The position to resume at for a frontend's base `v` (`pos`), see `resume`.
    fn checked(&self, pos: Pos, v: u32) -> Pos {
        // Index 0 is tried in the first lap first (a new ring), then in the second.
        let first_lap = Pos { idx: 0, wrap: true };
        let second_lap = Pos {
            idx: 0,
            wrap: false,
        };
        let zero = [first_lap, second_lap];
        let candidates: &[Pos] = if v as u16 == 0 {
            &zero
        } else {
            std::slice::from_ref(&pos)
        };
        if let Some(&p) = candidates.iter().find(|&&p| self.fits(p)) {
            return p;
        }
        if self.has_chains() {
            tracing::warn!(
                base = format_args!("{v:#x}"),
                "packed ring base does not fit the ring, which holds chains of several \
                 descriptors and so cannot say where the device stopped; taking the base"
            );
            return candidates[0];
        }
        let found = self.found_in_ring();
        tracing::warn!(
            base = format_args!("{v:#x}"),
            resumed = format_args!("{:#06x}", found.bits()),
            "packed ring base contradicts the ring (a frontend's stale state after a \
             restart); resuming where the ring's used descriptors end"
        );
        found
    }

    /// Whether the device can have stopped at `p`, in a ring of one-descriptor chains:
    /// the descriptor there is available in that lap, or still used from the lap
    /// before; the one before it (the last of the lap before, for index 0) was used
    /// in its lap, or made available again for the next.
    fn fits(&self, p: Pos) -> bool {
        let here = self.read_desc(p.idx);
        let (prev_idx, prev_wrap) = if p.idx == 0 {
            (self.size - 1, !p.wrap)
        } else {
            (p.idx - 1, p.wrap)
        };
        let prev = self.read_desc(prev_idx);
        (here.avail_in(p.wrap) || here.used_in(!p.wrap))
            && (prev.used_in(prev_wrap) || prev.avail_in(!prev_wrap))
    }

    /// Whether any descriptor in the ring is chained to the next (NEXT): then a
    /// descriptor that looks available may be the rest of a chain already used.
    fn has_chains(&self) -> bool {
        (0..self.size).any(|i| self.read_desc(i).flags & F_NEXT != 0)
    }

    /// Where the device stopped, read from the ring's flags, for chains of one
    /// descriptor: the first available descriptor after a used one (there the
    /// device's next lap begins); with none, where the laps of the descriptors
    /// change within the ring (all available: the driver's older lap starts at
    /// index 0 and the device's at the change; all used: the device stopped at the
    /// change); with no change, at index 0.
    fn found_in_ring(&self) -> Pos {
        let n = self.size;
        let descs = |i: u16| self.read_desc(i % n);
        let is_used = |d: &Desc| (d.flags & F_AVAIL != 0) == (d.flags & F_USED != 0);
        let lap = |d: &Desc| d.flags & F_AVAIL != 0;
        for i in 0..n {
            let (prev, here) = (descs(i + n - 1), descs(i));
            if is_used(&prev) && !is_used(&here) {
                return Pos {
                    idx: i,
                    wrap: lap(&here),
                };
            }
        }
        let first = descs(0);
        for i in 1..n {
            let (prev, here) = (descs(i - 1), descs(i));
            if lap(&prev) != lap(&here) {
                let wrap = if is_used(&here) {
                    lap(&prev)
                } else {
                    lap(&here)
                };
                return Pos { idx: i, wrap };
            }
        }
        Pos {
            idx: 0,
            wrap: if is_used(&first) {
                !lap(&first)
            } else {
                lap(&first)
            },
        }
    }

    /// Gives the ring its guest's kick eventfd (see `arm_kick`).
    pub fn with_kick(mut self, kick: Option<std::os::fd::OwnedFd>) -> PackedRing {
        self.kick = kick;
        self
    }

    /// Has the ring mark the guest pages it writes in `area` (live migration): the
    /// buffers it fills, and the descriptor ring (where used descriptors go) and the
    /// device event area, found from their placement (QEMU's `log_guest_addr` names
    /// the device event area for packed rings, not the descriptors written).
    pub fn with_log(mut self, area: Arc<DirtyLog>) -> PackedRing {
        let Some(gpa) = self.table.host_to_gpa(self.desc) else {
            debug_assert!(false, "the ring was validated inside guest memory");
            return self;
        };
        let mut log = Box::new(RingLog::new(area, self.table, gpa, 16 * self.size as u64));
        log.wrote_used();
        log.wrote(self.device_event, 4);
        log.flush();
        self.log = Some(log);
        self
    }

    /// Whether this ring marks what it writes in a dirty log.
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// The ring state to resume from (GET_VRING_BASE), as QEMU reads it: next avail
    /// index and wrap counter in bits 0-15, next used ones in bits 16-31.
    pub fn base(&self) -> u32 {
        // This device completes every chain in the burst that took it, in place: the
        // next used descriptor goes where the next chain starts.
        self.avail.bits() as u32 | (self.avail.bits() as u32) << 16
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
    fn read_desc(&self, i: u16) -> Desc {
        let p = self.desc.wrapping_add(16 * i as usize);
        // SAFETY: i < size: the 16 bytes lie in the validated ring, 16-aligned. The
        // word with the flags is read first, once, and the address only after it (the
        // driver writes the flags last).
        let (a, b) = unsafe {
            let b = std::ptr::read_volatile(p.add(8) as *const u64);
            fence(Ordering::Acquire);
            (std::ptr::read_volatile(p as *const u64), b)
        };
        let b = u64::from_le(b);
        Desc {
            addr: u64::from_le(a),
            len: b as u32,
            id: (b >> 32) as u16,
            flags: (b >> 48) as u16,
        }
    }

    fn write_device_event(&mut self, flags: u16) {
        // SAFETY: the 4-byte device event area was validated in guest memory, 4-aligned.
        unsafe { std::ptr::write_volatile(self.device_event.add(2) as *mut u16, flags.to_le()) };
        if let Some(l) = self.log.as_deref_mut() {
            l.wrote(self.device_event, 4);
            l.flush();
        }
    }

    /// The driver's event area: (offset and wrap, flags).
    fn read_driver_event(&self) -> (u16, u16) {
        // SAFETY: the 4-byte driver event area was validated in guest memory, 4-aligned.
        let v = u32::from_le(unsafe { std::ptr::read_volatile(self.driver_event as *const u32) });
        (v as u16, (v >> 16) as u16)
    }

    /// Reads the next `n` (at most [`AHEAD`]) available chains while they are the
    /// common one: one descriptor (no NEXT, no INDIRECT) in the right direction,
    /// non-empty, inside guest memory; checks each and prefetches the first and last
    /// line of its buffer, as the split ring's look-ahead does, so a burst waits for
    /// the guest's core about once rather than once per frame. Each descriptor is
    /// read once here and used from the result. Stops at the first other chain,
    /// which `take_chain` reads and checks in full.
    #[inline(always)]
    fn look_ahead(&mut self, n: usize, writable: bool) -> Ahead {
        let mut a = Ahead {
            n: 0,
            segs: [NO_SEG; AHEAD],
            ids: [0; AHEAD],
            pos: [self.avail; AHEAD],
            end: self.avail,
        };
        let want = if writable { F_WRITE } else { 0 };
        let n = n.min(AHEAD).min(self.size as usize);
        // The descriptors' lines, with intent to write: this device writes used
        // descriptors over them, and a line read first and written later would cross
        // from the guest's core twice.
        let (first, size) = (self.avail.idx as usize, self.size as usize);
        let slot = |i: usize| {
            self.desc
                .wrapping_add(16 * if i >= size { i - size } else { i })
        };
        for i in (first..first + n).step_by(4) {
            prefetch::write(slot(i));
        }
        prefetch::write(slot(first + n.max(1) - 1));
        let mut at = self.avail;
        for i in 0..n {
            let d = self.read_desc(at.idx);
            if !d.avail_in(at.wrap)
                || d.flags & (F_NEXT | F_INDIRECT | F_WRITE) != want
                || d.len == 0
            {
                break;
            }
            let Some(p) = self.table.translate(d.addr, d.len, &mut self.hint) else {
                break;
            };
            let last = p.wrapping_add(d.len.min(128) as usize - 1);
            if writable {
                prefetch::write(p);
                prefetch::write(last);
            } else {
                prefetch::read(p);
                prefetch::read(last);
            }
            a.segs[i] = Seg { ptr: p, len: d.len };
            a.ids[i] = d.id;
            a.pos[i] = at;
            a.n = i + 1;
            at = at.advance(1, self.size);
        }
        a.end = at;
        a
    }

    /// Whether the burst may walk one more full chain.
    #[inline(always)]
    fn has_budget(&self) -> bool {
        self.budget > MAX_CHAIN + 1
    }

    /// Takes the chain at `at` if the driver made it available, checking every
    /// descriptor (direction, bounds, chain length, indirect table) and storing as
    /// many segments as `segs` holds. Does not move the ring: the caller does, once
    /// it consumed the chain.
    #[inline]
    fn take_chain(
        &mut self,
        at: Pos,
        writable: bool,
        segs: &mut [Seg],
    ) -> Result<Option<Chain>, GuestError> {
        let mut c = Chain {
            nseg: 0,
            stored: 0,
            total: 0,
            id: 0,
            count: 0,
            next: at,
        };
        let limit = MAX_CHAIN.min(self.size as u32);
        loop {
            let d = self.read_desc(c.next.idx);
            if !d.avail_in(c.next.wrap) {
                // The driver makes a chain available head last: this cannot be the
                // middle of one it finished. Nothing (more) is there yet.
                return Ok(None);
            }
            c.count += 1;
            c.next = c.next.advance(1, self.size);
            if d.flags & F_INDIRECT != 0 {
                self.indirect(&d, c.count == 1, writable, segs, &mut c)?;
                c.id = d.id;
                break;
            }
            self.push_seg(&d, writable, segs, &mut c)?;
            if d.flags & F_NEXT == 0 {
                c.id = d.id;
                break;
            }
            // A chain cannot be longer than the ring (nor than MAX_CHAIN).
            if c.count as u32 >= limit {
                self.budget = self.budget.saturating_sub(c.count as u32);
                return Err(GuestError::ChainTooLong { limit });
            }
        }
        self.budget = self.budget.saturating_sub(c.count as u32);
        if c.total == 0 {
            return Err(GuestError::EmptyChain { head: at.idx });
        }
        Ok(Some(c))
    }

    /// One descriptor of a chain: its direction checked, its buffer translated.
    #[inline(always)]
    fn push_seg(
        &mut self,
        d: &Desc,
        writable: bool,
        segs: &mut [Seg],
        c: &mut Chain,
    ) -> Result<(), GuestError> {
        if (d.flags & F_WRITE != 0) != writable {
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
        c.total += d.len as u64;
        if c.nseg < segs.len() {
            segs[c.nseg] = Seg { ptr, len: d.len };
            c.nseg += 1;
            c.stored += d.len as u64;
        }
        Ok(())
    }

    /// An indirect descriptor (`alone`: the chain's first, as it must be, without
    /// NEXT): every entry of its table is a descriptor of the chain, in order (a
    /// packed table has no `next`); none may be indirect itself.
    #[cold]
    #[inline(never)]
    fn indirect(
        &mut self,
        d: &Desc,
        alone: bool,
        writable: bool,
        segs: &mut [Seg],
        c: &mut Chain,
    ) -> Result<(), GuestError> {
        if !self.feat.indirect {
            return Err(GuestError::IndirectNotNegotiated);
        }
        if !alone || d.flags & F_NEXT != 0 {
            return Err(GuestError::IndirectMisplaced);
        }
        let n = d.len / 16;
        if d.len == 0 || !d.len.is_multiple_of(16) || n > self.size as u32 {
            return Err(GuestError::IndirectLength {
                len: d.len,
                ring: self.size as u32,
            });
        }
        if n > MAX_CHAIN {
            return Err(GuestError::ChainTooLong { limit: MAX_CHAIN });
        }
        let t = self.table.translate(d.addr, d.len, &mut self.hint).ok_or(
            GuestError::IndirectOutside {
                addr: d.addr,
                len: d.len,
            },
        )?;
        self.budget = self.budget.saturating_sub(n);
        for k in 0..n as usize {
            // SAFETY: the table (n * 16 bytes) lies in guest memory (translated above);
            // entry k is inside it. Read once, byte-wise: the guest may place it
            // unaligned.
            let raw: [u8; 16] =
                unsafe { std::ptr::read_volatile(t.add(16 * k) as *const [u8; 16]) };
            let e = Desc {
                addr: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
                id: u16::from_le_bytes(raw[12..14].try_into().unwrap()),
                flags: u16::from_le_bytes(raw[14..16].try_into().unwrap()),
            };
            if e.flags & F_INDIRECT != 0 {
                return Err(GuestError::IndirectMisplaced);
            }
            self.push_seg(&e, writable, segs, c)?;
        }
        Ok(())
    }

    /// Writes a used descriptor for buffer `id` (`len` bytes written) at `at`, where
    /// its chain started (this device completes in order, so used descriptors go
    /// where the chains were). The burst's first one is published last (`publish`);
    /// the others at once: the driver reads them only after the first.
    #[inline(always)]
    fn put_used(&mut self, at: Pos, id: u16, len: u32) {
        let slot = at.idx;
        let flags = at.wrap as u16 * (F_AVAIL | F_USED);
        let p = self.desc.wrapping_add(16 * slot as usize);
        if self.unpublished.is_none() {
            // SAFETY: slot < size: inside the validated ring, 16-aligned.
            unsafe {
                std::ptr::write_volatile(p.add(8) as *mut u32, len.to_le());
                std::ptr::write_volatile(p.add(12) as *mut u16, id.to_le());
            }
            self.unpublished = Some((slot, flags));
        } else {
            // Length, id and flags at once: the driver reads this one only after the
            // burst's first.
            let w = len as u64 | (id as u64) << 32 | (flags as u64) << 48;
            // SAFETY: as above; 8-aligned.
            unsafe { std::ptr::write_volatile(p.add(8) as *mut u64, w.to_le()) };
        }
    }

    /// Ends a burst: publishes its used descriptors (the first one's flags, after a
    /// release fence), writes out its dirty-log marks and interrupts the guest if it
    /// asked for it.
    #[inline]
    fn publish(&mut self) {
        let Some((slot, flags)) = self.unpublished.take() else {
            return;
        };
        fence(Ordering::Release);
        let p = self.desc.wrapping_add(16 * slot as usize);
        // SAFETY: slot < size: inside the validated ring, 2-aligned.
        unsafe { std::ptr::write_volatile(p.add(14) as *mut u16, flags.to_le()) };
        if let Some(l) = self.log.as_deref_mut() {
            l.wrote_used();
            l.flush();
        }
        self.signal();
    }

    /// Interrupts the guest after used descriptors were published, as its event area
    /// asks: never (`DISABLE`), always (`ENABLE`), or (`DESC`, with EVENT_IDX) when
    /// the used descriptors published since the last decision passed the offset and
    /// wrap it names, as DPDK's `vhost_vring_call_packed` decides.
    #[inline]
    fn signal(&mut self) {
        let Some(irq) = &self.irq else { return };
        // The used flags must be visible before the driver's wish is read, or an
        // interrupt can be missed.
        fence(Ordering::SeqCst);
        let (off_wrap, flags) = self.read_driver_event();
        let new = self.avail.idx;
        let old = self.signalled.replace(new);
        let notify = match flags & 3 {
            EVENT_DISABLE => false,
            EVENT_DESC if self.feat.event_idx => match old {
                Some(old) => need_event(off_wrap, old, new, self.avail.wrap, self.size),
                None => true,
            },
            _ => true,
        };
        if notify {
            irq.raise();
        }
    }

    /// Before its PMD thread sleeps: asks the driver to kick when it makes buffers
    /// available (device event `ENABLE`), then looks again: the kick fd to wait on,
    /// `Pending` when a chain came meanwhile, or `Timeout` without a kick fd.
    pub fn arm_kick(&mut self) -> crate::idle::Wake {
        use crate::idle::Wake;
        use std::os::fd::AsRawFd;
        let Some(fd) = self.kick.as_ref().map(|k| k.as_raw_fd()) else {
            return Wake::Timeout;
        };
        self.write_device_event(EVENT_ENABLE);
        // The request must be visible before the next descriptor is read again, or a
        // chain made available in between is neither seen nor kicked about.
        fence(Ordering::SeqCst);
        if self.read_desc(self.avail.idx).avail_in(self.avail.wrap) {
            self.disarm_kick(false);
            return Wake::Pending;
        }
        Wake::Fd(fd)
    }

    /// After the sleep: kicks off again, and the kick fd drained if it was readable.
    pub fn disarm_kick(&mut self, kicked: bool) {
        self.write_device_event(EVENT_DISABLE);
        if kicked {
            drain_kick(&mut self.kick);
        }
    }

    /// Moves up to `out.len()` frames the guest transmitted into mbufs, as the split
    /// ring's `dequeue` does (same drops, same offload headers, large buffers).
    #[inline]
    pub fn dequeue(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        drops: &mut RxCounts,
        bytes: &mut u64,
    ) -> usize {
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
        self.budget = BURST_DESC_BUDGET;
        let fit = (self.feat.hdr_len as u64, self.fast_payload);
        let ahead = self.look_ahead(out.len(), false);
        let mut got = 0usize;
        let mut k = 0;
        while k < ahead.n {
            let seg = [ahead.segs[k]];
            let len = seg[0].len as u64;
            match frame_from_chain::<OL, 1>(
                &self.feat,
                fit,
                cache,
                (&seg, 1),
                (len, len),
                (&mut *drops, &mut *bytes),
            ) {
                Taken::Frame(m) => {
                    out[got] = Some(m);
                    got += 1;
                }
                Taken::Dropped => {}
                Taken::Wait => break, // an empty pool loses nothing: the chain waits
            }
            self.put_used(ahead.pos[k], ahead.ids[k], 0);
            k += 1;
        }
        self.avail = ahead.at(k);
        if k == ahead.n && k < out.len() {
            got = self.dequeue_chains::<OL>(cache, out, (k, got), drops, bytes);
        }
        if self.mem.is_poisoned() {
            // Some of these frames were read from memory that vanished: deliver none.
            for m in out[..got].iter_mut() {
                cache.free(m.take().expect("stored above"));
            }
            got = 0;
            self.fail(GuestError::MemoryGone);
        }
        self.publish();
        got
    }

    /// The rest of a dequeue burst after the look-ahead's chains (`done` chains taken
    /// so far, `got` frames stored): any chain, read and checked in full by
    /// `take_chain`. Returns the frames stored in all.
    #[inline(never)]
    fn dequeue_chains<const OL: bool>(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        (done, mut got): (usize, usize),
        drops: &mut RxCounts,
        bytes: &mut u64,
    ) -> usize {
        let fit = (self.feat.hdr_len as u64, self.fast_payload);
        let mut segs = [NO_SEG; MAX_SEGS];
        for _ in done..out.len() {
            if !self.has_budget() {
                break; // the rest waits for the next poll
            }
            let c = match self.take_chain(self.avail, false, &mut segs) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e);
                    break;
                }
            };
            match frame_from_chain::<OL, MAX_SEGS>(
                &self.feat,
                fit,
                cache,
                (&segs, c.nseg),
                (c.stored, c.total),
                (&mut *drops, &mut *bytes),
            ) {
                Taken::Frame(m) => {
                    out[got] = Some(m);
                    got += 1;
                }
                Taken::Dropped => {}
                Taken::Wait => break,
            }
            self.put_used(self.avail, c.id, 0);
            self.avail = c.next;
        }
        got
    }

    /// Copies frames from the front of `pkts` into the guest's receive buffers, as
    /// the split ring's `enqueue` does. Returns how many were consumed (delivered, or
    /// dropped and counted in `too_big`); stops at the first frame without room.
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

    /// `enqueue` for a burst that may hold frames with offload metadata (see the
    /// split ring's `enqueue_offload`).
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
        self.budget = BURST_DESC_BUDGET;
        let hdr_len = self.feat.hdr_len;
        let mut rsv = self.rsv.take().expect("put back at the end of every burst");
        let ahead = self.look_ahead(pkts.len(), true);
        // The look-ahead's next chain while every frame took one of them in turn
        // (`self.avail` is then behind); past `ahead.n` once a frame went to
        // `enqueue_reserved` (which moves `self.avail` itself).
        let mut ak = 0;
        let mut consumed = 0;
        let mut own = NetHdr::default();
        for slot in pkts.iter_mut() {
            let Some(net) = header_for_guest::<OL>(self.feat.guest_caps, slot, &mut own) else {
                *too_big += 1;
                consumed += 1;
                cache.free(slot.take().expect("checked"));
                continue;
            };
            let frame = slot.as_ref().expect("tx slots are filled").data();
            let need = hdr_len + frame.len();
            // The common case in line: the look-ahead's next buffer has room for
            // header and frame.
            if ak < ahead.n
                && ahead.segs[ak].len as usize >= need
                && (hdr_len == 12 || hdr_len == 10)
            {
                let seg = ahead.segs[ak];
                // SAFETY: look_ahead checked the segment: writable guest memory of
                // seg.len >= need bytes.
                unsafe { fill_single::<OL>(seg.ptr, hdr_len, frame, net) };
                if let Some(l) = self.log.as_deref_mut() {
                    l.wrote(seg.ptr, need);
                }
                self.put_used(ahead.pos[ak], ahead.ids[ak], need as u32);
                ak += 1;
                *bytes += frame.len() as u64;
                consumed += 1;
                cache.free(slot.take().expect("checked"));
                continue;
            }
            // Anything else is reserved from the ring (the look-ahead no longer
            // describes what follows).
            if ak <= ahead.n {
                self.avail = ahead.at(ak);
                ak = ahead.n + 1;
            }
            match self.enqueue_reserved(&mut rsv, frame, net) {
                Ok(Room::Fits(_)) => *bytes += frame.len() as u64,
                // The chain is left for a frame that fits.
                Ok(Room::TooBig) => *too_big += 1,
                Ok(Room::Wait) => break,
                Err(e) => {
                    self.fail(e);
                    break;
                }
            }
            consumed += 1;
            cache.free(slot.take().expect("checked"));
        }
        if ak <= ahead.n {
            self.avail = ahead.at(ak);
        }
        self.rsv = Some(rsv);
        if self.mem.is_poisoned() {
            self.fail(GuestError::MemoryGone);
        }
        self.publish();
        consumed
    }

    /// A frame the look-ahead's buffers do not take: its chains reserved in `rsv`
    /// (`reserve`), then header and frame copied across them and their used
    /// descriptors written.
    #[inline(never)]
    fn enqueue_reserved(
        &mut self,
        rsv: &mut Reserved,
        frame: &[u8],
        net: &NetHdr,
    ) -> Result<Room, GuestError> {
        if !self.has_budget() {
            return Ok(Room::Wait);
        }
        let room = self.reserve(rsv, frame.len())?;
        let Room::Fits(next) = room else {
            return Ok(room);
        };
        let hdr_len = self.feat.hdr_len;
        // SAFETY: reserve checked every segment: writable guest memory with room for
        // the header and the frame.
        unsafe { copy_reserved(rsv, hdr_len, frame, net) };
        if let Some(l) = self.log.as_deref_mut() {
            log_reserved(l, rsv, hdr_len + frame.len());
        }
        let mut at = self.avail;
        for k in 0..rsv.chains {
            self.put_used(at, rsv.heads[k], rsv.written[k]);
            at = at.advance(rsv.descs[k], self.size);
        }
        debug_assert_eq!(at, next);
        self.avail = next;
        Ok(room)
    }

    /// Reserves in `rsv` the receive chains a frame of `len` bytes (plus header)
    /// needs, from the next available one on (several only with mergeable buffers).
    #[inline]
    fn reserve(&mut self, rsv: &mut Reserved, len: usize) -> Result<Room, GuestError> {
        let need = (self.feat.hdr_len + len) as u64;
        rsv.clear();
        let mut at = self.avail;
        let mut have = 0u64;
        while have < need {
            if rsv.full() {
                return Err(GuestError::ReceiveTooFragmented { len });
            }
            if !self.has_budget() {
                return Ok(Room::Wait);
            }
            let Some(c) = self.take_chain(at, true, &mut rsv.segs[rsv.nseg..])? else {
                return Ok(Room::Wait);
            };
            if !self.feat.mrg_rxbuf && c.stored < need {
                return Ok(Room::TooBig);
            }
            rsv.push_chain(c.id, c.count, c.nseg, c.stored.min(need - have) as u32);
            have += c.stored;
            at = c.next;
            // Without mergeable buffers a frame takes one chain, whole or not at all.
            if !self.feat.mrg_rxbuf {
                break;
            }
        }
        Ok(Room::Fits(at))
    }
}

/// Whether the used descriptors published from `old` to `new` (indexes; `wrap` the
/// used wrap counter at `new`) passed the driver's event offset `off_wrap`, in a ring
/// of `size` (DPDK's `vhost_need_event` over packed indexes).
fn need_event(off_wrap: u16, old: u16, new: u16, wrap: bool, size: u16) -> bool {
    let (size, new) = (size as i32, new as i32);
    let mut old = old as i32;
    if new <= old {
        old -= size;
    }
    let mut off = (off_wrap & !WRAP_BIT) as i32;
    if (off_wrap & WRAP_BIT != 0) != wrap {
        off -= size;
    }
    ((new - off - 1) as u16) < ((new - old) as u16)
}

impl Drop for PackedRing {
    /// A ring taken down publishes what it wrote and leaves no dirty page unmarked.
    fn drop(&mut self) {
        self.publish();
        if let Some(l) = self.log.as_deref_mut() {
            l.flush();
        }
    }
}
