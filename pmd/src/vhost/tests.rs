//! Rings built in shared memory by a guest that follows the rules, and by one
//! that breaks them: each violation stops the queue with a reason, loses no mbuf,
//! and touches nothing outside the guest's region or any buffer the guest did not
//! mark writable.

use super::driver::{DriverMem, DriverRing, F_INDIRECT, F_NEXT, F_WRITE};
use super::mem::{GuestMemory, MemError};
use super::notify::{Irq, Notifier};
use super::virtq::{GuestError, LiveRing, RingError, RingFeatures, RxCounts};
use crate::hugepage::HugepagePolicy;
use crate::mempool::{Mbuf, Mempool, MempoolCache};
use std::io::Read;
use std::sync::Arc;

pub(super) const OUTSIDE: u64 = 64 << 10;
pub(super) const SIZE: u64 = 1 << 20;
pub(super) const GPA: u64 = 0x4000_0000; // guest memory need not start at 0
pub(super) const UVA: u64 = 0x7f12_0000_0000;
pub(super) const BUF: u64 = 0x10000; // buffers start here in the region
pub(super) const CANARY: u8 = 0xc5;

pub(super) struct Rig {
    pub(super) mem: DriverMem,
    pub(super) pool: Arc<Mempool>,
    pub(super) cache: MempoolCache,
}

pub(super) fn rig() -> Rig {
    let mem = DriverMem::new(OUTSIDE, SIZE, GPA, UVA);
    mem.fill_outside(CANARY);
    let pool = Mempool::with_large(1024, 4, HugepagePolicy::Off).unwrap();
    let cache = MempoolCache::new(pool.clone());
    Rig { mem, pool, cache }
}

pub(super) fn feat(mrg: bool, event_idx: bool) -> RingFeatures {
    RingFeatures {
        event_idx,
        mrg_rxbuf: mrg,
        indirect: true,
        hdr_len: 12,
        max_frame: crate::port::max_frame(crate::port::DEFAULT_MTU),
        host_offload: false,
        guest_caps: crate::offload::Caps::NONE,
    }
}

fn live(r: &Rig, ring: &DriverRing, f: RingFeatures, irq: Option<Irq>) -> LiveRing {
    let gm = Arc::new(GuestMemory::map(&[r.mem.region()], vec![r.mem.file()]).unwrap());
    LiveRing::new(gm, ring.size as u32, ring.addrs(), 0, f, irq).unwrap()
}

/// A frame with a 12-byte zero header in front, at region offset `off`.
pub(super) fn put_frame(r: &Rig, off: u64, frame: &[u8]) -> u32 {
    r.mem.write(off, &[0u8; 12]);
    r.mem.write(off + 12, frame);
    (12 + frame.len()) as u32
}

pub(super) fn frame(n: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; n];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f
}

fn dequeue(cache: &mut MempoolCache, lr: &mut LiveRing) -> Vec<Mbuf> {
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let (mut over, mut bytes) = (RxCounts::default(), 0);
    let n = lr.dequeue(cache, &mut out, &mut over, &mut bytes);
    let v: Vec<Mbuf> = out[..n].iter_mut().map(|m| m.take().unwrap()).collect();
    assert_eq!(bytes, v.iter().map(|m| m.len() as u64).sum::<u64>());
    v
}

pub(super) fn assert_clean(r: &Rig) {
    assert!(
        r.mem.read_outside().iter().all(|&b| b == CANARY),
        "memory outside the guest region was written"
    );
}

pub(super) fn free_all(cache: &mut MempoolCache, v: Vec<Mbuf>) {
    for m in v {
        cache.free(m);
    }
}

fn tx_error(setup: impl FnOnce(&Rig, &mut DriverRing)) -> GuestError {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    setup(&r, &mut ring);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    let err = lr.error().expect("the ring should be stopped");
    free_all(&mut r.cache, got);
    // Stopped: nothing more is read, even if the guest now behaves.
    assert!(dequeue(&mut r.cache, &mut lr).is_empty());
    assert_clean(&r);
    drop(lr);
    drop(r.cache);
    assert_eq!(r.pool.available(), 1024, "mbufs lost on an error path");
    err
}

#[test]
fn good_tx_chains_are_received_and_returned() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..40u16 {
        let f = frame(60 + i as usize, i as u8);
        let len = put_frame(&r, BUF + 2048 * i as u64, &f);
        ring.set_desc(i, ring.gpa(BUF + 2048 * i as u64), len, 0, 0);
        ring.push(i);
    }
    let mut lr = live(&r, &ring, feat(true, false), None);
    let a = dequeue(&mut r.cache, &mut lr);
    let b = dequeue(&mut r.cache, &mut lr);
    assert_eq!((a.len(), b.len()), (32, 8));
    for (i, m) in a.iter().chain(b.iter()).enumerate() {
        assert_eq!(m.data(), &frame(60 + i, i as u8)[..]);
    }
    assert_eq!(ring.used_idx(), 40);
    assert_eq!(ring.used_elem(5), (5, 0));
    assert_eq!(
        ring.used_flags() & 1,
        1,
        "guest kicks are suppressed while we poll"
    );
    assert!(lr.error().is_none());
    free_all(&mut r.cache, a);
    free_all(&mut r.cache, b);
}

