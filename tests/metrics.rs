//! The Prometheus endpoint: scraped during and after testpmd traffic, its output
//! passes `promtool check metrics` (no error, no lint warning), and after the traffic
//! its port counters are exactly `ctl stats`' (which `traffic_round` has checked
//! against testpmd's). `listen = ""`: nothing listens, and a reload cannot change it.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Fixed addresses, one per test, far from the default 9477.
const ADDR: &str = "127.0.0.1:19477";
const ADDR_OFF: &str = "127.0.0.1:19478";

/// `GET path` over HTTP/1.0: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (status, body.to_string())
}

/// The samples of an exposition: `name{labels}` (as written) to value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The value of `name` whose labels include every one of `labels`.
#[track_caller]
fn value(s: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<f64> = s
        .iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, ""));
            n == name
                && labels
                    .iter()
                    .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}: {} samples", hits.len());
    hits[0]
}

/// `promtool check metrics` must accept `body` with nothing to say.
#[track_caller]
fn promtool_accepts(body: &str) {
    let ok = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "promtool is not installed: apt-get install prometheus (scripts/install-deps.sh does)"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{body}",
        out.status
    );
}

/// `ctl stats` names to the metric and labels that carry them.
fn metric_of(key: &str) -> (&'static str, Option<&str>) {
    match key {
        "rx_packets" => ("vswitch_port_rx_packets_total", None),
        "rx_bytes" => ("vswitch_port_rx_bytes_total", None),
        "tx_packets" => ("vswitch_port_tx_packets_total", None),
        "tx_bytes" => ("vswitch_port_tx_bytes_total", None),
        "tx_flood" => ("vswitch_port_tx_flood_packets_total", None),
        "rx_offload" => ("vswitch_port_rx_offload_packets_total", None),
        "tx_segments" => ("vswitch_port_tx_segments_total", None),
        "learn_refused" => ("vswitch_port_learn_refused_total", None),
        "guest_errors" => ("vswitch_port_guest_errors_total", None),
        k => (
            "vswitch_port_dropped_packets_total",
            Some(
                k.strip_prefix("drop_")
                    .unwrap_or_else(|| panic!("ctl stats has {k}: no metric for it")),
            ),
        ),
    }
}

#[test]
fn metrics_during_and_after_traffic_agree_with_ctl_stats() {
    let dir = Scratch::new("metrics");
    let cfg = write_config(
        &dir,
        &server_ports(&["vm1", "vm2"]),
        &format!("\n[metrics]\nlisten = \"{ADDR}\"\n"),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    assert!(sw.log().contains("metrics endpoint"), "{}", sw.log());
    assert_eq!(get(ADDR, "/").0, 404);
    assert_eq!(get(ADDR, "/metricsx").0, 404);
    let (code, idle) = get(ADDR, "/metrics");
    assert_eq!(code, 200);
    promtool_accepts(&idle);

    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], false, "metrics");
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    // A port's latency histogram records from the first set the PMD thread gets
    // after the port joined: within 1.2 s of the start.
    std::thread::sleep(Duration::from_millis(1500));
    let mut during = Vec::new();
    traffic_round(&sw, &mut tp, 4, || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            let (code, body) = get(ADDR, "/metrics");
            assert_eq!(code, 200);
            promtool_accepts(&body);
            during.push(samples(&body));
        }
    });
    // Counters only go up between scrapes, and traffic was seen while it flowed.
    let rx =
        |s: &HashMap<String, f64>| value(s, "vswitch_port_rx_packets_total", &[("port", "vm1")]);
    assert!(during.windows(2).all(|w| rx(&w[0]) <= rx(&w[1])));
    assert!(rx(&during[2]) > 0.0, "no traffic seen during the round");

    // After the traffic: every counter of ctl stats, exactly. The latency histograms
    // reach the control plane once a second: wait for two rounds.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, body) = get(ADDR, "/metrics");
    promtool_accepts(&body);
    let s = samples(&body);
    for port in ["vm1", "vm2"] {
        let stats = sw.port_stats(port);
        for (k, v) in &stats {
            let (name, reason) = metric_of(k);
            let mut labels = vec![("port", port), ("driver", "vhost-user")];
            if let Some(r) = reason {
                labels.push(("reason", r));
            }
            assert_eq!(value(&s, name, &labels), *v as f64, "{port} {k}");
        }
        latency_agrees(&s, port, stats["tx_packets"], &sw.ctl_ok(&["stats"]));
        assert_eq!(value(&s, "vswitch_port_up", &[("port", port)]), 1.0);
        assert_eq!(value(&s, "vswitch_port_connected", &[("port", port)]), 1.0);
        assert_eq!(
            value(
                &s,
                "vswitch_port_vrings",
                &[("port", port), ("state", "live")]
            ),
            2.0
        );
        eprintln!(
            "metrics {port}: rx_packets={} tx_packets={} (ctl stats: {} {})",
            value(&s, "vswitch_port_rx_packets_total", &[("port", port)]),
            value(&s, "vswitch_port_tx_packets_total", &[("port", port)]),
            stats["rx_packets"],
            stats["tx_packets"]
        );
    }
    let core = pmd_core().to_string();
    let c = [("core", core.as_str())];
    assert!(value(&s, "vswitch_pmd_packets_total", &c) > 0.0);
    assert!(value(&s, "vswitch_pmd_busy_cycles_total", &c) > 0.0);
    assert_eq!(value(&s, "vswitch_pmd_rxqs", &c), 2.0);
    assert!(
        value(
            &s,
            "vswitch_rxq_cycles_per_second",
            &[("port", "vm1"), ("queue", "0")]
        ) > 0.0
    );
    assert_eq!(value(&s, "vswitch_fdb_entries", &[]), 2.0);
    assert_eq!(value(&s, "vswitch_mempool_mbufs_capacity", &[]), 8192.0);
    assert!(value(&s, "vswitch_mempool_mbufs_free", &[]) > 0.0);
    assert!(value(&s, "vswitch_tsc_hz", &[]) > 0.0);
    assert!(value(&s, "process_start_time_seconds", &[]) > 1.5e9);
    assert_eq!(value(&s, "vswitch_build_info", &[]), 1.0);
    dashboard_metrics_exist(&s);
    tp.quit();

    // A client that connects and never sends does not hold up SIGTERM.
    let _silent = TcpStream::connect(ADDR).unwrap();
    let t0 = Instant::now();
    let log = sw.stop();
    let took = t0.elapsed();
    eprintln!("SIGTERM to exit with a silent metrics client: {took:?}");
    assert!(took < Duration::from_millis(1500), "stop took {took:?}");
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
    assert!(
        TcpStream::connect(ADDR).is_err(),
        "the endpoint outlived the switch"
    );
}

