//! Packed rings (`packed.rs`) against a driver in shared memory, with the split
//! ring's cases: chains across laps, mergeable receive buffers, indirect tables,
//! offload headers, jumbo frames, every rule a guest can break, interrupt and kick
//! suppression, resuming after a restart, and dirty logging.

use super::driver::{DriverMem, PackedDriver, F_INDIRECT, F_NEXT, F_WRITE};
use super::mem::GuestMemory;
use super::notify::Irq;
use super::packed::PackedRing;
use super::ring::RingBase;
use super::tests::{
    assert_clean, feat, frame, marked_pages, page_of, put_frame, rig, rx_frames, Call, Rig, BUF,
    GPA, SIZE,
};
use super::virtq::{GuestError, RingError, RingFeatures, RxCounts, MAX_CHAIN};
use crate::mempool::{Mbuf, MempoolCache};
use crate::offload::{Caps, NetHdr, NEEDS_CSUM};
use std::sync::Arc;

fn packed_at(
    r: &Rig,
    d: &PackedDriver,
    f: RingFeatures,
    irq: Option<Irq>,
    base: u32,
) -> Result<PackedRing, RingError> {
    let gm = Arc::new(GuestMemory::map(&[r.mem.region()], vec![r.mem.file()]).unwrap());
    PackedRing::new(
        gm,
        d.size as u32,
        d.addrs(),
        RingBase::Frontend(base),
        f,
        irq,
    )
}

fn packed(r: &Rig, d: &PackedDriver, f: RingFeatures) -> PackedRing {
    packed_at(r, d, f, None, 0x8000_8000).unwrap()
}

fn dequeue(cache: &mut MempoolCache, pr: &mut PackedRing) -> (Vec<Mbuf>, RxCounts) {
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let (mut drops, mut bytes) = (RxCounts::default(), 0);
    let n = pr.dequeue(cache, &mut out, &mut drops, &mut bytes);
    let v: Vec<Mbuf> = out[..n].iter_mut().map(|m| m.take().unwrap()).collect();
    assert_eq!(bytes, v.iter().map(|m| m.len() as u64).sum::<u64>());
    (v, drops)
}

fn enqueue(cache: &mut MempoolCache, pr: &mut PackedRing, pkts: &mut [Option<Mbuf>]) -> usize {
    let (mut bytes, mut too_big) = (0, 0);
    pr.enqueue_offload(pkts, cache, &mut bytes, &mut too_big)
}

fn free(cache: &mut MempoolCache, v: Vec<Mbuf>) {
    v.into_iter().for_each(|m| cache.free(m));
}

#[test]
fn transmitted_chains_are_received_in_order_across_laps() {
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 4);
    let mut pr = packed(&r, &d, feat(true, false));
    // Six frames through a ring of four: one descriptor, then header and frame in
    // two, alternately; buffer ids in no order.
    for k in 0..6u16 {
        let off = BUF + 0x1000 * k as u64;
        let len = put_frame(&r, off, &frame(60, k as u8));
        if k % 2 == 0 {
            d.post(10 - k, &[(off, len, 0)]);
        } else {
            d.post(10 - k, &[(off, 12, 0), (off + 12, 60, 0)]);
        }
        let (got, drops) = dequeue(&mut r.cache, &mut pr);
        assert_eq!((got.len(), drops), (1, RxCounts::default()), "frame {k}");
        assert_eq!(got[0].data(), &frame(60, k as u8)[..]);
        free(&mut r.cache, got);
        assert_eq!(d.take_used(), Some((10 - k, 0)), "frame {k}");
    }
    assert!(pr.error().is_none());
    // Nine descriptors in a ring of four: two laps and one, the wrap counter at 1.
    assert_eq!(pr.base(), 0x8001_8001);
    assert_clean(&r);
}

#[test]
fn a_burst_is_published_whole_first_descriptor_last() {
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pr = packed(&r, &d, feat(true, false));
    for k in 0..5u16 {
        let off = BUF + 0x1000 * k as u64;
        let len = put_frame(&r, off, &frame(60, k as u8));
        d.post(k, &[(off, len, 0)]);
    }
    let (got, _) = dequeue(&mut r.cache, &mut pr);
    assert_eq!(got.len(), 5);
    free(&mut r.cache, got);
    for k in 0..5 {
        assert_eq!(d.take_used(), Some((k, 0)));
    }
    assert_eq!(d.take_used(), None);
}

