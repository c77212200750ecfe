//! `switch`: the forwarding side of vswitch.
//!
//! [`fdb`] is the MAC learning table, [`frame`] reads the Ethernet header of a
//! frame for the switch step, [`pmd_loop`] the poll-mode loop each PMD
//! thread runs, [`sched`] the assignment of rx queues to PMD threads, [`stats`] the
//! per-PMD counters. [`Switch`] ties them together: it starts one pinned PMD thread
//! per configured core and a housekeeping thread that ages the table.

pub mod capture;
pub mod control;
mod egress;
pub mod fdb;
pub mod frame;
pub mod latency;
pub mod load;
pub mod plan;
pub mod pmd_loop;
pub mod sched;
pub mod sleep;
pub mod snapshot;
pub mod stats;
pub mod steps;
pub mod tunnel;
pub mod vlan;

use control::{Control, Pmd, Shared};
use fdb::Fdb;
use load::Window;
use plan::{Mailbox, PollPlan, MAX_PORTS};
use pmd::rcu::Rcu;
use pmd::{Mempool, MempoolCache, Port};
use stats::PmdStats;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Longest wait of an idle PMD thread (zero: PMD threads busy-poll; see `sleep`).
    pub pmd_sleep_max: Duration,
    /// Re-place rx queues by load on its own (`None`: only on `rebalance`), as OVS's
    /// `pmd-auto-lb`.
    pub auto_rebalance: Option<AutoRebalance>,
    /// Record latency histograms (see [`latency`]).
    pub latency: bool,
}

/// When the switch re-places rx queues on its own.
#[derive(Clone, Copy, Debug)]
pub struct AutoRebalance {
    /// How often it looks.
    pub every: Duration,
    /// Only when the busiest PMD thread spends at least this percentage of its cycles
    /// on its queues (and the new placement relieves it by a quarter or more).
    pub busy_pct: u8,
}

/// Why a change to the ports was refused (nothing changed) or did not complete.
#[derive(Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// Every port number is taken.
    TooManyPorts {
        max: usize,
    },
    DuplicateName(String),
    NoSuchPort(String),
    /// `capture::MAX_CAPTURES` captures run already.
    TooManyCaptures {
        max: usize,
    },
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::TooManyPorts { max } => write!(f, "the switch holds at most {max} ports"),
            SwitchError::DuplicateName(n) => write!(f, "a port named {n:?} exists"),
            SwitchError::NoSuchPort(n) => write!(f, "no port named {n:?}"),
            SwitchError::TooManyCaptures { max } => {
                write!(f, "{max} captures run already; stop one first")
            }
        }
    }
}

pub struct Switch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Measures the cycle counter's rate against the wall clock (50 ms).
fn measure_tsc_hz() -> u64 {
    let (t0, c0) = (Instant::now(), stats::cycles());
    std::thread::sleep(Duration::from_millis(50));
    let (dt, dc) = (t0.elapsed(), stats::cycles() - c0);
    (dc as f64 / dt.as_secs_f64()) as u64
}