#[test]
fn header_and_frame_split_over_descriptors_and_indirect() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let f = frame(100, 7);
    // chain: 12-byte header | 50 bytes | 50 bytes
    r.mem.write(BUF, &[0u8; 12]);
    r.mem.write(BUF + 100, &f[..50]);
    r.mem.write(BUF + 200, &f[50..]);
    ring.set_desc(0, ring.gpa(BUF), 12, F_NEXT, 1);
    ring.set_desc(1, ring.gpa(BUF + 100), 50, F_NEXT, 2);
    ring.set_desc(2, ring.gpa(BUF + 200), 50, 0, 0);
    ring.push(0);
    // Same frame through an indirect table at BUF+0x1000.
    let t = BUF + 0x1000;
    ring.write_desc_at(t, ring.gpa(BUF), 12, F_NEXT, 1);
    ring.write_desc_at(t + 16, ring.gpa(BUF + 100), 100, 0, 0);
    r.mem.write(BUF + 100, &f);
    ring.set_desc(3, ring.gpa(t), 32, F_INDIRECT, 0);
    ring.push(3);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!(got.len(), 2);
    // Rewriting BUF+100 with all of f left f[..50] at BUF+100 and f[50..] at BUF+200,
    // so both chains carry f.
    assert_eq!(got[0].data(), &f[..]);
    assert_eq!(got[1].data(), &f[..]);
    assert!(lr.error().is_none());
    free_all(&mut r.cache, got);
}

#[test]
fn buffer_outside_guest_memory() {
    let e = tx_error(|_, ring| {
        // Just below the region: the bytes there belong to no guest region (canary).
        ring.set_desc(0, GPA - 64, 64, 0, 0);
        ring.push(0);
    });
    assert!(matches!(e, GuestError::BufferOutside { .. }), "{e}");
}

#[test]
fn length_past_region_end() {
    let e = tx_error(|_, ring| {
        ring.set_desc(0, GPA + SIZE - 100, 200, 0, 0);
        ring.push(0);
    });
    assert!(matches!(e, GuestError::BufferOutside { .. }), "{e}");
}

#[test]
fn address_overflow() {
    let e = tx_error(|_, ring| {
        ring.set_desc(0, u64::MAX - 10, 100, 0, 0);
        ring.push(0);
    });
    assert!(matches!(e, GuestError::BufferOutside { .. }), "{e}");
}

#[test]
fn loop_in_descriptor_chain() {
    let e = tx_error(|r, ring| {
        put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), 36, F_NEXT, 1);
        ring.set_desc(1, ring.gpa(BUF + 36), 36, F_NEXT, 0);
        ring.push(0);
    });
    assert!(matches!(e, GuestError::ChainTooLong { .. }), "{e}");
}

#[test]
fn loop_in_indirect_table() {
    let e = tx_error(|r, ring| {
        let t = BUF + 0x2000;
        ring.write_desc_at(t, ring.gpa(BUF), 40, F_NEXT, 1);
        ring.write_desc_at(t + 16, ring.gpa(BUF), 40, F_NEXT, 0);
        put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(t), 32, F_INDIRECT, 0);
        ring.push(0);
    });
    assert!(matches!(e, GuestError::ChainTooLong { .. }), "{e}");
}

#[test]
fn nested_indirect_and_bad_indirect_length() {
    let e = tx_error(|_, ring| {
        let t = BUF + 0x2000;
        ring.write_desc_at(t, ring.gpa(t), 16, F_INDIRECT, 0);
        ring.set_desc(0, ring.gpa(t), 16, F_INDIRECT, 0);
        ring.push(0);
    });
    assert_eq!(e, GuestError::IndirectMisplaced);
    let e = tx_error(|_, ring| {
        ring.set_desc(0, ring.gpa(BUF), 24, F_INDIRECT, 0);
        ring.push(0);
    });
    assert!(
        matches!(e, GuestError::IndirectLength { len: 24, .. }),
        "{e}"
    );
}

#[test]
fn avail_index_far_ahead_of_ring() {
    let e = tx_error(|_, ring| {
        ring.set_avail_idx(1000); // ring of 256
    });
    assert!(matches!(e, GuestError::AvailAhead { idx: 1000, .. }), "{e}");
}

#[test]
fn head_index_out_of_table() {
    let e = tx_error(|_, ring| {
        ring.push(300);
    });
    assert_eq!(
        e,
        GuestError::HeadOutOfTable {
            index: 300,
            size: 256
        }
    );
}

#[test]
fn next_index_out_of_table() {
    let e = tx_error(|r, ring| {
        put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), 30, F_NEXT, 999);
        ring.push(0);
    });
    assert_eq!(
        e,
        GuestError::NextOutOfTable {
            index: 999,
            size: 256
        }
    );
}

#[test]
fn zero_length_chain() {
    let e = tx_error(|_, ring| {
        ring.set_desc(0, ring.gpa(BUF), 0, 0, 0);
        ring.push(0);
    });
    assert_eq!(e, GuestError::EmptyChain { head: 0 });
}

#[test]
fn writable_descriptor_in_transmit_chain() {
    let e = tx_error(|r, ring| {
        let len = put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), len, F_WRITE, 0);
        ring.push(0);
    });
    assert!(matches!(e, GuestError::WritableInTransmit { .. }), "{e}");
}

#[test]
fn errors_after_good_chains_keep_the_good_ones() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..3u16 {
        let len = put_frame(&r, BUF + 2048 * i as u64, &frame(64, i as u8));
        ring.set_desc(i, ring.gpa(BUF + 2048 * i as u64), len, 0, 0);
        ring.push(i);
    }
    ring.set_desc(3, GPA + SIZE, 64, 0, 0);
    ring.push(3);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!(got.len(), 3, "frames before the bad chain are delivered");
    assert!(lr.error().is_some());
    assert_eq!(
        ring.used_idx(),
        3,
        "the good chains are returned to the guest"
    );
    free_all(&mut r.cache, got);
}

#[test]
fn a_frame_over_the_mtu_is_dropped_not_fatal() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let len = put_frame(&r, BUF, &vec![1u8; 3000]);
    ring.set_desc(0, ring.gpa(BUF), len, 0, 0);
    ring.push(0);
    let l2 = put_frame(&r, BUF + 8192, &frame(64, 9));
    ring.set_desc(1, ring.gpa(BUF + 8192), l2, 0, 0);
    ring.push(1);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let (mut over, mut bytes) = (RxCounts::default(), 0);
    let n = lr.dequeue(&mut r.cache, &mut out, &mut over, &mut bytes);
    assert_eq!((n, over.mtu, bytes), (1, 1, 64));
    assert_eq!(ring.used_idx(), 2);
    assert!(lr.error().is_none());
    r.cache.free(out[0].take().unwrap());
}

