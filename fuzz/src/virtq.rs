//! The split virtqueue (`pmd::vhost::virtq::LiveRing`) or the packed one
//! (`pmd::vhost::packed::PackedRing`) over guest memory the input writes: descriptor
//! table, avail ring, used ring (a packed ring's descriptors and event areas),
//! buffers and indexes are whatever the fuzzer chose, and a few dequeue or enqueue
//! bursts run over them, with the guest publishing more entries in between (split
//! rings; a packed ring's available descriptors are all in the input already).
//!
//! Guest memory is a memfd laid out as
//! `[canary 4 KiB][region 0][canary 4 KiB][region 1][canary 4 KiB]`. Region 1 is in
//! the memory table only when the input asks for two regions; they are then contiguous
//! in guest-physical and frontend-virtual space but not in the file, so a buffer that
//! crosses from one to the other must be refused, not read as if contiguous. After
//! every burst: every canary byte is intact, no mbuf is handed out twice, a stopped
//! ring touched nothing; at the end every mbuf is back in the pool.
//!
//! Input layout (little-endian):
//! - `[0]` flags: bit 0 EVENT_IDX, bit 1 MRG_RXBUF, bit 2 INDIRECT_DESC, bit 3 a
//!   10-byte header (without MRG_RXBUF), bit 4 a call eventfd (through a
//!   `Notifier`, delivered after each burst), bit 5 two regions, bit 6 offloads both
//!   ways (headers read on dequeue, metadata on enqueued frames), bit 7 with bit 6: a
//!   guest that takes no offload;
//! - `[1]` ring size: bit 7 clear: `1 << (b & 15)`; set: `b & 0x7f` (any number);
//! - `[2..4]` the base (SET_VRING_BASE; packed: index and wrap counter);
//! - `[4..6]`, `[6..8]`, `[8..10]` descriptor table, avail ring and used ring as
//!   offsets from the first region's frontend-virtual address;
//! - `[10]` number of operations (at most `MAX_OPS`), then that many operation bytes
//!   (see [`Op`]);
//! - the rest: guest memory from guest-physical offset 0 (region 0, then region 1).

use pmd::hugepage::HugepagePolicy;
use pmd::vhost::driver::{eventfd, DriverMem};
use pmd::vhost::mem::{GuestMemory, RegionDesc};
use pmd::vhost::notify::{Irq, Notifier};
use pmd::vhost::packed::PackedRing;
use pmd::vhost::ring::{Ring, RingBase};
use pmd::vhost::virtq::{LiveRing, RingAddrs, RingFeatures, RxCounts};
use pmd::{Mbuf, Mempool, MempoolCache};
use std::collections::HashSet;
use std::sync::Arc;

/// Bytes of file around the regions that must never change.
pub const GUARD: u64 = 4096;
/// Each region's size.
pub const REGION: u64 = 16 << 10;
pub const GPA: u64 = 0x4000_0000;
pub const UVA: u64 = 0x7f12_0000_0000;
pub const CANARY: u8 = 0xc5;
/// Mbufs in the pool: a few bursts' worth, so that a guest offering many frames runs
/// the pool dry.
pub const POOL: u32 = 96;
/// Large buffers in the rig's pool: few, so that running out of them is exercised too.
pub const LARGE_POOL: u32 = 4;
pub const MAX_OPS: usize = 16;
pub const HEADER: usize = 11;

const FILE_LEN: u64 = GUARD + REGION + GUARD + REGION + GUARD;

/// Input flag bits.
pub const F_EVENT_IDX: u8 = 1;
pub const F_MRG_RXBUF: u8 = 2;
pub const F_INDIRECT: u8 = 4;
pub const F_HDR10: u8 = 8;
pub const F_CALL: u8 = 16;
pub const F_TWO_REGIONS: u8 = 32;
/// Offloads negotiated both ways: dequeue reads each frame's header, enqueue is handed
/// frames with offload metadata (`enqueue_offload`).
pub const F_OFFLOAD: u8 = 64;
/// With F_OFFLOAD: the guest takes no offload in received frames, so enqueue completes
/// checksums and drops TSO frames itself.
pub const F_GUEST_PLAIN: u8 = 128;

/// What one operation byte asks for.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// Frames asked for (dequeue) or offered (enqueue): bits 0-4, plus one.
    pub frames: usize,
    /// Enqueue: which row of [`LENS`] the frame lengths come from (bits 5-6).
    /// Dequeue: bit 6 frees the mbufs held so far before the burst.
    pub bits56: u8,
    /// Bit 7: before the burst the guest adds `1 + (frames - 1) % 16` to its avail index.
    pub publish: bool,
}