#[test]
fn received_frames_fill_buffers_and_merge_across_them() {
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pr = packed(&r, &d, feat(true, false));
    d.post(1, &[(BUF, 2048, F_WRITE)]);
    d.post(2, &[(BUF + 0x1000, 64, F_WRITE)]);
    d.post(3, &[(BUF + 0x2000, 64, F_WRITE)]);
    let mut pkts = rx_frames(2, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut pr, &mut pkts), 2);
    assert_eq!(d.take_used(), Some((1, 112)));
    assert_eq!(r.mem.read(BUF + 12, 100), frame(100, 0));
    assert_eq!(r.mem.read(BUF + 10, 2), [1, 0], "num_buffers");
    // The second frame took two 64-byte buffers: num_buffers = 2.
    assert_eq!(d.take_used(), Some((2, 64)));
    assert_eq!(d.take_used(), Some((3, 48)));
    assert_eq!(r.mem.read(BUF + 0x1000 + 10, 2), [2, 0]);
    let mut got = r.mem.read(BUF + 0x1000 + 12, 52);
    got.extend(r.mem.read(BUF + 0x2000, 48));
    assert_eq!(got, frame(100, 1));
    // No buffer left: the next frame waits in the burst, not dropped.
    let mut more = rx_frames(1, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut pr, &mut more), 0);
    assert!(more[0].is_some() && pr.error().is_none());
    r.cache.free(more[0].take().unwrap());
    assert_clean(&r);
}

#[test]
fn indirect_tables_both_ways_even_unaligned() {
    let mut r = rig();
    // Transmit: header and frame in a table at an odd address.
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pr = packed(&r, &d, feat(true, false));
    r.mem.write(BUF, &[0u8; 12]);
    r.mem.write(BUF + 0x100, &frame(200, 7));
    d.post_indirect(5, BUF + 0x3001, &[(BUF, 12, 0), (BUF + 0x100, 200, 0)]);
    let (got, _) = dequeue(&mut r.cache, &mut pr);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data(), &frame(200, 7)[..]);
    free(&mut r.cache, got);
    assert_eq!(d.take_used(), Some((5, 0)));
    // Receive without mergeable buffers: a table of two writable buffers.
    let mut rx = PackedDriver::new(&r.mem, 0x8000, 8);
    let mut pr = packed(&r, &rx, feat(false, false));
    rx.post_indirect(
        9,
        BUF + 0x4000,
        &[(BUF + 0x5000, 50, F_WRITE), (BUF + 0x6000, 2000, F_WRITE)],
    );
    let mut pkts = rx_frames(1, 300, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut pr, &mut pkts), 1);
    assert_eq!(rx.take_used(), Some((9, 312)));
    let mut back = r.mem.read(BUF + 0x5000 + 12, 38);
    back.extend(r.mem.read(BUF + 0x6000, 262));
    assert_eq!(back, frame(300, 0));
    assert_clean(&r);
}

#[test]
fn offload_headers_cross_both_ways() {
    let mut r = rig();
    let f = RingFeatures {
        host_offload: true,
        guest_caps: Caps::CSUM,
        ..feat(true, false)
    };
    let csum = NetHdr {
        flags: NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..NetHdr::default()
    };
    // Guest transmit: a frame asking for its TCP checksum keeps the request.
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pt = packed(&r, &d, f);
    r.mem.write(BUF, &csum.to_bytes());
    r.mem.write(BUF + 10, &[0, 0]);
    r.mem.write(BUF + 12, &frame(100, 1));
    d.post(1, &[(BUF, 112, 0)]);
    let (mut got, drops) = dequeue(&mut r.cache, &mut pt);
    assert_eq!((got.len(), drops.offload), (1, 1));
    assert_eq!(got[0].offload(), Some(csum));
    assert_eq!(d.take_used(), Some((1, 0)));
    // Guest receive: the same frame reaches a guest that takes checksums with it.
    let mut rx = PackedDriver::new(&r.mem, 0x8000, 8);
    let mut pr = packed(&r, &rx, f);
    rx.post(2, &[(BUF + 0x1000, 2048, F_WRITE)]);
    let mut pkts = vec![Some(got.remove(0))];
    assert_eq!(enqueue(&mut r.cache, &mut pr, &mut pkts), 1);
    assert_eq!(rx.take_used(), Some((2, 112)));
    assert_eq!(r.mem.read(BUF + 0x1000, 10), csum.to_bytes());
    assert_eq!(r.mem.read(BUF + 0x1000 + 10, 2), [1, 0]);
    // A header asking for what no one takes is a counted drop, not a stopped ring.
    let bad = NetHdr {
        gso_type: 0x33,
        ..csum
    };
    r.mem.write(BUF, &bad.to_bytes());
    d.post(3, &[(BUF, 112, 0)]);
    let (got, drops) = dequeue(&mut r.cache, &mut pt);
    assert_eq!((got.len(), drops.bad_offload), (0, 1));
    assert_eq!(d.take_used(), Some((3, 0)));
    assert!(pt.error().is_none());
    assert_clean(&r);
}

