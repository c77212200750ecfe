//! VXLAN tunnel ports against Linux's vxlan device as the other end.
//!
//! The underlay is a Linux bridge in a namespace of its own (the data center's L2
//! segment). On it: the switch's af-xdp underlay port (endpoint 10.99.0.1), and two
//! kernel endpoints (10.99.0.2 and .3), each a namespace with a vxlan device
//! (`id 42 dstport 4789 remote 10.99.0.1`) enslaved to a bridge with a veth to an
//! "inner" namespace (192.168.42.2 and .3). Behind the switch, a namespace on an
//! af-xdp port (192.168.42.1). A third kernel endpoint (10.99.0.4) is in no list.

mod common;
use common::netns::{must, ping_in, sh, Ping, VethNs};
use common::*;
use std::time::{Duration, Instant};

const BURST: u64 = 20_000;
const GAP_US: u32 = 20;

/// One kernel VXLAN endpoint: `ns` holds the underlay veth (`ul`) and
/// the vxlan device in a bridge; `inner` is the namespace behind it.
struct KernelVtep {
    ns: String,
    ul: String,
    inner: VethInner,
}

/// The inner namespace of a kernel endpoint: its interface, address and MAC.
struct VethInner {
    ns: String,
    iface: String,
    ip: String,
    mac: String,
}

/// What makes one kernel endpoint.
struct VtepOpts<'a> {
    tag: &'a str,
    /// Its underlay address (in 10.99.0.0/24).
    vtep: &'a str,
    /// The inner namespace's address (in 192.168.42.0/24).
    inner_ip: &'a str,
    /// The underlay bridge's namespace and bridge.
    net_ns: &'a str,
}

fn id() -> u32 {
    std::process::id() % 100_000
}

fn ns_cat(ns: &str, path: &str) -> String {
    must("ip", &["netns", "exec", ns, "cat", path])
        .trim()
        .to_string()
}

fn fresh_ns(name: &str) {
    let _ = sh("ip", &["netns", "del", name]);
    must("ip", &["netns", "add", name]);
    must(
        "ip",
        &[
            "netns",
            "exec",
            name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ],
    );
    must(
        "ip",
        &[
            "netns",
            "exec",
            name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    );
    must("ip", &["-n", name, "link", "set", "lo", "up"]);
}

/// A veth pair `a` (in `ns_a`, or the host's namespace) and `b` (in `ns_b`), both up.
/// Made inside the namespaces, so that their names cannot collide with the host's.
fn veth(a: &str, ns_a: Option<&str>, b: &str, ns_b: &str) {
    if let Some(ns) = ns_a {
        must(
            "ip",
            &[
                "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
            ],
        );
        must("ip", &["-n", ns, "link", "set", a, "up"]);
    } else {
        must(
            "ip",
            &[
                "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
            ],
        );
        let v6 = format!("/proc/sys/net/ipv6/conf/{a}/disable_ipv6");
        let _ = std::fs::write(v6, "1");
        must("ip", &["link", "set", a, "up"]);
    }
    must("ip", &["-n", ns_b, "link", "set", b, "up"]);
}

impl KernelVtep {
    fn new(o: &VtepOpts) -> KernelVtep {
        let ns = format!("vswtest-{}-k{}", id(), o.tag);
        let inner_ns = format!("vswtest-{}-i{}", id(), o.tag);
        fresh_ns(&ns);
        fresh_ns(&inner_ns);
        // The underlay: a veth from the endpoint to the underlay bridge.
        let ul = format!("k{}{}0", id(), o.tag);
        let ul_peer = format!("k{}{}1", id(), o.tag);
        veth(&ul, Some(&ns), &ul_peer, o.net_ns);
        must(
            "ip",
            &["-n", o.net_ns, "link", "set", &ul_peer, "master", "br0"],
        );
        must(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", o.vtep),
                "dev",
                &ul,
            ],
        );
        // The vxlan device in a bridge with a veth to the inner namespace.
        BridgedVxlan {
            ns: &ns,
            local: o.vtep,
            dev: &ul,
            remote: Some("10.99.0.1"),
        }
        .make();
        must("ip", &["-n", &ns, "link", "set", "br42", "up"]);
        let (kv0, kv1) = (
            format!("v{}{}0", id(), o.tag),
            format!("v{}{}1", id(), o.tag),
        );
        veth(&kv0, Some(&ns), &kv1, &inner_ns);
        must("ip", &["-n", &ns, "link", "set", &kv0, "master", "br42"]);
        must("ip", &["-n", &inner_ns, "link", "set", &kv1, "mtu", "1450"]);
        must(
            "ip",
            &[
                "-n",
                &inner_ns,
                "addr",
                "add",
                &format!("{}/24", o.inner_ip),
                "dev",
                &kv1,
            ],
        );
        let mac = ns_cat(&inner_ns, &format!("/sys/class/net/{kv1}/address"));
        KernelVtep {
            ns,
            ul,
            inner: VethInner {
                ns: inner_ns,
                iface: kv1,
                ip: o.inner_ip.into(),
                mac,
            },
        }
    }

    /// Frames the endpoint's underlay interface received.
    fn underlay_rx(&self) -> u64 {
        ns_cat(
            &self.ns,
            &format!("/sys/class/net/{}/statistics/rx_packets", self.ul),
        )
        .parse()
        .unwrap()
    }
}

