//! Jumbo frames and per-port MTUs against real peers. Two namespaces, one behind a tap
//! port and one behind an af-packet port on a veth pair, all at MTU 9000, ping each
//! other with 8972-byte payloads and Don't Fragment set (iputils `ping -M do`); a
//! third namespace behind a tap port of the default MTU gets none of them, and the
//! switch counts them as `drop_mtu` of that port. Two QEMU guests told MTU 9000 by
//! QEMU (`host_mtu`, which QEMU also sends the switch as `NET_SET_MTU`) ping each other
//! with 8972-byte payloads; their pings to the host's tap port of MTU 1500 are
//! dropped and counted.

mod common;
use common::guest::{images, num, BootOpts, Guest};
use common::netns::{NsDevice, Ping, VethNs};
use common::*;
use std::time::Duration;

fn tap_port(name: &str, iface: &str, mtu: Option<u16>) -> String {
    let mtu = mtu.map(|m| format!("mtu = {m}\n")).unwrap_or_default();
    format!("[[port]]\nname = \"{name}\"\ndriver = \"tap\"\niface = \"{iface}\"\n{mtu}")
}

/// The largest ICMP payload MTU 9000 carries: 9000 - 20 (IPv4) - 8 (ICMP).
const JUMBO_PING: u32 = 8972;

#[test]
fn namespaces_behind_tap_and_af_packet_carry_jumbo_frames() {
    let dir = Scratch::new("jumbo-ns");
    let id = std::process::id() % 100_000;
    let (ta, tc) = (format!("vs{id}ja"), format!("vs{id}jc"));
    let b = VethNs::new("jb", "10.0.8.2/24");
    b.set_mtu(9000);
    let cfg = write_config_ports(
        &dir,
        &(tap_port("ta", &ta, Some(9000))
            + &format!(
                "[[port]]\nname = \"b\"\ndriver = \"af-packet\"\niface = \"{}\"\n",
                b.host
            )
            + &tap_port("tc", &tc, None)),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let show = sw.ctl("show");
    eprintln!("{show}");
    assert!(
        show.contains(&format!("driver=tap iface={ta} mtu=9000"))
            && show.contains(&format!("driver=af-packet iface={} mtu=9000", b.host))
            && show.contains(&format!("driver=tap iface={tc} mtu=1500")),
        "ports should show their MTUs:\n{show}"
    );
    let a = NsDevice::adopt("ja", &ta, "10.0.8.1/24");
    let c = NsDevice::adopt("jc", &tc, "10.0.8.3/24");
    assert_eq!(
        a.mtu(),
        9000,
        "the switch sets a tap port's MTU on its device"
    );
    let jumbo = Ping {
        size: Some(JUMBO_PING),
        dont_fragment: true,
        ..Ping::default()
    };
    assert_eq!(
        a.ping(&b.ip, &jumbo),
        3,
        "tap -> af-packet, 9000-byte IP packets"
    );
    assert_eq!(
        common::netns::ping_in(&b.ns, &a.ip, &jumbo),
        3,
        "af-packet -> tap"
    );
    // The default-MTU port: small frames pass, jumbo frames are dropped and counted.
    assert_eq!(a.ping(&c.ip, &Ping::default()), 3, "tap -> tap at 1500");
    let before = sw.port_stats("tc")["drop_mtu"];
    assert_eq!(
        a.ping(&c.ip, &jumbo),
        0,
        "a jumbo frame crossed an MTU-1500 port"
    );
    let dropped = sw.port_stats("tc")["drop_mtu"] - before;
    eprintln!("tc drop_mtu: {dropped}");
    assert!(dropped >= 3, "tc counted {dropped} MTU drops for 3 pings");
    for p in ["ta", "b"] {
        let s = sw.port_stats(p);
        assert_eq!(
            (s["drop_mtu"], s["drop_oversize"]),
            (0, 0),
            "{p} dropped frames"
        );
    }
    drop((a, c));
    let log = sw.stop();
    assert!(
        log.contains("free_mbufs=8192") && log.contains("free_large_mbufs=512"),
        "buffers lost:\n{log}"
    );
}

#[test]
fn guests_told_mtu_9000_by_qemu_exchange_jumbo_frames() {
    let img = images();
    let dir = Scratch::new("jumbo-qemu");
    let tap = format!("vs{}jh", std::process::id() % 100_000);
    let vhost = |name: &str| {
        format!(
            "[[port]]\nname = \"{name}\"\ndriver = \"vhost-user\"\npath = \"{}\"\nmtu = 9000\n",
            dir.path(&format!("{name}.sock")).display()
        )
    };
    let cfg = write_config_ports(
        &dir,
        &(vhost("vm1") + &vhost("vm2") + &tap_port("host", &tap, None)),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    common::netns::must("ip", &["addr", "add", "10.0.9.3/24", "dev", &tap]);
    let opts = BootOpts {
        host_mtu: Some(9000),
        ..BootOpts::default()
    };
    // A pings B with jumbo frames (B's replies are as long); B pings the host, whose
    // tap port has MTU 1500: after the small pings that find it, nothing arrives.
    let a = Guest::boot_with(
        "guest-a",
        dir.path("vm1.sock"),
        "52:54:00:00:09:0a",
        &format!("vsw.ip=10.0.9.1/24 vsw.role=ping vsw.peer=10.0.9.2 vsw.count=3 vsw.pingsize={JUMBO_PING} vsw.wait=240"),
        &img,
        &opts,
    );
    let b = Guest::boot_with(
        "guest-b",
        dir.path("vm2.sock"),
        "52:54:00:00:09:0b",
        &format!("vsw.ip=10.0.9.2/24 vsw.role=ping vsw.peer=10.0.9.3 vsw.count=3 vsw.pingsize={JUMBO_PING} vsw.wait=240"),
        &img,
        &opts,
    );
    for g in [&a, &b] {
        let up = g.wait_line("VSW-UP", Duration::from_secs(300));
        assert!(
            up.contains("mtu=9000"),
            "QEMU's host_mtu did not reach the guest: {up}"
        );
    }
    let ping_a = a.wait_line("VSW-PING", Duration::from_secs(300));
    let ping_b = b.wait_line("VSW-PING", Duration::from_secs(300));
    let (s1, s2, h) = (
        sw.port_stats("vm1"),
        sw.port_stats("vm2"),
        sw.port_stats("host"),
    );
    eprintln!(
        "A -> B: {ping_a}; B -> host: {ping_b}; host drop_mtu={} vm1 rx_bytes={} vm2 rx_bytes={}",
        h["drop_mtu"], s1["rx_bytes"], s2["rx_bytes"]
    );
    assert_eq!(
        num(&ping_a, "received="),
        3,
        "A -> B with {JUMBO_PING}-byte payloads"
    );
    assert_eq!(
        num(&ping_b, "received="),
        0,
        "jumbo frames reached an MTU-1500 port"
    );
    assert!(
        h["drop_mtu"] >= 3,
        "host port counted {} MTU drops",
        h["drop_mtu"]
    );
    for s in [&s1, &s2] {
        assert_eq!(s["drop_mtu"] + s["drop_oversize"] + s["guest_errors"], 0);
    }
    // Each guest's NET_SET_MTU was acknowledged.
    let log = sw.log();
    for port in ["vm1", "vm2"] {
        assert!(
            log.lines()
                .any(|l| l.contains("frontend set the guest's MTU") && l.contains(port)),
            "no NET_SET_MTU for {port}:\n{log}"
        );
    }
    a.wait_exit(Duration::from_secs(60));
    b.wait_exit(Duration::from_secs(60));
    sw.stop();
}
