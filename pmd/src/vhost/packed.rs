//! Packed virtqueues (`VIRTIO_F_RING_PACKED`, virtio 1.1) as the device side sees
//! them: one ring of 16-byte descriptors that the driver makes available and the
//! device marks used in place, with a wrap counter on each side.
//!
//! WORK IN PROGRESS (issue 15, item 4): not offered to frontends yet. Dequeue of
//! direct chains and enqueue into one-descriptor buffers (with mergeable buffers)
//! are here, with the split ring's rules: each descriptor read once into a local
//! copy and checked (availability against the wrap counter, direction, bounds in
//! guest memory, chain length); a violation stops the ring with a `GuestError`.
//! Missing: indirect descriptors, offload headers, large (jumbo) buffers, event
//! suppression, dirty logging, interrupts, batching of used descriptors per burst,
//! the port's dispatch (an enum of split and packed rings in `VringSlot`), the
//! protocol (ring base with the wrap bit, `VIRTIO_F_RING_PACKED` offered), fuzzing,
//! and the interop tests (testpmd `packed_vq=1`, QEMU `packed=on`, PVP `--packed`).
//! See docs/plan-issue-15.md.

use super::mem::{FastTable, GuestMemory};
use super::notify::Irq;
use super::virtq::{GuestError, RingAddrs, RingError, MAX_CHAIN, MAX_MRG_CHAINS, MAX_RING};
use crate::mempool::{Mbuf, MempoolCache, DATA_ROOM};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_ring;

const F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
const F_AVAIL: u16 = 1 << virtio_ring::VRING_PACKED_DESC_F_AVAIL;
const F_USED: u16 = 1 << virtio_ring::VRING_PACKED_DESC_F_USED;
const F_EVENT_DISABLE: u16 = virtio_ring::VRING_PACKED_EVENT_FLAG_DISABLE as u16;

/// One descriptor as read (once) from the ring.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

/// A validated packed ring with host pointers into guest memory.
pub struct PackedRing {
    size: u16,
    desc: *mut u8,
    /// Next descriptor the driver may have made available, and its wrap counter.
    avail_idx: u16,
    avail_wrap: bool,
    /// Next descriptor slot to write a used descriptor to, and its wrap counter.
    used_idx: u16,
    used_wrap: bool,
    hdr_len: usize,
    max_frame: usize,
    mrg_rxbuf: bool,
    table: FastTable,
    hint: usize,
    error: Option<GuestError>,
    /// The driver's event suppression area: whether it wants interrupts.
    driver_event: *mut u8,
    irq: Option<Irq>,
    /// The chains one received frame takes, made with the ring (nothing is
    /// allocated per frame).
    chains: Box<[Chain]>,
    mem: Arc<GuestMemory>,
}

// SAFETY: the pointer points into a mapping kept alive by `mem`; a PackedRing is used
// by one thread at a time, as a split `LiveRing` is.
unsafe impl Send for PackedRing {}

/// A chain of buffers taken from the ring: where its segments are, its buffer id and
/// how many descriptors it took.
#[derive(Clone, Copy)]
struct Chain {
    segs: [(*mut u8, u32); 16],
    nseg: usize,
    bytes: u64,
    id: u16,
    count: u16,
}

const NO_CHAIN: Chain = Chain {
    segs: [(std::ptr::null_mut(), 0); 16],
    nseg: 0,
    bytes: 0,
    id: 0,
    count: 0,
};