#[test]
fn a_jumbo_frame_crosses_both_ways_in_a_large_buffer() {
    let mut r = rig();
    let jumbo = RingFeatures {
        max_frame: crate::port::max_frame(9000),
        ..feat(true, false)
    };
    // Guest tx: the longest frame MTU 9000 allows, one byte more, and a short one.
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let long = frame(9018, 3);
    let frames = [long.clone(), frame(9019, 4), frame(1514, 5)];
    let mut at = BUF;
    for (i, f) in frames.iter().enumerate() {
        let len = put_frame(&r, at, f);
        ring.set_desc(i as u16, ring.gpa(at), len, 0, 0);
        ring.push(i as u16);
        at += 16384;
    }
    let mut lr = live(&r, &ring, jumbo, None);
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let (mut drops, mut bytes) = (RxCounts::default(), 0);
    let n = lr.dequeue(&mut r.cache, &mut out, &mut drops, &mut bytes);
    assert_eq!((n, drops.mtu, drops.oversize), (2, 1, 0));
    let got_long = out[0].take().unwrap();
    let got_short = out[1].take().unwrap();
    assert!(got_long.is_large() && got_long.data() == &long[..]);
    assert!(!got_short.is_large() && got_short.data() == &frame(1514, 5)[..]);
    assert_eq!(ring.used_idx(), 3);
    r.cache.free(got_short);

    // Guest rx with mergeable 2048-byte buffers: the frame spreads over five.
    let mut rx = DriverRing::new(&r.mem, 0x8000, 256);
    for i in 0..8u16 {
        rx.set_desc(i, rx.gpa(BUF + 0x40000 + 4096 * i as u64), 2048, F_WRITE, 0);
        rx.push(i);
    }
    let mut lr = live(&r, &rx, jumbo, None);
    let mut pkts = vec![Some(got_long)];
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 1);
    assert_eq!(rx.used_idx(), 5);
    let h = r.mem.read(BUF + 0x40000, 12);
    assert_eq!(u16::from_le_bytes([h[10], h[11]]), 5, "num_buffers");
    let mut back = r.mem.read(BUF + 0x40000 + 12, 2036);
    for i in 1..5u64 {
        let (_, len) = rx.used_elem(i as u16);
        back.extend(r.mem.read(BUF + 0x40000 + 4096 * i, len as usize));
    }
    assert_eq!(back, long);
    assert!(lr.error().is_none());
    assert_eq!(r.pool.large_available(), 4, "the large buffer went back");
}

#[test]
fn a_long_frame_without_large_buffers_is_dropped_not_waited_for() {
    let mut r = rig();
    let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
    let mut cache = MempoolCache::new(pool);
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let len = put_frame(&r, BUF, &frame(4000, 1));
    ring.set_desc(0, ring.gpa(BUF), len, 0, 0);
    ring.push(0);
    let f = RingFeatures {
        max_frame: crate::port::max_frame(9000),
        ..feat(true, false)
    };
    let mut lr = live(&r, &ring, f, None);
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let (mut drops, mut bytes) = (RxCounts::default(), 0);
    assert_eq!(lr.dequeue(&mut cache, &mut out, &mut drops, &mut bytes), 0);
    assert_eq!((drops.oversize, ring.used_idx()), (1, 1));
    drop(r.cache);
    r.cache = cache;
}

pub(super) fn rx_frames(n: usize, len: usize, cache: &mut MempoolCache) -> Vec<Option<Mbuf>> {
    (0..n)
        .map(|i| {
            let mut m = cache.alloc().unwrap();
            m.set_len(len).copy_from_slice(&frame(len, i as u8));
            Some(m)
        })
        .collect()
}

fn enqueue(cache: &mut MempoolCache, lr: &mut LiveRing, pkts: &mut [Option<Mbuf>]) -> usize {
    let (mut bytes, mut big) = (0, 0);
    lr.enqueue(pkts, cache, &mut bytes, &mut big)
}

#[test]
fn indirect_table_at_an_unaligned_address() {
    // Descriptors are read as two 8-byte words when aligned; a guest may place an
    // indirect table anywhere, and then it is read byte-wise with the same checks.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let f = frame(80, 4);
    r.mem.write(BUF, &[0u8; 12]);
    r.mem.write(BUF + 12, &f);
    let t = BUF + 0x1003;
    ring.write_desc_at(t, ring.gpa(BUF), 12, F_NEXT, 1);
    ring.write_desc_at(t + 16, ring.gpa(BUF + 12), 80, 0, 0);
    ring.set_desc(0, ring.gpa(t), 32, F_INDIRECT, 0);
    ring.push(0);
    // And one with a loop, which must still be caught.
    let u = BUF + 0x2005;
    ring.write_desc_at(u, ring.gpa(BUF), 12, F_NEXT, 1);
    ring.write_desc_at(u + 16, ring.gpa(BUF + 12), 80, F_NEXT, 0);
    ring.set_desc(1, ring.gpa(u), 32, F_INDIRECT, 0);
    ring.push(1);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data(), &f[..]);
    assert_eq!(lr.error(), Some(GuestError::ChainTooLong { limit: 2 }));
    free_all(&mut r.cache, got);
}