#[test]
fn a_jumbo_frame_crosses_both_ways_in_a_large_buffer() {
    let mut r = rig();
    let jumbo = RingFeatures {
        max_frame: crate::port::max_frame(9000),
        ..feat(true, false)
    };
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pt = packed(&r, &d, jumbo);
    let long = frame(9018, 3);
    let len = put_frame(&r, BUF, &long);
    d.post(1, &[(BUF, len, 0)]);
    let len = put_frame(&r, BUF + 0x4000, &frame(9019, 4));
    d.post(2, &[(BUF + 0x4000, len, 0)]);
    let (mut got, drops) = dequeue(&mut r.cache, &mut pt);
    assert_eq!(
        (got.len(), drops.mtu),
        (1, 1),
        "one byte over the MTU: dropped"
    );
    assert!(got[0].is_large() && got[0].data() == &long[..]);
    // Receive into 2048-byte mergeable buffers: five of them.
    let mut rx = PackedDriver::new(&r.mem, 0x8000, 8);
    let mut pr = packed(&r, &rx, jumbo);
    for k in 0..8u16 {
        rx.post(k, &[(BUF + 0x10000 + 0x1000 * k as u64, 2048, F_WRITE)]);
    }
    let mut pkts = vec![Some(got.remove(0))];
    assert_eq!(enqueue(&mut r.cache, &mut pr, &mut pkts), 1);
    assert_eq!(r.mem.read(BUF + 0x10000 + 10, 2), [5, 0], "num_buffers");
    let mut back = Vec::new();
    for k in 0..5u16 {
        let (id, n) = rx.take_used().expect("five used");
        assert_eq!(id, k);
        let skip = if k == 0 { 12 } else { 0 };
        back.extend(r.mem.read(
            BUF + 0x10000 + 0x1000 * k as u64 + skip,
            n as usize - skip as usize,
        ));
    }
    assert_eq!(back, long);
    assert_eq!(rx.take_used(), None);
    assert_eq!(r.pool.large_available(), 4, "the large buffer went back");
}

/// Posts what `setup` posts on a fresh ring of `size` and runs one dequeue (one
/// enqueue with `rx`): the ring must stop with the error returned, having written
/// nothing outside the guest's memory, losing no mbuf.
fn guest_error(
    size: u16,
    f: RingFeatures,
    rx: bool,
    setup: impl FnOnce(&mut PackedDriver),
) -> GuestError {
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, size);
    let mut pr = packed(&r, &d, f);
    setup(&mut d);
    if rx {
        let mut pkts = rx_frames(1, 300, &mut r.cache);
        assert_eq!(enqueue(&mut r.cache, &mut pr, &mut pkts), 0);
        r.cache.free(pkts[0].take().unwrap());
    } else {
        let (got, _) = dequeue(&mut r.cache, &mut pr);
        assert!(got.is_empty());
    }
    let e = pr.error().expect("the ring should be stopped");
    // Stopped: nothing more is read, even if the guest now behaves.
    assert!(dequeue(&mut r.cache, &mut pr).0.is_empty());
    assert_clean(&r);
    drop(pr);
    drop(r.cache);
    assert_eq!(r.pool.available(), 1024, "mbufs lost on an error path");
    e
}

