//! DPDK `dpdk-testpmd` with two `net_virtio_user` ports plays two guests: it sends
//! MAC-addressed frames from each port to the other through the switch, in both
//! directions, with the switch as vhost-user server and as client; then testpmd is
//! restarted and traffic must flow again without restarting the switch.

mod common;
use common::*;
use std::time::Duration;

fn run(mode: &str, testpmd_is_server: bool, tag: &str) {
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
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], testpmd_is_server, &format!("{tag}a"));
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
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
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], testpmd_is_server, &format!("{tag}b"));
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let show = sw.ctl("show");
    assert!(
        show.contains("connections=2"),
        "expected a second connection per port:\n{show}"
    );
    let n2 = traffic_round(&sw, &mut tp, 2, || {});
    tp.quit();
    eprintln!("{mode}: {n1} frames before the restart, {n2} after");
    let log = sw.stop();
    assert!(
        !dir.path("vm1.sock").exists() || mode == "client",
        "server socket left behind"
    );
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
