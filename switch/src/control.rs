//! The control plane's side of a running switch: adding and removing ports while
//! PMD threads run, placing rx queues on PMD threads by load, the housekeeping thread
//! (table aging, load sampling, automatic re-placement), and the text of `ctl show`
//! and `ctl stats`.
//!
//! Every change follows one rule: build the new poll lists, publish them to every PMD
//! thread's mailbox, wait until each took them up (see [`crate::plan`]), and only then
//! flush, close or hand back what left. A queue that moves between threads is first
//! taken from its old thread and only then given to its new one, so that no two
//! threads ever poll it at once.

use crate::capture::{Capture, CaptureSpec, MAX_CAPTURES};
use crate::fdb::{Fdb, PortNo};
use crate::latency::{LatencySummary, Totals};
use crate::load::Window;
use crate::plan::{Mailbox, PollPlan, PortTable, Rxq, RxqLoad, MAX_PORTS};
use crate::sched::{self, RxqId};
use crate::snapshot::{FdbSnapshot, PmdSnapshot, PortSnapshot, RxqSnapshot, Snapshot};
use crate::stats::PmdStats;
use crate::vlan::PortVlan;
use crate::{SwitchConfig, SwitchError};
use pmd::Port;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the control plane waits for a PMD thread to take up a new poll list.
const PLAN_WAIT: Duration = Duration::from_secs(5);
/// How often the housekeeping thread samples loads (and ages the table).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Automatic re-placement happens only when the new placement lowers the busiest
/// thread's load by at least this percentage (OVS's `pmd-auto-lb-improvement-threshold`
/// default), besides that thread being busy enough (`AutoRebalance::busy_pct`).
const AUTO_IMPROVEMENT: u64 = 25;

/// One PMD thread as the control plane sees it.
pub(crate) struct Pmd {
    pub core: usize,
    pub stats: Arc<PmdStats>,
    pub mailbox: Arc<Mailbox>,
    /// Samples of the thread's cycles (busy and idle).
    pub window: Window,
}

impl Pmd {
    fn total_cycles(&self) -> u64 {
        self.stats.busy_cycles.load(Ordering::Relaxed)
            + self.stats.idle_cycles.load(Ordering::Relaxed)
    }
}

/// The ports and the poll lists, as the control plane last published them. Changed
/// only under `Shared::control`, a lock no PMD thread takes.
pub(crate) struct Control {
    /// By port number.
    pub ports: Vec<Option<Arc<dyn Port>>>,
    /// The VLAN settings of each port number (plain trunk for a free number).
    pub vlans: Vec<PortVlan>,
    /// The rx queues of each PMD thread.
    pub assign: Vec<Vec<Rxq>>,
    pub gen: u64,
    /// Packet captures running.
    pub captures: Vec<Arc<Capture>>,
    /// The id the next capture gets.
    pub next_capture: u64,
}

/// What the switch's threads share with its handle.
pub(crate) struct Shared {
    pub cfg: SwitchConfig,
    pub fdb: Arc<Fdb>,
    pub pmds: Vec<Pmd>,
    pub control: Mutex<Control>,
    /// Latency totals, when histograms are on. Taken after `control`, never before.
    pub latency: Option<Mutex<Totals>>,
    pub stop: Arc<AtomicBool>,
    pub epoch: Instant,
    pub tsc_hz: u64,
}