#[test]
fn a_guest_breaking_the_rules_stops_the_ring() {
    let f = feat(true, false);
    let tx = |bufs: Vec<(u64, u32, u16)>| move |d: &mut PackedDriver| d.post(1, &bufs);
    assert_eq!(
        guest_error(8, f, false, tx(vec![(BUF, 100, F_WRITE)])),
        GuestError::WritableInTransmit { addr: GPA + BUF }
    );
    assert_eq!(
        guest_error(8, f, true, tx(vec![(BUF, 2048, 0)])),
        GuestError::ReadOnlyInReceive { addr: GPA + BUF }
    );
    assert_eq!(
        guest_error(8, f, false, tx(vec![(SIZE - 50, 100, 0)])),
        GuestError::BufferOutside {
            addr: GPA + SIZE - 50,
            len: 100
        }
    );
    assert_eq!(
        guest_error(8, f, false, tx(vec![(BUF, 0, 0)])),
        GuestError::EmptyChain { head: 0 }
    );
    // A chain that claims more descriptors than the ring has.
    let all_next: Vec<_> = (0..8).map(|k| (BUF + 64 * k, 64, F_NEXT)).collect();
    assert_eq!(
        guest_error(8, f, false, tx(all_next)),
        GuestError::ChainTooLong { limit: 8 }
    );
    let no_indirect = RingFeatures {
        indirect: false,
        ..f
    };
    assert_eq!(
        guest_error(8, no_indirect, false, |d| d.post_indirect(
            1,
            BUF,
            &[(BUF + 0x100, 60, 0)]
        )),
        GuestError::IndirectNotNegotiated
    );
    assert_eq!(
        guest_error(8, f, false, |d| d.post_indirect(
            1,
            BUF,
            &[(BUF + 0x100, 32, F_INDIRECT)]
        )),
        GuestError::IndirectMisplaced,
        "nested"
    );
    assert_eq!(
        guest_error(
            8,
            f,
            false,
            tx(vec![(BUF, 16, F_INDIRECT), (BUF + 0x100, 60, 0)])
        ),
        GuestError::IndirectMisplaced,
        "chained"
    );
    assert_eq!(
        guest_error(
            8,
            f,
            false,
            tx(vec![(BUF + 0x100, 60, 0), (BUF, 16, F_INDIRECT)])
        ),
        GuestError::IndirectMisplaced,
        "not first"
    );
    assert_eq!(
        guest_error(8, f, false, tx(vec![(BUF, 24, F_INDIRECT)])),
        GuestError::IndirectLength { len: 24, ring: 8 }
    );
    assert_eq!(
        guest_error(8, f, false, tx(vec![(SIZE - 16, 32, F_INDIRECT)])),
        GuestError::IndirectOutside {
            addr: GPA + SIZE - 16,
            len: 32
        }
    );
    let long: Vec<_> = (0..MAX_CHAIN as u64 + 1)
        .map(|k| (BUF + 0x10000 + 8 * k, 8, 0))
        .collect();
    assert_eq!(
        guest_error(512, f, false, |d| d.post_indirect(1, BUF, &long)),
        GuestError::ChainTooLong { limit: MAX_CHAIN }
    );
    // Receive buffers too small to hold a frame within MAX_MRG_CHAINS chains.
    assert_eq!(
        guest_error(512, f, true, |d| {
            for k in 0..400 {
                d.post(k, &[(BUF + k as u64, 1, F_WRITE)]);
            }
        }),
        GuestError::ReceiveTooFragmented { len: 300 }
    );
}

#[test]
fn interrupts_follow_the_driver_event_area() {
    let mut r = rig();
    let call = Call::new();
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pr = packed_at(&r, &d, feat(true, true), call.irq(), 0x8000).unwrap();
    let send = |d: &mut PackedDriver, cache: &mut MempoolCache, pr: &mut PackedRing, k: u16| {
        let off = BUF + 0x1000 * (k % 8) as u64;
        d.mem.write(off, &[0u8; 12]);
        d.mem.write(off + 12, &frame(60, 1));
        d.post(k, &[(off, 72, 0)]);
        let (got, _) = dequeue(cache, pr);
        assert_eq!(got.len(), 1);
        free(cache, got);
        assert!(d.take_used().is_some());
    };
    // ENABLE: every burst; DISABLE: none.
    d.set_driver_event(0, 0);
    send(&mut d, &mut r.cache, &mut pr, 0);
    assert_eq!(call.count(), 1);
    d.set_driver_event(0, 1);
    send(&mut d, &mut r.cache, &mut pr, 1);
    assert_eq!(call.count(), 0);
    // DESC (EVENT_IDX): only when the used descriptors pass the one named, here
    // index 4 of the first lap: frames 2 and 3 do not, frame 4 (at index 4) does.
    d.set_driver_event(0x8000 | 4, 2);
    send(&mut d, &mut r.cache, &mut pr, 2);
    send(&mut d, &mut r.cache, &mut pr, 3);
    assert_eq!(call.count(), 0);
    send(&mut d, &mut r.cache, &mut pr, 4);
    assert_eq!(call.count(), 1);
    // Index 1 of the next lap: not before the ring wraps past it.
    d.set_driver_event(1, 2);
    for k in 5..9 {
        send(&mut d, &mut r.cache, &mut pr, k);
    }
    assert_eq!(call.count(), 0, "up to index 0 of the second lap");
    send(&mut d, &mut r.cache, &mut pr, 9);
    assert_eq!(call.count(), 1);
}

