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

use super::mem::{FastTable, GuestMemory};
use crate::mempool::{Mbuf, MempoolCache, DATA_ROOM};
use crate::prefetch;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Largest ring the virtio spec allows for split rings.
pub const MAX_RING: u32 = 32768;
/// Descriptors of one chain the data path copies through; longer chains are
/// still validated to their end.
const MAX_SEGS: usize = 64;

/// Why a queue was stopped: the guest broke the virtio rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestError(pub &'static str);

/// Negotiated features that change how a ring is walked.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingFeatures {
    pub event_idx: bool,
    pub mrg_rxbuf: bool,
    pub indirect: bool,
    /// virtio-net header length: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: usize,
}

/// Ring addresses as the frontend gave them (its virtual addresses).
#[derive(Clone, Copy, Debug, Default)]
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
    table: FastTable,
    hint: usize,
    call: Option<i32>,
    /// Used entries were published since the guest was last considered for an
    /// interrupt (the used index then). Dequeue settles this at its next call rather
    /// than at once: the fence the check needs would otherwise wait for this burst's
    /// stores to guest memory to reach the guest's core.
    owed: Option<u16>,
    error: Option<GuestError>,
    /// Keeps the mappings the pointers above point into alive.
    _mem: Arc<GuestMemory>,
    _call: Option<Arc<File>>,
}