impl Shared {
    pub fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the poll lists in `c` to every PMD thread and waits until each runs them.
    fn publish(&self, c: &mut Control) {
        c.gen += 1;
        let used = c
            .ports
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        let table: PortTable = c.ports[..used].to_vec().into();
        let vlans: Arc<[PortVlan]> = c.vlans[..used].to_vec().into();
        let vlan_on = vlans.iter().any(|v| !v.is_plain());
        let max_frames: Arc<[u32]> = table
            .iter()
            .map(|p| {
                p.as_ref()
                    .map_or(0, |p| pmd::port::max_frame(p.mtu()) as u32)
            })
            .collect();
        let mut present = max_frames.iter().filter(|&&f| f != 0);
        let first = present.next().copied();
        let mtu_on = present.any(|&f| Some(f) != first);
        let captures: Arc<[Arc<Capture>]> = c.captures.clone().into();
        let old: Vec<Arc<PollPlan>> = self
            .pmds
            .iter()
            .zip(&c.assign)
            .map(|(pmd, rxqs)| {
                pmd.mailbox.publish(Arc::new(PollPlan {
                    gen: c.gen,
                    ports: table.clone(),
                    vlans: vlans.clone(),
                    vlan_on,
                    max_frames: max_frames.clone(),
                    mtu_on,
                    rxqs: rxqs.clone(),
                    captures: captures.clone(),
                    capture_on: !captures.is_empty(),
                }))
            })
            .collect();
        for pmd in &self.pmds {
            // A PMD thread always comes round to its quiescent point unless it ended
            // (then it no longer counts): keep waiting, and say so.
            while let Err(e) = pmd.mailbox.wait(c.gen, PLAN_WAIT) {
                tracing::warn!(core = pmd.core, "{e}; still waiting");
            }
        }
        // Only now: no PMD thread holds these plans any more.
        drop(old);
    }

    /// Latency totals, if histograms are on.
    fn latency(&self) -> Option<MutexGuard<'_, Totals>> {
        self.latency
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Port number `p` holds another port (or none) from the next publication on.
    fn renumber(&self, c: &Control, p: usize) {
        if let Some(mut l) = self.latency() {
            l.renumber(p, c.gen + 1);
        }
    }

    /// The latency of port number `p` and of each PMD thread's iterations.
    fn port_latency(&self, p: usize) -> Option<LatencySummary> {
        self.latency()?.port(p, self.tsc_hz)
    }

    /// The per-port share of the forwarding table, when not configured: the capacity
    /// divided by the number of ports.
    fn update_fdb_share(&self, c: &Control) {
        if self.cfg.fdb_per_port == 0 {
            let n = c.ports.iter().flatten().count().max(1);
            self.fdb.set_per_port_limit(self.fdb.capacity() / n);
        }
    }

    pub fn add_ports(
        &self,
        new: Vec<(Arc<dyn Port>, PortVlan)>,
    ) -> Result<Vec<usize>, SwitchError> {
        let mut c = self.control();
        for (i, (p, _)) in new.iter().enumerate() {
            let name = p.name();
            if c.ports.iter().flatten().any(|q| q.name() == name)
                || new[..i].iter().any(|q| q.0.name() == name)
            {
                return Err(SwitchError::DuplicateName(name.to_string()));
            }
        }
        let free = c.ports.iter().filter(|p| p.is_none()).count() + MAX_PORTS - c.ports.len();
        if new.len() > free {
            return Err(SwitchError::TooManyPorts { max: MAX_PORTS });
        }
        // What each thread carries now: (measured load, queues). A new queue is
        // expected to cost what an average queue costs now (its own load is unknown):
        // so the queues of one new port spread over threads of unequal load too.
        let mut load: Vec<(u64, usize)> = c
            .assign
            .iter()
            .map(|qs| (qs.iter().map(|q| q.load.window.rate()).sum(), qs.len()))
            .collect();
        let queues: usize = load.iter().map(|l| l.1).sum();
        let expected = (load.iter().map(|l| l.0).sum::<u64>() / queues.max(1) as u64).max(1);
        let mut numbers = Vec::new();
        for (port, vlan) in new {
            let n = match c.ports.iter().position(Option::is_none) {
                Some(n) => n,
                None => {
                    c.ports.push(None);
                    c.vlans.push(PortVlan::default());
                    c.ports.len() - 1
                }
            };
            c.vlans[n] = vlan;
            for q in 0..port.rx_queues() {
                let t = sched::least_loaded(&load);
                load[t].0 += expected;
                load[t].1 += 1;
                c.assign[t].push(Rxq {
                    port: n,
                    queue: q,
                    load: Arc::new(RxqLoad::default()),
                });
            }
            tracing::info!(port = port.name(), number = n, "port joins the switch");
            self.renumber(&c, n);
            c.ports[n] = Some(port);
            numbers.push(n);
        }
        for qs in c.assign.iter_mut() {
            qs.sort_by_key(|q| (q.port, q.queue));
        }
        self.update_fdb_share(&c);
        self.publish(&mut c);
        Ok(numbers)
    }

