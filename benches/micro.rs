//! Criterion micro-benchmarks of the data path's pieces: the MAC table, the mbuf
//! pool, and the vhost-user dequeue/enqueue of a 32-frame burst on a ring in local
//! shared memory (the guest side played by `pmd::vhost::driver`).
//!
//! `cargo bench --bench micro`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pmd::hugepage::HugepagePolicy;
use pmd::vhost::driver::{DriverMem, DriverRing, F_WRITE};
use pmd::vhost::mem::GuestMemory;
use pmd::vhost::virtq::{LiveRing, RingFeatures, RxDrops};
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
                let (mut over, mut bytes) = (RxDrops::default(), 0);
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

criterion_group!(benches, fdb, mempool, vhost);
criterion_main!(benches);