impl VethInner {
    fn rx_packets(&self) -> u64 {
        ns_cat(
            &self.ns,
            &format!("/sys/class/net/{}/statistics/rx_packets", self.iface),
        )
        .parse()
        .unwrap()
    }
    fn ping(&self, ip: &str, count: u32) -> u32 {
        ping_in(
            &self.ns,
            ip,
            &Ping {
                count,
                ..Ping::default()
            },
        )
    }
}

impl Drop for KernelVtep {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.inner.ns]);
        let _ = sh("ip", &["netns", "del", &self.ns]);
    }
}

/// The underlay segment: a namespace with a bridge, and the switch's veth into it.
struct Underlay {
    ns: String,
    host: String,
}

impl Underlay {
    /// `tag` keeps the names apart from another test's underlay.
    fn new(tag: &str) -> Underlay {
        let ns = format!("vswtest-{}-{tag}net", id());
        fresh_ns(&ns);
        must("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &ns, "link", "set", "br0", "up"]);
        let host = format!("vs{}{tag}u", id());
        let _ = sh("ip", &["link", "del", &host]);
        veth(&host, None, "u1", &ns);
        must("ip", &["-n", &ns, "link", "set", "u1", "master", "br0"]);
        Underlay { ns, host }
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.ns]);
        let _ = sh("ip", &["link", "del", &self.host]);
    }
}