impl Op {
    pub fn decode(b: u8) -> Op {
        Op {
            frames: (b & 0x1f) as usize + 1,
            bits56: (b >> 5) & 3,
            publish: b & 0x80 != 0,
        }
    }
}

/// Frame lengths offered to enqueue, by row and frame index (mod 4): the shortest,
/// the usual and the largest an mbuf holds.
pub const LENS: [[usize; 4]; 4] = [
    [60, 64, 14, 100],
    [1514, 1, 2048, 13],
    [0, 64, 500, 1500],
    [2048, 2047, 1024, 12],
];

/// A decoded input.
pub struct Input<'a> {
    pub flags: u8,
    pub size: u32,
    pub base: u16,
    pub desc: u16,
    pub avail: u16,
    pub used: u16,
    pub ops: &'a [u8],
    pub image: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn decode(data: &'a [u8]) -> Option<Input<'a>> {
        if data.len() < HEADER {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
        let size = if data[1] & 0x80 == 0 {
            1u32 << (data[1] & 15)
        } else {
            (data[1] & 0x7f) as u32
        };
        let nops = (data[10] as usize).min(MAX_OPS);
        let rest = &data[HEADER..];
        let nops = nops.min(rest.len());
        Some(Input {
            flags: data[0],
            size,
            base: u16_at(2),
            desc: u16_at(4),
            avail: u16_at(6),
            used: u16_at(8),
            ops: &rest[..nops],
            image: &rest[nops..],
        })
    }
}

/// Builds an input (for seeds): the inverse of [`Input::decode`] for a power-of-two
/// ring size (`size_log2`).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    flags: u8,
    size_log2: u8,
    base: u16,
    desc: u16,
    avail: u16,
    used: u16,
    ops: &[u8],
    image: &[u8],
) -> Vec<u8> {
    let mut v = vec![flags, size_log2 & 15];
    for x in [base, desc, avail, used] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.push(ops.len() as u8);
    v.extend_from_slice(ops);
    v.extend_from_slice(image);
    v
}

struct Rig {
    mem: DriverMem,
    pool: Arc<Mempool>,
    zeros: Vec<u8>,
    canary: Vec<u8>,
}

thread_local! {
    static RIG: Rig = Rig {
        mem: DriverMem::new(GUARD, FILE_LEN - GUARD, GPA, UVA),
        pool: Mempool::with_large(POOL, LARGE_POOL, HugepagePolicy::Off).expect("mempool"),
        zeros: vec![0; REGION as usize],
        canary: vec![CANARY; FILE_LEN as usize],
    };
}

/// Offset in the memfd, after the leading guard, of a guest offset (guest-physical or
/// frontend-virtual, from the first region's base), if it is in a region.
fn file_off(guest_off: u64, two: bool) -> Option<u64> {
    if guest_off < REGION {
        Some(guest_off)
    } else if two && guest_off < 2 * REGION {
        Some(guest_off + GUARD)
    } else {
        None
    }
}

impl Rig {
    fn reset(&self, two: bool, image: &[u8]) {
        self.mem.fill_outside(CANARY);
        self.mem
            .write(0, &self.canary[..(FILE_LEN - GUARD) as usize]);
        self.mem.write(0, &self.zeros);
        if two {
            self.mem.write(REGION + GUARD, &self.zeros);
        }
        let n0 = image.len().min(REGION as usize);
        self.mem.write(0, &image[..n0]);
        if two && image.len() > n0 {
            let rest = &image[n0..image.len().min(2 * REGION as usize)];
            self.mem.write(REGION + GUARD, rest);
        }
    }

    /// Panics if a byte outside the regions changed.
    fn check_canaries(&self, two: bool) {
        // Slice equality (one bcmp), not a loop: a byte loop would be instrumented
        // for the fuzzer's comparison tracing and cost most of each run.
        let ok = |v: Vec<u8>| v[..] == self.canary[..v.len()];
        assert!(
            ok(self.mem.read_outside()),
            "the guard before region 0 was written"
        );
        if two {
            assert!(
                ok(self.mem.read(REGION, GUARD as usize)),
                "the guard between the regions was written"
            );
            assert!(
                ok(self.mem.read(2 * REGION + GUARD, GUARD as usize)),
                "the guard after region 1 was written"
            );
        } else {
            assert!(
                ok(self.mem.read(REGION, (FILE_LEN - GUARD - REGION) as usize)),
                "memory after region 0 was written"
            );
        }
    }

