//! Latency histograms: how long frames spend in the switch, per output port, and how
//! long the PMD loop's busy iterations take, recorded by the PMD threads with
//! `hdrhistogram` and merged by the control plane.
//!
//! A frame's time in the switch runs from the start of the rx poll that received it
//! to the moment a tx burst wrote it to its output port's ring. It is sampled per tx
//! burst, not per frame: each burst records the age of its oldest frame once, with
//! the burst's frame count as weight. So the cost is a cycle-counter read and one
//! histogram update per burst, and each frame is counted with an upper bound of its
//! own time. Frames dropped are not in it (they are in the drop counters).
//!
//! Each PMD thread records into a [`LatencySet`] it alone owns. Once a second the
//! housekeeping thread offers it an empty set through a single-slot ring (`rtrb`:
//! single producer, single consumer, wait-free: a push or pop is a load and a store,
//! and never waits for the other side, unlike a multi-producer queue whose pop can
//! spin while a preempted pusher is half way); the PMD thread, at its quiescent
//! point, swaps it for the full one and hands that back through another. The control
//! plane adds the full set to its totals. The PMD thread allocates nothing and waits
//! on nothing; the sets are built by the control plane, one histogram per port number
//! in use when it built them (a port added since waits for the next set, a second at
//! most).

use hdrhistogram::Histogram;
use rtrb::{Consumer, Producer, RingBuffer};
use serde::Serialize;

/// Highest value a histogram tells apart, in cycles (about 6 s at 3 GHz): longer
/// ones count as this. No frame waits that long (`tx_stall` drops it first).
const HIGH: u64 = 1 << 34;
/// Significant decimal digits: values within 1% are told apart.
const SIGFIG: u8 = 2;

/// A histogram of cycle counts.
pub type Hist = Histogram<u64>;

/// An empty histogram of cycle counts.
pub fn hist() -> Hist {
    Histogram::new_with_bounds(1, HIGH, SIGFIG).expect("static bounds are valid")
}

/// What one PMD thread recorded over one interval.
pub struct LatencySet {
    /// By output port number: time in the switch. `None` for numbers that had no
    /// port when the set was built.
    ports: Vec<Option<Hist>>,
    /// Busy iterations: cycles from one iteration's start to the next.
    iteration: Hist,
    /// The plan generation when the PMD thread handed the set back: a port number
    /// given to a new port after that holds nothing of the new port's.
    pub gen: u64,
}

impl LatencySet {
    /// A set for port numbers where `has_port` is true, out of `numbers`.
    pub fn new(numbers: usize, has_port: impl Fn(usize) -> bool) -> LatencySet {
        LatencySet {
            ports: (0..numbers).map(|p| has_port(p).then(hist)).collect(),
            iteration: hist(),
            gen: 0,
        }
    }

    /// Frames of port `p` that waited `cycles` (their oldest did), `n` of them.
    #[inline(always)]
    pub fn frames(&mut self, p: usize, cycles: u64, n: usize) {
        if let Some(Some(h)) = self.ports.get_mut(p) {
            h.saturating_record_n(cycles, n as u64);
        }
    }

    /// One busy iteration of `cycles`.
    #[inline(always)]
    pub fn iteration(&mut self, cycles: u64) {
        self.iteration.saturating_record(cycles);
    }

    /// Forgets what port number `p` recorded (its port left or changed).
    pub fn forget(&mut self, p: usize) {
        if let Some(Some(h)) = self.ports.get_mut(p) {
            h.reset();
        }
    }
}

/// The control plane's ends of one PMD thread's exchange.
pub struct Exchange {
    /// Empty sets offered.
    fresh: Producer<LatencySet>,
    /// Full sets handed back.
    full: Consumer<LatencySet>,
}

/// A PMD thread's [`Recorder`] and the control plane's end of its exchange.
pub fn exchange() -> (Recorder, Exchange) {
    let (fresh_tx, fresh_rx) = RingBuffer::new(1);
    let (full_tx, full_rx) = RingBuffer::new(1);
    (
        Recorder {
            set: LatencySet::new(0, |_| false),
            fresh: fresh_rx,
            full: full_tx,
        },
        Exchange {
            fresh: fresh_tx,
            full: full_rx,
        },
    )
}

/// The PMD thread's side: the set it records into.
pub struct Recorder {
    pub set: LatencySet,
    fresh: Consumer<LatencySet>,
    full: Producer<LatencySet>,
}