    pub fn remove_ports(&self, names: &[&str]) -> Result<Vec<Arc<dyn Port>>, SwitchError> {
        let mut c = self.control();
        let mut numbers = Vec::new();
        for name in names {
            match c
                .ports
                .iter()
                .position(|p| p.as_ref().is_some_and(|p| p.name() == *name))
            {
                Some(n) if !numbers.contains(&n) => numbers.push(n),
                Some(_) => {}
                None => return Err(SwitchError::NoSuchPort(name.to_string())),
            }
        }
        let gone: Vec<(usize, Arc<dyn Port>)> = numbers
            .iter()
            .filter_map(|&n| Some((n, c.ports[n].take()?)))
            .collect();
        for qs in c.assign.iter_mut() {
            qs.retain(|q| !numbers.contains(&q.port));
        }
        for (n, _) in &gone {
            self.renumber(&c, *n);
        }
        let (ended, kept) = c
            .captures
            .drain(..)
            .partition(|k| numbers.contains(&k.port));
        c.captures = kept;
        self.publish(&mut c);
        end(ended);
        // No PMD thread polls or sends to them now: their entries can go, and their
        // numbers can be given again.
        for (n, port) in &gone {
            let flushed = self.fdb.flush_port(*n as PortNo);
            tracing::info!(
                port = port.name(),
                number = n,
                flushed,
                "port leaves the switch"
            );
        }
        for (n, _) in &gone {
            c.vlans[*n] = PortVlan::default();
        }
        while c.ports.last().is_some_and(Option::is_none) {
            c.ports.pop();
            c.vlans.pop();
        }
        self.update_fdb_share(&c);
        Ok(gone.into_iter().map(|(_, p)| p).collect())
    }

    /// Places every queue afresh by load. With `auto` (a busy percentage), only if the
    /// busiest thread is at least that busy and the new placement relieves it enough;
    /// returns `None` then if nothing was done.
    pub fn rebalance(&self, auto: Option<u8>) -> Option<String> {
        let mut c = self.control();
        let loads: HashMap<RxqId, Arc<RxqLoad>> = c
            .assign
            .iter()
            .flatten()
            .map(|q| ((q.port, q.queue), q.load.clone()))
            .collect();
        let load_of = |id: RxqId| loads.get(&id).map_or(0, |l| l.window.rate());
        let current: Vec<Vec<RxqId>> = c
            .assign
            .iter()
            .map(|qs| qs.iter().map(|q| (q.port, q.queue)).collect())
            .collect();
        let all: Vec<(RxqId, u64)> = loads.keys().map(|&id| (id, load_of(id))).collect();
        let target = sched::by_cycles(&all, self.pmds.len());
        let (before, after) = (
            sched::max_load(&current, load_of),
            sched::max_load(&target, load_of),
        );
        if let Some(busy_pct) = auto {
            let busiest = self
                .pmds
                .iter()
                .zip(&current)
                .map(|(p, qs)| pct(qs.iter().map(|&q| load_of(q)).sum(), p.window.rate()))
                .fold(0.0, f64::max);
            let gain = before.saturating_sub(after);
            if busiest < busy_pct as f64 || gain * 100 < before * AUTO_IMPROVEMENT || before == 0 {
                return None;
            }
        }
        let mut report = self.moves(&c, &current, &target, load_of);
        if report.is_empty() {
            let _ = writeln!(
                report,
                "no rxq moves (busiest core carries {before} cycles/s)"
            );
            return Some(report);
        }
        self.move_queues(&mut c, &target, &loads);
        let _ = writeln!(report, "busiest core: {before} -> {after} cycles/s");
        tracing::info!(
            auto = auto.is_some(),
            moves = report.lines().count() - 1,
            before,
            after,
            "rx queues re-placed by load"
        );
        Some(report)
    }

