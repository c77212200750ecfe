//! NIC ports against the Linux kernel as the real peer: veth pairs whose far ends sit
//! in network namespaces made by the test, the switch attached to the near ends with
//! af-xdp, af-packet and tap ports. The namespaces ping each other through the switch,
//! trafgen in one sends a bounded burst that the other must receive in full, a QEMU
//! guest on vhost-user pings a namespace behind an af-xdp port and back, and a
//! `kill -9` or a failed start leaves no XDP program and no promiscuous mode behind.

mod common;
use common::guest::{images, num, Guest};
use common::netns::{must, promiscuity, sh, xdp_attached, VethNs};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Frames in each trafgen burst, and the gap between them (bounded traffic: the PMD,
/// trafgen and the kernel share two cores).
const BURST: u64 = 20_000;
const GAP_US: u32 = 20;

fn port(name: &str, driver: &str, iface: &str, extra: &str) -> String {
    format!("[[port]]\nname = \"{name}\"\ndriver = \"{driver}\"\niface = \"{iface}\"\n{extra}\n")
}

/// trafgen in `from` sends BURST frames to `to`'s MAC; `to` must receive them all
/// (and at most a few more: ARP), and the switch must count them in and out.
fn burst(dir: &Scratch, sw: &Switch, from: &VethNs, pfrom: &str, to: &VethNs, pto: &str) {
    let rx0 = to.rx_packets();
    let (in0, out0) = (
        sw.port_stats(pfrom)["rx_packets"],
        sw.port_stats(pto)["tx_packets"],
    );
    let sent = from.trafgen(dir, &to.mac, BURST, GAP_US);
    assert_eq!(sent, BURST, "trafgen sent {sent} of {BURST}");
    let t0 = Instant::now();
    let mut got = to.rx_packets() - rx0;
    while got < BURST && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        got = to.rx_packets() - rx0;
    }
    let (sin, sout) = (
        sw.port_stats(pfrom)["rx_packets"] - in0,
        sw.port_stats(pto)["tx_packets"] - out0,
    );
    eprintln!(
        "burst {pfrom} -> {pto}: trafgen sent {sent}, {} received {got}; switch {pfrom} rx {sin}, {pto} tx {sout}",
        to.ns
    );
    assert!(
        (BURST..=BURST + 20).contains(&got),
        "{} received {got} of {BURST} frames\nstats:\n{}",
        to.ns,
        sw.ctl("stats")
    );
    assert!(
        sin >= BURST && sout >= BURST,
        "switch counted rx {sin}, tx {sout}"
    );
}

/// Whether `ctl fdb` lists `mac` on `port` (VLAN 0).
fn fdb_has(fdb: &str, port: &str, mac: &str) -> bool {
    fdb.lines()
        .any(|l| l.split_whitespace().take(3).eq([port, "0", mac]))
}

fn assert_clean(iface: &str) {
    assert!(
        !xdp_attached(iface),
        "an XDP program is still attached to {iface}"
    );
    assert_eq!(promiscuity(iface), 0, "{iface} is still promiscuous");
}

