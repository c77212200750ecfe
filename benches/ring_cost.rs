//! Instructions per packet of the data path's steps, for callgrind (instruction
//! counts repeat exactly on a noisy machine, where times do not).
//!
//! Runs a fixed number of 32-frame bursts of one step, named by the first argument:
//! `dequeue` (guest tx ring -> mbufs), `enqueue` (mbufs -> guest rx ring) or `switch`
//! (parse the Ethernet header, learn + look up in the forwarding table), each in its own `#[inline(never)]`
//! function so that `benches/ring-cost` can count that function alone; or `loop`
//! (the PMD loop itself, `switch::pmd_loop::run`, between two ports in memory whose
//! rx and tx the count leaves out) and `loop-vlan` (the same with both ports access
//! ports of one VLAN, so that every frame goes through the VLAN step).
//! `dequeue_packed` and `enqueue_packed` are `dequeue` and `enqueue` on packed rings.
//! Frames are 64 bytes after a 12-byte virtio-net header; rings have 256 entries.

use pmd::hugepage::HugepagePolicy;
use pmd::port::{PortStats, Traffic, TxLane};
use pmd::rcu::Rcu;
use pmd::vhost::driver::{DriverMem, DriverRing, PackedDriver, F_WRITE};
use pmd::vhost::mem::GuestMemory;
use pmd::vhost::packed::PackedRing;
use pmd::vhost::ring::RingBase;
use pmd::vhost::virtq::{LiveRing, RingFeatures, RxCounts};
use pmd::Port;
use pmd::{Mbuf, Mempool, MempoolCache};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switch::fdb::Fdb;
use switch::frame;
use switch::latency::Recorder;
use switch::plan::{Mailbox, PollPlan, Rxq, RxqLoad, MAX_PORTS};
use switch::pmd_loop::{self, PmdContext};
use switch::stats::PmdStats;
use switch::vlan::PortVlan;