#[test]
fn one_buffer_per_frame_gets_a_clean_header() {
    // The common receive case (one writable descriptor with room): header zeroed but
    // for num_buffers = 1 with a 12-byte header; a 10-byte header ends before it.
    for (mrg, hdr) in [(true, 12usize), (false, 10)] {
        let mut r = rig();
        let mut ring = DriverRing::new(&r.mem, 0, 256);
        r.mem.write(BUF, &[0xee; 2048]);
        ring.set_desc(0, ring.gpa(BUF), 2048, F_WRITE, 0);
        ring.push(0);
        let f = RingFeatures {
            hdr_len: hdr,
            ..feat(mrg, false)
        };
        let mut lr = live(&r, &ring, f, None);
        let mut pkts = rx_frames(1, 64, &mut r.cache);
        assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 1);
        assert_eq!(ring.used_elem(0), (0, (hdr + 64) as u32));
        let h = r.mem.read(BUF, hdr);
        let mut want = vec![0u8; hdr];
        if hdr == 12 {
            want[10] = 1;
        }
        assert_eq!(h, want);
        assert_eq!(r.mem.read(BUF + hdr as u64, 64), frame(64, 0));
        assert_eq!(
            r.mem.read(BUF + hdr as u64 + 64, 1),
            vec![0xee],
            "nothing past it"
        );
    }
}

#[test]
fn mergeable_rx_spreads_a_frame_over_buffers() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..8u16 {
        ring.set_desc(i, ring.gpa(BUF + 4096 * i as u64), 64, F_WRITE, 0);
        ring.push(i);
    }
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut pkts = rx_frames(1, 100, &mut r.cache); // 112 bytes with header: 2 buffers
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 1);
    assert_eq!(ring.used_idx(), 2);
    assert_eq!(ring.used_elem(0), (0, 64));
    assert_eq!(ring.used_elem(1), (1, 48));
    let h = r.mem.read(BUF, 12);
    assert_eq!(u16::from_le_bytes([h[10], h[11]]), 2, "num_buffers");
    let mut got = r.mem.read(BUF + 12, 52);
    got.extend(r.mem.read(BUF + 4096, 48));
    assert_eq!(got, frame(100, 0));
}

#[test]
fn full_rx_ring_keeps_the_frame() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    ring.set_desc(0, ring.gpa(BUF), 2048, F_WRITE, 0);
    ring.push(0);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut pkts = rx_frames(3, 200, &mut r.cache);
    assert_eq!(
        enqueue(&mut r.cache, &mut lr, &mut pkts),
        1,
        "one buffer, one frame"
    );
    assert!(pkts[0].is_none() && pkts[1].is_some() && pkts[2].is_some());
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts[1..]), 0);
    // The guest adds a buffer: the next frame goes.
    ring.set_desc(1, ring.gpa(BUF + 4096), 2048, F_WRITE, 0);
    ring.push(1);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts[1..]), 1);
    assert!(lr.error().is_none());
    let m = pkts[2].take().unwrap();
    r.cache.free(m);
}

#[test]
fn read_only_buffer_in_receive_chain_is_not_written() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    r.mem.write(BUF, &[0xee; 2048]);
    ring.set_desc(0, ring.gpa(BUF), 2048, 0, 0); // not F_WRITE
    ring.push(0);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut pkts = rx_frames(1, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 0);
    assert!(matches!(
        lr.error(),
        Some(GuestError::ReadOnlyInReceive { .. })
    ));
    assert!(
        r.mem.read(BUF, 2048).iter().all(|&b| b == 0xee),
        "a read-only buffer was written"
    );
    assert_eq!(ring.used_idx(), 0);
    r.cache.free(pkts[0].take().unwrap());
    assert_clean(&r);
}

#[test]
fn receive_buffer_outside_memory_is_not_written() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    ring.set_desc(0, GPA - 2048, 2048, F_WRITE, 0);
    ring.push(0);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut pkts = rx_frames(1, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 0);
    assert!(lr.error().is_some());
    r.cache.free(pkts[0].take().unwrap());
    assert_clean(&r);
}

#[test]
fn ring_outside_memory_is_rejected_at_setup() {
    let r = rig();
    let gm = Arc::new(GuestMemory::map(&[r.mem.region()], vec![r.mem.file()]).unwrap());
    let ring = DriverRing::new(&r.mem, SIZE - 4096, 256); // avail ring runs past the end
    let e = LiveRing::new(gm.clone(), 256, ring.addrs(), 0, feat(true, false), None)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            RingError::Outside {
                what: "avail ring",
                ..
            }
        ),
        "{e}"
    );
    let ring = DriverRing::new(&r.mem, 0, 256);
    assert!(
        LiveRing::new(gm, 100, ring.addrs(), 0, feat(true, false), None).is_err(),
        "size not a power of two"
    );
}

#[test]
fn memory_table_rejects_overlaps_and_fd_mismatch() {
    let r = rig();
    let a = r.mem.region();
    assert_eq!(
        GuestMemory::map(&[a, a], vec![r.mem.file(), r.mem.file()]).err(),
        Some(MemError::Overlap { a: 0, b: 1 })
    );
    assert_eq!(
        GuestMemory::map(&[a], vec![]).err(),
        Some(MemError::FdCount { regions: 1, fds: 0 })
    );
    let mut z = a;
    z.size = 0;
    assert!(GuestMemory::map(&[z], vec![r.mem.file()]).is_err());
}

/// A guest's call eventfd behind a notifier without a thread: `Call::count` delivers
/// what the ring raised, then reads the eventfd as the guest would.
pub(super) struct Call {
    n: Arc<Notifier>,
    fd: Arc<std::fs::File>,
}

impl Call {
    pub(super) fn new() -> Call {
        let n = Notifier::new("test", 2);
        let fd = Arc::new(super::driver::eventfd(0, false));
        n.set_call(0, Some(fd.clone()));
        Call { n, fd }
    }
    pub(super) fn irq(&self) -> Option<Irq> {
        Some(Irq::new(self.n.clone(), 0))
    }
    pub(super) fn count(&self) -> u64 {
        self.n.deliver();
        let mut b = [0u8; 8];
        match (&*self.fd).read(&mut b) {
            Ok(8) => u64::from_le_bytes(b),
            _ => 0,
        }
    }
}