    fn regions(&self, two: bool) -> Vec<RegionDesc> {
        let mut v = vec![RegionDesc {
            guest_phys: GPA,
            size: REGION,
            user_addr: UVA,
            mmap_offset: GUARD,
        }];
        if two {
            v.push(RegionDesc {
                guest_phys: GPA + REGION,
                size: REGION,
                user_addr: UVA + REGION,
                mmap_offset: GUARD + REGION + GUARD,
            });
        }
        v
    }

    /// The guest publishes `k` more avail entries (whatever the ring holds there).
    fn publish(&self, avail: u16, two: bool, k: u16) {
        let Some(off) = file_off(avail as u64 + 2, two) else {
            return;
        };
        // Both bytes in one region.
        if file_off(avail as u64 + 3, two) != Some(off + 1) {
            return;
        }
        let b = self.mem.read(off, 2);
        let idx = u16::from_le_bytes([b[0], b[1]]).wrapping_add(k);
        self.mem.write(off, &idx.to_le_bytes());
    }

    fn snapshot(&self) -> Vec<u8> {
        self.mem.read(0, (FILE_LEN - GUARD) as usize)
    }
}

/// Which side of the ring the input drives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The guest's transmit ring: frames into mbufs.
    Dequeue,
    /// The guest's receive ring: mbufs into its buffers.
    Enqueue,
}

/// The ring layout an input drives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Split,
    Packed,
}

/// Runs one input on a split ring; panics on a broken property.
pub fn run(data: &[u8], dir: Dir) {
    run_layout(data, dir, Layout::Split)
}

/// Runs one input on a ring of `layout`; panics on a broken property.
pub fn run_layout(data: &[u8], dir: Dir, layout: Layout) {
    let Some(inp) = Input::decode(data) else {
        return;
    };
    RIG.with(|rig| run_on(rig, &inp, dir, layout));
}

fn run_on(rig: &Rig, inp: &Input, dir: Dir, layout: Layout) {
    let two = inp.flags & F_TWO_REGIONS != 0;
    rig.reset(two, inp.image);
    let mrg = inp.flags & F_MRG_RXBUF != 0;
    let feat = RingFeatures {
        event_idx: inp.flags & F_EVENT_IDX != 0,
        mrg_rxbuf: mrg,
        indirect: inp.flags & F_INDIRECT != 0,
        hdr_len: if !mrg && inp.flags & F_HDR10 != 0 {
            10
        } else {
            12
        },
        // Jumbo frames: longer frames take the large-buffer path.
        max_frame: pmd::port::max_frame(pmd::port::MAX_MTU),
        host_offload: inp.flags & F_OFFLOAD != 0,
        guest_caps: if inp.flags & F_OFFLOAD != 0 && inp.flags & F_GUEST_PLAIN == 0 {
            pmd::offload::Caps::ALL
        } else {
            pmd::offload::Caps::NONE
        },
    };
    let offload = inp.flags & F_OFFLOAD != 0;
    // Interrupts go through a notifier without a thread: delivered after each burst.
    let notifier = (inp.flags & F_CALL != 0).then(|| {
        let n = Notifier::new("fuzz", 1);
        n.set_call(0, Some(Arc::new(eventfd(0, false))));
        n
    });
    let irq = notifier.as_ref().map(|n| Irq::new(n.clone(), 0));
    let files = (0..if two { 2 } else { 1 })
        .map(|_| rig.mem.file())
        .collect();
    let gm = Arc::new(GuestMemory::map(&rig.regions(two), files).expect("map guest memory"));
    let addrs = RingAddrs {
        desc: UVA + inp.desc as u64,
        avail: UVA + inp.avail as u64,
        used: UVA + inp.used as u64,
    };
    let mut cache = MempoolCache::new(rig.pool.clone());
    let mut held: Vec<Mbuf> = Vec::new();
    let mut seen: HashSet<(u32, bool)> = HashSet::new();
    let ring = match layout {
        Layout::Split => LiveRing::new(gm, inp.size, addrs, inp.base, feat, irq).map(Ring::Split),
        Layout::Packed => PackedRing::new(
            gm,
            inp.size,
            addrs,
            RingBase::Frontend(inp.base as u32),
            feat,
            irq,
        )
        .map(Ring::Packed),
    };
    if let Ok(mut lr) = ring {
        rig.check_canaries(two);
        for &b in inp.ops {
            let op = Op::decode(b);
            if op.publish && layout == Layout::Split {
                rig.publish(inp.avail, two, 1 + ((op.frames - 1) % 16) as u16);
            }
            let stopped = lr.error().is_some();
            let before = stopped.then(|| rig.snapshot());
            let moved = match dir {
                Dir::Dequeue => {
                    if op.bits56 & 2 != 0 {
                        for m in held.drain(..) {
                            seen.remove(&(m.index(), m.is_large()));
                            cache.free(m);
                        }
                    }
                    dequeue(&mut lr, &mut cache, op, &mut held, &mut seen)
                }
                Dir::Enqueue => enqueue(&mut lr, &mut cache, op, offload),
            };
            if let Some(n) = &notifier {
                n.deliver();
            }
            rig.check_canaries(two);
            if let Some(before) = before {
                assert_eq!(moved, 0, "a stopped ring moved frames");
                assert!(
                    before == rig.snapshot(),
                    "a stopped ring wrote guest memory"
                );
            }
        }
        drop(lr);
    }
    rig.check_canaries(two);
    for m in held {
        cache.free(m);
    }
    drop(cache);
    assert_eq!(
        rig.pool.available(),
        POOL as usize,
        "mbufs lost or handed out twice"
    );
}