#[test]
fn af_xdp_namespaces_ping_and_burst() {
    let dir = Scratch::new("afxdp");
    // Port a has two queues (two AF_XDP sockets, both in the XSKMAP), port b one.
    let a = VethNs::with_queues("a", "10.71.0.1/24", 2);
    let b = VethNs::new("b", "10.71.0.2/24");
    let cfg = write_config_ports(
        &dir,
        &(port("a", "af-xdp", &a.host, "queues = 2") + &port("b", "af-xdp", &b.host, "")),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    assert!(xdp_attached(&a.host) && xdp_attached(&b.host));
    assert_eq!(promiscuity(&a.host), 1);
    assert_eq!(a.ping(&b.ip, 3), 3, "a -> b");
    assert_eq!(b.ping(&a.ip, 3), 3, "b -> a");
    burst(&dir, &sw, &a, "a", &b, "b");
    burst(&dir, &sw, &b, "b", &a, "a");
    let show = sw.ctl("show");
    eprintln!("{show}");
    assert!(show.contains("driver=af-xdp") && show.contains("kernel_rx_dropped=0"));
    assert!(
        show.contains(&format!("iface={} mtu=1500 link=up queues=2", a.host))
            && show.contains("rxqs [a:0 a:1 b:0]"),
        "both queues of port a should be open and polled:\n{show}"
    );
    let fdb = sw.ctl("fdb");
    assert!(
        fdb_has(&fdb, "a", &a.mac) && fdb_has(&fdb, "b", &b.mac),
        "fdb:\n{fdb}"
    );
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
    assert_clean(&a.host);
    assert_clean(&b.host);
}

#[test]
fn af_packet_tap_and_generic_af_xdp() {
    let dir = Scratch::new("afpacket");
    let a = VethNs::new("c", "10.72.0.1/24");
    let b = VethNs::new("d", "10.72.0.2/24");
    let tap = format!("vs{}t", std::process::id() % 100_000);
    let cfg = write_config_ports(
        &dir,
        &(port("a", "af-packet", &a.host, "")
            + &port(
                "b",
                "af-xdp",
                &b.host,
                "xdp_mode = \"generic\"\nzero_copy = \"off\"",
            )
            + &port("host", "tap", &tap, "")),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    must("ip", &["addr", "add", "10.72.0.3/24", "dev", &tap]);
    let show = sw.ctl("show");
    eprintln!("{show}");
    assert!(show.contains("driver=af-packet") && show.contains("xdp_mode=generic zero_copy=off"));
    assert!(show.contains(&format!("driver=tap iface={tap}")));
    assert_eq!(a.ping(&b.ip, 3), 3, "af-packet -> af-xdp");
    assert_eq!(b.ping(&a.ip, 3), 3, "af-xdp -> af-packet");
    assert_eq!(a.ping("10.72.0.3", 3), 3, "af-packet -> the host over tap");
    assert_eq!(b.ping("10.72.0.3", 3), 3, "af-xdp -> the host over tap");
    burst(&dir, &sw, &a, "a", &b, "b");
    burst(&dir, &sw, &b, "b", &a, "a");
    // 802.1Q-tagged frames cross both drivers with their tag, and are learned on their
    // VLAN: b announces itself on VLAN 100, then a sends it 1000 tagged frames.
    assert_eq!(b.trafgen_vlan(&dir, &a.mac, Some(100), 1, GAP_US), 1);
    let rx0 = b.rx_packets();
    assert_eq!(a.trafgen_vlan(&dir, &b.mac, Some(100), 1000, GAP_US), 1000);
    std::thread::sleep(Duration::from_millis(300));
    let got = b.rx_packets() - rx0;
    let fdb = sw.ctl("fdb");
    eprintln!(
        "VLAN 100: {} received {got} of 1000 tagged frames\n{fdb}",
        b.ns
    );
    assert!((1000..=1010).contains(&got), "{got} of 1000 tagged frames");
    assert!(
        fdb.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["a", "100", a.mac.as_str()]))
            && fdb.lines().any(|l| l
                .split_whitespace()
                .take(3)
                .eq(["b", "100", b.mac.as_str()])),
        "stations not learned on VLAN 100:\n{fdb}"
    );
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
    assert_clean(&a.host);
    assert_clean(&b.host);
    assert!(
        !sh("ip", &["link", "show", "dev", &tap]).status.success(),
        "the tap device outlived the switch"
    );
}