const GPA: u64 = 0x1_0000_0000;
const UVA: u64 = 0x7f00_0000_0000;
const BUF: u64 = 0x20000;
const FRAME: usize = 64;
const FEAT: RingFeatures = RingFeatures {
    event_idx: true,
    mrg_rxbuf: true,
    indirect: true,
    hdr_len: 12,
    max_frame: pmd::port::max_frame(pmd::port::DEFAULT_MTU),
    host_offload: false,
    guest_caps: pmd::offload::Caps::NONE,
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
        let (mut over, mut bytes) = (RxCounts::default(), 0);
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

fn packed(mem: &DriverMem, ring: &PackedDriver) -> PackedRing {
    let gm = Arc::new(GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap());
    PackedRing::new(
        gm,
        256,
        ring.addrs(),
        RingBase::Frontend(0x8000),
        FEAT,
        None,
    )
    .unwrap()
}

/// The guest's side of a packed ring in the `*_packed` steps: 32 one-descriptor
/// chains made available (each at its 2 KiB buffer), not counted.
#[inline(never)]
fn packed_post(ring: &mut PackedDriver, len: u32, flags: u16) {
    for _ in 0..32 {
        let i = ring.next;
        ring.post(i, &[(BUF + 2048 * i as u64, len, flags)]);
    }
}

#[inline(never)]
fn dequeue_packed_bursts(
    bursts: usize,
    pr: &mut PackedRing,
    ring: &mut PackedDriver,
    cache: &mut MempoolCache,
) {
    let mut out: [Option<Mbuf>; 32] = Default::default();
    for _ in 0..bursts {
        packed_post(ring, (12 + FRAME) as u32, 0);
        let (mut over, mut bytes) = (RxCounts::default(), 0);
        let n = pr.dequeue(cache, &mut out, &mut over, &mut bytes);
        assert_eq!(n, 32);
        for m in out[..n].iter_mut() {
            cache.free(m.take().unwrap());
        }
    }
}

#[inline(never)]
fn enqueue_packed_bursts(
    bursts: usize,
    pr: &mut PackedRing,
    ring: &mut PackedDriver,
    cache: &mut MempoolCache,
) {
    let mut pkts: [Option<Mbuf>; 32] = Default::default();
    for _ in 0..bursts {
        packed_post(ring, 2048, F_WRITE);
        for p in pkts.iter_mut() {
            let mut m = cache.alloc().unwrap();
            m.set_len(FRAME);
            *p = Some(m);
        }
        let (mut bytes, mut big) = (0, 0);
        let n = pr.enqueue(&mut pkts, cache, &mut bytes, &mut big);
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

/// A port in memory for the `loop` step: each rx burst is 32 copies of one frame,
/// each tx burst frees what it is given; after `bursts` rx bursts it stops the loop.
struct MemPort {
    name: &'static str,
    frame: [u8; FRAME],
    left: AtomicUsize,
    stop: Arc<AtomicBool>,
    stats: PortStats,
}

impl Port for MemPort {
    fn name(&self) -> &str {
        self.name
    }
    fn rx_queues(&self) -> usize {
        1
    }
    fn rx_burst(
        &self,
        _q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        if self.left.fetch_sub(1, Relaxed) == 0 {
            self.stop.store(true, Relaxed);
            self.left.store(0, Relaxed);
            return 0;
        }
        for o in out.iter_mut() {
            let mut m = cache.alloc().expect("pool holds enough");
            m.set_len(FRAME).copy_from_slice(&self.frame);
            *o = Some(m);
        }
        tr.rx_packets += out.len() as u64;
        out.len()
    }
    fn tx_burst(
        &self,
        _lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        for p in pkts.iter_mut() {
            cache.free(p.take().expect("queued frames are there"));
        }
        tr.tx_packets += pkts.len() as u64;
        pkts.len()
    }
    fn is_up(&self) -> bool {
        true
    }
    fn stats(&self) -> &PortStats {
        &self.stats
    }
    fn driver(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> String {
        String::new()
    }
}

/// Runs the PMD loop over two in-memory ports for `bursts` bursts of each.
fn loop_bursts(bursts: usize, pool: Arc<Mempool>, vlan: PortVlan, latency: bool) {
    let stop = Arc::new(AtomicBool::new(false));
    let port = |name, dst: [u8; 6], src: [u8; 6]| {
        let mut frame = [0u8; FRAME];
        frame[..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
        Arc::new(MemPort {
            name,
            frame,
            left: AtomicUsize::new(bursts),
            stop: stop.clone(),
            stats: PortStats::default(),
        }) as Arc<dyn Port>
    };
    let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ports: Vec<Option<Arc<dyn Port>>> = vec![Some(port("a", b, a)), Some(port("b", a, b))];
    let rxq = |port| Rxq {
        port,
        queue: 0,
        load: Arc::new(RxqLoad::default()),
    };
    let plan = Arc::new(PollPlan {
        gen: 0,
        ports: ports.into(),
        vlan_on: !vlan.is_plain(),
        vlans: vec![vlan.clone(), vlan].into(),
        max_frames: vec![1518, 1518].into(),
        mtu_on: false,
        rxqs: vec![rxq(0), rxq(1)],
        captures: Arc::from(Vec::new()),
        capture_on: false,
    });
    let rcu = Rcu::new();
    let cx = PmdContext {
        index: 0,
        lane: TxLane::for_pmds(1).pop().unwrap(),
        core: None,
        mailbox: Arc::new(Mailbox::new(plan.clone())),
        fdb: Arc::new(Fdb::new(4096, MAX_PORTS, 2048, 300)),
        cache: MempoolCache::new(pool),
        stats: Arc::new(PmdStats::new(MAX_PORTS)),
        rcu: rcu.register(),
        stop,
        epoch: Instant::now(),
        tx_stall: Duration::from_millis(100),
        sleep_max: Duration::ZERO,
        tsc_hz: 1_000_000_000,
        traffic: vec![Traffic::default(); MAX_PORTS],
        latency: latency.then(|| Recorder::for_ports(2)),
    };
    pmd_loop::run(cx, plan);
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
        "dequeue_packed" => {
            let mem = DriverMem::new(0, 4 << 20, GPA, UVA);
            let mut ring = PackedDriver::new(&mem, 0, 256);
            for i in 0..256u64 {
                let off = BUF + 2048 * i;
                mem.write(off, &[0u8; 12]);
                mem.write(off + 12, &[0x5a; FRAME]);
            }
            let mut pr = packed(&mem, &ring);
            dequeue_packed_bursts(bursts, &mut pr, &mut ring, &mut cache);
        }
        "enqueue_packed" => {
            let mem = DriverMem::new(0, 4 << 20, GPA, UVA);
            let mut ring = PackedDriver::new(&mem, 0, 256);
            let mut pr = packed(&mem, &ring);
            enqueue_packed_bursts(bursts, &mut pr, &mut ring, &mut cache);
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
        "loop" => loop_bursts(bursts, pool.clone(), PortVlan::default(), false),
        "loop-vlan" => loop_bursts(bursts, pool.clone(), PortVlan::access(10), false),
        "loop-latency" => loop_bursts(bursts, pool.clone(), PortVlan::default(), true),
        _ => {
            eprintln!(
                "usage: ring_cost dequeue|enqueue|dequeue_packed|enqueue_packed|switch|loop|loop-vlan|loop-latency [BURSTS]"
            );
            std::process::exit(2);
        }
    }
}