impl Switch {
    /// Starts the PMD threads, with no ports yet (see [`Switch::add_ports`]).
    pub fn start(cfg: &SwitchConfig, pool: Arc<Mempool>, rcu: Arc<Rcu>) -> Switch {
        let fdb = Arc::new(Fdb::new(
            cfg.fdb_capacity,
            MAX_PORTS,
            if cfg.fdb_per_port == 0 {
                cfg.fdb_capacity
            } else {
                cfg.fdb_per_port
            },
            cfg.aging_secs,
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let tsc_hz = measure_tsc_hz();
        let lanes = pmd::TxLane::for_pmds(cfg.pmd_cores.len());
        let mut pmds = Vec::new();
        let mut threads = Vec::new();
        let mut exchanges = Vec::new();
        for (index, (&core, lane)) in cfg.pmd_cores.iter().zip(lanes).enumerate() {
            let stats = Arc::new(PmdStats::new(MAX_PORTS));
            stats.core.store(core as u64, Ordering::Relaxed);
            let plan = Arc::new(PollPlan::empty());
            let mailbox = Arc::new(Mailbox::new(plan.clone()));
            let (recorder, exchange) = latency::exchange();
            exchanges.push(exchange);
            let cx = pmd_loop::PmdContext {
                index,
                lane,
                core: Some(core),
                mailbox: mailbox.clone(),
                fdb: fdb.clone(),
                cache: MempoolCache::new(pool.clone()),
                stats: stats.clone(),
                rcu: rcu.register(),
                stop: stop.clone(),
                epoch,
                tx_stall: cfg.tx_stall,
                sleep_max: cfg.pmd_sleep_max,
                tsc_hz,
                traffic: vec![pmd::Traffic::default(); MAX_PORTS],
                latency: cfg.latency.then_some(recorder),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pmd-{core}"))
                    .spawn(move || pmd_loop::run(cx, plan))
                    .expect("spawn PMD thread"),
            );
            pmds.push(Pmd {
                core,
                stats,
                mailbox,
                window: Window::default(),
            });
        }
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            control: Mutex::new(Control {
                ports: Vec::new(),
                vlans: Vec::new(),
                assign: vec![Vec::new(); pmds.len()],
                gen: 0,
                captures: Vec::new(),
                next_capture: 1,
            }),
            fdb,
            latency: cfg
                .latency
                .then(|| Mutex::new(latency::Totals::new(exchanges))),
            pmds,
            stop,
            epoch,
            tsc_hz,
        });
        let hk = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("housekeeping".into())
                .spawn(move || hk.housekeeping())
                .expect("spawn housekeeping thread"),
        );
        Switch { shared, threads }
    }

    pub fn fdb(&self) -> &Fdb {
        &self.shared.fdb
    }

    /// The ports, by name, with their numbers.
    pub fn ports(&self) -> Vec<(usize, Arc<dyn Port>)> {
        self.shared
            .control()
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.clone()?)))
            .collect()
    }

    /// Adds ports at run time, each with its VLAN settings: each gets the lowest free port number, and its rx
    /// queues go to the least loaded PMD threads. Returns once every PMD thread polls
    /// them. Refused as a whole (nothing changes) if a name is taken or too few port
    /// numbers are free.
    pub fn add_ports(
        &self,
        new: Vec<(Arc<dyn Port>, vlan::PortVlan)>,
    ) -> Result<Vec<usize>, SwitchError> {
        self.shared.add_ports(new)
    }

    /// Removes ports at run time: their rx queues leave the poll lists, their queued
    /// frames are freed, their forwarding entries flushed. Returns the ports once no
    /// PMD thread can touch them (the caller closes them). Refused as a whole if a
    /// name is unknown.
    pub fn remove_ports(&self, names: &[&str]) -> Result<Vec<Arc<dyn Port>>, SwitchError> {
        self.shared.remove_ports(names)
    }

    /// Places every rx queue afresh by its measured load (`ctl rebalance`); returns a
    /// report of what moved.
    pub fn rebalance(&self) -> String {
        self.shared.rebalance(None).unwrap_or_default()
    }

    /// Starts capturing frames of port `port` (`ctl capture`); returns the capture, which
    /// the caller drains (see [`capture`]) and ends with [`Switch::capture_stop`].
    pub fn capture_start(
        &self,
        port: &str,
        spec: capture::CaptureSpec,
    ) -> Result<Arc<capture::Capture>, SwitchError> {
        self.shared.capture_start(port, spec)
    }

    /// Stops capture `c`: once this returns, no PMD thread adds to it.
    pub fn capture_stop(&self, c: &capture::Capture) {
        self.shared.capture_stop(c.id)
    }

    /// What [`Switch::capture_start`]s from another thread need.
    pub fn captures(&self) -> CaptureSource {
        CaptureSource(self.shared.clone())
    }

    /// Stops and joins the PMD threads (every queued frame is freed).
    pub fn stop(&mut self) {
        self.shared.end_captures();
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// `ctl show`: ports, the rx queues of each PMD thread, and each queue's share of
    /// its thread's cycles over the last load window.
    pub fn show(&self) -> String {
        self.shared.show()
    }

    /// Ports, PMD threads and the table, as data (`ctl --json`, metrics).
    pub fn snapshot(&self) -> snapshot::Snapshot {
        self.shared.snapshot()
    }

    /// What takes [`Switch::snapshot`]s from a thread that cannot borrow the switch
    /// (the metrics endpoint's).
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource(self.shared.clone())
    }

    /// `ctl stats`: port counters and PMD cycles.
    pub fn stats(&self) -> String {
        self.shared.stats()
    }

    /// The forwarding table's entries, sorted by VLAN and MAC.
    pub fn fdb_entries(&self) -> Vec<snapshot::FdbEntrySnapshot> {
        fdb_entries(&self.shared)
    }

    /// A handle that reads the forwarding table from another thread (EVPN's).
    pub fn fdb_source(&self) -> FdbSource {
        FdbSource(self.shared.clone())
    }
}

