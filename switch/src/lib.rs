//! `switch`: the forwarding side of vswitch.
//!
//! [`fdb`] is the MAC learning table, [`frame`] reads the Ethernet header of a
//! frame for the switch step, [`pmd_loop`] the poll-mode loop each PMD
//! thread runs, [`sched`] the assignment of rx queues to PMD threads, [`stats`] the
//! per-PMD counters. [`Switch`] ties them together: it starts one pinned PMD thread
//! per configured core and a housekeeping thread that ages the table.

pub mod fdb;
pub mod frame;
pub mod pmd_loop;
pub mod sched;
pub mod stats;

use fdb::Fdb;
use pmd::rcu::Rcu;
use pmd::{Mempool, MempoolCache, Port};
use stats::PmdStats;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// One PMD thread per entry, pinned to that core.
    pub pmd_cores: Vec<usize>,
    pub fdb_capacity: usize,
    /// Most entries one port may hold (0: capacity divided by the number of ports).
    pub fdb_per_port: usize,
    pub aging_secs: u32,
    /// How long an output queue may make no progress before its frames are dropped.
    pub tx_stall: Duration,
}

struct Pmd {
    core: usize,
    rxqs: Vec<sched::RxqId>,
    stats: Arc<PmdStats>,
    thread: Option<JoinHandle<()>>,
}

pub struct Switch {
    ports: Arc<[Arc<dyn Port>]>,
    fdb: Arc<Fdb>,
    pmds: Vec<Pmd>,
    stop: Arc<AtomicBool>,
    housekeeping: Option<JoinHandle<()>>,
    epoch: Instant,
    tsc_hz: u64,
}

/// Measures the cycle counter's rate against the wall clock (50 ms).
fn measure_tsc_hz() -> u64 {
    let (t0, c0) = (Instant::now(), stats::cycles());
    std::thread::sleep(Duration::from_millis(50));
    let (dt, dc) = (t0.elapsed(), stats::cycles() - c0);
    (dc as f64 / dt.as_secs_f64()) as u64
}

impl Switch {
    /// Starts the PMD threads over `ports`.
    pub fn start(
        cfg: &SwitchConfig,
        ports: Vec<Arc<dyn Port>>,
        pool: Arc<Mempool>,
        rcu: Arc<Rcu>,
    ) -> Switch {
        let ports: Arc<[Arc<dyn Port>]> = ports.into();
        let per_port = if cfg.fdb_per_port == 0 {
            cfg.fdb_capacity / ports.len().max(1)
        } else {
            cfg.fdb_per_port
        };
        let fdb = Arc::new(Fdb::new(
            cfg.fdb_capacity,
            ports.len(),
            per_port,
            cfg.aging_secs,
        ));
        let rxqs: Vec<sched::RxqId> = ports
            .iter()
            .enumerate()
            .flat_map(|(p, port)| (0..port.rx_queues()).map(move |q| (p, q)))
            .collect();
        let plan = sched::round_robin(&rxqs, cfg.pmd_cores.len());
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let tsc_hz = measure_tsc_hz();
        let lanes = pmd::TxLane::for_pmds(cfg.pmd_cores.len());
        let pmds = cfg
            .pmd_cores
            .iter()
            .zip(plan)
            .zip(lanes)
            .enumerate()
            .map(|(index, ((&core, rxqs), lane))| {
                let stats = Arc::new(PmdStats::new(ports.len()));
                stats.core.store(core as u64, Ordering::Relaxed);
                let cx = pmd_loop::PmdContext {
                    index,
                    lane,
                    core: Some(core),
                    ports: ports.clone(),
                    rxqs: rxqs.clone(),
                    fdb: fdb.clone(),
                    cache: MempoolCache::new(pool.clone()),
                    stats: stats.clone(),
                    rcu: rcu.register(),
                    stop: stop.clone(),
                    epoch,
                    tx_stall: cfg.tx_stall,
                    tsc_hz,
                    traffic: vec![pmd::Traffic::default(); ports.len()],
                };
                let thread = std::thread::Builder::new()
                    .name(format!("pmd-{core}"))
                    .spawn(move || pmd_loop::run(cx))
                    .expect("spawn PMD thread");
                Pmd {
                    core,
                    rxqs,
                    stats,
                    thread: Some(thread),
                }
            })
            .collect();
        let housekeeping = {
            let (fdb, stop) = (fdb.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fdb-aging".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(200));
                        let n = fdb.age(epoch.elapsed().as_secs() as u32);
                        if n > 0 {
                            tracing::debug!(aged = n, "forwarding table entries aged out");
                        }
                    }
                })
                .expect("spawn aging thread")
        };
        Switch {
            ports,
            fdb,
            pmds,
            stop,
            housekeeping: Some(housekeeping),
            epoch,
            tsc_hz,
        }
    }

    pub fn ports(&self) -> &[Arc<dyn Port>] {
        &self.ports
    }
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Stops and joins the PMD threads (every queued frame is freed).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.pmds.iter_mut() {
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(t) = self.housekeeping.take() {
            let _ = t.join();
        }
    }

    /// `ctl show`: ports and the rx queue assignment.
    pub fn show(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.ports.iter().enumerate() {
            let _ = writeln!(
                s,
                "port {i} {}: {} up={}",
                p.name(),
                p.describe(),
                p.is_up()
            );
        }
        for p in &self.pmds {
            let q: Vec<String> = p
                .rxqs
                .iter()
                .map(|&(port, q)| format!("{}:{q}", self.ports[port].name()))
                .collect();
            let _ = writeln!(s, "pmd core {}: rxqs [{}]", p.core, q.join(" "));
        }
        let _ = writeln!(
            s,
            "fdb: {} of {} entries, aging {} s",
            self.fdb.len(),
            self.fdb.capacity(),
            self.fdb.aging_secs()
        );
        s
    }

    /// `ctl stats`: port counters and PMD cycles.
    pub fn stats(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.ports.iter().enumerate() {
            let mut t = pmd::Traffic::default();
            for pmd in &self.pmds {
                t.add(&pmd.stats.traffic[i].read());
            }
            let kv: Vec<String> = p
                .stats()
                .snapshot(&t)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "port {}: {}", p.name(), kv.join(" "));
        }
        for p in &self.pmds {
            let st = &p.stats;
            let (b, i) = (
                st.busy_cycles.load(Ordering::Relaxed),
                st.idle_cycles.load(Ordering::Relaxed),
            );
            let _ = writeln!(
                s,
                "pmd core {}: packets={} busy_cycles={} idle_cycles={} busy_pct={:.1} cycles_per_packet={:.1} iterations={} backpressure={} tsc_hz={}",
                p.core,
                st.packets.load(Ordering::Relaxed),
                b,
                i,
                if b + i > 0 { 100.0 * b as f64 / (b + i) as f64 } else { 0.0 },
                st.cycles_per_packet(),
                st.iterations.load(Ordering::Relaxed),
                st.backpressure.load(Ordering::Relaxed),
                self.tsc_hz,
            );
        }
        s
    }

    /// `ctl fdb`: the forwarding table.
    pub fn fdb_dump(&self) -> String {
        let now = self.epoch.elapsed().as_secs() as u32;
        let mut s = String::from("port  vlan  mac                age\n");
        for e in self.fdb.entries(now) {
            let name = self.ports.get(e.port as usize).map_or("?", |p| p.name());
            let _ = writeln!(s, "{name:<5} {:<5} {}  {}", e.vlan, e.mac, e.age_secs);
        }
        s
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop();
    }
}