#[test]
fn af_xdp_kill_9_leaves_the_interface_usable() {
    let dir = Scratch::new("kill9");
    let a = VethNs::new("e", "10.74.0.1/24");
    let b = VethNs::new("f", "10.74.0.2/24");
    let cfg = write_config_ports(
        &dir,
        &(port("a", "af-xdp", &a.host, "") + &port("b", "af-xdp", &b.host, "")),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    assert_eq!(a.ping(&b.ip, 2), 2);
    sw.kill9();
    // The kernel detached the program (its bpf link died with the process) and
    // dropped the promiscuous membership (its socket closed).
    assert_clean(&a.host);
    assert_clean(&b.host);
    // The next start attaches again and forwards.
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    assert!(xdp_attached(&a.host));
    assert_eq!(a.ping(&b.ip, 3), 3, "after kill -9 and a restart");
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
    assert_clean(&a.host);
}

/// Runs `vswitch run` (optionally through a wrapper such as setpriv), expecting it
/// to fail; returns its exit code and stderr.
fn run_failing(config: &Path, wrapper: &[&str]) -> (i32, String) {
    let mut cmd = if wrapper.is_empty() {
        Command::new(bin())
    } else {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..]).arg(bin());
        c
    };
    let mut child = cmd
        .args(["run", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("vswitch kept running on a config that must fail");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("exit {:?}: {}", status.code(), err.trim());
    (status.code().unwrap_or(-1), err)
}

#[test]
fn nic_errors_exit_2_and_leave_nothing_attached() {
    let dir = Scratch::new("nicerr");
    let a = VethNs::new("g", "10.75.0.1/24");
    let b = VethNs::new("h", "10.75.0.2/24");

    // An interface that does not exist, for each driver that attaches to one.
    for driver in ["af-xdp", "af-packet"] {
        let cfg = write_config_ports(&dir, &port("x", driver, "vsnosuch0", ""));
        let (code, err) = run_failing(&cfg, &[]);
        assert_eq!(code, 2);
        assert!(
            err.contains("\"vsnosuch0\"") && err.contains("no such interface"),
            "{err}"
        );
    }

    // No permission: an unprivileged user cannot open AF_XDP or packet sockets.
    let unpriv = Scratch::new("nicerr-nobody");
    must("chmod", &["0777", unpriv.0.to_str().unwrap()]);
    let cfg = write_config_ports(&unpriv, &port("a", "af-xdp", &a.host, ""));
    let (code, err) = run_failing(
        &cfg,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("\"{}\"", a.host)) && err.contains("no permission"),
        "{err}"
    );
    assert_clean(&a.host);

    // Another switch already holds the interface's queue: the second one fails, names
    // the interface, and leaves the first one working.
    let cfg = write_config_ports(
        &dir,
        &(port("a", "af-xdp", &a.host, "") + &port("b", "af-xdp", &b.host, "")),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let other = Scratch::new("nicerr-2");
    let cfg2 = write_config_ports(&other, &port("a", "af-xdp", &a.host, ""));
    let (code, err) = run_failing(&cfg2, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("\"{}\"", a.host)) && err.contains("in use by another AF_XDP socket"),
        "{err}"
    );
    assert_eq!(
        promiscuity(&a.host),
        1,
        "the failed start left promiscuity behind"
    );
    assert_eq!(a.ping(&b.ip, 2), 2, "the first switch stopped forwarding");
    sw.stop();
    assert_clean(&a.host);

    // Native XDP on an interface whose driver has none (a bridge): clear error, and
    // the bridge is left as it was.
    let br = format!("vs{}br", std::process::id() % 100_000);
    let _ = sh("ip", &["link", "del", &br]);
    must("ip", &["link", "add", &br, "type", "bridge"]);
    let cfg = write_config_ports(&dir, &port("a", "af-xdp", &br, "xdp_mode = \"native\""));
    let (code, err) = run_failing(&cfg, &[]);
    let clean = !xdp_attached(&br) && promiscuity(&br) == 0;
    let _ = sh("ip", &["link", "del", &br]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("\"{br}\"")) && err.contains("native"),
        "{err}"
    );
    assert!(clean, "the failed start left something on {br}");

    // An MTU above what one UMEM chunk holds: refused before anything is attached,
    // naming the limit and the way out.
    must("ip", &["link", "set", &b.host, "mtu", "9000"]);
    let cfg = write_config_ports(&dir, &port("b", "af-xdp", &b.host, ""));
    let (code, err) = run_failing(&cfg, &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "\"{}\": MTU 9000 is more than an af-xdp port carries (1902",
            b.host
        )) && err.contains("af-packet"),
        "{err}"
    );
    assert_clean(&b.host);
}

#[test]
fn qemu_guest_and_namespace_over_af_xdp() {
    let img = images();
    let dir = Scratch::new("guestxdp");
    let ns = VethNs::new("q", "10.76.0.1/24");
    let cfg = write_config_ports(
        &dir,
        &(format!(
            "[[port]]\nname = \"vm1\"\ndriver = \"vhost-user\"\npath = \"{}\"\n\n",
            dir.path("vm1.sock").display()
        ) + &port("nic", "af-xdp", &ns.host, "")),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    // The guest pings the namespace, then stays up (sink role) to be pinged back.
    let g = Guest::boot(
        "guest",
        dir.path("vm1.sock"),
        "52:54:00:00:00:1a",
        "vsw.ip=10.76.0.10/24 vsw.role=sink vsw.peer=10.76.0.1 vsw.secs=120 vsw.wait=240",
        &img,
    );
    let ping = g.wait_line("VSW-PING", Duration::from_secs(300));
    assert_eq!(num(&ping, "received="), 3, "guest -> namespace: {ping}");
    g.wait_line("VSW-READY", Duration::from_secs(30));
    assert_eq!(ns.ping("10.76.0.10", 3), 3, "namespace -> guest");
    let fdb = sw.ctl("fdb");
    assert!(
        fdb_has(&fdb, "vm1", "52:54:00:00:00:1a") && fdb_has(&fdb, "nic", &ns.mac),
        "fdb:\n{fdb}"
    );
    eprintln!("guest: {ping}; namespace pinged the guest 3/3");
    drop(g);
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
    assert_clean(&ns.host);
}