/// `count` frames from `from` (a namespace, its interface) to `dst_mac` by trafgen.
fn trafgen(dir: &Scratch, ns: &str, iface: &str, src_mac: &str, dst_mac: &str, count: u64) -> u64 {
    let bytes = |mac: &str| {
        mac.split(':')
            .map(|b| format!("0x{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let conf = dir.path(&format!("trafgen-{ns}.cfg"));
    std::fs::write(
        &conf,
        format!(
            "{{ {}, {}, 0x88, 0xb5, fill(0x55, 46) }}\n",
            bytes(dst_mac),
            bytes(src_mac)
        ),
    )
    .unwrap();
    let n = count.to_string();
    let gap = format!("{GAP_US}us");
    let o = sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "taskset",
            "-c",
            "0",
            "trafgen",
            "--dev",
            iface,
            "--conf",
            conf.to_str().unwrap(),
            "-n",
            &n,
            "-q",
            "-t",
            &gap,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "trafgen failed:\n{out}");
    out.lines()
        .find(|l| l.contains("packets outgoing"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count from trafgen:\n{out}"))
}

/// Waits until `rx()` has grown by `want` (or 5 s); returns the growth.
fn received(rx: impl Fn() -> u64, before: u64, want: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let got = rx() - before;
        if got >= want || t0.elapsed() > Duration::from_secs(5) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The switch's ports in these tests: an underlay (endpoint 10.99.0.1, its own
/// traffic in VLAN 4000, apart from the overlay), tunnel port `vx42` for VNI 42, and a
/// `local` port to the namespace behind the switch.
struct Ports<'a> {
    /// `driver` and driver keys of the two NIC ports (`af-xdp` in generic mode, or
    /// `af-packet` for jumbo frames).
    nic: &'a str,
    underlay_iface: &'a str,
    local_iface: &'a str,
    /// The tunnel port's own keys beyond `underlay` and `vni`.
    tunnel: &'a str,
}

impl Ports<'_> {
    fn toml(&self) -> String {
        let nic = match self.nic {
            "af-xdp" => "driver = \"af-xdp\"\nxdp_mode = \"generic\"".to_string(),
            other => format!("driver = \"{other}\""),
        };
        format!(
            "[[port]]\nname = \"uplink\"\n{nic}\niface = \"{}\"\ntunnel_ip = \"10.99.0.1/24\"\n\
             vlan_mode = \"access\"\ntag = 4000\n\n\
             [[port]]\nname = \"vx42\"\ndriver = \"vxlan\"\nunderlay = \"uplink\"\nvni = 42\n{}\n\n\
             [[port]]\nname = \"local\"\n{nic}\niface = \"{}\"\n",
            self.underlay_iface, self.tunnel, self.local_iface
        )
    }
}

#[test]
fn a_namespace_behind_the_switch_reaches_linux_vxlan_endpoints() {
    which("trafgen");
    let dir = Scratch::new("vxlan");
    let ul = Underlay::new("s");
    let a = KernelVtep::new(&VtepOpts {
        tag: "a",
        vtep: "10.99.0.2",
        inner_ip: "192.168.42.2",
        net_ns: &ul.ns,
    });
    let b = KernelVtep::new(&VtepOpts {
        tag: "b",
        vtep: "10.99.0.3",
        inner_ip: "192.168.42.3",
        net_ns: &ul.ns,
    });
    let local = VethNs::new("l", "192.168.42.1/24");
    let ports = Ports {
        nic: "af-xdp",
        underlay_iface: &ul.host,
        local_iface: &local.host,
        tunnel: "remotes = [\"10.99.0.2\", \"10.99.0.3\"]",
    };
    let cfg = write_config_ports(&dir, &ports.toml());
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    eprintln!("{}", sw.ctl("show"));

    // Pings both ways, with each kernel endpoint.
    assert_eq!(local.ping(&a.inner.ip, 3), 3, "local -> behind a");
    assert_eq!(a.inner.ping(&local.ip, 3), 3, "behind a -> local");
    assert_eq!(local.ping(&b.inner.ip, 3), 3, "local -> behind b");
    assert_eq!(b.inner.ping(&local.ip, 3), 3, "behind b -> local");
    let show = sw.ctl("show");
    eprintln!("{show}");
    assert!(
        show.contains("neighbours=[10.99.0.2=") && !show.contains("=?"),
        "both next hops resolved:\n{show}"
    );
    // The switch asked for both next hops (the kernels learned its MAC from the
    // requests, so they had no need to ask).
    let st = sw.port_state("uplink");
    assert!(st["arp_requests"] >= 2, "{st:?}");

    // A burst to a's inner MAC, now learned behind a: all of it to a, none to b.
    let (a0, b0) = (a.inner.rx_packets(), b.underlay_rx());
    let u0 = sw.port_state("vx42")["tx_unicast"];
    let sent = trafgen(
        &dir,
        &local.ns,
        &local.inner,
        &local.mac,
        &a.inner.mac,
        BURST,
    );
    assert_eq!(sent, BURST);
    let got = received(|| a.inner.rx_packets(), a0, BURST);
    let b_saw = b.underlay_rx() - b0;
    let unicast = sw.port_state("vx42")["tx_unicast"] - u0;
    eprintln!("unicast burst: trafgen sent {sent}; behind a received {got}; b's underlay saw {b_saw}; vx42 tx_unicast +{unicast}");
    assert!(
        (BURST..=BURST + 20).contains(&got),
        "behind a received {got} of {BURST}\n{}",
        sw.ctl("stats")
    );
    assert!(
        b_saw < 20,
        "b's underlay saw {b_saw} frames of a unicast burst to a"
    );
    assert!(unicast >= BURST);

    // And back: a burst from behind a to local, decapsulated by the switch.
    let l0 = local.rx_packets();
    let sent = trafgen(
        &dir,
        &a.inner.ns,
        &a.inner.iface,
        &a.inner.mac,
        &local.mac,
        BURST,
    );
    let got = received(|| local.rx_packets(), l0, BURST);
    eprintln!("burst back: trafgen behind a sent {sent}; local received {got}");
    assert!(
        (BURST..=BURST + 20).contains(&got),
        "local received {got} of {sent}\n{}",
        sw.ctl("stats")
    );

    // Broadcast is replicated to both endpoints.
    let (a0, b0) = (a.inner.rx_packets(), b.inner.rx_packets());
    let f0 = sw.port_state("vx42")["tx_flooded"];
    let sent = trafgen(
        &dir,
        &local.ns,
        &local.inner,
        &local.mac,
        "ff:ff:ff:ff:ff:ff",
        1000,
    );
    let (ga, gb) = (
        received(|| a.inner.rx_packets(), a0, 1000),
        received(|| b.inner.rx_packets(), b0, 1000),
    );
    let flooded = sw.port_state("vx42")["tx_flooded"] - f0;
    eprintln!(
        "broadcast: sent {sent}; behind a received {ga}, behind b {gb}; vx42 tx_flooded +{flooded}"
    );
    assert!(ga >= 1000 && gb >= 1000 && flooded >= 1000);

    // The kernel forgets the switch's MAC and its own changes: it asks again, and the
    // switch answers and learns the new MAC of its next hop.
    let replies = sw.port_state("uplink")["arp_replies"];
    must(
        "ip",
        &[
            "-n",
            &a.ns,
            "link",
            "set",
            &a.ul,
            "address",
            "02:00:00:99:00:02",
        ],
    );
    must("ip", &["-n", &a.ns, "neigh", "flush", "dev", &a.ul]);
    assert_eq!(
        a.inner.ping(&local.ip, 3),
        3,
        "behind a -> local after a's flush"
    );
    assert_eq!(
        local.ping(&a.inner.ip, 3),
        3,
        "local -> behind a after a's MAC changed"
    );
    let show = sw.ctl("show");
    assert!(
        show.contains("10.99.0.2=02:00:00:99:00:02"),
        "new MAC learned:\n{show}"
    );
    assert!(sw.port_state("uplink")["arp_replies"] > replies);

    // Too big for the underlay: a 1514-byte frame would make a 1550-byte outer packet.
    let m0 = sw.port_stats("vx42")["drop_mtu"];
    let big = Ping {
        count: 3,
        size: Some(1472),
        dont_fragment: true,
    };
    assert_eq!(ping_in(&local.ns, &a.inner.ip, &big), 0);
    let fits = Ping {
        count: 3,
        size: Some(1422),
        dont_fragment: true,
    };
    assert_eq!(
        ping_in(&local.ns, &a.inner.ip, &fits),
        3,
        "1450 bytes of IP fit"
    );
    let m = sw.port_stats("vx42")["drop_mtu"] - m0;
    eprintln!("MTU: 3 pings of 1500 bytes of IP dropped and counted: drop_mtu +{m}");
    assert!(m >= 3, "drop_mtu +{m}");

    // An endpoint not in the list: its frames are dropped and counted.
    let c = KernelVtep::new(&VtepOpts {
        tag: "c",
        vtep: "10.99.0.4",
        inner_ip: "192.168.42.4",
        net_ns: &ul.ns,
    });
    let r0 = sw.port_state("vx42")["drop_unknown_remote"];
    assert_eq!(c.inner.ping(&local.ip, 2), 0);
    let r = sw.port_state("vx42")["drop_unknown_remote"] - r0;
    eprintln!("unknown endpoint 10.99.0.4: drop_unknown_remote +{r}");
    assert!(r >= 2, "drop_unknown_remote +{r}");
    drop(c);

    // At run time: another VNI on the same underlay, which cannot leave while it is
    // in use.
    let out = sw.ctl_ok(&[
        "add-port",
        "vx43",
        "driver=vxlan",
        "underlay=uplink",
        "vni=43",
        "remotes=[\"10.99.0.3\"]",
    ]);
    assert!(out.contains("added port \"vx43\""), "{out}");
    assert!(sw.ctl("show").contains("vxlan vni=43 underlay=uplink"));
    let (code, out) = sw.ctl_try(&["del-port", "uplink"]);
    assert!(
        code != 0 && out.contains("underlay of tunnel port(s)"),
        "{code} {out}"
    );
    sw.ctl_ok(&["del-port", "vx43"]);
    assert_eq!(local.ping(&b.inner.ip, 2), 2, "vni 42 unchanged");

    eprintln!("{}", sw.ctl("stats"));
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
}

/// FRR's zebra and bgpd in a namespace: iBGP (AS 65000) to `peer`, L2VPN EVPN with
/// `advertise-all-vni`. Stopped on drop.
struct Frr {
    ns: String,
    dir: std::path::PathBuf,
}

impl Frr {
    fn start(ns: &str, dir: &Scratch, router_id: &str, peer: &str) -> Frr {
        which("/usr/lib/frr/zebra");
        let d = dir.path(&format!("frr-{ns}"));
        std::fs::create_dir_all(&d).unwrap();
        let run = format!("/var/run/frr/{ns}");
        std::fs::create_dir_all(&run).unwrap();
        let conf = d.join("frr.conf");
        std::fs::write(
            &conf,
            format!(
                "frr defaults datacenter\nhostname {ns}\nrouter bgp 65000\n bgp router-id {router_id}\n \
                 no bgp default ipv4-unicast\n neighbor {peer} remote-as 65000\n \
                 address-family l2vpn evpn\n  neighbor {peer} activate\n  advertise-all-vni\n \
                 exit-address-family\n"
            ),
        )
        .unwrap();
        // The daemons drop to user frr: let it read the config and write its files.
        for p in [d.as_path(), std::path::Path::new(&run)] {
            let _ = sh("chown", &["-R", "frr:frr", p.to_str().unwrap()]);
        }
        let _ = sh("chmod", &["755", dir.0.to_str().unwrap()]);
        for daemon in ["zebra", "bgpd"] {
            let pid = d.join(format!("{daemon}.pid"));
            let log = format!("file:{}", d.join(format!("{daemon}.log")).display());
            must(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    &format!("/usr/lib/frr/{daemon}"),
                    "-N",
                    ns,
                    "-d",
                    "-f",
                    conf.to_str().unwrap(),
                    "-i",
                    pid.to_str().unwrap(),
                    "--log",
                    &log,
                ],
            );
        }
        Frr {
            ns: ns.into(),
            dir: d,
        }
    }

    fn vtysh(&self, cmd: &str) -> String {
        String::from_utf8_lossy(
            &sh(
                "ip",
                &[
                    "netns", "exec", &self.ns, "vtysh", "-N", &self.ns, "-c", cmd,
                ],
            )
            .stdout,
        )
        .into_owned()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for daemon in ["bgpd", "zebra"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{daemon}.pid"))) {
                let _ = sh("kill", &[pid.trim()]);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(format!("/var/run/frr/{}", self.ns));
    }
}

/// A namespace made for the test, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let n = format!("vswtest-{}-{tag}", id());
        fresh_ns(&n);
        Ns(n)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.0]);
    }
}

