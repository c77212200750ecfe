//! The Prometheus endpoint: `GET /metrics` on `[metrics] listen`, served by its own
//! control-plane thread. Each scrape reads `Switch::snapshot()` (the per-PMD values
//! `ctl stats` sums, nothing new on the hot path) and the mempool's free count, and
//! encodes them in the Prometheus text format with the `prometheus` crate.

use pmd::Mempool;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switch::latency::BUCKETS;
use switch::snapshot::{LatencySummary, PmdSnapshot, Snapshot};
use switch::SnapshotSource;

/// How long the serving thread waits for a request before looking at its stop flag:
/// a stop is seen within this.
const POLL: Duration = Duration::from_millis(200);
/// Most replies being written at once (each on its own short-lived thread).
const MAX_WRITERS: usize = 8;

/// Why the endpoint could not start.
#[derive(Debug)]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, no permission).
    Bind { addr: SocketAddr, cause: String },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsError::Bind { addr, cause } => write!(f, "cannot listen on {addr}: {cause}"),
        }
    }
}

impl std::error::Error for MetricsError {}

/// The serving endpoint. Dropping it stops its thread (within [`POLL`]) and waits for
/// it, so that its hold on the switch's state ends before the ports close.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bound endpoint, not yet serving.
pub struct Endpoint {
    server: tiny_http::Server,
    /// When the service started, seconds since the epoch (`process_start_time_seconds`).
    started: f64,
    /// Replies being written now.
    writers: Arc<AtomicUsize>,
}