#[test]
fn kicks_are_asked_for_only_while_the_thread_sleeps() {
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let kick = super::driver::eventfd(0, false);
    let mut pr = packed(&r, &d, feat(true, false)).with_kick(Some(kick.into()));
    assert_eq!(d.device_event_flags(), 1, "polled: no kicks");
    assert!(matches!(pr.arm_kick(), crate::idle::Wake::Fd(_)));
    assert_eq!(d.device_event_flags(), 0, "asleep: kick me");
    pr.disarm_kick(false);
    assert_eq!(d.device_event_flags(), 1);
    // A chain made available before the thread sleeps: it does not.
    let len = put_frame(&r, BUF, &frame(60, 1));
    d.post(1, &[(BUF, len, 0)]);
    assert!(matches!(pr.arm_kick(), crate::idle::Wake::Pending));
    assert_eq!(d.device_event_flags(), 1);
    let (got, _) = dequeue(&mut r.cache, &mut pr);
    assert_eq!(got.len(), 1);
    free(&mut r.cache, got);
}

#[test]
fn a_restarted_switch_resumes_where_the_ring_says_not_at_a_stale_base() {
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pr = packed(&r, &d, feat(true, false));
    // Eleven frames: the device stops at index 3 of the second lap.
    for k in 0..11u16 {
        let off = BUF + 0x1000 * (k % 8) as u64;
        let len = put_frame(&r, off, &frame(60, k as u8));
        d.post(k, &[(off, len, 0)]);
        let (got, _) = dequeue(&mut r.cache, &mut pr);
        free(&mut r.cache, got);
        assert!(d.take_used().is_some());
    }
    assert_eq!(pr.base(), 0x0003_0003);
    drop(pr);
    // Two more made available while the switch is away.
    for k in 11..13u16 {
        let off = BUF + 0x1000 * (k % 8) as u64;
        let len = put_frame(&r, off, &frame(60, k as u8));
        d.post(k, &[(off, len, 0)]);
    }
    // The right base, and QEMU's stale one after a restart (the new ring's), and
    // DPDK's 0: each resumes at index 3 of the second lap.
    for base in [0x8000_8000, 0, 0x0003_0003] {
        let pr = packed_at(&r, &d, feat(true, false), None, base).unwrap();
        assert_eq!(pr.base(), 0x0003_0003, "base {base:#x}");
    }
    let mut pr = packed_at(&r, &d, feat(true, false), None, 0x8000_8000).unwrap();
    let (got, _) = dequeue(&mut r.cache, &mut pr);
    let tags: Vec<u8> = got.iter().map(|m| m.data()[20]).collect();
    assert_eq!(tags, [11, 12]);
    free(&mut r.cache, got);
    assert_eq!(
        (d.take_used(), d.take_used()),
        (Some((11, 0)), Some((12, 0)))
    );
    // An index past the ring is refused.
    assert!(matches!(
        packed_at(&r, &d, feat(true, false), None, 9),
        Err(RingError::Base { base: 9, size: 8 })
    ));
}