#[test]
fn event_idx_signals_only_when_asked() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..8u16 {
        ring.set_desc(i, ring.gpa(BUF + 4096 * i as u64), 2048, F_WRITE, 0);
        ring.push(i);
    }
    let call = Call::new();
    ring.set_used_event(2); // interrupt when used idx passes 2
    let mut lr = live(&r, &ring, feat(true, true), call.irq());
    let mut p = rx_frames(2, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p); // used 0 -> 2: not past 2
    assert_eq!(call.count(), 0);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p); // 2 -> 3: passes
    assert_eq!(call.count(), 1);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p); // 3 -> 4, event still 2: no
    assert_eq!(call.count(), 0);
}

#[test]
fn no_interrupt_flag_is_respected_without_event_idx() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..4u16 {
        ring.set_desc(i, ring.gpa(BUF + 4096 * i as u64), 2048, F_WRITE, 0);
        ring.push(i);
    }
    let call = Call::new();
    let mut lr = live(&r, &ring, feat(false, false), call.irq());
    ring.set_avail_flags(1);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p);
    assert_eq!(call.count(), 0);
    ring.set_avail_flags(0);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p);
    assert_eq!(call.count(), 1);
}

#[test]
fn transmit_completion_interrupt_comes_at_the_next_poll() {
    // Dequeue publishes used entries at once but checks whether the guest wants an
    // interrupt at its next call (or when the ring goes away), so the check's fence
    // does not wait on the burst's own stores.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..3u16 {
        let len = put_frame(&r, BUF + 4096 * i as u64, &frame(64, i as u8));
        ring.set_desc(i, ring.gpa(BUF + 4096 * i as u64), len, 0, 0);
    }
    let call = Call::new();
    ring.set_used_event(0); // interrupt when used idx passes 0
    let mut lr = live(&r, &ring, feat(true, true), call.irq());
    ring.push(0);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!((got.len(), ring.used_idx()), (1, 1));
    assert_eq!(call.count(), 0, "owed, not yet sent");
    let mut none: [Option<Mbuf>; 0] = [];
    let (mut over, mut bytes) = (RxCounts::default(), 0);
    assert_eq!(
        lr.dequeue(&mut r.cache, &mut none, &mut over, &mut bytes),
        0
    );
    assert_eq!(call.count(), 1, "an empty poll settles it");
    assert_eq!(
        lr.dequeue(&mut r.cache, &mut none, &mut over, &mut bytes),
        0
    );
    assert_eq!(call.count(), 0, "and only once");
    ring.set_used_event(1);
    ring.push(1);
    let mut got2 = dequeue(&mut r.cache, &mut lr);
    drop(lr);
    assert_eq!(call.count(), 1, "a ring taken down settles what it owes");
    for m in got.into_iter().chain(got2.drain(..)) {
        r.cache.free(m);
    }
}

#[test]
fn a_guest_error_after_good_frames_still_interrupts_for_them() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let len = put_frame(&r, BUF, &frame(64, 1));
    ring.set_desc(0, ring.gpa(BUF), len, 0, 0);
    ring.set_desc(1, 1 << 40, 64, 0, 0); // outside guest memory
    let call = Call::new();
    ring.set_used_event(0);
    let mut lr = live(&r, &ring, feat(true, true), call.irq());
    ring.push(0);
    ring.push(1);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!((got.len(), ring.used_idx()), (1, 1));
    assert!(lr.error().is_some());
    assert_eq!(
        call.count(),
        1,
        "the broken ring is not polled again: signalled at once"
    );
    free_all(&mut r.cache, got);
}

#[test]
fn continues_from_the_used_index_when_base_differs() {
    // DPDK virtio-user sends base 0 when it comes back after a reconnect with its
    // rings as they were: the used index in guest memory says where we stopped.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    r.mem.write_u16(ring.used + 2, 1000);
    ring.set_avail_idx(1000);
    let len = put_frame(&r, BUF, &frame(64, 3));
    ring.set_desc(0, ring.gpa(BUF), len, 0, 0);
    ring.push(0);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!(got.len(), 1, "exactly the one new entry");
    assert!(lr.error().is_none());
    assert_eq!(ring.used_idx(), 1001);
    assert_eq!(lr.last_avail(), 1001);
    free_all(&mut r.cache, got);
}

#[test]
fn region_past_the_end_of_its_file_is_rejected() {
    let r = rig();
    let mut d = r.mem.region();
    d.size += 4096; // the file is OUTSIDE + SIZE bytes long
    let e = GuestMemory::map(&[d], vec![r.mem.file()]).err().unwrap();
    assert!(matches!(e, MemError::PastEnd { index: 0, .. }), "{e}");
}

#[test]
fn rings_misaligned_in_host_memory_are_rejected() {
    // user_addr 8 bytes off its page: a 16-aligned frontend address lands 8 bytes
    // off alignment in our mapping.
    let r = rig();
    let mut d = r.mem.region();
    d.user_addr += 8;
    let gm = Arc::new(GuestMemory::map(&[d], vec![r.mem.file()]).unwrap());
    let ring = DriverRing::new(&r.mem, 0x1000 - 8, 256);
    let mut a = ring.addrs();
    a.desc += 8;
    a.avail += 8;
    a.used += 8;
    assert_eq!(a.desc % 16, 0);
    let e = LiveRing::new(gm, 256, a, 0, feat(true, false), None)
        .err()
        .unwrap();
    assert!(matches!(e, RingError::Misaligned(_)), "{e}");
}

// ---- Hardening: bounded work per chain and per burst ----

/// Where `long_tx_chain` puts its bytes: past the largest ring these tests build.
const LONG_BUF: u64 = 0x8_0000;

/// Descriptors `first..first+n` as one transmit chain: a 12-byte header descriptor,
/// then 1-byte ones.
fn long_tx_chain(r: &Rig, ring: &DriverRing, first: u16, n: u16) {
    r.mem.write(LONG_BUF, &[0u8; 64]);
    for k in 0..n {
        let i = first + k;
        let last = k + 1 == n;
        let len = if k == 0 { 12 } else { 1 };
        ring.set_desc(
            i,
            ring.gpa(LONG_BUF),
            len,
            if last { 0 } else { F_NEXT },
            i + 1,
        );
    }
}

