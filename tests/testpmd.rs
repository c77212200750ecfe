//! DPDK `dpdk-testpmd` with two `net_virtio_user` ports plays two guests: it sends
//! MAC-addressed frames from each port to the other through the switch, in both
//! directions, with the switch as vhost-user server and as client, on split and on
//! packed virtqueues (`packed_vq=1`); then testpmd is restarted and traffic must flow
//! again without restarting the switch.

mod common;
use common::*;
use std::time::Duration;

/// One round trip of testpmd as `opts` say (`opts.server`: testpmd listens, the
/// switch's ports are clients).
fn run(opts: &TestpmdOpts, tag: &str) {
    let mode = if opts.server { "client" } else { "server" };
    let dir = Scratch::new(tag);
    let cfg = write_config(
        &dir,
        &[
            PortSpec {
                name: "vm1",
                mode,
                queues: 1,
            },
            PortSpec {
                name: "vm2",
                mode,
                queues: 1,
            },
        ],
        "",
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start_with(&dir, ["vm1", "vm2"], &format!("{tag}a"), opts);
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let layout = if opts.packed { "packed" } else { "split" };
    let show = sw.ctl("show");
    assert_eq!(
        show.matches(&format!("layout={layout} ")).count(),
        2,
        "both ports on {layout} rings:\n{show}"
    );
    let n1 = traffic_round(&sw, &mut tp, 3, || {});
    tp.quit();
    sw.wait_show(
        "ports down after testpmd quit",
        Duration::from_secs(20),
        |s| {
            s.lines()
                .filter(|l| l.starts_with("port ") && l.ends_with("up=false"))
                .count()
                == 2
        },
    );

    // The guest side restarts; the switch keeps running and serves it again.
    let mut tp = Testpmd::start_with(&dir, ["vm1", "vm2"], &format!("{tag}b"), opts);
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let show = sw.ctl("show");
    assert!(
        show.contains("connections=2"),
        "expected a second connection per port:\n{show}"
    );
    let n2 = traffic_round(&sw, &mut tp, 2, || {});
    tp.quit();
    eprintln!("{mode}, {layout} rings: {n1} frames before the restart, {n2} after");
    let log = sw.stop();
    assert!(
        !dir.path("vm1.sock").exists() || mode == "client",
        "server socket left behind"
    );
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

#[test]
fn testpmd_switch_as_server() {
    run(&TestpmdOpts::default(), "tps");
}

#[test]
fn testpmd_switch_as_client() {
    let opts = TestpmdOpts {
        server: true,
        ..TestpmdOpts::default()
    };
    run(&opts, "tpc");
}

#[test]
fn testpmd_packed_rings_switch_as_server() {
    let opts = TestpmdOpts {
        packed: true,
        ..TestpmdOpts::default()
    };
    run(&opts, "tpps");
}

#[test]
fn testpmd_packed_rings_switch_as_client() {
    let opts = TestpmdOpts {
        server: true,
        packed: true,
        ..TestpmdOpts::default()
    };
    run(&opts, "tppc");
}

/// Two queue pairs per port, two PMD threads: queue pair k of every port is polled by
/// PMD core k, and traffic flows on both.
#[test]
fn testpmd_multiqueue_two_pmds() {
    let dir = Scratch::new("tpmq");
    let ports = [
        PortSpec {
            name: "vm1",
            mode: "server",
            queues: 2,
        },
        PortSpec {
            name: "vm2",
            mode: "server",
            queues: 2,
        },
    ];
    let cfg = write_config_cores(&dir, &ports, "", &[0, 1]);
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let show = sw.ctl("show");
    assert!(
        show.contains("pmd core 0: rxqs [vm1:0 vm2:0]")
            && show.contains("pmd core 1: rxqs [vm1:1 vm2:1]"),
        "{show}"
    );
    let mut tp = Testpmd::start_mq(&dir, ["vm1", "vm2"], false, "tpmq", 2);
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let show = sw.ctl("show");
    assert!(
        show.contains("vrings=[live,live,live,live]"),
        "both queue pairs live:\n{show}"
    );
    let n = traffic_round(&sw, &mut tp, 3, || {});
    let stats = sw.ctl("stats");
    for core in [0, 1] {
        let line = stats
            .lines()
            .find(|l| l.starts_with(&format!("pmd core {core}:")))
            .unwrap();
        let p = field(line, "packets=");
        assert!(
            p > 1000,
            "PMD core {core} moved {p} frames: queue pair {core} carried no traffic\n{stats}"
        );
        eprintln!("multiqueue: {line}");
    }
    eprintln!("multiqueue: {n} frames in all");
    tp.quit();
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

#[test]
fn ctl_json_parses_and_matches_the_text_form() {
    which("dpdk-testpmd");
    let dir = Scratch::new("json");
    let cfg = write_config(&dir, &server_ports(&["vm1", "vm2"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], false, "json");
    wait_both_up(&sw);
    traffic_round(&sw, &mut tp, 2, || {});
    tp.quit();
    let parse = |cmd: &str| -> serde_json::Value {
        let out = sw.ctl_ok(&["--json", cmd]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl --json {cmd}: {e}:\n{out}"))
    };
    // stats: every counter of every port as the text prints it.
    let stats = parse("stats");
    let text = sw.ctl("stats");
    for port in ["vm1", "vm2"] {
        let p = stats["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port)
            .unwrap_or_else(|| panic!("no {port} in {stats}"));
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("port {port}:")))
            .unwrap();
        let text_counters: std::collections::BTreeMap<String, u64> = line
            .split_whitespace()
            .skip(2)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        let json_counters: std::collections::BTreeMap<String, u64> = p["counters"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        assert!(text_counters.len() > 10, "{line}");
        assert_eq!(json_counters, text_counters, "{port}");
        assert_eq!(p["driver"], "vhost-user");
        assert_eq!(p["gauges"]["connections"], 1, "{p}");
    }
    let pmd = &stats["pmds"][0];
    let pline = text.lines().find(|l| l.starts_with("pmd core")).unwrap();
    assert_eq!(
        pmd["packets"].as_u64(),
        Some(field(pline, "packets=")),
        "{pmd}\n{pline}"
    );
    // The rx burst-size histogram accounts for every frame the thread received, and
    // the tx one for every frame sent (both ports' tx_packets), once traffic stopped.
    let frames = |key: &str| -> u64 {
        let h = pmd[key].as_array().unwrap();
        assert_eq!(h.len(), 33, "{key}: {h:?}");
        h.iter()
            .enumerate()
            .map(|(k, c)| k as u64 * c.as_u64().unwrap())
            .sum()
    };
    assert_eq!(Some(frames("rx_bursts")), pmd["packets"].as_u64(), "{pmd}");
    let tx: u64 = ["vm1", "vm2"]
        .iter()
        .map(|p| sw.port_stats(p)["tx_packets"])
        .sum();
    // (a tx burst of more than 32 frames counts as 32 in its bucket: at most that.)
    assert!(
        frames("tx_bursts") <= tx && frames("tx_bursts") > 0,
        "{pmd}"
    );
    let bursts = text
        .lines()
        .find(|l| l.contains(" rx_bursts: mean="))
        .unwrap();
    eprintln!("{bursts}");
    // show: ports, rx queues, table, mempool.
    let show = parse("show");
    let text = sw.ctl("show");
    assert_eq!(show["ports"].as_array().unwrap().len(), 2);
    assert_eq!(show["pmds"][0]["rxqs"].as_array().unwrap().len(), 2);
    let mp = text.lines().find(|l| l.starts_with("mempool:")).unwrap();
    assert_eq!(show["mempool"]["total"].as_u64(), Some(field(mp, "total=")));
    assert_eq!(show["fdb"]["entries"].as_u64(), Some(2));
    // fdb: the same entries as the text.
    let fdb = parse("fdb");
    let text = sw.ctl("fdb");
    let json_set: std::collections::BTreeSet<(String, u64, String)> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["port"].as_str().unwrap().to_string(),
                e["vlan"].as_u64().unwrap(),
                e["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let text_set: std::collections::BTreeSet<(String, u64, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect();
    assert_eq!(json_set.len(), 2, "{fdb}");
    assert_eq!(json_set, text_set);
    eprintln!(
        "ctl --json stats: {}",
        &sw.ctl_ok(&["--json", "stats"])[..200]
    );
    sw.stop();
}