fn ip_in(ns: &Ns, args: &[&str]) {
    let mut a = vec!["-n", ns.0.as_str()];
    a.extend_from_slice(args);
    must("ip", &a);
}

/// A kernel vxlan device `vx42` for VNI 42 on UDP 4789, in a bridge `br42`.
struct BridgedVxlan<'a> {
    ns: &'a str,
    /// Its local endpoint address and underlay device.
    local: &'a str,
    dev: &'a str,
    /// The one remote endpoint (Linux learns and floods to it); `None`: no remote and
    /// `nolearning`, as an EVPN end has it (FRR installs the remotes).
    remote: Option<&'a str>,
}

impl BridgedVxlan<'_> {
    fn make(&self) {
        let ns = self.ns;
        must("ip", &["-n", ns, "link", "add", "br42", "type", "bridge"]);
        let mut args = vec![
            "-n", ns, "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4789",
            "local", self.local, "dev", self.dev,
        ];
        match self.remote {
            Some(r) => args.extend(["remote", r]),
            None => args.push("nolearning"),
        }
        must("ip", &args);
        must(
            "ip",
            &["-n", ns, "link", "set", "vx42", "master", "br42", "up"],
        );
    }
}

/// The switch as one end of an EVPN-driven VXLAN segment, a kernel vxlan device as the
/// other, each with FRR. The switch's namespace (`a`) holds its underlay and local
/// ports, FRR, and the shadow: a bridge with a vxlan device over an idle veth (FRR
/// programs it, the switch follows it) and a veth port where the switch writes its
/// MACs. The other namespace (`b`) is a kernel EVPN end as FRR's own setups have it.
#[test]
fn frr_evpn_drives_the_tunnel_port_with_no_static_remotes() {
    let dir = Scratch::new("evpn");
    let (a, b, ai, bi) = (Ns::new("ea"), Ns::new("eb"), Ns::new("eai"), Ns::new("ebi"));
    // BGP between the two hosts over a management link; the underlay apart.
    veth("mgA", Some(&a.0), "mgB", &b.0);
    ip_in(&a, &["addr", "add", "10.98.0.1/24", "dev", "mgA"]);
    ip_in(&b, &["addr", "add", "10.98.0.2/24", "dev", "mgB"]);
    veth("ulA", Some(&a.0), "ulB", &b.0);
    ip_in(&b, &["addr", "add", "10.99.0.2/24", "dev", "ulB"]);
    // a: the shadow bridge, vxlan device and MAC port (nothing is ever sent on them).
    veth("shA", Some(&a.0), "shB", &a.0);
    ip_in(&a, &["addr", "add", "10.99.0.1/24", "dev", "shA"]);
    BridgedVxlan {
        ns: &a.0,
        local: "10.99.0.1",
        dev: "shA",
        remote: None,
    }
    .make();
    veth("mcA", Some(&a.0), "mcB", &a.0);
    ip_in(&a, &["link", "set", "mcA", "master", "br42", "up"]);
    ip_in(&a, &["link", "set", "br42", "up"]);
    // a: the switch's local port, to a namespace behind it.
    veth("loA", Some(&a.0), "loB", &ai.0);
    ip_in(&ai, &["addr", "add", "192.168.42.1/24", "dev", "loB"]);
    ip_in(&ai, &["link", "set", "loB", "mtu", "1450"]);
    // b: a kernel EVPN end.
    BridgedVxlan {
        ns: &b.0,
        local: "10.99.0.2",
        dev: "ulB",
        remote: None,
    }
    .make();
    veth("inA", Some(&b.0), "inB", &bi.0);
    ip_in(&b, &["link", "set", "inA", "master", "br42", "up"]);
    ip_in(&b, &["link", "set", "br42", "up"]);
    ip_in(&bi, &["addr", "add", "192.168.42.2/24", "dev", "inB"]);
    ip_in(&bi, &["link", "set", "inB", "mtu", "1450"]);
    let a_mac = ns_cat(&ai.0, "/sys/class/net/loB/address");

    let ports = Ports {
        nic: "af-xdp",
        underlay_iface: "ulA",
        local_iface: "loA",
        tunnel: "evpn_vxlan = \"vx42\"\nevpn_port = \"mcA\"",
    };
    let cfg = write_config_ports(&dir, &ports.toml());
    let sw = Switch::start_in(&cfg, dir.path("ctl.sock"), Some(&a.0));
    let fa = Frr::start(&a.0, &dir, "10.98.0.1", "10.98.0.2");
    let fb = Frr::start(&b.0, &dir, "10.98.0.2", "10.98.0.1");

    // BGP comes up and FRR installs b as the flood list's endpoint: the switch follows.
    let t0 = Instant::now();
    while !sw.ctl("show").contains("remotes=[10.99.0.2]") {
        if t0.elapsed() > Duration::from_secs(60) {
            panic!(
                "no flood list from EVPN\nshow:\n{}\nshadow FDB:\n{}\nBGP:\n{}\n{}\nzebra log:\n{}\nswitch log:\n{}",
                sw.ctl("show"),
                must("bridge", &["-n", &a.0, "fdb", "show", "dev", "vx42"]),
                fa.vtysh("show bgp l2vpn evpn summary"),
                fa.vtysh("show evpn vni"),
                std::fs::read_to_string(fa.dir.join("zebra.log")).unwrap_or_default(),
                sw.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let show = sw.ctl("show");
    eprintln!("{show}");
    eprintln!("{}", fa.vtysh("show evpn vni 42"));

    // A station on b's bridge that sends nothing (a static entry): only BGP can tell
    // the switch where it is.
    let quiet = "02:00:00:00:0b:02";
    must(
        "bridge",
        &[
            "-n", &b.0, "fdb", "add", quiet, "dev", "inA", "master", "static",
        ],
    );
    let show = sw.wait_show("b's quiet MAC from EVPN", Duration::from_secs(30), |s| {
        s.contains(&format!("{quiet}=10.99.0.2"))
    });
    eprintln!("from EVPN, before any traffic:\n{show}");

    assert_eq!(
        ping_in(&ai.0, "192.168.42.2", &Ping::default()),
        3,
        "behind the switch -> behind b"
    );
    assert_eq!(
        ping_in(&bi.0, "192.168.42.1", &Ping::default()),
        3,
        "behind b -> behind the switch"
    );

    // The switch's MAC behind `local` reached b through BGP (a type-2 route).
    let t0 = Instant::now();
    let b_fdb = loop {
        let f = must("bridge", &["-n", &b.0, "fdb", "show", "dev", "vx42"]);
        if f.contains(&format!("{a_mac} dst 10.99.0.1")) || t0.elapsed() > Duration::from_secs(30) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("b's vxlan FDB:\n{b_fdb}");
    assert!(
        b_fdb.contains(&format!("{a_mac} dst 10.99.0.1 self extern_learn")),
        "the switch's MAC not advertised"
    );

    // The station leaves b: BGP withdraws its MAC and the switch forgets it.
    must(
        "bridge",
        &[
            "-n", &b.0, "fdb", "del", quiet, "dev", "inA", "master", "static",
        ],
    );
    let show = sw.wait_show("b's MAC withdrawn", Duration::from_secs(30), |s| {
        !s.contains(&format!("{quiet}=10.99.0.2"))
    });
    assert!(
        sw.log()
            .contains(&format!("EVPN: remote MAC withdrawn port=vx42 mac={quiet}")),
        "{}",
        sw.log()
    );
    eprintln!("after the withdrawal:\n{show}");

    // Nothing of the switch's traffic crossed the shadow devices.
    for (iface, what) in [
        ("vx42", "rx_packets"),
        ("vx42", "tx_packets"),
        ("shA", "tx_packets"),
    ] {
        let n: u64 = ns_cat(&a.0, &format!("/sys/class/net/{iface}/statistics/{what}"))
            .parse()
            .unwrap();
        eprintln!("shadow {iface} {what}={n}");
        assert_eq!(n, 0, "shadow {iface} {what}");
    }
    drop(fb);
    drop(fa);
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
    // The switch took its MACs out of the shadow bridge when it stopped.
    let left = must("bridge", &["-n", &a.0, "fdb", "show", "dev", "mcA"]);
    assert!(!left.contains(&a_mac), "left in the shadow bridge:\n{left}");
}

fn mtu_in(ns: &str, iface: &str, mtu: u32) {
    must(
        "ip",
        &["-n", ns, "link", "set", iface, "mtu", &mtu.to_string()],
    );
}

/// Jumbo frames through a tunnel on a jumbo underlay (af-packet: AF_XDP ports stop at
/// MTU 1902): 8950 bytes of IP inside 9000, and a frame one byte too big dropped.
#[test]
fn a_jumbo_underlay_carries_jumbo_frames_and_drops_what_does_not_fit() {
    let dir = Scratch::new("vxjumbo");
    let ul = Underlay::new("j");
    let a = KernelVtep::new(&VtepOpts {
        tag: "j",
        vtep: "10.99.0.2",
        inner_ip: "192.168.42.2",
        net_ns: &ul.ns,
    });
    let local = VethNs::new("jl", "192.168.42.1/24");
    // The underlay at 9000 everywhere, the overlay at 8950 behind the kernel end.
    must("ip", &["link", "set", &ul.host, "mtu", "9000"]);
    mtu_in(&ul.ns, "u1", 9000);
    mtu_in(&ul.ns, &format!("k{}j1", id()), 9000);
    mtu_in(&a.ns, &a.ul, 9000);
    for i in ["vx42".to_string(), format!("v{}j0", id())] {
        mtu_in(&a.ns, &i, 8950);
    }
    mtu_in(&a.inner.ns, &a.inner.iface, 8950);
    local.set_mtu(9000);
    let ports = Ports {
        nic: "af-packet",
        underlay_iface: &ul.host,
        local_iface: &local.host,
        tunnel: "remotes = [\"10.99.0.2\"]",
    };
    let cfg = write_config_ports(&dir, &ports.toml());
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let show = sw.ctl("show");
    assert!(
        show.contains("vxlan vni=42") && show.contains("mtu=8950"),
        "{show}"
    );
    assert_eq!(local.ping(&a.inner.ip, 3), 3);
    let fits = Ping {
        count: 3,
        size: Some(8922),
        dont_fragment: true,
    };
    assert_eq!(
        ping_in(&local.ns, &a.inner.ip, &fits),
        3,
        "8950 bytes of IP, both ways"
    );
    let m0 = sw.port_stats("vx42")["drop_mtu"];
    let big = Ping {
        count: 3,
        size: Some(8923),
        dont_fragment: true,
    };
    assert_eq!(ping_in(&local.ns, &a.inner.ip, &big), 0);
    let m = sw.port_stats("vx42")["drop_mtu"] - m0;
    eprintln!("jumbo: 8950 bytes of IP crossed both ways; 3 pings of 8951 dropped: drop_mtu +{m}");
    assert!(m >= 3, "drop_mtu +{m}");
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
}