#[test]
fn a_chain_longer_than_the_cap_is_a_guest_error() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 1024);
    long_tx_chain(&r, &ring, 0, 300);
    ring.push(0);
    let mut lr = live(&r, &ring, feat(true, false), None);
    assert!(dequeue(&mut r.cache, &mut lr).is_empty());
    assert_eq!(
        lr.error(),
        Some(GuestError::ChainTooLong {
            limit: super::virtq::MAX_CHAIN
        })
    );
    assert_clean(&r);
}

#[test]
fn an_indirect_table_longer_than_the_ring_is_refused() {
    let e = tx_error(|_, ring| {
        // 512 entries in a ring of 256.
        ring.set_desc(0, ring.gpa(BUF), 512 * 16, F_INDIRECT, 0);
        ring.push(0);
    });
    assert_eq!(
        e,
        GuestError::IndirectLength {
            len: 8192,
            ring: 256
        }
    );
}

#[test]
fn a_burst_of_long_chains_reads_a_bounded_number_of_descriptors() {
    // 32 chains of 200 descriptors each: 6400 reads if the burst took them all. The
    // burst stops at its budget; the rest wait for the next poll, and nothing is lost.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 8192);
    for c in 0..32u16 {
        long_tx_chain(&r, &ring, c * 200, 200);
        ring.push(c * 200);
    }
    // (Chains of more than 64 segments are dropped as oversize: what counts here is
    // how many avail entries one burst consumes.)
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    free_all(&mut r.cache, got);
    assert!(lr.error().is_none(), "{:?}", lr.error());
    let per_burst = super::virtq::BURST_DESC_BUDGET / 200 + 1;
    let first = ring.used_idx() as u32;
    assert!(
        first > 0 && first <= per_burst,
        "one burst walked {first} chains of 200 descriptors (budget allows {per_burst})"
    );
    for _ in 0..32 {
        let got = dequeue(&mut r.cache, &mut lr);
        free_all(&mut r.cache, got);
    }
    assert_eq!(ring.used_idx(), 32);
}

#[test]
fn mergeable_receive_into_tiny_buffers_is_bounded() {
    // 1-byte receive buffers: a 1000-byte frame would need 1012 chains.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 2048);
    for i in 0..2048u16 {
        ring.set_desc(i, ring.gpa(BUF + i as u64), 1, F_WRITE, 0);
        ring.push(i);
    }
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut pkts = rx_frames(1, 1000, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 0);
    assert_eq!(
        lr.error(),
        Some(GuestError::ReceiveTooFragmented { len: 1000 })
    );
    assert_eq!(ring.used_idx(), 0, "nothing of the frame was published");
    r.cache.free(pkts[0].take().unwrap());
    assert_clean(&r);
}

#[test]
fn mergeable_receive_across_chains_with_split_header() {
    // Chains of 5 bytes (the header itself spans three of them): the header's
    // num_buffers counts every chain and the frame arrives whole.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..40u16 {
        ring.set_desc(i, ring.gpa(BUF + 8 * i as u64), 5, F_WRITE, 0);
        ring.push(i);
    }
    let mut lr = live(&r, &ring, feat(true, false), None);
    let mut pkts = rx_frames(1, 100, &mut r.cache);
    let want = pkts[0].as_ref().unwrap().data().to_vec();
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 1);
    assert!(lr.error().is_none());
    let chains = (12 + 100usize).div_ceil(5) as u16;
    assert_eq!(ring.used_idx(), chains);
    let mut got = Vec::new();
    for i in 0..chains {
        let (id, len) = ring.used_elem(i);
        assert_eq!(id, i as u32);
        got.extend(r.mem.read(BUF + 8 * i as u64, len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), chains);
    assert_eq!(&got[12..], &want[..]);
    assert_clean(&r);
}

// ---- Hardening: interrupts ----