    /// One line per queue that `target` puts on another thread than `current` does.
    fn moves(
        &self,
        c: &Control,
        current: &[Vec<RxqId>],
        target: &[Vec<RxqId>],
        load_of: impl Fn(RxqId) -> u64,
    ) -> String {
        let mut report = String::new();
        for (t, qs) in target.iter().enumerate() {
            for &id in qs {
                let Some(from) = current.iter().position(|cur| cur.contains(&id)) else {
                    continue;
                };
                if from != t {
                    let _ = writeln!(
                        report,
                        "rxq {}:{} core {} -> core {} ({} cycles/s)",
                        c.ports[id.0].as_ref().map_or("?", |p| p.name()),
                        id.1,
                        self.pmds[from].core,
                        self.pmds[t].core,
                        load_of(id)
                    );
                }
            }
        }
        report
    }

    /// Puts the queues where `target` says, in two publications: every moving queue
    /// first leaves its old thread, then joins its new one, so that no two threads
    /// ever poll it at once.
    fn move_queues(
        &self,
        c: &mut Control,
        target: &[Vec<RxqId>],
        loads: &HashMap<RxqId, Arc<RxqLoad>>,
    ) {
        for (t, qs) in c.assign.iter_mut().enumerate() {
            qs.retain(|q| target[t].contains(&(q.port, q.queue)));
        }
        self.publish(c);
        c.assign = target
            .iter()
            .map(|qs| {
                qs.iter()
                    .map(|&(port, queue)| Rxq {
                        port,
                        queue,
                        load: loads[&(port, queue)].clone(),
                    })
                    .collect()
            })
            .collect();
        self.publish(c);
    }

    /// Ages the table, samples loads every [`SAMPLE_EVERY`], and re-places queues when
    /// automatic re-placement is on; until `stop`.
    pub fn housekeeping(&self) {
        let mut next_sample = Instant::now();
        let mut next_auto = self.cfg.auto_rebalance.map(|a| Instant::now() + a.every);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let n = self.fdb.age(self.epoch.elapsed().as_secs() as u32);
            if n > 0 {
                tracing::debug!(aged = n, "forwarding table entries aged out");
            }
            let now = Instant::now();
            if now >= next_sample {
                next_sample = now + SAMPLE_EVERY;
                self.sample();
            }
            if let (Some(at), Some(a)) = (next_auto, self.cfg.auto_rebalance) {
                if now >= at {
                    next_auto = Some(now + a.every);
                    self.rebalance(Some(a.busy_pct));
                }
            }
        }
    }

    fn sample(&self) {
        let c = self.control();
        for (pmd, qs) in self.pmds.iter().zip(&c.assign) {
            pmd.window.sample(pmd.total_cycles());
            for q in qs {
                q.load.window.sample(q.load.cycles());
            }
        }
        if let Some(mut l) = self.latency() {
            l.collect(c.ports.len(), |p| c.ports[p].is_some());
        }
    }
}

/// Captures no PMD thread fills any more: their writers finish.
fn end(captures: Vec<Arc<Capture>>) {
    for k in captures {
        tracing::info!(capture = k.id, port = k.port_name, "capture ended");
        k.ended.store(true, Ordering::Release);
    }
}

