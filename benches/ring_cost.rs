//! Instructions per packet of the data path's steps, for callgrind (instruction
//! counts repeat exactly on a noisy machine, where times do not).
//!
//! Runs a fixed number of 32-frame bursts of one step, named by the first argument:
//! `dequeue` (guest tx ring -> mbufs), `enqueue` (mbufs -> guest rx ring) or `switch`
//! (parse the Ethernet header, learn + look up in the forwarding table), each in its own `#[inline(never)]`
//! function so that `benches/ring-cost` can count that function alone.
//! Frames are 64 bytes after a 12-byte virtio-net header; rings have 256 entries.

use pmd::hugepage::HugepagePolicy;
use pmd::vhost::driver::{DriverMem, DriverRing, F_WRITE};
use pmd::vhost::mem::GuestMemory;
use pmd::vhost::virtq::{LiveRing, RingFeatures};
use pmd::{Mbuf, Mempool, MempoolCache};
use std::hint::black_box;
use std::sync::Arc;
use switch::fdb::Fdb;
use switch::frame;

const GPA: u64 = 0x1_0000_0000;
const UVA: u64 = 0x7f00_0000_0000;
const BUF: u64 = 0x20000;
const FRAME: usize = 64;
const FEAT: RingFeatures = RingFeatures {
    event_idx: true,
    mrg_rxbuf: true,
    indirect: true,
    hdr_len: 12,
};

fn live(mem: &DriverMem, ring: &DriverRing) -> LiveRing {
    let gm = Arc::new(GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap());
    LiveRing::new(gm, 256, ring.addrs(), 0, FEAT, None).unwrap()
}

#[inline(never)]
fn dequeue_bursts(
    bursts: usize,
    lr: &mut LiveRing,
    ring: &mut DriverRing,
    cache: &mut MempoolCache,
) {
    let mut out: [Option<Mbuf>; 32] = Default::default();
    let mut head = 0u16;
    for _ in 0..bursts {
        for _ in 0..32 {
            ring.push(head % 256);
            head = head.wrapping_add(1);
        }
        let (mut over, mut bytes) = (0, 0);
        let n = lr.dequeue(cache, &mut out, &mut over, &mut bytes);
        assert_eq!(n, 32);
        for m in out[..n].iter_mut() {
            cache.free(m.take().unwrap());
        }
    }
}

#[inline(never)]
fn enqueue_bursts(
    bursts: usize,
    lr: &mut LiveRing,
    ring: &mut DriverRing,
    cache: &mut MempoolCache,
) {
    let mut pkts: [Option<Mbuf>; 32] = Default::default();
    let mut head = 0u16;
    for _ in 0..bursts {
        for _ in 0..32 {
            ring.push(head % 256);
            head = head.wrapping_add(1);
        }
        for p in pkts.iter_mut() {
            let mut m = cache.alloc().unwrap();
            m.set_len(FRAME);
            *p = Some(m);
        }
        let (mut bytes, mut big) = (0, 0);
        let n = lr.enqueue(&mut pkts, cache, &mut bytes, &mut big);
        assert_eq!(n, 32);
    }
}

#[inline(never)]
fn switch_bursts(bursts: usize, fdb: &Fdb, frames: &[[u8; FRAME]]) {
    for _ in 0..bursts {
        for (i, f) in frames.iter().enumerate() {
            // As the switch step reads it: a slice of unknown length.
            let Ok(l2) = frame::parse(black_box(&f[..])) else {
                continue;
            };
            black_box(fdb.learn(l2.src(), l2.vlan, (i & 1) as u16, 1));
            black_box(fdb.lookup(l2.dst(), l2.vlan));
        }
    }
}

fn main() {
    let step = std::env::args().nth(1).unwrap_or_default();
    let bursts: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let pool = Mempool::new(8192, HugepagePolicy::Auto).unwrap();
    let mut cache = MempoolCache::new(pool.clone());
    match step.as_str() {
        "dequeue" => {
            let mem = DriverMem::new(0, 4 << 20, GPA, UVA);
            let mut ring = DriverRing::new(&mem, 0, 256);
            for i in 0..256u16 {
                let off = BUF + 2048 * i as u64;
                mem.write(off, &[0u8; 12]);
                mem.write(off + 12, &[0x5a; FRAME]);
                ring.set_desc(i, ring.gpa(off), (12 + FRAME) as u32, 0, 0);
            }
            let mut lr = live(&mem, &ring);
            dequeue_bursts(bursts, &mut lr, &mut ring, &mut cache);
        }
        "enqueue" => {
            let mem = DriverMem::new(0, 4 << 20, GPA, UVA);
            let mut ring = DriverRing::new(&mem, 0, 256);
            for i in 0..256u16 {
                ring.set_desc(i, ring.gpa(BUF + 2048 * i as u64), 2048, F_WRITE, 0);
            }
            let mut lr = live(&mem, &ring);
            enqueue_bursts(bursts, &mut lr, &mut ring, &mut cache);
        }
        "switch" => {
            let fdb = Fdb::new(4096, 2, 2048, 300);
            let a = [2, 0, 0, 0, 0, 1];
            let b = [2, 0, 0, 0, 0, 2];
            let frames: Vec<[u8; FRAME]> = (0..32)
                .map(|i| {
                    let (d, s) = if i % 2 == 0 { (b, a) } else { (a, b) };
                    let mut f = [0u8; FRAME];
                    f[..6].copy_from_slice(&d);
                    f[6..12].copy_from_slice(&s);
                    f
                })
                .collect();
            switch_bursts(bursts, &fdb, &frames);
        }
        _ => {
            eprintln!("usage: ring_cost dequeue|enqueue|switch [BURSTS]");
            std::process::exit(2);
        }
    }
}