fn dequeue(
    lr: &mut Ring,
    cache: &mut MempoolCache,
    op: Op,
    held: &mut Vec<Mbuf>,
    seen: &mut HashSet<(u32, bool)>,
) -> usize {
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let want = op.frames.min(out.len());
    let (mut drops, mut bytes) = (RxCounts::default(), 0u64);
    let n = lr.dequeue(cache, &mut out[..want], &mut drops, &mut bytes);
    assert!(n <= want, "dequeue returned {n} of {want} slots");
    let mut sum = 0u64;
    for (i, slot) in out.iter_mut().enumerate() {
        match slot.take() {
            Some(m) => {
                assert!(i < n, "slot {i} filled past the {n} returned");
                assert!(m.len() <= m.capacity());
                assert!(
                    seen.insert((m.index(), m.is_large())),
                    "mbuf {} handed out twice",
                    m.index()
                );
                sum += m.len() as u64;
                held.push(m);
            }
            None => assert!(i >= n, "slot {i} empty but {n} returned"),
        }
    }
    assert_eq!(bytes, sum, "byte count differs from the frames returned");
    n
}

fn enqueue(lr: &mut Ring, cache: &mut MempoolCache, op: Op, offload: bool) -> usize {
    let lens = LENS[op.bits56 as usize];
    let mut pkts: Vec<Option<Mbuf>> = Vec::with_capacity(op.frames);
    for i in 0..op.frames {
        let Some(mut m) = cache.alloc() else { break };
        let d = m.set_len(lens[i % 4]);
        for (j, b) in d.iter_mut().enumerate() {
            *b = (i + j) as u8;
        }
        if offload && i % 2 == 1 {
            // A partial checksum anywhere the op's bits say (in the frame or not), or
            // a TSO request: what the switch step may hand the ring.
            let len = m.len() as u16;
            m.set_offload(pmd::offload::NetHdr {
                flags: pmd::offload::NEEDS_CSUM,
                gso_type: if op.bits56 & 1 != 0 {
                    pmd::offload::GSO_TCPV4
                } else {
                    0
                },
                gso_size: 1448,
                csum_start: (op.bits56 as u16 * 7) % len.max(1),
                csum_offset: if op.bits56 & 2 != 0 { 16 } else { 6 },
                hdr_len: 54,
            });
        }
        pkts.push(Some(m));
    }
    let (mut bytes, mut too_big) = (0u64, 0u64);
    let offered: u64 = pkts.iter().flatten().map(|m| m.len() as u64).sum();
    let n = if offload {
        lr.enqueue_offload(&mut pkts, cache, &mut bytes, &mut too_big)
    } else {
        lr.enqueue(&mut pkts, cache, &mut bytes, &mut too_big)
    };
    assert!(n <= pkts.len(), "enqueue consumed {n} of {}", pkts.len());
    assert!(too_big <= n as u64);
    assert!(bytes <= offered);
    for (i, slot) in pkts.into_iter().enumerate() {
        match slot {
            Some(m) => {
                assert!(i >= n, "frame {i} kept but {n} consumed");
                cache.free(m);
            }
            None => assert!(i < n, "frame {i} taken but only {n} consumed"),
        }
    }
    n
}