#[test]
fn a_full_blocking_call_eventfd_drops_the_interrupt_instead_of_blocking() {
    let n = Notifier::new("test", 2);
    // What a hostile frontend sends: blocking, and one write away from full.
    let fd = Arc::new(super::driver::eventfd(0xffff_ffff_ffff_fffe, true));
    n.set_call(0, Some(fd));
    let irq = Irq::new(n.clone(), 0);
    let t0 = std::time::Instant::now();
    irq.raise();
    n.deliver();
    assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(n.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(n.sent.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn only_eventfds_are_accepted_for_kick_and_call() {
    use super::notify::check_eventfd;
    assert!(check_eventfd(&super::driver::eventfd(0, true)).is_ok());
    let (rd, _w) = std::io::pipe().unwrap();
    let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(rd));
    let e = check_eventfd(&pipe).unwrap_err();
    assert!(e.0.starts_with("pipe:"), "{e}");
    assert!(check_eventfd(&std::fs::File::open("/dev/null").unwrap()).is_err());
}

// ---- Hardening: guest memory ----

#[test]
fn memory_that_shrinks_under_a_live_ring_breaks_only_that_ring() {
    // ftruncate(memfd, 0) while the ring is live: the next access faults (SIGBUS).
    // Without recovery the test process dies; with it the ring stops with MemoryGone.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    let len = put_frame(&r, BUF, &frame(64, 1));
    ring.set_desc(0, ring.gpa(BUF), len, 0, 0);
    let mut lr = live(&r, &ring, feat(true, false), None);
    ring.push(0);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!(got.len(), 1);
    free_all(&mut r.cache, got);
    // From here on the test must not touch r.mem's own mapping either.
    r.mem.file().set_len(0).unwrap();
    let got = dequeue(&mut r.cache, &mut lr);
    assert!(got.is_empty());
    assert_eq!(lr.error(), Some(GuestError::MemoryGone));
    let mut pkts = rx_frames(1, 64, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 0);
    r.cache.free(pkts[0].take().unwrap());
    drop(lr);
    drop(r.cache);
    assert_eq!(r.pool.available(), 1024, "no mbuf lost");
    std::mem::forget(r.mem); // its own mapping is past the file's end now
}

/// Mappings of this process whose file is named `name` (a memfd shows as
/// `/memfd:NAME (deleted)`).
fn maps_of(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(name))
        .count()
}

/// A hugetlbfs memfd of `size` bytes (2 MiB pages; scripts/install-deps.sh reserves them).
fn hugetlb_memfd(size: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid C string; the fd is owned below.
    let fd = unsafe {
        libc::memfd_create(
            c"vswitch-test-huge".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB,
        )
    };
    assert!(
        fd >= 0,
        "memfd_create(MFD_HUGETLB): {} (reserve hugepages: scripts/install-deps.sh)",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh descriptor.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

#[test]
fn small_regions_on_hugetlbfs_are_mapped_and_unmapped_in_whole_pages() {
    // 4 KiB regions on a hugetlbfs file: a mapping of 4 KiB is rounded up to 2 MiB by
    // the kernel, and munmap of 4 KiB then fails, leaving the mapping. 32 tables of 8
    // such regions must leave nothing behind.
    let f = hugetlb_memfd(16 << 20);
    // Offsets on a huge page (the mapping leaked) and inside one (mmap refused it).
    for round in 0..32u64 {
        let descs: Vec<super::mem::RegionDesc> = (0..8u64)
            .map(|k| super::mem::RegionDesc {
                guest_phys: k << 32,
                size: 4096,
                user_addr: 0x7f00_0000_0000 + (k << 32),
                mmap_offset: (k << 21) + (round % 2) * 8192,
            })
            .collect();
        let files = (0..8).map(|_| f.try_clone().unwrap()).collect();
        let gm = GuestMemory::map(&descs, files).unwrap();
        assert_eq!(gm.mapped_bytes(), 8 << 21);
        assert!(gm.gpa_to_host(3 << 32, 4096).is_some());
        assert!(gm.gpa_to_host(3 << 32, 4097).is_none(), "only the region");
        drop(gm);
    }
    assert_eq!(
        maps_of("vswitch-test-huge"),
        0,
        "guest mappings were left behind"
    );
}

#[test]
fn guest_memory_must_be_tmpfs_or_hugetlbfs_and_within_the_limit() {
    let r = rig();
    // A file on the root filesystem (a disk, or an overlay): refused.
    let path = std::env::temp_dir().join(format!("vswitch-mem-{}", std::process::id()));
    let disk = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    disk.set_len(SIZE + OUTSIDE).unwrap();
    let _ = std::fs::remove_file(&path);
    let on_tmpfs = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/tmp") && l.contains("tmpfs"));
    if !on_tmpfs {
        let e = GuestMemory::map(&[r.mem.region()], vec![disk])
            .err()
            .unwrap();
        assert!(matches!(e, MemError::FileKind { index: 0, .. }), "{e}");
    }
    // A pipe: refused.
    let (rd, _w) = std::io::pipe().unwrap();
    let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(rd));
    let e = GuestMemory::map(&[r.mem.region()], vec![pipe])
        .err()
        .unwrap();
    assert!(matches!(e, MemError::FileKind { .. }), "{e}");
    // More than the port's limit: refused before anything is mapped.
    let e = GuestMemory::map_limited(&[r.mem.region()], vec![r.mem.file()], SIZE - 1)
        .err()
        .unwrap();
    assert_eq!(
        e,
        MemError::TooLarge {
            total: SIZE,
            limit: SIZE - 1
        }
    );
    // A sparse 64 TiB memfd under the default limit (1 TiB): refused.
    let mut d = r.mem.region();
    d.size = 64 << 40;
    let big = r.mem.file();
    big.set_len(OUTSIDE + (64 << 40)).unwrap();
    let e = GuestMemory::map(&[d], vec![big]).err().unwrap();
    assert!(matches!(e, MemError::TooLarge { .. }), "{e}");
    r.mem.file().set_len(OUTSIDE + SIZE).unwrap();
}

#[test]
fn a_region_larger_than_ram_that_shrinks_is_recovered_too() {
    // A sparse 64 GiB memfd (more than this machine's RAM): the zero pages put in its
    // place must not need 64 GiB of commit, or the recovery fails and the process dies.
    let mem = DriverMem::new(0, 64 << 30, GPA, UVA);
    let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
    let mut cache = MempoolCache::new(pool.clone());
    let mut ring = DriverRing::new(&mem, 0, 256);
    let gm = Arc::new(GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap());
    let mut lr = LiveRing::new(gm, 256, ring.addrs(), 0, feat(true, false), None).unwrap();
    mem.write(BUF, &[0u8; 76]);
    ring.set_desc(0, ring.gpa(BUF), 76, 0, 0);
    ring.push(0);
    mem.file().set_len(0).unwrap();
    assert!(dequeue(&mut cache, &mut lr).is_empty());
    assert_eq!(lr.error(), Some(GuestError::MemoryGone));
    drop(lr);
    drop(cache);
    assert_eq!(pool.available(), 1024);
}

/// An idle PMD thread about to sleep asks the guest for kicks (`arm_kick`), and
/// after its sleep stops asking and drains the kick fd (`disarm_kick`); a buffer added
/// while it armed is seen (`Pending`), and nothing stays armed. Both notification
/// schemes: EVENT_IDX's avail_event and VRING_USED_F_NO_NOTIFY.
#[test]
fn a_sleeping_thread_asks_for_kicks_and_stops_asking_after() {
    use crate::idle::Wake;
    for event_idx in [false, true] {
        let mut r = rig();
        let mut ring = DriverRing::new(&r.mem, 0, 256);
        let kick = super::driver::eventfd(0, true);
        let mut lr = live(&r, &ring, feat(true, event_idx), None)
            .with_kick(Some(kick.try_clone().unwrap().into()));
        let len = put_frame(&r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), len, 0, 0);
        ring.set_desc(1, ring.gpa(BUF), len, 0, 0);
        ring.push(0);
        let got = dequeue(&mut r.cache, &mut lr);
        assert_eq!(got.len(), 1);
        free_all(&mut r.cache, got);
        assert!(
            !ring.would_kick(event_idx, 1, 2),
            "kicks while polling ({event_idx})"
        );

        assert!(
            matches!(lr.arm_kick(), Wake::Fd(_)),
            "not armed ({event_idx})"
        );
        assert!(
            ring.would_kick(event_idx, 1, 2),
            "no kick asked for ({event_idx})"
        );
        ring.push(1);
        std::io::Write::write_all(&mut &kick, &1u64.to_ne_bytes()).unwrap();
        lr.disarm_kick(true);
        assert_eq!(super::driver::eventfd_take(&kick), 0, "kick fd not drained");
        assert!(
            !ring.would_kick(event_idx, 2, 3),
            "kicks after the sleep ({event_idx})"
        );

        // Buffer 1 is not taken yet: arming sees it and leaves nothing armed.
        assert_eq!(lr.arm_kick(), Wake::Pending);
        assert!(
            !ring.would_kick(event_idx, 2, 3),
            "left armed ({event_idx})"
        );
        let got = dequeue(&mut r.cache, &mut lr);
        assert_eq!(got.len(), 1);
        free_all(&mut r.cache, got);
        assert!(lr.error().is_none());
    }
    // A ring without a kick fd cannot wake its thread.
    let r = rig();
    let ring = DriverRing::new(&r.mem, 0, 256);
    let mut lr = live(&r, &ring, feat(true, true), None);
    assert_eq!(lr.arm_kick(), Wake::Timeout);
}

/// The pages marked in a dirty log file (bit numbers).
pub(super) fn marked_pages(log: &std::fs::File, len: usize) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    log.read_exact_at(&mut b, 0).unwrap();
    let mut v = Vec::new();
    for (i, byte) in b.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                v.push(i as u64 * 8 + bit);
            }
        }
    }
    v
}