#[test]
fn a_full_ring_after_a_restart_resumes_where_the_device_stopped() {
    // As a receive queue is kept: every buffer made available again once used. Eight
    // frames, then three more: the device stops at index 3 of the second lap, and the
    // driver has filled the ring again (indexes 0-2 for the third lap).
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 8);
    let mut pr = packed(&r, &d, feat(true, false));
    let mut tag = 0u8;
    let mut post = |d: &mut PackedDriver, n: usize| {
        for _ in 0..n {
            let off = BUF + 0x1000 * d.next as u64;
            d.mem.write(off, &[0u8; 12]);
            d.mem.write(off + 12, &frame(60, tag));
            d.post(tag as u16, &[(off, 72, 0)]);
            tag += 1;
        }
    };
    let take = |pr: &mut PackedRing, cache: &mut MempoolCache, n: usize| -> Vec<u8> {
        let mut out: [Option<Mbuf>; 8] = Default::default();
        let (mut drops, mut bytes) = (RxCounts::default(), 0);
        let got = pr.dequeue(cache, &mut out[..n], &mut drops, &mut bytes);
        let tags = out[..got]
            .iter()
            .map(|m| m.as_ref().unwrap().data()[20])
            .collect();
        for m in out[..got].iter_mut() {
            cache.free(m.take().unwrap());
        }
        tags
    };
    post(&mut d, 8);
    assert_eq!(take(&mut pr, &mut r.cache, 8), (0..8).collect::<Vec<u8>>());
    while d.take_used().is_some() {}
    post(&mut d, 8);
    assert_eq!(take(&mut pr, &mut r.cache, 3), [8, 9, 10]);
    while d.take_used().is_some() {}
    post(&mut d, 3);
    assert_eq!(pr.base(), 0x0003_0003);
    drop(pr);
    // QEMU's stale base, DPDK's 0, and the right one.
    for base in [0x8000_8000, 0, 0x0003_0003] {
        let pr = packed_at(&r, &d, feat(true, false), None, base).unwrap();
        assert_eq!(pr.base(), 0x0003_0003, "base {base:#x}");
    }
    let mut pr = packed_at(&r, &d, feat(true, false), None, 0x8000_8000).unwrap();
    assert_eq!(
        take(&mut pr, &mut r.cache, 8),
        [11, 12, 13, 14, 15, 16, 17, 18]
    );
    assert!(pr.error().is_none());
}

#[test]
fn the_switch_own_base_is_taken_as_it_is() {
    // Index 0 of the second lap, where this switch's ring stopped: exact, even though
    // a frontend's 0 would first be read as a new ring's.
    let mut r = rig();
    let mut d = PackedDriver::new(&r.mem, 0, 4);
    let mut pr = packed(&r, &d, feat(true, false));
    for k in 0..4u16 {
        let off = BUF + 0x1000 * k as u64;
        let len = put_frame(&r, off, &frame(60, k as u8));
        d.post(k, &[(off, len, 0)]);
    }
    let (got, _) = dequeue(&mut r.cache, &mut pr);
    free(&mut r.cache, got);
    assert_eq!(pr.base(), 0);
    drop(pr);
    let gm = Arc::new(GuestMemory::map(&[r.mem.region()], vec![r.mem.file()]).unwrap());
    let pr = PackedRing::new(
        gm,
        4,
        d.addrs(),
        RingBase::Stopped(0),
        feat(true, false),
        None,
    );
    assert_eq!(pr.unwrap().base(), 0);
}

#[test]
fn a_logged_ring_marks_the_buffers_and_descriptors_it_writes() {
    let mut r = rig();
    // Descriptors at region offset 0x20000 (one page), receive buffers two pages on.
    let mut d = PackedDriver::new(&r.mem, 0x20000, 8);
    d.post(1, &[(0x22000, 2048, F_WRITE)]);
    d.post(2, &[(0x24000 - 40, 64, F_WRITE)]); // crosses a page
    d.post(3, &[(0x26000, 2048, F_WRITE)]);
    let log_len = (page_of(SIZE) / 8 + 1) as usize;
    let log_file = DriverMem::new(0, log_len as u64, 0, 0).file();
    let area = Arc::new(super::log::DirtyLog::map(&log_file, log_len as u64, 0).unwrap());
    let mut pr = packed(&r, &d, feat(true, false)).with_log(area.clone());
    assert!(pr.logging());
    assert_eq!(marked_pages(&log_file, log_len), vec![page_of(0x20000)]);
    log_file.set_len(0).unwrap();
    log_file.set_len(log_len as u64).unwrap();
    let mut pkts = rx_frames(2, 100, &mut r.cache);
    assert_eq!(enqueue(&mut r.cache, &mut pr, &mut pkts), 2);
    assert_eq!(
        marked_pages(&log_file, log_len),
        vec![
            page_of(0x20000),
            page_of(0x22000),
            page_of(0x23000),
            page_of(0x24000),
            page_of(0x26000)
        ]
    );
    assert_eq!(area.outside(), 0);
    assert_clean(&r);
}