/// Reads the forwarding table (see [`Switch::fdb_source`]).
#[derive(Clone)]
pub struct FdbSource(Arc<Shared>);

impl FdbSource {
    pub fn entries(&self) -> Vec<snapshot::FdbEntrySnapshot> {
        fdb_entries(&self.0)
    }

    /// The entries on ports for which `keep` says yes.
    pub fn entries_where(
        &self,
        keep: impl Fn(&dyn Port) -> bool,
    ) -> Vec<snapshot::FdbEntrySnapshot> {
        let ports = self.0.control().ports.clone();
        let kept: std::collections::HashSet<&str> = ports
            .iter()
            .flatten()
            .filter(|p| keep(p.as_ref()))
            .map(|p| p.name())
            .collect();
        fdb_entries(&self.0)
            .into_iter()
            .filter(|e| kept.contains(e.port.as_str()))
            .collect()
    }
}

fn fdb_entries(sh: &Shared) -> Vec<snapshot::FdbEntrySnapshot> {
    let now = sh.epoch.elapsed().as_secs() as u32;
    let ports = sh.control().ports.clone();
    sh.fdb
        .entries(now)
        .into_iter()
        .map(|e| snapshot::FdbEntrySnapshot {
            port: ports
                .get(e.port as usize)
                .and_then(Option::as_ref)
                .map_or("?", |p| p.name())
                .to_string(),
            vlan: e.vlan,
            mac: e.mac.to_string(),
            age_secs: e.age_secs,
        })
        .collect()
}

impl Switch {
    /// `ctl fdb`: the forwarding table.
    pub fn fdb_dump(&self) -> String {
        let mut s = String::from("port  vlan  mac                age\n");
        for e in self.fdb_entries() {
            let _ = writeln!(s, "{:<5} {:<5} {}  {}", e.port, e.vlan, e.mac, e.age_secs);
        }
        s
    }

    /// `ctl fdb-flush`: empties the forwarding table; returns how many entries went.
    pub fn fdb_flush(&self) -> usize {
        self.shared.fdb_flush()
    }
}

/// Takes [`Switch::snapshot`]s from another thread. It keeps the switch's shared state
/// (and so its ports) alive: drop it before the switch's ports are closed.
#[derive(Clone)]
pub struct SnapshotSource(Arc<Shared>);

impl SnapshotSource {
    pub fn snapshot(&self) -> snapshot::Snapshot {
        self.0.snapshot()
    }
}

/// Starts and stops captures from a thread that cannot borrow the switch (a capture's
/// writer). Like [`SnapshotSource`], it keeps the switch's ports alive: drop it
/// before they are closed.
#[derive(Clone)]
pub struct CaptureSource(Arc<Shared>);

impl CaptureSource {
    pub fn start(
        &self,
        port: &str,
        spec: capture::CaptureSpec,
    ) -> Result<Arc<capture::Capture>, SwitchError> {
        self.0.capture_start(port, spec)
    }
    pub fn stop(&self, c: &capture::Capture) {
        self.0.capture_stop(c.id)
    }
    /// The cycle counter's rate (captured frames carry cycle counts).
    pub fn tsc_hz(&self) -> u64 {
        self.0.tsc_hz
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop();
    }
}