impl Endpoint {
    /// Binds `addr`; requests wait in the kernel's queue until [`Endpoint::serve`].
    pub fn bind(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError::Bind {
            addr,
            cause: e.to_string(),
        })?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(Endpoint {
            server,
            started,
            writers: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> String {
        match self.server.server_addr() {
            tiny_http::ListenAddr::IP(a) => a.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// Serves on a thread of its own until the returned handle is dropped.
    pub fn start(self, sw: SnapshotSource, pool: Arc<Mempool>) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tracing::info!(listen = %self.addr(), "metrics endpoint at /metrics");
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || self.serve(&flag, &sw, &pool))
            .expect("spawn metrics thread");
        Running {
            stop,
            thread: Some(thread),
        }
    }

    /// Answers scrapes until `stop` is set (seen within [`POLL`]).
    fn serve(&self, stop: &AtomicBool, sw: &SnapshotSource, pool: &Mempool) {
        while !stop.load(Ordering::Relaxed) {
            let req = match self.server.recv_timeout(POLL) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("metrics: {e}");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            let path = req.url().split('?').next().unwrap_or("");
            let resp = if *req.method() != tiny_http::Method::Get {
                tiny_http::Response::from_string("only GET\n").with_status_code(405)
            } else if path != "/metrics" {
                tiny_http::Response::from_string("not found: the metrics are at /metrics\n")
                    .with_status_code(404)
            } else {
                match exposition(&sw.snapshot(), pool, self.started) {
                    Ok(body) => tiny_http::Response::from_string(body).with_header(
                        tiny_http::Header::from_bytes(
                            "Content-Type",
                            TextEncoder::new().format_type(),
                        )
                        .expect("static header"),
                    ),
                    Err(e) => {
                        tracing::error!("metrics: {e}");
                        tiny_http::Response::from_string(format!("{e}\n")).with_status_code(500)
                    }
                }
            };
            self.reply(req, resp);
        }
    }

    /// Sends `resp` from a thread of its own, so that a client that does not read a
    /// long reply holds that thread, not this one (nor a stop). At most
    /// [`MAX_WRITERS`] at once: past that the request is dropped (the client sees
    /// the connection close).
    fn reply(&self, req: tiny_http::Request, resp: tiny_http::Response<std::io::Cursor<Vec<u8>>>) {
        if self.writers.fetch_add(1, Ordering::AcqRel) >= MAX_WRITERS {
            self.writers.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("metrics: {MAX_WRITERS} replies still being written; request dropped");
            return;
        }
        let writers = self.writers.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-reply".into())
            .spawn(move || {
                if let Err(e) = req.respond(resp) {
                    tracing::debug!("metrics: reply not sent: {e}");
                }
                writers.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.writers.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("metrics: cannot start a reply thread: {e}");
        }
    }
}

/// A counter family with labels `labels`, registered in `r`.
fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// An integer gauge family with labels `labels`, registered in `r`.
fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Saturating u64 to i64, for integer gauges.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One number of a PMD thread's snapshot.
type PmdField = fn(&PmdSnapshot) -> u64;

/// `ctl stats` counter names that are drops, and their `reason` label.
const DROPS: &[(&str, &str)] = &[
    ("drop_tx_full", "tx_full"),
    ("drop_tx_down", "tx_down"),
    ("drop_oversize", "oversize"),
    ("drop_mtu", "mtu"),
    ("drop_offload", "offload"),
    ("drop_no_mbuf", "no_mbuf"),
    ("drop_hairpin", "hairpin"),
    ("drop_runt", "runt"),
    ("drop_vlan", "vlan"),
];

/// The exposition of one scrape: `snap` and the pool, in the text format.
pub fn exposition(snap: &Snapshot, pool: &Mempool, started: f64) -> prometheus::Result<String> {
    let r = Registry::new();
    let pl = &["port", "driver"];
    let traffic: Vec<(&str, IntCounterVec)> = [
        (
            "rx_packets",
            "vswitch_port_rx_packets_total",
            "Frames received from the port.",
        ),
        (
            "rx_bytes",
            "vswitch_port_rx_bytes_total",
            "Bytes received from the port.",
        ),
        (
            "tx_packets",
            "vswitch_port_tx_packets_total",
            "Frames sent to the port.",
        ),
        (
            "tx_bytes",
            "vswitch_port_tx_bytes_total",
            "Bytes sent to the port.",
        ),
        (
            "tx_flood",
            "vswitch_port_tx_flood_packets_total",
            "Frames sent to the port as a flood (unknown unicast, broadcast, multicast).",
        ),
        (
            "rx_offload",
            "vswitch_port_rx_offload_packets_total",
            "Frames received asking for checksum or segmentation offload.",
        ),
        (
            "tx_segments",
            "vswitch_port_tx_segments_total",
            "TCP segments made in software for the port from TSO frames it cannot take.",
        ),
        (
            "learn_refused",
            "vswitch_port_learn_refused_total",
            "Source MACs the table refused to learn on the port (table or port share full).",
        ),
        (
            "guest_errors",
            "vswitch_port_guest_errors_total",
            "Errors of the port's peer (bad descriptor, address or message).",
        ),
    ]
    .into_iter()
    .map(|(key, name, help)| Ok((key, counter(&r, name, help, pl)?)))
    .collect::<prometheus::Result<_>>()?;
    let dropped = counter(
        &r,
        "vswitch_port_dropped_packets_total",
        "Frames of the port dropped, by reason.",
        &["port", "driver", "reason"],
    )?;
    let up = gauge(&r, "vswitch_port_up", "1 if the port's link is up.", pl)?;
    let connected = gauge(
        &r,
        "vswitch_port_connected",
        "vhost-user: 1 while a frontend is connected.",
        pl,
    )?;
    let connections = counter(
        &r,
        "vswitch_port_connections_total",
        "vhost-user: frontend connections accepted or made.",
        pl,
    )?;
    let vrings = gauge(
        &r,
        "vswitch_port_vrings",
        "vhost-user: virtqueues by state.",
        &["port", "driver", "state"],
    )?;
    let irqs = counter(
        &r,
        "vswitch_port_interrupts_total",
        "vhost-user: guest interrupts sent, or dropped because the call eventfd was full.",
        &["port", "driver", "result"],
    )?;
    let mut other: Vec<(String, IntGaugeVec)> = Vec::new();
    for p in &snap.ports {
        let l = [p.name.as_str(), p.driver];
        up.with_label_values(&l).set(p.up as i64);
        for (key, c) in &traffic {
            c.with_label_values(&l)
                .inc_by(p.counters.get(key).copied().unwrap_or(0));
        }
        for (key, reason) in DROPS {
            dropped
                .with_label_values(&[l[0], l[1], *reason])
                .inc_by(p.counters.get(key).copied().unwrap_or(0));
        }
        for (&key, &v) in &p.gauges {
            match key {
                "connected" => connected.with_label_values(&l).set(int(v)),
                "connections" => connections.with_label_values(&l).inc_by(v),
                "vrings_live" | "vrings_down" | "vrings_broken" => vrings
                    .with_label_values(&[l[0], l[1], &key["vrings_".len()..]])
                    .set(int(v)),
                "irq_sent" => irqs.with_label_values(&[l[0], l[1], "sent"]).inc_by(v),
                "irq_dropped" => irqs.with_label_values(&[l[0], l[1], "dropped"]).inc_by(v),
                // A driver's gauge this module does not know yet: as a gauge of its name.
                _ => {
                    let name = format!("vswitch_port_{key}");
                    let g = match other.iter().find(|(n, _)| *n == name) {
                        Some((_, g)) => g.clone(),
                        None => {
                            let g = gauge(&r, &name, &format!("The port's {key}."), pl)?;
                            other.push((name, g.clone()));
                            g
                        }
                    };
                    g.with_label_values(&l).set(int(v));
                }
            }
        }
    }

    let core = &["core"];
    let pmd_counters: [(&str, &str, PmdField); 8] = [
        (
            "vswitch_pmd_busy_cycles_total",
            "TSC cycles the PMD thread spent on iterations that moved frames.",
            |p| p.busy_cycles,
        ),
        (
            "vswitch_pmd_idle_cycles_total",
            "TSC cycles the PMD thread spent on iterations that found nothing.",
            |p| p.idle_cycles,
        ),
        (
            "vswitch_pmd_packets_total",
            "Frames the PMD thread received.",
            |p| p.packets,
        ),
        (
            "vswitch_pmd_iterations_total",
            "Poll loop iterations of the PMD thread.",
            |p| p.iterations,
        ),
        (
            "vswitch_pmd_backpressure_iterations_total",
            "Iterations in which the PMD thread held frames back for a full ring.",
            |p| p.backpressure,
        ),
        (
            "vswitch_pmd_sleeps_total",
            "Waits of the idle PMD thread (switch.pmd_sleep_max_us).",
            |p| p.sleeps,
        ),
        (
            "vswitch_pmd_sleep_wakes_total",
            "Waits of the idle PMD thread that a port ended (frames came).",
            |p| p.sleep_wakes,
        ),
        (
            "vswitch_pmd_sleep_cycles_total",
            "TSC cycles the idle PMD thread spent waiting (part of the idle cycles).",
            |p| p.sleep_cycles,
        ),
    ];
    let mut pmd_families = Vec::new();
    for (name, help, f) in pmd_counters {
        pmd_families.push((counter(&r, name, help, core)?, f));
    }
    let rxqs = gauge(
        &r,
        "vswitch_pmd_rxqs",
        "Rx queues the PMD thread polls.",
        core,
    )?;
    let rxq_rate = gauge(
        &r,
        "vswitch_rxq_cycles_per_second",
        "TSC cycles per second spent on the rx queue over the load window (~10 s).",
        &["port", "queue", "core"],
    )?;
    for p in &snap.pmds {
        let c = p.core.to_string();
        for (fam, f) in &pmd_families {
            fam.with_label_values(&[&c]).inc_by(f(p));
        }
        rxqs.with_label_values(&[&c]).set(p.rxqs.len() as i64);
        for q in &p.rxqs {
            rxq_rate
                .with_label_values(&[&q.port, &q.queue.to_string(), &c])
                .set(int(q.cycles_per_sec));
        }
    }

    let single = |name: &str, help: &str, v: u64| -> prometheus::Result<()> {
        let g = IntGauge::new(name, help)?;
        r.register(Box::new(g.clone()))?;
        g.set(int(v));
        Ok(())
    };
    single(
        "vswitch_fdb_entries",
        "MAC table entries.",
        snap.fdb.entries as u64,
    )?;
    single(
        "vswitch_fdb_capacity",
        "Most MAC table entries (fdb.capacity).",
        snap.fdb.capacity as u64,
    )?;
    single(
        "vswitch_mempool_mbufs_free",
        "Packet buffers free in the pool (not in a ring, a queue or a PMD cache).",
        pool.available() as u64,
    )?;
    single(
        "vswitch_mempool_mbufs_capacity",
        "Packet buffers in the pool (mempool.mbufs).",
        pool.capacity() as u64,
    )?;
    single(
        "vswitch_mempool_large_mbufs_free",
        "Large packet buffers (68 KiB slots, for frames longer than an mbuf) free in the pool.",
        pool.large_available() as u64,
    )?;
    single(
        "vswitch_mempool_large_mbufs_capacity",
        "Large packet buffers in the pool (mempool.large_mbufs).",
        pool.large_capacity() as u64,
    )?;
    single(
        "vswitch_tsc_hz",
        "Rate of the cycle counter the cycle metrics count in, per second.",
        snap.tsc_hz,
    )?;
    let start = Gauge::new(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
    )?;
    r.register(Box::new(start.clone()))?;
    start.set(started);
    gauge(
        &r,
        "vswitch_build_info",
        "The running build: always 1, its version as a label.",
        &["version"],
    )?
    .with_label_values(&[env!("CARGO_PKG_VERSION")])
    .set(1);

    let mut families = r.gather();
    families.extend(histogram_families(snap));
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// A histogram as Prometheus takes it: count, sum, and cumulative counts at upper bounds.
struct Buckets {
    count: u64,
    sum: f64,
    le: Vec<(f64, u64)>,
}

impl Buckets {
    fn latency(l: &LatencySummary) -> Buckets {
        Buckets {
            count: l.count,
            sum: l.sum_secs,
            le: BUCKETS
                .iter()
                .copied()
                .zip(l.buckets.iter().copied())
                .collect(),
        }
    }

    /// A burst-size histogram (counts of 0, 1, ... 32 frames) at bounds 0, 1, 2, 4,
    /// 8, 16, 24 and 31 frames (32 is `+Inf`).
    fn bursts(counts: &[u64]) -> Buckets {
        let at = |le: usize| counts.iter().take(le + 1).sum::<u64>();
        Buckets {
            count: counts.iter().sum(),
            sum: counts
                .iter()
                .enumerate()
                .map(|(k, &c)| (k as u64 * c) as f64)
                .sum(),
            le: [0, 1, 2, 4, 8, 16, 24, 31]
                .iter()
                .map(|&le| (le as f64, at(le)))
                .collect(),
        }
    }
}

/// The histograms: latency (when the switch records it) and burst sizes, as
/// Prometheus histograms built from the switch's own buckets (the `prometheus`
/// crate's `Histogram` only observes values one by one).
fn histogram_families(snap: &Snapshot) -> Vec<MetricFamily> {
    let port_labels = |p: &switch::snapshot::PortSnapshot| {
        vec![("port", p.name.clone()), ("driver", p.driver.to_string())]
    };
    let core = |p: &PmdSnapshot| vec![("core", p.core.to_string())];
    let ports: Vec<_> = snap
        .ports
        .iter()
        .filter_map(|p| Some((port_labels(p), Buckets::latency(p.latency.as_ref()?))))
        .collect();
    let iterations: Vec<_> = snap
        .pmds
        .iter()
        .filter_map(|p| Some((core(p), Buckets::latency(p.iteration.as_ref()?))))
        .collect();
    let rx: Vec<_> = snap
        .pmds
        .iter()
        .map(|p| (core(p), Buckets::bursts(&p.rx_bursts)))
        .collect();
    let tx: Vec<_> = snap
        .pmds
        .iter()
        .map(|p| (core(p), Buckets::bursts(&p.tx_bursts)))
        .collect();
    [
        (
            "vswitch_port_latency_seconds",
            "Time frames sent to the port spent in the switch, from the rx poll that received them to their tx burst (sampled per burst: the oldest frame's time).",
            ports,
        ),
        (
            "vswitch_pmd_iteration_seconds",
            "Time of the PMD thread's busy poll loop iterations.",
            iterations,
        ),
        (
            "vswitch_pmd_rx_burst_frames",
            "Frames per rx poll of the PMD thread (0: an empty poll).",
            rx,
        ),
        (
            "vswitch_pmd_tx_burst_frames",
            "Frames per tx burst of the PMD thread to a port (0: the port took none; 32 counts 32 or more).",
            tx,
        ),
    ]
    .into_iter()
    .filter(|(_, _, series)| !series.is_empty())
    .map(|(name, help, series)| histogram_family(name, help, &series))
    .collect()
}

/// One histogram family: a series per label set.
fn histogram_family(
    name: &str,
    help: &str,
    series: &[(Vec<(&str, String)>, Buckets)],
) -> MetricFamily {
    let mut fam = MetricFamily::default();
    fam.set_name(name.to_string());
    fam.set_help(help.to_string());
    fam.set_field_type(MetricType::HISTOGRAM);
    for (labels, b) in series {
        let mut h = proto::Histogram::default();
        h.set_sample_count(b.count);
        h.set_sample_sum(b.sum);
        h.set_bucket(
            b.le.iter()
                .map(|&(le, n)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        let mut m = proto::Metric::from_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut lp = proto::LabelPair::default();
                    lp.set_name(k.to_string());
                    lp.set_value(v.clone());
                    lp
                })
                .collect(),
        );
        m.set_histogram(h);
        fam.mut_metric().push(m);
    }
    fam
}