#[test]
fn metrics_off_listens_nowhere() {
    let dir = Scratch::new("metricsoff");
    let cfg = write_config(
        &dir,
        &server_ports(&["vm1"]),
        "\n[metrics]\nlisten = \"\"\n",
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    // No TCP listener in the process (its sockets are unix sockets only)...
    let pid = sw.pid();
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(String::from)
        })
        .collect();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let t = std::fs::read_to_string(table).unwrap_or_default();
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(
                !(f[3] == "0A" && inodes.iter().any(|i| i == f[9])),
                "the switch listens on TCP: {l}"
            );
        }
    }
    // ...and neither the default address nor another answers for it.
    for a in [ADDR_OFF, "127.0.0.1:9477"] {
        let a: SocketAddr = a.parse().unwrap();
        if let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
            // Something else may hold 9477 on this machine: it is not this switch.
            let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            assert!(
                !out.contains("vswitch_build_info"),
                "{a} serves vswitch metrics"
            );
        }
    }
    // The address is read at start only: a reload that changes it is refused.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("listen = \"\"", &format!("listen = \"{ADDR_OFF}\"")),
    )
    .unwrap();
    let (code, out) = sw.ctl_try(&["reload"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("metrics.listen"), "{out}");
    eprintln!("reload with a new metrics.listen: {}", out.trim());
    assert!(TcpStream::connect(ADDR_OFF).is_err());
    sw.stop();
}

/// Port `port`'s latency histogram counted every frame it sent (`tx_packets`), in
/// buckets that only grow, and `ctl stats` gives its quantiles in order.
fn latency_agrees(s: &HashMap<String, f64>, port: &str, tx_packets: u64, stats: &str) {
    let name = "vswitch_port_latency_seconds";
    let count = value(s, &format!("{name}_count"), &[("port", port)]);
    assert_eq!(
        count, tx_packets as f64,
        "{port}: histogram count vs tx_packets"
    );
    let inf = value(
        s,
        &format!("{name}_bucket"),
        &[("port", port), ("le", "+Inf")],
    );
    assert_eq!(inf, count);
    let mut buckets: Vec<(f64, f64)> = s
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}_bucket{{")) && k.contains(&format!("port=\"{port}\""))
        })
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            Some((le.parse().ok()?, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let sum = value(s, &format!("{name}_sum"), &[("port", port)]);
    assert!(sum > 0.0 && sum / count < 0.1, "mean {}", sum / count);
    let line = stats
        .lines()
        .find(|l| l.starts_with(&format!("latency port {port}: ")))
        .unwrap_or_else(|| panic!("no latency line for {port} in ctl stats:\n{stats}"));
    let q: Vec<f64> = ["p50=", "p99=", "p99.9=", "max="]
        .iter()
        .map(|k| {
            let v = line.split(k).nth(1).unwrap().split(' ').next().unwrap();
            let (num, mul) = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3)]
                .iter()
                .find_map(|(u, m)| Some((v.strip_suffix(u)?, *m)))
                .unwrap();
            num.parse::<f64>().unwrap() * mul
        })
        .collect();
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{line}");
    assert!(line.ends_with(&format!("n={tx_packets}")), "{line}");
    eprintln!("{line}");
    let it = stats
        .lines()
        .find(|l| l.starts_with("latency pmd core "))
        .unwrap_or_else(|| panic!("no iteration latency in ctl stats:\n{stats}"));
    assert!(!it.ends_with(" n=0"), "{it}");
    eprintln!("{it}");
}

/// Every metric the Grafana dashboard (dashboards/vswitch.json) queries is exported.
fn dashboard_metrics_exist(s: &HashMap<String, f64>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/vswitch.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("vswitch_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    names.sort();
    names.dedup();
    for n in &names {
        assert!(
            s.keys().any(|k| k == n || k.starts_with(&format!("{n}{{"))),
            "the dashboard queries {n}, which /metrics does not export"
        );
    }
    eprintln!(
        "dashboard: {} panels, its {} metrics all exported",
        dash["panels"].as_array().unwrap().len(),
        names.len()
    );
}
