//! DPDK `dpdk-testpmd` with two `net_virtio_user` ports plays two guests: it sends
//! MAC-addressed frames from each port to the other through the switch, in both
//! directions, with the switch as vhost-user server and as client; then testpmd is
//! restarted and traffic must flow again without restarting the switch.

mod common;
use common::*;
use std::time::Duration;

/// Runs bounded ping-pong traffic (4 bursts of 32 per port kept in flight) for
/// `secs` and checks every counter on both sides. Returns frames moved by the switch.
fn traffic_round(sw: &Switch, tp: &mut Testpmd, secs: u64) -> u64 {
    let before0 = sw.port_stats("vm1");
    let before1 = sw.port_stats("vm2");
    let tp_before = tp.port_stats();
    tp.cmd("start tx_first 4", "tx_first");
    std::thread::sleep(Duration::from_secs(secs));
    let stop = tp.cmd("stop", "Done.");
    // Let the switch drain what testpmd sent last.
    std::thread::sleep(Duration::from_millis(500));
    let tpc = tp.port_stats();
    let s0 = sw.port_stats("vm1");
    let s1 = sw.port_stats("vm2");
    let d = |a: &std::collections::HashMap<String, u64>, b: &std::collections::HashMap<String, u64>, k: &str| a[k] - b[k];

    // testpmd sent no frame it could not queue (TX-dropped), in either direction.
    for i in 0..2 {
        let sect = stop.split(&format!("Forward statistics for port {i}")).nth(1).expect("fwd stats");
        assert_eq!(field(sect, "TX-dropped:"), 0, "testpmd port {i} dropped on tx:\n{stop}");
    }
    // Everything testpmd sent reached the switch.
    let sent0 = tpc[0].tx - tp_before[0].tx;
    let sent1 = tpc[1].tx - tp_before[1].tx;
    assert_eq!(d(&s0, &before0, "rx_packets"), sent0, "switch vm1 rx vs testpmd port 0 tx");
    assert_eq!(d(&s1, &before1, "rx_packets"), sent1, "switch vm2 rx vs testpmd port 1 tx");
    // Two ports: everything from one goes to the other, nothing dropped.
    assert_eq!(d(&s1, &before1, "tx_packets"), sent0, "switch vm2 tx vs vm1 rx");
    assert_eq!(d(&s0, &before0, "tx_packets"), sent1, "switch vm1 tx vs vm2 rx");
    for k in ["drop_tx_full", "drop_tx_down", "drop_oversize", "drop_no_mbuf", "drop_hairpin", "drop_runt", "guest_errors"] {
        assert_eq!(s0[k] + s1[k], before0[k] + before1[k], "switch counted {k}");
    }
    // What testpmd received is what the switch delivered, less at most a ring of
    // frames it had not polled yet when forwarding stopped.
    let got0 = tpc[0].rx - tp_before[0].rx;
    let got1 = tpc[1].rx - tp_before[1].rx;
    let del0 = d(&s0, &before0, "tx_packets");
    let del1 = d(&s1, &before1, "tx_packets");
    assert!(got0 <= del0 && del0 - got0 <= 256, "port 0 received {got0} of {del0} delivered");
    assert!(got1 <= del1 && del1 - got1 <= 256, "port 1 received {got1} of {del1} delivered");
    assert!(sent0 > 1000 && sent1 > 1000, "too little traffic: {sent0} / {sent1}");
    eprintln!(
        "traffic round: testpmd port0 tx={sent0} rx={got0}, port1 tx={sent1} rx={got1}; switch vm1 rx={} tx={}, vm2 rx={} tx={}",
        d(&s0, &before0, "rx_packets"),
        del0,
        d(&s1, &before1, "rx_packets"),
        del1
    );
    // The table learned each MAC on its port.
    let fdb = sw.ctl("fdb");
    assert!(fdb.lines().any(|l| l.starts_with("vm1") && l.contains(MAC0)), "fdb:\n{fdb}");
    assert!(fdb.lines().any(|l| l.starts_with("vm2") && l.contains(MAC1)), "fdb:\n{fdb}");
    sent0 + sent1
}

fn wait_both_up(sw: &Switch) {
    sw.wait_show("both ports up", Duration::from_secs(30), |s| {
        s.lines().filter(|l| l.starts_with("port ") && l.ends_with("up=true")).count() == 2
    });
}

fn run(mode: &str, testpmd_is_server: bool, tag: &str) {
    let dir = Scratch::new(tag);
    let cfg = write_config(
        &dir,
        &[PortSpec { name: "vm1", mode, queues: 1 }, PortSpec { name: "vm2", mode, queues: 1 }],
        "",
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], testpmd_is_server, &format!("{tag}a"));
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let n1 = traffic_round(&sw, &mut tp, 3);
    tp.quit();
    sw.wait_show("ports down after testpmd quit", Duration::from_secs(20), |s| {
        s.lines().filter(|l| l.starts_with("port ") && l.ends_with("up=false")).count() == 2
    });

    // The guest side restarts; the switch keeps running and serves it again.
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], testpmd_is_server, &format!("{tag}b"));
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let show = sw.ctl("show");
    assert!(show.contains("connections=2"), "expected a second connection per port:\n{show}");
    let n2 = traffic_round(&sw, &mut tp, 2);
    tp.quit();
    eprintln!("{mode}: {n1} frames before the restart, {n2} after");
    let log = sw.stop();
    assert!(!dir.path("vm1.sock").exists() || mode == "client", "server socket left behind");
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

#[test]
fn testpmd_switch_as_server() {
    run("server", false, "tps");
}

#[test]
fn testpmd_switch_as_client() {
    run("client", true, "tpc");
}
