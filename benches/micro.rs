//! Criterion micro-benchmarks of the data path's pieces: the MAC table, the mbuf
//! pool, the vhost-user dequeue/enqueue of a 32-frame burst on a ring in local
//! shared memory (the guest side played by `pmd::vhost::driver`), and the offload
//! fallback: the checksum of 64000 bytes and cutting a 64 KiB TSO frame into 45
//! segments.
//!
//! `cargo bench --bench micro`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pmd::hugepage::HugepagePolicy;
use pmd::vhost::driver::{DriverMem, DriverRing, F_WRITE};
use pmd::vhost::mem::GuestMemory;
use pmd::vhost::virtq::{LiveRing, RingFeatures, RxCounts};
use pmd::{Mbuf, Mempool, MempoolCache};
use std::hint::black_box;
use std::sync::Arc;
use switch::fdb::{Fdb, Mac};

fn mac(i: u32) -> Mac {
    let b = i.to_be_bytes();
    Mac([0x02, 0, b[0], b[1], b[2], b[3]])
}

fn fdb(c: &mut Criterion) {
    let mut g = c.benchmark_group("fdb");
    for &n in &[1u32, 1_000, 1_000_000] {
        let t = Fdb::new(n as usize * 2, 4, n as usize * 2, 300);
        for i in 0..n {
            t.learn(mac(i), 0, (i % 4) as u16, 0);
        }
        g.throughput(Throughput::Elements(32));
        g.bench_with_input(BenchmarkId::new("lookup_burst32", n), &n, |b, &n| {
            let mut k = 0u32;
            b.iter(|| {
                for _ in 0..32 {
                    k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    black_box(t.lookup(mac(k % n), 0));
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("learn_known_burst32", n), &n, |b, &n| {
            let mut k = 0u32;
            b.iter(|| {
                for _ in 0..32 {
                    k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    black_box(t.learn(mac(k % n), 0, ((k % n) % 4) as u16, 1));
                }
            })
        });
    }
    g.finish();
}

fn mempool(c: &mut Criterion) {
    let pool = Mempool::new(8192, HugepagePolicy::Auto).unwrap();
    let mut cache = MempoolCache::new(pool.clone());
    let mut g = c.benchmark_group("mempool");
    g.throughput(Throughput::Elements(32));
    g.bench_function("alloc_free_burst32", |b| {
        let mut v: Vec<Mbuf> = Vec::with_capacity(32);
        b.iter(|| {
            for _ in 0..32 {
                v.push(cache.alloc().unwrap());
            }
            for m in v.drain(..) {
                cache.free(m);
            }
        })
    });
    g.finish();
}

const GPA: u64 = 0x1_0000_0000;
const UVA: u64 = 0x7f00_0000_0000;
const BUF: u64 = 0x20000;

fn ring_setup(mem: &DriverMem) -> (Arc<GuestMemory>, DriverRing<'_>) {
    let gm = Arc::new(GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap());
    (gm, DriverRing::new(mem, 0, 256))
}

fn vhost(c: &mut Criterion) {
    let pool = Mempool::new(8192, HugepagePolicy::Auto).unwrap();
    let mut cache = MempoolCache::new(pool.clone());
    let feat = RingFeatures {
        event_idx: true,
        mrg_rxbuf: true,
        indirect: true,
        hdr_len: 12,
        max_frame: pmd::port::max_frame(pmd::port::DEFAULT_MTU),
        host_offload: false,
        guest_caps: pmd::offload::Caps::NONE,
    };
    let mut g = c.benchmark_group("vhost");
    g.throughput(Throughput::Elements(32));
    for &size in &[64usize, 1518] {
        // Guest tx -> switch: dequeue a burst.
        let mem = DriverMem::new(0, 4 << 20, GPA, UVA);
        let (gm, mut ring) = ring_setup(&mem);
        for i in 0..256u16 {
            let off = BUF + 2048 * i as u64;
            mem.write(off, &[0u8; 12]);
            mem.write(off + 12, &vec![0x5a; size]);
            ring.set_desc(i, ring.gpa(off), (12 + size) as u32, 0, 0);
        }
        let mut lr = LiveRing::new(gm, 256, ring.addrs(), 0, feat, None).unwrap();
        let mut out: [Option<Mbuf>; 32] = Default::default();
        let mut head = 0u16;
        g.bench_function(BenchmarkId::new("dequeue_burst32", size), |b| {
            b.iter(|| {
                for _ in 0..32 {
                    ring.push(head % 256);
                    head = head.wrapping_add(1);
                }
                let (mut over, mut bytes) = (RxCounts::default(), 0);
                let n = lr.dequeue(&mut cache, &mut out, &mut over, &mut bytes);
                assert_eq!(n, 32);
                for m in out[..n].iter_mut() {
                    cache.free(m.take().unwrap());
                }
            })
        });

        // Switch -> guest rx: enqueue a burst.
        let mem = DriverMem::new(0, 4 << 20, GPA, UVA);
        let (gm, mut ring) = ring_setup(&mem);
        for i in 0..256u16 {
            ring.set_desc(i, ring.gpa(BUF + 2048 * i as u64), 2048, F_WRITE, 0);
        }
        let mut lr = LiveRing::new(gm, 256, ring.addrs(), 0, feat, None).unwrap();
        let mut pkts: [Option<Mbuf>; 32] = Default::default();
        let mut head = 0u16;
        g.bench_function(BenchmarkId::new("enqueue_burst32", size), |b| {
            b.iter(|| {
                for _ in 0..32 {
                    ring.push(head % 256);
                    head = head.wrapping_add(1);
                }
                for p in pkts.iter_mut() {
                    let mut m = cache.alloc().unwrap();
                    m.set_len(size).fill(0xa5);
                    *p = Some(m);
                }
                let (mut bytes, mut big) = (0, 0);
                let n = lr.enqueue(&mut pkts, &mut cache, &mut bytes, &mut big);
                assert_eq!(n, 32);
            })
        });
    }
    g.finish();
}

/// A TSO frame as a Linux sender hands it over: Ethernet, IPv4, TCP (20 bytes each
/// but Ethernet's 14), `payload` bytes, and its offload header.
fn tso_frame(payload: usize) -> (Vec<u8>, pmd::offload::NetHdr) {
    let mut f = vec![0u8; 54 + payload];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[46] = 0x50;
    f[47] = 0x18;
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i * 31) as u8;
    }
    let h = pmd::offload::NetHdr {
        flags: pmd::offload::NEEDS_CSUM,
        gso_type: pmd::offload::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    (f, h)
}

fn offload(c: &mut Criterion) {
    use pmd::offload::{csum, gso};
    let mut g = c.benchmark_group("offload");
    let (frame, h) = tso_frame(64_000);
    g.throughput(Throughput::Bytes(64_000));
    g.bench_function("csum_64000_bytes", |b| {
        b.iter(|| black_box(csum::fold(csum::add(0, black_box(&frame[54..])))))
    });
    let pool = Mempool::with_large(1024, 4, HugepagePolicy::Auto).unwrap();
    let mut cache = MempoolCache::new(pool);
    for (name, mode) in [
        ("segment_64k_full_csum", gso::SegCsum::Full),
        ("segment_64k_partial_csum", gso::SegCsum::Partial),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let plan = gso::Plan::new(&frame, &h, 1518).unwrap();
                for k in 0..plan.count() {
                    let mut m = cache.alloc().unwrap();
                    plan.write(&frame, k, &mut m, mode);
                    cache.free(black_box(m));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fdb, mempool, vhost, offload);
criterion_main!(benches);