/// The log bit of region offset `off`.
pub(super) fn page_of(off: u64) -> u64 {
    (GPA + off) / super::log::LOG_PAGE
}

#[test]
fn a_logged_ring_marks_every_page_it_writes_and_no_other() {
    // Dirty logging for live migration: receive buffers written (in one chain, and a
    // frame spread over two with mergeable buffers) and the used ring are marked;
    // transmit buffers, which the switch only reads, are not.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256); // used ring at region offset 8192
    ring.set_desc(0, ring.gpa(BUF), 2048, F_WRITE, 0);
    ring.set_desc(1, ring.gpa(BUF + 0x5000 - 30), 60, F_WRITE, 0); // crosses a page
    ring.set_desc(2, ring.gpa(BUF + 0x9000), 2048, F_WRITE, 0);
    for i in 0..3 {
        ring.push(i);
    }
    let log_len = (page_of(SIZE) / 8 + 1) as usize;
    let log_file = DriverMem::new(0, log_len as u64, 0, 0).file();
    let area = Arc::new(super::log::DirtyLog::map(&log_file, log_len as u64, 0).unwrap());
    let mut lr = live(&r, &ring, feat(true, false), None).with_log(area.clone(), None);
    assert!(lr.logging());
    assert_eq!(
        marked_pages(&log_file, log_len),
        vec![page_of(8192)],
        "the used ring, at once"
    );
    log_file.set_len(0).unwrap();
    log_file.set_len(log_len as u64).unwrap();

    let mut pkts = rx_frames(2, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 2);
    assert_eq!(ring.used_idx(), 3, "the second frame took two buffers");
    let mut want = vec![
        page_of(8192),
        page_of(BUF),
        page_of(BUF + 0x4000),
        page_of(BUF + 0x5000),
        page_of(BUF + 0x9000),
    ];
    want.sort();
    assert_eq!(marked_pages(&log_file, log_len), want);
    assert_eq!(area.outside(), 0);

    // Transmit: only the used ring is written.
    log_file.set_len(0).unwrap();
    log_file.set_len(log_len as u64).unwrap();
    let mut tx = DriverRing::new(&r.mem, 0x80000, 256);
    let len = put_frame(&r, 0x90000, &frame(80, 1));
    tx.set_desc(0, tx.gpa(0x90000), len, 0, 0);
    tx.push(0);
    let mut lt = live(&r, &tx, feat(true, false), None).with_log(area.clone(), None);
    let got = dequeue(&mut r.cache, &mut lt);
    assert_eq!(got.len(), 1);
    free_all(&mut r.cache, got);
    let used = 0x80000 + 8192;
    assert_eq!(marked_pages(&log_file, log_len), vec![page_of(used)]);
    assert_clean(&r);
}

#[test]
fn a_log_too_small_for_the_guest_is_never_written_past() {
    // A hostile SET_LOG_BASE: 16 bytes of log (128 pages, 512 KiB) for a guest whose
    // memory starts at 1 GiB. Frames are still delivered; nothing past the log is
    // written (the rest of its file stays zero) and the bits are counted.
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    ring.set_desc(0, ring.gpa(BUF), 2048, F_WRITE, 0);
    ring.push(0);
    let log_file = DriverMem::new(0, 4096, 0, 0).file();
    let area = Arc::new(super::log::DirtyLog::map(&log_file, 16, 0).unwrap());
    let mut lr = live(&r, &ring, feat(true, false), None).with_log(area.clone(), None);
    let mut pkts = rx_frames(1, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut lr, &mut pkts), 1);
    assert_eq!(r.mem.read(BUF + 12, 100), frame(100, 0));
    assert_eq!(marked_pages(&log_file, 4096), Vec::<u64>::new());
    assert_eq!(area.outside(), 3, "used ring (twice) and the buffer");
    assert_clean(&r);
}