impl Shared {
    pub fn capture_start(
        &self,
        port: &str,
        spec: CaptureSpec,
    ) -> Result<Arc<Capture>, SwitchError> {
        let mut c = self.control();
        let n = c
            .ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.name() == port))
            .ok_or_else(|| SwitchError::NoSuchPort(port.to_string()))?;
        if c.captures.len() >= MAX_CAPTURES {
            return Err(SwitchError::TooManyCaptures { max: MAX_CAPTURES });
        }
        let id = c.next_capture;
        c.next_capture += 1;
        let k = Arc::new(Capture::new(id, n, port, spec, self.pmds.len()));
        tracing::info!(capture = id, port, direction = %k.spec.direction, snaplen = k.spec.snaplen, vlan = ?k.spec.vlan, "capture started");
        c.captures.push(k.clone());
        self.publish(&mut c);
        Ok(k)
    }

    /// Takes capture `id` out of the PMD threads' plans (if it is still in them).
    pub fn capture_stop(&self, id: u64) {
        let mut c = self.control();
        let Some(i) = c.captures.iter().position(|k| k.id == id) else {
            return;
        };
        let k = c.captures.remove(i);
        self.publish(&mut c);
        end(vec![k]);
    }

    /// Ends every capture (the switch stops).
    pub fn end_captures(&self) {
        let mut c = self.control();
        if c.captures.is_empty() {
            return;
        }
        let all = std::mem::take(&mut c.captures);
        self.publish(&mut c);
        end(all);
    }
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl Shared {
    pub fn show(&self) -> String {
        let c = self.control();
        let mut s = String::new();
        for (i, p) in c.ports.iter().enumerate() {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "port {i} {}: {} up={}",
                    p.name(),
                    p.describe(),
                    p.is_up()
                );
            }
        }
        let name = |p: usize| c.ports[p].as_ref().map_or("?", |p| p.name());
        for (pmd, qs) in self.pmds.iter().zip(&c.assign) {
            let q: Vec<String> = qs
                .iter()
                .map(|q| format!("{}:{}", name(q.port), q.queue))
                .collect();
            let _ = writeln!(s, "pmd core {}: rxqs [{}]", pmd.core, q.join(" "));
        }
        for (pmd, qs) in self.pmds.iter().zip(&c.assign) {
            let total = pmd.window.rate();
            for q in qs {
                let _ = writeln!(
                    s,
                    "rxq {}:{}: core {} share={:.1}%",
                    name(q.port),
                    q.queue,
                    pmd.core,
                    pct(q.load.window.rate(), total)
                );
            }
        }
        for k in &c.captures {
            let _ = writeln!(
                s,
                "capture {} on {}: direction={} snaplen={} vlan={} written={} dropped={}",
                k.id,
                k.port_name,
                k.spec.direction,
                k.spec.snaplen,
                k.spec.vlan.map_or("any".to_string(), |v| v.to_string()),
                k.written.load(Ordering::Relaxed),
                k.dropped()
            );
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

    pub fn stats(&self) -> String {
        let c = self.control();
        let mut s = String::new();
        for (i, p) in c.ports.iter().enumerate() {
            let Some(p) = p else { continue };
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
        // The drivers' own numbers (tunnels' counters among them), apart, so that the
        // lines above keep their keys.
        for p in c.ports.iter().flatten() {
            let g = p.gauges();
            if !g.is_empty() {
                let kv: Vec<String> = g.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(s, "state {}: {}", p.name(), kv.join(" "));
            }
        }
        // Latency: after the counters, so that scripts reading the lines above see
        // them unchanged.
        if let Some(l) = self.latency() {
            for (i, p) in c.ports.iter().enumerate() {
                let (Some(p), Some(h)) = (p, l.port(i, self.tsc_hz)) else {
                    continue;
                };
                let _ = writeln!(s, "latency port {}: {}", p.name(), h.describe());
            }
            for (i, p) in self.pmds.iter().enumerate() {
                let h = l.iteration(i, self.tsc_hz);
                let _ = writeln!(s, "latency pmd core {} iteration: {}", p.core, h.describe());
            }
        }
        for p in &self.pmds {
            let st = &p.stats;
            let (b, i) = (
                st.busy_cycles.load(Ordering::Relaxed),
                st.idle_cycles.load(Ordering::Relaxed),
            );
            let _ = writeln!(
                s,
                "pmd core {}: packets={} busy_cycles={} idle_cycles={} busy_pct={:.1} cycles_per_packet={:.1} iterations={} backpressure={} sleeps={} sleep_wakes={} sleep_pct={:.1} tsc_hz={}",
                p.core,
                st.packets.load(Ordering::Relaxed),
                b,
                i,
                pct(b, b + i),
                st.cycles_per_packet(),
                st.iterations.load(Ordering::Relaxed),
                st.backpressure.load(Ordering::Relaxed),
                st.sleeps.load(Ordering::Relaxed),
                st.sleep_wakes.load(Ordering::Relaxed),
                pct(st.sleep_cycles.load(Ordering::Relaxed), b + i),
                self.tsc_hz,
            );
            let _ = writeln!(
                s,
                "pmd core {} rx_bursts: {}",
                p.core,
                crate::stats::describe_bursts(&st.rx_bursts.read())
            );
            let _ = writeln!(
                s,
                "pmd core {} tx_bursts: {}",
                p.core,
                crate::stats::describe_bursts(&st.tx_bursts.read())
            );
            let packets = st.packets.load(Ordering::Relaxed);
            if let Some(d) = crate::steps::describe(&st.steps.read(), packets) {
                let _ = writeln!(s, "pmd core {} cycles per packet by step: {d}", p.core);
            }
        }
        s
    }

    /// Empties the forwarding table; returns how many entries went.
    pub fn fdb_flush(&self) -> usize {
        self.fdb.flush_all()
    }
}

impl Shared {
    pub fn snapshot(&self) -> Snapshot {
        let c = self.control();
        let ports = c
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_ref()?)))
            .map(|(i, p)| {
                let mut t = pmd::Traffic::default();
                for pmd in &self.pmds {
                    t.add(&pmd.stats.traffic[i].read());
                }
                PortSnapshot {
                    number: i,
                    name: p.name().to_string(),
                    driver: p.driver(),
                    up: p.is_up(),
                    counters: p.stats().snapshot(&t).into_iter().collect(),
                    gauges: p.gauges().into_iter().collect(),
                    describe: p.describe(),
                    latency: self.port_latency(i),
                }
            })
            .collect();
        let name = |p: usize| c.ports[p].as_ref().map_or("?", |p| p.name()).to_string();
        let pmds = self
            .pmds
            .iter()
            .zip(&c.assign)
            .enumerate()
            .map(|(i, (pmd, qs))| {
                let st = &pmd.stats;
                let total = pmd.window.rate();
                PmdSnapshot {
                    core: pmd.core,
                    packets: st.packets.load(Ordering::Relaxed),
                    busy_cycles: st.busy_cycles.load(Ordering::Relaxed),
                    idle_cycles: st.idle_cycles.load(Ordering::Relaxed),
                    iterations: st.iterations.load(Ordering::Relaxed),
                    backpressure: st.backpressure.load(Ordering::Relaxed),
                    sleeps: st.sleeps.load(Ordering::Relaxed),
                    sleep_wakes: st.sleep_wakes.load(Ordering::Relaxed),
                    sleep_cycles: st.sleep_cycles.load(Ordering::Relaxed),
                    iteration: self.latency().map(|l| l.iteration(i, self.tsc_hz)),
                    rx_bursts: st.rx_bursts.read(),
                    tx_bursts: st.tx_bursts.read(),
                    step_cycles: st.steps.raw(),
                    rxqs: qs
                        .iter()
                        .map(|q| RxqSnapshot {
                            port: name(q.port),
                            queue: q.queue,
                            cycles_per_sec: q.load.window.rate(),
                            share_pct: pct(q.load.window.rate(), total),
                        })
                        .collect(),
                }
            })
            .collect();
        Snapshot {
            ports,
            pmds,
            fdb: FdbSnapshot {
                entries: self.fdb.len(),
                capacity: self.fdb.capacity(),
                aging_secs: self.fdb.aging_secs(),
            },
            tsc_hz: self.tsc_hz,
        }
    }
}