// SAFETY: the pointers point into mappings kept alive by `_mem`; a LiveRing is used
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
unsafe fn copy_segments(segs: &[Seg], hdr: u64, dst: &mut [u8]) {
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
unsafe fn write_net_header(p: *mut u8, hdr_len: usize) {
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
struct Seg {
    ptr: *mut u8,
    len: u32,
}

const NO_SEG: Seg = Seg {
    ptr: std::ptr::null_mut(),
    len: 0,
};

impl LiveRing {
    /// Validates a ring's placement and builds its live state.
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        feat: RingFeatures,
        call: Option<Arc<File>>,
    ) -> Result<LiveRing, String> {
        if size == 0 || size > MAX_RING || !size.is_power_of_two() {
            return Err(format!(
                "ring size {size} is not a power of two in 1..={MAX_RING}"
            ));
        }
        let s = size as u64;
        let desc_len = 16 * s;
        let avail_len = 6 + 2 * s;
        let used_len = 6 + 8 * s;
        let desc = mem.uva_to_host(addrs.desc, desc_len).ok_or_else(|| {
            format!(
                "descriptor table {:#x}+{desc_len} is outside guest memory",
                addrs.desc
            )
        })?;
        let avail = mem.uva_to_host(addrs.avail, avail_len).ok_or_else(|| {
            format!(
                "avail ring {:#x}+{avail_len} is outside guest memory",
                addrs.avail
            )
        })?;
        let used = mem.uva_to_host(addrs.used, used_len).ok_or_else(|| {
            format!(
                "used ring {:#x}+{used_len} is outside guest memory",
                addrs.used
            )
        })?;
        // Alignment of what we will access (the host pointers), not only of the
        // frontend's addresses: they differ if its user_addr and mmap_offset do.
        if desc as usize % 16 != 0 || avail as usize % 2 != 0 || used as usize % 4 != 0 {
            return Err(format!("ring addresses misaligned: {addrs:x?}"));
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
            table,
            hint: 0,
            call: call.as_ref().map(|f| f.as_raw_fd()),
            owed: None,
            error: None,
            _mem: mem,
            _call: call,
        };
        // This device completes every avail entry in the burst that consumed it, so
        // the used index in guest memory is exactly where processing stopped. QEMU
        // sends that as the base; DPDK virtio-user always sends 0, also when it comes
        // back after a reconnect with its rings as they were. Trust the used index, as
        // DPDK's vhost library does (the guest can only hurt itself with it: every
        // later read is checked against the ring size).
        let used_idx = r.read_used_idx();
        if used_idx != base {
            tracing::warn!(
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
        let n = idx.wrapping_sub(self.last_avail);
        if n as u32 > self.ring_size() {
            return Err(GuestError(
                "avail index is further ahead than the ring size",
            ));
        }
        // Read descriptors only after seeing the index that published them.
        fence(Ordering::Acquire);
        Ok(n)
    }

    #[inline(always)]
    fn read_desc(&self, table: *const u8, i: u16) -> Desc {
        let p = table.wrapping_add(16 * i as usize);
        if p as usize % 8 != 0 {
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

    /// Walks the chain at `head`, checking every descriptor, and stores up to MAX_SEGS
    /// translated segments. Returns (segments stored, bytes in them, bytes in the chain).
    #[inline(never)]
    fn collect(
        &mut self,
        head: u16,
        writable: bool,
        segs: &mut [Seg; MAX_SEGS],
    ) -> Result<(usize, u64, u64), GuestError> {
        let mut table = self.desc;
        let mut table_len = self.ring_size();
        let mut idx = head;
        if idx as u32 >= table_len {
            return Err(GuestError("descriptor index out of the table"));
        }
        let mut seen = 0u32;
        let mut indirect = false;
        let (mut nseg, mut stored, mut total) = (0usize, 0u64, 0u64);
        loop {
            let d = self.read_desc(table, idx);
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                if !self.feat.indirect {
                    return Err(GuestError(
                        "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC",
                    ));
                }
                if indirect || seen != 0 || d.flags & VRING_DESC_F_NEXT != 0 {
                    return Err(GuestError(
                        "indirect descriptor nested, chained or not first",
                    ));
                }
                if d.len == 0 || d.len % 16 != 0 || d.len / 16 > MAX_RING {
                    return Err(GuestError(
                        "indirect table length is not a multiple of 16 in range",
                    ));
                }
                table = self
                    .table
                    .translate(d.addr, d.len, &mut self.hint)
                    .ok_or(GuestError("indirect table outside guest memory"))?;
                table_len = d.len / 16;
                indirect = true;
                idx = 0;
                continue;
            }
            seen += 1;
            if seen > table_len {
                return Err(GuestError(
                    "descriptor chain loops or is longer than its table",
                ));
            }
            if (d.flags & VRING_DESC_F_WRITE != 0) != writable {
                return Err(if writable {
                    GuestError("read-only descriptor in a receive chain")
                } else {
                    GuestError("device-writable descriptor in a transmit chain")
                });
            }
            let ptr = self
                .table
                .translate(d.addr, d.len, &mut self.hint)
                .ok_or(GuestError("descriptor buffer outside guest memory"))?;
            total += d.len as u64;
            if nseg < MAX_SEGS {
                segs[nseg] = Seg { ptr, len: d.len };
                nseg += 1;
                stored += d.len as u64;
            }
            if d.flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            idx = d.next;
            if idx as u32 >= table_len {
                return Err(GuestError("next descriptor index out of the table"));
            }
        }
        if total == 0 {
            return Err(GuestError("zero-length descriptor chain"));
        }
        Ok((nseg, stored, total))
    }

    /// Moves up to `out.len()` frames the guest transmitted into fresh mbufs.
    /// Frames too large for an mbuf are dropped and counted in `oversize`; when the
    /// pool runs dry, the rest stay on the ring. First it interrupts the guest if the
    /// previous call published used entries the guest asked to hear about.
    /// Returns the number of mbufs stored at the front of `out` (their bytes are added
    /// to `bytes`).
    #[inline]
    pub fn dequeue(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        oversize: &mut u64,
        bytes: &mut u64,
    ) -> usize {
        if self.error.is_some() {
            return 0;
        }
        self.settle();
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
        let hdr = self.feat.hdr_len as u64;
        while done < n {
            let head = ahead.heads[done as usize];
            let fast = ahead.segs[done as usize];
            let (nseg, stored, total) = if !fast.ptr.is_null() {
                segs[0] = fast;
                (1, fast.len as u64, fast.len as u64)
            } else {
                match self.collect(head, false, &mut segs) {
                    Ok(v) => v,
                    Err(e) => {
                        self.fail(e);
                        break;
                    }
                }
            };
            let payload = total.saturating_sub(hdr);
            if payload > DATA_ROOM as u64 || stored != total {
                // Larger than an mbuf (or than MAX_SEGS descriptors): drop it, return the chain.
                *oversize += 1;
                self.write_used_elem(self.last_used.wrapping_add(done), head, 0);
                done += 1;
                continue;
            }
            // An empty pool loses nothing: the rest stay on the ring for the next poll.
            let Some(mut m) = cache.alloc() else { break };
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
                // SAFETY: collect checked every segment in guest memory; dst has payload
                // bytes, what the segments hold after the header.
                unsafe { copy_segments(&segs[..nseg], hdr, dst) };
            }
            self.write_used_elem(self.last_used.wrapping_add(done), head, 0);
            *bytes += payload;
            out[got] = Some(m);
            got += 1;
            done += 1;
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
        if defer {
            self.owed.get_or_insert(old);
        } else {
            self.maybe_signal(old, new);
        }
    }

    #[inline]
    fn maybe_signal(&self, old: u16, new: u16) {
        let Some(fd) = self.call else { return };
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
            let one: u64 = 1;
            // SAFETY: fd is the call eventfd kept open by `_call`; writes 8 bytes from a local.
            unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    /// Copies frames from the front of `pkts` into the guest's receive buffers.
    /// Returns how many were consumed: delivered, or dropped because the guest's
    /// buffer cannot hold them (counted in `too_big`). Stops at the first frame for
    /// which the ring has no room; that frame and the rest stay in `pkts`.
    #[inline]
    pub fn enqueue(
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
        let ahead = self.look_ahead(avail.min(pkts.len() as u16), true);
        let mut segs = [NO_SEG; MAX_SEGS];
        let hdr_len = self.feat.hdr_len;
        let mut used_chains = 0u16; // avail entries consumed and used elements written
        let mut consumed = 0usize;
        'pkts: for slot in pkts.iter_mut() {
            let m = slot.as_ref().expect("tx slots are filled");
            let frame = m.data();
            let need = hdr_len + frame.len();
            // The common case: the next chain is one writable descriptor with room for
            // header and frame.
            if (used_chains as usize) < ahead.n {
                let head = ahead.heads[used_chains as usize];
                let seg = ahead.segs[used_chains as usize];
                if !seg.ptr.is_null() {
                    if seg.len as usize >= need && (hdr_len == 12 || hdr_len == 10) {
                        // num_buffers (bytes 10-11 of a 12-byte header) is 1: one chain.
                        // SAFETY: seg is writable guest memory (checked) with room for need =
                        // hdr_len (12 or 10) + frame bytes; the frame is in the mbuf.
                        unsafe {
                            write_net_header(seg.ptr, hdr_len);
                            std::ptr::copy_nonoverlapping(
                                frame.as_ptr(),
                                seg.ptr.add(hdr_len),
                                frame.len(),
                            );
                        }
                        self.write_used_elem(
                            self.last_used.wrapping_add(used_chains),
                            head,
                            need as u32,
                        );
                        used_chains += 1;
                        *bytes += frame.len() as u64;
                        consumed += 1;
                        cache.free(slot.take().expect("checked"));
                        continue;
                    }
                }
            }
            let start_chains = used_chains;
            let mut written_total = 0usize;
            let mut num_buffers: u16 = 0;
            // Where bytes 10 and 11 of the header (num_buffers) landed.
            let mut nb_ptr: [*mut u8; 2] = [std::ptr::null_mut(); 2];
            while written_total < need {
                if used_chains >= avail {
                    // No room: this frame waits; nothing of it was published.
                    used_chains = start_chains;
                    break 'pkts;
                }
                let head = if (used_chains as usize) < ahead.n {
                    ahead.heads[used_chains as usize]
                } else {
                    self.read_avail_entry(self.last_avail.wrapping_add(used_chains))
                };
                let (nseg, stored, _) = match self.collect(head, true, &mut segs) {
                    Ok(v) => v,
                    Err(e) => {
                        used_chains = start_chains;
                        self.fail(e);
                        break 'pkts;
                    }
                };
                if !self.feat.mrg_rxbuf && (stored as usize) < need {
                    // One chain per frame and this one is too small: drop the frame,
                    // leave the chain for a frame that fits.
                    *too_big += 1;
                    consumed += 1;
                    cache.free(slot.take().expect("checked"));
                    continue 'pkts;
                }
                let mut chain_written = 0usize;
                for s in &segs[..nseg] {
                    let mut pos = 0usize;
                    while pos < s.len as usize && written_total < need {
                        let room = s.len as usize - pos;
                        // SAFETY: pos < s.len: inside the segment, which is in guest memory and writable.
                        let dst = unsafe { s.ptr.add(pos) };
                        let k = if written_total < hdr_len {
                            let k = room.min(hdr_len - written_total);
                            for b in 0..k {
                                let hb = written_total + b;
                                // SAFETY: b < k <= room.
                                unsafe { std::ptr::write_volatile(dst.add(b), 0) };
                                if hb == 10 || hb == 11 {
                                    // SAFETY: as above.
                                    nb_ptr[hb - 10] = unsafe { dst.add(b) };
                                }
                            }
                            k
                        } else {
                            let fo = written_total - hdr_len;
                            let k = room.min(frame.len() - fo);
                            // SAFETY: dst has `room` >= k writable bytes; frame[fo..fo+k] is in the mbuf.
                            unsafe {
                                std::ptr::copy_nonoverlapping(frame.as_ptr().add(fo), dst, k)
                            };
                            k
                        };
                        pos += k;
                        written_total += k;
                        chain_written += k;
                    }
                    if written_total >= need {
                        break;
                    }
                }
                if chain_written == 0 {
                    used_chains = start_chains;
                    self.fail(GuestError("receive chain with no room"));
                    break 'pkts;
                }
                self.write_used_elem(
                    self.last_used.wrapping_add(used_chains),
                    head,
                    chain_written as u32,
                );
                used_chains += 1;
                num_buffers += 1;
            }
            if hdr_len == 12 {
                let nb = num_buffers.to_le_bytes();
                for (p, b) in nb_ptr.iter().zip(nb) {
                    if !p.is_null() {
                        // SAFETY: p was a checked writable header byte of this frame's first chain(s).
                        unsafe { std::ptr::write_volatile(*p, b) };
                    }
                }
            }
            *bytes += frame.len() as u64;
            consumed += 1;
            cache.free(slot.take().expect("checked"));
        }
        self.publish_used(used_chains, used_chains, false);
        consumed
    }
}

impl Drop for LiveRing {
    /// A ring taken down owes the guest no interrupt it asked for.
    fn drop(&mut self) {
        self.settle();
    }
}