impl Recorder {
    /// A recorder that records for port numbers `0..numbers` from the start, before
    /// any set is offered (benchmarks).
    pub fn for_ports(numbers: usize) -> Recorder {
        let (mut r, _) = exchange();
        r.set = LatencySet::new(numbers, |_| true);
        r
    }

    /// At the quiescent point: if an empty set is offered (and the last full one was
    /// taken), records into it from now on and hands back the full one. This thread
    /// alone fills `full`: once it has room, the push cannot fail, so no set is ever
    /// dropped (freed) here.
    #[inline]
    pub fn swap(&mut self, gen: u64) {
        if self.full.is_full() {
            return;
        }
        if let Ok(new) = self.fresh.pop() {
            let mut old = std::mem::replace(&mut self.set, new);
            old.gen = gen;
            if let Err(rtrb::PushError::Full(old)) = self.full.push(old) {
                // Not reachable (see above); keep the set rather than free it here.
                self.set = old;
            }
        }
    }
}

/// The control plane's totals: per port number and per PMD thread, since the port
/// (or the switch) started.
pub struct Totals {
    ports: Vec<Option<Hist>>,
    /// The plan generation from which each port number holds its current port.
    born: Vec<u64>,
    iterations: Vec<Hist>,
    /// The exchange with each PMD thread.
    exchanges: Vec<Exchange>,
    /// Per PMD thread: a fresh set was offered and not yet answered.
    offered: Vec<bool>,
    /// Emptied sets for reuse.
    spare: Vec<LatencySet>,
}

impl Totals {
    /// Totals of the PMD threads at the far ends of `exchanges`.
    pub fn new(exchanges: Vec<Exchange>) -> Totals {
        let pmds = exchanges.len();
        Totals {
            ports: Vec::new(),
            born: Vec::new(),
            iterations: (0..pmds).map(|_| hist()).collect(),
            exchanges,
            offered: vec![false; pmds],
            spare: Vec::new(),
        }
    }

    /// Port number `p` holds a new port from generation `gen` on (or none): its totals
    /// start again.
    pub fn renumber(&mut self, p: usize, gen: u64) {
        if self.ports.len() <= p {
            self.ports.resize_with(p + 1, || None);
            self.born.resize(p + 1, 0);
        }
        self.ports[p] = None;
        self.born[p] = gen;
    }

    /// Takes back the full sets PMD threads handed over and offers empty ones for the
    /// port numbers `has_port` names, out of `numbers`.
    pub fn collect(&mut self, numbers: usize, has_port: impl Fn(usize) -> bool) {
        for i in 0..self.exchanges.len() {
            if let Ok(full) = self.exchanges[i].full.pop() {
                self.offered[i] = false;
                self.add(i, full);
            }
            if !self.offered[i] {
                let mut set = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| LatencySet::new(0, |_| false));
                set.ports.resize_with(numbers, || None);
                for (p, h) in set.ports.iter_mut().enumerate() {
                    match (has_port(p), h.is_some()) {
                        (true, false) => *h = Some(hist()),
                        (false, true) => *h = None,
                        _ => {}
                    }
                }
                match self.exchanges[i].fresh.push(set) {
                    Ok(()) => self.offered[i] = true,
                    Err(rtrb::PushError::Full(set)) => self.spare.push(set),
                }
            }
        }
    }

    /// Adds PMD thread `pmd`'s full set to the totals and keeps it, emptied, for reuse.
    fn add(&mut self, pmd: usize, mut set: LatencySet) {
        for (p, h) in set.ports.iter_mut().enumerate() {
            let Some(h) = h else { continue };
            if !h.is_empty() && self.born.get(p).is_some_and(|&b| b <= set.gen) {
                if self.ports.len() <= p {
                    self.ports.resize_with(p + 1, || None);
                    self.born.resize(p + 1, 0);
                }
                let total = self.ports[p].get_or_insert_with(hist);
                let _ = total.add(&*h);
            }
            h.reset();
        }
        let _ = self.iterations[pmd].add(&set.iteration);
        set.iteration.reset();
        self.spare.push(set);
    }

    /// Port number `p`'s time in the switch, in nanoseconds at `tsc_hz`.
    pub fn port(&self, p: usize, tsc_hz: u64) -> Option<LatencySummary> {
        self.ports
            .get(p)?
            .as_ref()
            .map(|h| LatencySummary::of(h, tsc_hz))
    }

    /// PMD thread `i`'s busy iteration time.
    pub fn iteration(&self, i: usize, tsc_hz: u64) -> LatencySummary {
        LatencySummary::of(&self.iterations[i], tsc_hz)
    }
}

