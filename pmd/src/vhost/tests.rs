//! Rings built in shared memory by a guest that follows the rules, and by one
//! that breaks them: each violation stops the queue with a reason, loses no mbuf,
//! and touches nothing outside the guest's region or any buffer the guest did not
//! mark writable.

use super::driver::{DriverMem, DriverRing, F_INDIRECT, F_NEXT, F_WRITE};
use super::mem::GuestMemory;
use super::virtq::{LiveRing, RingFeatures};
use crate::hugepage::HugepagePolicy;
use crate::mempool::{Mbuf, Mempool, MempoolCache};
use std::io::Read;
use std::sync::Arc;

const OUTSIDE: u64 = 64 << 10;
const SIZE: u64 = 1 << 20;
const GPA: u64 = 0x4000_0000; // guest memory need not start at 0
const UVA: u64 = 0x7f12_0000_0000;
const BUF: u64 = 0x10000; // buffers start here in the region
const CANARY: u8 = 0xc5;

struct Rig {
    mem: DriverMem,
    pool: Arc<Mempool>,
    cache: MempoolCache,
}

fn rig() -> Rig {
    let mem = DriverMem::new(OUTSIDE, SIZE, GPA, UVA);
    mem.fill_outside(CANARY);
    let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
    let cache = MempoolCache::new(pool.clone());
    Rig { mem, pool, cache }
}

fn feat(mrg: bool, event_idx: bool) -> RingFeatures {
    RingFeatures {
        event_idx,
        mrg_rxbuf: mrg,
        indirect: true,
        hdr_len: 12,
    }
}

fn live(r: &Rig, ring: &DriverRing, f: RingFeatures, call: Option<Arc<std::fs::File>>) -> LiveRing {
    let gm = Arc::new(GuestMemory::map(&[r.mem.region()], vec![r.mem.file()]).unwrap());
    LiveRing::new(gm, ring.size as u32, ring.addrs(), 0, f, call).unwrap()
}

/// A frame with a 12-byte zero header in front, at region offset `off`.
fn put_frame(r: &Rig, off: u64, frame: &[u8]) -> u32 {
    r.mem.write(off, &[0u8; 12]);
    r.mem.write(off + 12, frame);
    (12 + frame.len()) as u32
}

fn frame(n: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; n];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f
}

fn dequeue(cache: &mut MempoolCache, lr: &mut LiveRing) -> Vec<Mbuf> {
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let (mut over, mut bytes) = (0, 0);
    let n = lr.dequeue(cache, &mut out, &mut over, &mut bytes);
    let v: Vec<Mbuf> = out[..n].iter_mut().map(|m| m.take().unwrap()).collect();
    assert_eq!(bytes, v.iter().map(|m| m.len() as u64).sum::<u64>());
    v
}

fn assert_clean(r: &Rig) {
    assert!(
        r.mem.read_outside().iter().all(|&b| b == CANARY),
        "memory outside the guest region was written"
    );
}

fn free_all(cache: &mut MempoolCache, v: Vec<Mbuf>) {
    for m in v {
        cache.free(m);
    }
}

fn tx_error(setup: impl FnOnce(&Rig, &mut DriverRing)) -> &'static str {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    setup(&r, &mut ring);
    let mut lr = live(&r, &ring, feat(true, false), None);
    let got = dequeue(&mut r.cache, &mut lr);
    let err = lr.error().expect("the ring should be stopped").0;
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
    assert!(e.contains("outside guest memory"), "{e}");
}

#[test]
fn length_past_region_end() {
    let e = tx_error(|_, ring| {
        ring.set_desc(0, GPA + SIZE - 100, 200, 0, 0);
        ring.push(0);
    });
    assert!(e.contains("outside guest memory"), "{e}");
}

#[test]
fn address_overflow() {
    let e = tx_error(|_, ring| {
        ring.set_desc(0, u64::MAX - 10, 100, 0, 0);
        ring.push(0);
    });
    assert!(e.contains("outside guest memory"), "{e}");
}

#[test]
fn loop_in_descriptor_chain() {
    let e = tx_error(|r, ring| {
        put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), 36, F_NEXT, 1);
        ring.set_desc(1, ring.gpa(BUF + 36), 36, F_NEXT, 0);
        ring.push(0);
    });
    assert!(e.contains("loops"), "{e}");
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
    assert!(e.contains("loops"), "{e}");
}

#[test]
fn nested_indirect_and_bad_indirect_length() {
    let e = tx_error(|_, ring| {
        let t = BUF + 0x2000;
        ring.write_desc_at(t, ring.gpa(t), 16, F_INDIRECT, 0);
        ring.set_desc(0, ring.gpa(t), 16, F_INDIRECT, 0);
        ring.push(0);
    });
    assert!(e.contains("indirect"), "{e}");
    let e = tx_error(|_, ring| {
        ring.set_desc(0, ring.gpa(BUF), 24, F_INDIRECT, 0);
        ring.push(0);
    });
    assert!(e.contains("multiple of 16"), "{e}");
}

#[test]
fn avail_index_far_ahead_of_ring() {
    let e = tx_error(|_, ring| {
        ring.set_avail_idx(1000); // ring of 256
    });
    assert!(e.contains("further ahead"), "{e}");
}

#[test]
fn head_index_out_of_table() {
    let e = tx_error(|_, ring| {
        ring.push(300);
    });
    assert!(e.contains("out of the table"), "{e}");
}