impl PackedRing {
    /// Validates the descriptor ring's placement (`desc`: the frontend's virtual
    /// address) and starts at `avail_idx`/`wrap` (SET_VRING_BASE: index in bits
    /// 0-14, the wrap counter in bit 15).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u32,
        hdr_len: usize,
        max_frame: usize,
        mrg_rxbuf: bool,
        irq: Option<Irq>,
    ) -> Result<PackedRing, RingError> {
        let desc = addrs.desc;
        // Packed rings need not be a power of two, but must fit the index's 15 bits.
        if size == 0 || size > MAX_RING {
            return Err(RingError::Size(size));
        }
        let len = 16 * size as u64;
        let p = mem.uva_to_host(desc, len).ok_or(RingError::Outside {
            what: "descriptor ring",
            addr: desc,
            len,
        })?;
        // The driver's and the device's event suppression areas (4 bytes each),
        // given as SET_VRING_ADDR's avail and used addresses.
        let place = |what, addr| {
            mem.uva_to_host(addr, 4)
                .ok_or(RingError::Outside { what, addr, len: 4 })
        };
        let driver_event = place("driver event area", addrs.avail)?;
        let device_event = place("device event area", addrs.used)?;
        if !(p as usize).is_multiple_of(16)
            || !(driver_event as usize).is_multiple_of(4)
            || !(device_event as usize).is_multiple_of(4)
        {
            return Err(RingError::Misaligned(addrs));
        }
        // Polled: the driver need not kick (flags DISABLE).
        // SAFETY: 4 bytes inside guest memory, 4-aligned.
        unsafe {
            std::ptr::write_volatile(device_event.add(2) as *mut u16, F_EVENT_DISABLE.to_le())
        };
        // Bits 0-14 the next avail index, 15 its wrap counter; QEMU puts the used
        // ones in bits 16-31, DPDK sends 0 (a new ring: both counters at 1).
        let (avail, used) = match base {
            0 => (0x8000u16, 0x8000u16),
            b if b >> 16 == 0 => (b as u16, b as u16),
            b => (b as u16, (b >> 16) as u16),
        };
        Ok(PackedRing {
            size: size as u16,
            desc: p,
            avail_idx: (avail & 0x7fff) % size as u16,
            avail_wrap: avail & 0x8000 != 0,
            used_idx: (used & 0x7fff) % size as u16,
            used_wrap: used & 0x8000 != 0,
            hdr_len,
            max_frame,
            mrg_rxbuf,
            table: mem.fast_table(),
            hint: 0,
            error: None,
            driver_event,
            irq,
            chains: vec![NO_CHAIN; MAX_MRG_CHAINS as usize].into_boxed_slice(),
            mem,
        })
    }

    /// The ring state to resume from (GET_VRING_BASE), as QEMU reads it: next avail
    /// index and wrap counter in bits 0-15, next used ones in bits 16-31.
    pub fn base(&self) -> u32 {
        let avail = self.avail_idx | if self.avail_wrap { 0x8000 } else { 0 };
        let used = self.used_idx | if self.used_wrap { 0x8000 } else { 0 };
        avail as u32 | (used as u32) << 16
    }

    pub fn error(&self) -> Option<GuestError> {
        self.error
    }

    fn read_desc(&self, i: u16) -> Desc {
        let p = self.desc.wrapping_add(16 * i as usize);
        // SAFETY: i < size: the 16 bytes lie in the validated ring, 16-aligned. Each
        // word is read once; the flags word last is what the driver wrote last.
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

    /// Whether descriptor `i` read as `d` is available in the current lap.
    fn is_avail(d: &Desc, wrap: bool) -> bool {
        (d.flags & F_AVAIL != 0) == wrap && (d.flags & F_USED != 0) != wrap
    }

    /// Takes the chain at the next available descriptor, if one is there. Checks
    /// every descriptor (direction, bounds, length of the chain).
    fn take_chain(&mut self, writable: bool) -> Result<Option<Chain>, GuestError> {
        let mut c = Chain {
            segs: [(std::ptr::null_mut(), 0); 16],
            nseg: 0,
            bytes: 0,
            id: 0,
            count: 0,
        };
        let (mut idx, mut wrap) = (self.avail_idx, self.avail_wrap);
        loop {
            let d = self.read_desc(idx);
            if !Self::is_avail(&d, wrap) {
                if c.count == 0 {
                    return Ok(None);
                }
                // The driver makes a chain available head last: a chain it has not
                // finished is not there yet.
                return Ok(None);
            }
            if d.flags & F_INDIRECT != 0 {
                return Err(GuestError::IndirectNotNegotiated);
            }
            if (d.flags & F_WRITE != 0) != writable {
                return Err(if writable {
                    GuestError::ReadOnlyInReceive { addr: d.addr }
                } else {
                    GuestError::WritableInTransmit { addr: d.addr }
                });
            }
            c.count += 1;
            // A chain cannot be longer than the ring; a longer claim would have the
            // next poll read the ring around again, so it ends here.
            let limit = MAX_CHAIN.min(self.size as u32);
            if d.flags & F_NEXT != 0 && c.count as u32 >= limit {
                return Err(GuestError::ChainTooLong { limit });
            }
            if d.len > 0 {
                let p = self.table.translate(d.addr, d.len, &mut self.hint).ok_or(
                    GuestError::BufferOutside {
                        addr: d.addr,
                        len: d.len,
                    },
                )?;
                if c.nseg < c.segs.len() {
                    c.segs[c.nseg] = (p, d.len);
                    c.nseg += 1;
                }
                c.bytes += d.len as u64;
            }
            idx += 1;
            if idx == self.size {
                idx = 0;
                wrap = !wrap;
            }
            if d.flags & F_NEXT == 0 {
                c.id = d.id;
                break;
            }
        }
        if c.bytes == 0 {
            return Err(GuestError::EmptyChain {
                head: self.avail_idx,
            });
        }
        self.avail_idx = idx;
        self.avail_wrap = wrap;
        Ok(Some(c))
    }

    /// Writes a used descriptor for buffer `id` (`len` bytes written) at the next used
    /// slot, and moves past the `count` descriptors its chain took. The flags go last,
    /// after a release fence: the driver reads the other fields after it sees them.
    fn put_used(&mut self, id: u16, len: u32, count: u16) {
        let (slot, flags) = self.next_used(id, len, count);
        fence(Ordering::Release);
        self.publish_used(slot, flags);
    }

    /// Writes id and length of a used descriptor at the next used slot and moves past
    /// the `count` descriptors its chain took; returns the slot and the flags that
    /// publish it (`publish_used`).
    fn next_used(&mut self, id: u16, len: u32, count: u16) -> (u16, u16) {
        let slot = self.used_idx;
        let p = self.desc.wrapping_add(16 * slot as usize);
        let flags = if self.used_wrap { F_AVAIL | F_USED } else { 0 };
        // SAFETY: used_idx < size: inside the validated ring, 16-aligned.
        unsafe {
            std::ptr::write_volatile(p.add(8) as *mut u32, len.to_le());
            std::ptr::write_volatile(p.add(12) as *mut u16, id.to_le());
        }
        self.advance_used(count);
        (slot, flags)
    }

    fn publish_used(&mut self, slot: u16, flags: u16) {
        let p = self.desc.wrapping_add(16 * slot as usize);
        // SAFETY: slot < size: inside the validated ring, 2-aligned.
        unsafe { std::ptr::write_volatile(p.add(14) as *mut u16, flags.to_le()) };
    }

    fn advance_used(&mut self, count: u16) {
        let n = self.used_idx as u32 + count as u32;
        if n >= self.size as u32 {
            self.used_wrap = !self.used_wrap;
        }
        self.used_idx = (n % self.size as u32) as u16;
    }

    /// Moves up to `out.len()` frames the guest transmitted into mbufs (frames longer
    /// than an mbuf's data room, or than the MTU, are dropped and counted in `drops`).
    pub fn dequeue(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        drops: &mut u64,
        bytes: &mut u64,
    ) -> usize {
        if self.error.is_some() {
            return 0;
        }
        let mut got = 0;
        while got < out.len() {
            // The buffer first: with none free the chain stays on the ring.
            let Some(mut m) = cache.alloc() else { break };
            let chain = match self.take_chain(false) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    cache.free(m);
                    break;
                }
                Err(e) => {
                    cache.free(m);
                    self.error = Some(e);
                    break;
                }
            };
            let payload = chain.bytes.saturating_sub(self.hdr_len as u64) as usize;
            let whole = chain.nseg < chain.segs.len() || chain.bytes == self.seg_bytes(&chain);
            if payload > self.max_frame.min(DATA_ROOM) || !whole {
                *drops += 1;
                cache.free(m);
                self.put_used(chain.id, 0, chain.count);
                continue;
            }
            let dst = m.set_len(payload);
            let mut skip = self.hdr_len;
            let mut off = 0;
            for &(p, len) in &chain.segs[..chain.nseg] {
                let len = len as usize;
                let k = skip.min(len);
                skip -= k;
                if len > k {
                    // SAFETY: the segment lies in guest memory (checked in take_chain);
                    // dst has room for what the segments hold after the header.
                    unsafe {
                        std::ptr::copy_nonoverlapping(p.add(k), dst.as_mut_ptr().add(off), len - k)
                    };
                    off += len - k;
                }
            }
            self.put_used(chain.id, 0, chain.count);
            *bytes += payload as u64;
            out[got] = Some(m);
            got += 1;
        }
        if got > 0 {
            self.signal();
        }
        if self.mem.is_poisoned() {
            for m in out[..got].iter_mut() {
                cache.free(m.take().expect("stored above"));
            }
            got = 0;
            self.error = Some(GuestError::MemoryGone);
        }
        got
    }

    /// Interrupts the guest after used descriptors were published, unless it turned
    /// interrupts off (`DESC`, a wish for one at a given descriptor, is taken as on:
    /// an interrupt more is allowed).
    fn signal(&self) {
        let Some(irq) = &self.irq else { return };
        fence(Ordering::SeqCst);
        // SAFETY: the 4-byte driver event area was validated in guest memory.
        let flags = unsafe { std::ptr::read_volatile(self.driver_event.add(2) as *const u16) };
        if u16::from_le(flags) & 3 != F_EVENT_DISABLE {
            irq.raise();
        }
    }

    fn seg_bytes(&self, c: &Chain) -> u64 {
        c.segs[..c.nseg].iter().map(|s| s.1 as u64).sum()
    }

    /// Copies frames from the front of `pkts` into the guest's receive buffers (one
    /// chain per frame; with mergeable buffers a frame may take several). Returns how
    /// many were consumed; stops at the first frame without room.
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
        let mut consumed = 0;
        for slot in pkts.iter_mut() {
            let frame = slot.as_ref().expect("tx slots are filled").data();
            let need = self.hdr_len + frame.len();
            // Peek: a frame is written only once all its chains are there.
            let save = (self.avail_idx, self.avail_wrap);
            let mut nchains = 0usize;
            let mut have = 0u64;
            let mut fail = None;
            while have < need as u64 {
                if nchains == self.chains.len() {
                    fail = Some(GuestError::ReceiveTooFragmented { len: frame.len() });
                    break;
                }
                match self.take_chain(true) {
                    Ok(Some(c)) => {
                        have += self.seg_bytes(&c);
                        self.chains[nchains] = c;
                        nchains += 1;
                        if !self.mrg_rxbuf {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        fail = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = fail {
                self.error = Some(e);
                break;
            }
            if have < need as u64 {
                (self.avail_idx, self.avail_wrap) = save;
                if nchains == 0 || self.mrg_rxbuf {
                    break; // no room now: the frame waits
                }
                // One chain too small without mergeable buffers: left for a frame
                // that fits; this one is dropped.
                consumed += 1;
                *too_big += 1;
                cache.free(slot.take().expect("checked"));
                continue;
            }
            let mut hdr = [0u8; 12];
            hdr[10..12].copy_from_slice(&(nchains as u16).to_le_bytes());
            let mut src: [&[u8]; 2] = [&hdr[..self.hdr_len], frame];
            let mut which = 0;
            let mut first = (0u16, 0u16);
            for k in 0..nchains {
                let c = self.chains[k];
                let mut n = 0u32;
                for &(p, len) in &c.segs[..c.nseg] {
                    let mut pos = 0usize;
                    while pos < len as usize && which < 2 {
                        let k = (len as usize - pos).min(src[which].len());
                        // SAFETY: pos + k <= len, inside the writable segment (checked).
                        unsafe {
                            std::ptr::copy_nonoverlapping(src[which].as_ptr(), p.add(pos), k)
                        };
                        pos += k;
                        n += k as u32;
                        src[which] = &src[which][k..];
                        if src[which].is_empty() {
                            which += 1;
                        }
                    }
                }
                // The frame's used descriptors are published together: the first
                // one's flags last, so the driver never sees part of a frame (Linux
                // drops a frame whose num_buffers are not all there).
                let (slot, flags) = self.next_used(c.id, n, c.count);
                if k == 0 {
                    first = (slot, flags);
                } else {
                    fence(Ordering::Release);
                    self.publish_used(slot, flags);
                }
            }
            fence(Ordering::Release);
            self.publish_used(first.0, first.1);
            *bytes += frame.len() as u64;
            consumed += 1;
            cache.free(slot.take().expect("checked"));
        }
        if consumed > 0 {
            self.signal();
        }
        consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hugepage::HugepagePolicy;
    use crate::mempool::Mempool;
    use crate::vhost::driver::DriverMem;

    const GPA: u64 = 0x4000_0000;
    const UVA: u64 = 0x7f12_0000_0000;
    const BUF: u64 = 0x10000;

    /// The driver's side of a packed ring at region offset 0.
    struct Driver<'a> {
        mem: &'a DriverMem,
        size: u16,
        next: u16,
        wrap: bool,
    }

    impl Driver<'_> {
        /// Makes `bufs` (region offset, length, flags) available as one chain with `id`.
        fn post(&mut self, id: u16, bufs: &[(u64, u32, u16)]) {
            // Head last, as a driver does: the device sees the chain whole or not at all.
            let head = self.next;
            let mut slots = Vec::new();
            for (k, &(off, len, fl)) in bufs.iter().enumerate() {
                let mut f = fl;
                if k + 1 < bufs.len() {
                    f |= F_NEXT;
                }
                f |= if self.wrap { F_AVAIL } else { F_USED };
                slots.push((self.next, GPA + off, len, id, f));
                self.next += 1;
                if self.next == self.size {
                    self.next = 0;
                    self.wrap = !self.wrap;
                }
            }
            for &(i, addr, len, id, f) in slots.iter().rev() {
                let o = 16 * i as u64;
                self.mem.write(o, &addr.to_le_bytes());
                self.mem.write(o + 8, &len.to_le_bytes());
                self.mem.write(o + 12, &id.to_le_bytes());
                let _ = head;
                self.mem.write_u16(o + 14, f);
            }
        }
        /// The used descriptor at slot `i`: (id, len, used-flag pair as a wrap value).
        fn used(&self, i: u16) -> (u16, u32, u16) {
            let o = 16 * i as u64;
            let len = self.mem.read_u32(o + 8);
            let id = self.mem.read_u16(o + 12);
            (id, len, self.mem.read_u16(o + 14) & (F_AVAIL | F_USED))
        }
    }

    fn rig(size: u16) -> (DriverMem, Arc<Mempool>) {
        let mem = DriverMem::new(0, 1 << 20, GPA, UVA);
        let pool = Mempool::with_large(256, 0, HugepagePolicy::Off).unwrap();
        let _ = size;
        (mem, pool)
    }

    fn ring(mem: &DriverMem, size: u16, mrg: bool) -> PackedRing {
        let gm = Arc::new(GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap());
        let addrs = RingAddrs {
            desc: UVA,
            avail: UVA + 0xf000,
            used: UVA + 0xf004,
        };
        PackedRing::new(gm, size as u32, addrs, 0x8000, 12, 1514, mrg, None).unwrap()
    }

    fn frame(n: usize, tag: u8) -> Vec<u8> {
        vec![tag; n]
    }

    #[test]
    fn transmitted_chains_are_received_in_order_across_the_wrap() {
        let (mem, pool) = rig(4);
        let mut cache = MempoolCache::new(pool.clone());
        let mut d = Driver {
            mem: &mem,
            size: 4,
            next: 0,
            wrap: true,
        };
        let mut r = ring(&mem, 4, true);
        let mut seen = Vec::new();
        // Six frames through a ring of four: one descriptor, then header and frame
        // in two descriptors, alternately; ids out of order.
        for k in 0..6u16 {
            let off = BUF + 0x1000 * k as u64;
            mem.write(off, &[0u8; 12]);
            mem.write(off + 12, &frame(60, k as u8));
            if k % 2 == 0 {
                d.post(10 - k, &[(off, 72, 0)]);
            } else {
                d.post(10 - k, &[(off, 12, 0), (off + 12, 60, 0)]);
            }
            let mut out: [Option<Mbuf>; 4] = Default::default();
            let mut drops = 0;
            let n = r.dequeue(&mut cache, &mut out, &mut drops, &mut 0);
            assert_eq!((n, drops), (1, 0), "frame {k}");
            let m = out[0].take().unwrap();
            assert_eq!(m.data(), &frame(60, k as u8)[..]);
            cache.free(m);
            seen.push(k);
        }
        assert!(r.error().is_none());
        // The last used descriptor: frame 5 (id 5), in the second lap's slots.
        // Frames took 1,2,1,2,1,2 descriptors: 9 in all; frame 5 is used at slot 7 % 4.
        let (id, len, fl) = d.used(3);
        assert_eq!((id, len), (5, 0));
        assert_eq!(fl, 0, "second lap: the used wrap counter is 0");
        // Nine descriptors in a ring of four: two laps and one, wrap counter back at 1.
        assert_eq!(r.base(), 0x8001_8001);
        drop(cache);
        assert_eq!(pool.available(), 256);
    }

    #[test]
    fn received_frames_fill_buffers_and_merge_across_them() {
        let (mem, pool) = rig(8);
        let mut cache = MempoolCache::new(pool.clone());
        let mut d = Driver {
            mem: &mem,
            size: 8,
            next: 0,
            wrap: true,
        };
        let mut r = ring(&mem, 8, true);
        d.post(1, &[(BUF, 2048, F_WRITE)]);
        d.post(2, &[(BUF + 0x1000, 64, F_WRITE)]);
        d.post(3, &[(BUF + 0x2000, 64, F_WRITE)]);
        let mut pkts: Vec<Option<Mbuf>> = [100usize, 100]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut m = cache.alloc().unwrap();
                m.set_len(n).copy_from_slice(&frame(n, i as u8 + 1));
                Some(m)
            })
            .collect();
        assert_eq!(r.enqueue(&mut pkts, &mut cache, &mut 0, &mut 0), 2);
        assert_eq!(d.used(0), (1, 112, F_AVAIL | F_USED));
        assert_eq!(mem.read(BUF + 12, 100), frame(100, 1));
        // The second frame took two 64-byte buffers: num_buffers = 2.
        assert_eq!(d.used(1), (2, 64, F_AVAIL | F_USED));
        assert_eq!(d.used(2), (3, 48, F_AVAIL | F_USED));
        assert_eq!(
            u16::from_le_bytes(mem.read(BUF + 0x1000 + 10, 2).try_into().unwrap()),
            2
        );
        let mut got = mem.read(BUF + 0x1000 + 12, 52);
        got.extend(mem.read(BUF + 0x2000, 48));
        assert_eq!(got, frame(100, 2));
        drop(cache);
        assert_eq!(pool.available(), 256);
    }

    #[test]
    fn a_guest_breaking_the_rules_stops_the_ring() {
        let (mem, pool) = rig(8);
        let mut cache = MempoolCache::new(pool.clone());
        for (what, bufs, want) in [
            (
                "writable in transmit",
                vec![(BUF, 100u32, F_WRITE)],
                GuestError::WritableInTransmit { addr: GPA + BUF },
            ),
            (
                "outside memory",
                vec![(1 << 30, 100, 0)],
                GuestError::BufferOutside {
                    addr: GPA + (1 << 30),
                    len: 100,
                },
            ),
            (
                "indirect",
                vec![(BUF, 32, F_INDIRECT)],
                GuestError::IndirectNotNegotiated,
            ),
        ] {
            let mut d = Driver {
                mem: &mem,
                size: 8,
                next: 0,
                wrap: true,
            };
            let mut r = ring(&mem, 8, true);
            d.post(1, &bufs);
            let mut out: [Option<Mbuf>; 4] = Default::default();
            let mut drops = 0;
            assert_eq!(
                r.dequeue(&mut cache, &mut out, &mut drops, &mut 0),
                0,
                "{what}"
            );
            assert_eq!(r.error(), Some(want), "{what}");
        }
        // A chain that claims more descriptors than the ring has: every one NEXT.
        let mut d = Driver {
            mem: &mem,
            size: 8,
            next: 0,
            wrap: true,
        };
        let mut r = ring(&mem, 8, true);
        let bufs: Vec<(u64, u32, u16)> = (0..8).map(|k| (BUF + 64 * k, 64, F_NEXT)).collect();
        d.post(1, &bufs);
        let mut out: [Option<Mbuf>; 4] = Default::default();
        let mut drops = 0;
        assert_eq!(r.dequeue(&mut cache, &mut out, &mut drops, &mut 0), 0);
        assert_eq!(r.error(), Some(GuestError::ChainTooLong { limit: 8 }));
        drop(cache);
        assert_eq!(pool.available(), 256);
    }
}