/// Upper bounds of the buckets a histogram is exported with, in seconds (Prometheus
/// histograms need fixed ones): 1 µs to 100 ms in 1-2.5-5 steps.
pub const BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
    25e-3, 50e-3, 100e-3,
];

/// A histogram as numbers: quantiles in nanoseconds, and cumulative counts at
/// [`BUCKETS`] for Prometheus.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Frames (or iterations) recorded.
    pub count: u64,
    /// Sum of the recorded values, seconds (from the histogram's buckets).
    pub sum_secs: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Cumulative counts at each of [`BUCKETS`].
    pub buckets: Vec<u64>,
}

impl LatencySummary {
    pub fn of(h: &Hist, tsc_hz: u64) -> LatencySummary {
        let hz = tsc_hz.max(1) as f64;
        let ns = |c: u64| (c as f64 * 1e9 / hz) as u64;
        if h.is_empty() {
            return LatencySummary {
                buckets: vec![0; BUCKETS.len()],
                ..LatencySummary::default()
            };
        }
        LatencySummary {
            count: h.len(),
            sum_secs: h.mean() * h.len() as f64 / hz,
            p50_ns: ns(h.value_at_quantile(0.5)),
            p99_ns: ns(h.value_at_quantile(0.99)),
            p999_ns: ns(h.value_at_quantile(0.999)),
            max_ns: ns(h.max()),
            buckets: BUCKETS
                .iter()
                .map(|&s| h.count_between(0, (s * hz) as u64))
                .collect(),
        }
    }

    /// `p50=1.2us p99=... p99.9=... max=... n=...` for `ctl stats`.
    pub fn describe(&self) -> String {
        format!(
            "p50={} p99={} p99.9={} max={} n={}",
            human(self.p50_ns),
            human(self.p99_ns),
            human(self.p999_ns),
            human(self.max_ns),
            self.count
        )
    }
}

/// Nanoseconds for people: `850ns`, `12.3us`, `4.56ms`.
fn human(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        _ => format!("{:.2}ms", ns as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_travel_between_a_recorder_and_the_totals_without_loss() {
        let (mut rec, ex) = exchange();
        let mut totals = Totals::new(vec![ex]);
        totals.renumber(0, 1);
        totals.renumber(2, 1);
        let has = |p: usize| p == 0 || p == 2;
        // Before any set is offered, samples go nowhere (and cost nothing).
        rec.set.frames(0, 1000, 5);
        totals.collect(3, has);
        rec.swap(1);
        rec.set.frames(0, 3000, 32);
        rec.set.frames(2, 1_000_000, 1);
        rec.set.frames(1, 10, 1); // no port: ignored
        rec.set.iteration(500);
        // The control plane collects while the thread has not swapped: nothing yet.
        totals.collect(3, has);
        assert!(totals.port(0, 1_000_000_000).is_none());
        rec.swap(1);
        totals.collect(3, has);
        let p0 = totals.port(0, 1_000_000_000).unwrap();
        assert_eq!(p0.count, 32);
        assert!((2990..=3010).contains(&p0.p50_ns), "{p0:?}");
        assert_eq!(
            p0.buckets[BUCKETS.iter().position(|&b| b == 5e-6).unwrap()],
            32
        );
        assert_eq!(totals.port(2, 1_000_000_000).unwrap().count, 1);
        assert!(totals.port(1, 1_000_000_000).is_none());
        assert_eq!(totals.iteration(0, 1_000_000_000).count, 1);
    }

    #[test]
    fn a_renumbered_port_starts_from_nothing() {
        let (mut rec, ex) = exchange();
        let mut totals = Totals::new(vec![ex]);
        totals.renumber(0, 1);
        totals.collect(1, |_| true);
        rec.swap(1);
        rec.set.frames(0, 100, 7);
        // Port 0 leaves and a new port takes its number at generation 3, before the
        // thread hands back what it recorded for the old one at generation 2.
        totals.renumber(0, 3);
        rec.swap(2);
        totals.collect(1, |_| true);
        assert!(totals.port(0, 1_000_000_000).is_none());
    }

    #[test]
    fn summary_reads_in_nanoseconds() {
        let mut h = hist();
        for c in 1..=1000u64 {
            h.record(c * 3).unwrap(); // 3 GHz: 1..1000 ns
        }
        let s = LatencySummary::of(&h, 3_000_000_000);
        assert!((495..=505).contains(&s.p50_ns), "{s:?}");
        assert!((985..=1000).contains(&s.p99_ns), "{s:?}");
        assert_eq!(s.describe().split(' ').count(), 5);
        assert_eq!(human(1500), "1.5us");
    }
}