#[test]
fn next_index_out_of_table() {
    let e = tx_error(|r, ring| {
        put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), 30, F_NEXT, 999);
        ring.push(0);
    });
    assert!(e.contains("out of the table"), "{e}");
}

#[test]
fn zero_length_chain() {
    let e = tx_error(|_, ring| {
        ring.set_desc(0, ring.gpa(BUF), 0, 0, 0);
        ring.push(0);
    });
    assert!(e.contains("zero-length"), "{e}");
}

#[test]
fn writable_descriptor_in_transmit_chain() {
    let e = tx_error(|r, ring| {
        let len = put_frame(r, BUF, &frame(60, 1));
        ring.set_desc(0, ring.gpa(BUF), len, F_WRITE, 0);
        ring.push(0);
    });
    assert!(e.contains("device-writable"), "{e}");
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
fn oversize_frame_is_dropped_not_fatal() {
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
    let (mut over, mut bytes) = (0, 0);
    let n = lr.dequeue(&mut r.cache, &mut out, &mut over, &mut bytes);
    assert_eq!((n, over, bytes), (1, 1, 64));
    assert_eq!(ring.used_idx(), 2);
    assert!(lr.error().is_none());
    r.cache.free(out[0].take().unwrap());
}

fn rx_frames(n: usize, len: usize, cache: &mut MempoolCache) -> Vec<Option<Mbuf>> {
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
    assert_eq!(
        lr.error().map(|e| e.0),
        Some("descriptor chain loops or is longer than its table")
    );
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
    assert!(lr.error().unwrap().0.contains("read-only"));
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
    let ring = DriverRing::new(&r.mem, SIZE - 4096, 256); // table runs past the end
    let e = LiveRing::new(gm.clone(), 256, ring.addrs(), 0, feat(true, false), None)
        .err()
        .unwrap();
    assert!(e.contains("outside guest memory"), "{e}");
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
    assert!(GuestMemory::map(&[a, a], vec![r.mem.file(), r.mem.file()])
        .err()
        .unwrap()
        .contains("overlap"));
    assert!(GuestMemory::map(&[a], vec![])
        .err()
        .unwrap()
        .contains("file descriptors"));
    let mut z = a;
    z.size = 0;
    assert!(GuestMemory::map(&[z], vec![r.mem.file()]).is_err());
}

fn eventfd() -> Arc<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Arc::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn calls(f: &std::fs::File) -> u64 {
    let mut b = [0u8; 8];
    match (&*f).read(&mut b) {
        Ok(8) => u64::from_le_bytes(b),
        _ => 0,
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
    let call = eventfd();
    ring.set_used_event(2); // interrupt when used idx passes 2
    let mut lr = live(&r, &ring, feat(true, true), Some(call.clone()));
    let mut p = rx_frames(2, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p); // used 0 -> 2: not past 2
    assert_eq!(calls(&call), 0);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p); // 2 -> 3: passes
    assert_eq!(calls(&call), 1);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p); // 3 -> 4, event still 2: no
    assert_eq!(calls(&call), 0);
}

#[test]
fn no_interrupt_flag_is_respected_without_event_idx() {
    let mut r = rig();
    let mut ring = DriverRing::new(&r.mem, 0, 256);
    for i in 0..4u16 {
        ring.set_desc(i, ring.gpa(BUF + 4096 * i as u64), 2048, F_WRITE, 0);
        ring.push(i);
    }
    let call = eventfd();
    let mut lr = live(&r, &ring, feat(false, false), Some(call.clone()));
    ring.set_avail_flags(1);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p);
    assert_eq!(calls(&call), 0);
    ring.set_avail_flags(0);
    let mut p = rx_frames(1, 64, &mut r.cache);
    enqueue(&mut r.cache, &mut lr, &mut p);
    assert_eq!(calls(&call), 1);
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
    let call = eventfd();
    ring.set_used_event(0); // interrupt when used idx passes 0
    let mut lr = live(&r, &ring, feat(true, true), Some(call.clone()));
    ring.push(0);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!((got.len(), ring.used_idx()), (1, 1));
    assert_eq!(calls(&call), 0, "owed, not yet sent");
    let mut none: [Option<Mbuf>; 0] = [];
    let (mut over, mut bytes) = (0, 0);
    assert_eq!(
        lr.dequeue(&mut r.cache, &mut none, &mut over, &mut bytes),
        0
    );
    assert_eq!(calls(&call), 1, "an empty poll settles it");
    assert_eq!(
        lr.dequeue(&mut r.cache, &mut none, &mut over, &mut bytes),
        0
    );
    assert_eq!(calls(&call), 0, "and only once");
    ring.set_used_event(1);
    ring.push(1);
    let mut got2 = dequeue(&mut r.cache, &mut lr);
    drop(lr);
    assert_eq!(calls(&call), 1, "a ring taken down settles what it owes");
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
    let call = eventfd();
    ring.set_used_event(0);
    let mut lr = live(&r, &ring, feat(true, true), Some(call.clone()));
    ring.push(0);
    ring.push(1);
    let got = dequeue(&mut r.cache, &mut lr);
    assert_eq!((got.len(), ring.used_idx()), (1, 1));
    assert!(lr.error().is_some());
    assert_eq!(
        calls(&call),
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
    assert!(e.contains("past its file"), "{e}");
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
    assert!(e.contains("misaligned"), "{e}");
}
