//! Network namespaces joined to the host by veth pairs: the Linux kernel as the
//! switch's NIC peer. The switch attaches to the host end; the far end, with an IP
//! address, sits in a namespace of its own. Everything is removed on drop.

use super::{which, Scratch};
use std::process::{Command, Output};

/// Runs a command, returning its output; panics if it cannot be started.
pub fn sh(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(prog: &str, args: &[&str]) -> String {
    let o = sh(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A namespace with one veth pair into it.
pub struct VethNs {
    pub ns: String,
    /// The end in the host's namespace (the switch's port).
    pub host: String,
    /// The end inside the namespace.
    pub inner: String,
    pub ip: String,
    pub mac: String,
}

impl VethNs {
    /// `tag` is one short word making the names unique within a test; `cidr` the inner
    /// end's address (e.g. "10.9.0.1/24").
    pub fn new(tag: &str, cidr: &str) -> VethNs {
        VethNs::with_queues(tag, cidr, 1)
    }

    /// As `new`, with `queues` rx and tx queues on each end of the pair.
    pub fn with_queues(tag: &str, cidr: &str, queues: u32) -> VethNs {
        which("ip");
        let id = std::process::id() % 100_000;
        let ns = format!("vswtest-{id}-{tag}");
        let host = format!("vs{id}{tag}0");
        let inner = format!("vs{id}{tag}1");
        assert!(host.len() < 16, "interface name {host} too long");
        let _ = sh("ip", &["netns", "del", &ns]);
        let _ = sh("ip", &["link", "del", &host]);
        must("ip", &["netns", "add", &ns]);
        let q = queues.to_string();
        let (rxq, txq) = ("numrxqueues", "numtxqueues");
        must(
            "ip",
            &[
                "link", "add", &host, rxq, &q, txq, &q, "type", "veth", "peer", "name", &inner,
                rxq, &q, txq, &q,
            ],
        );
        must("ip", &["link", "set", &inner, "netns", &ns]);
        // No IPv6 on the host end either, set before it comes up: the host's kernel
        // would otherwise send MLD reports and router solicitations out of it, into
        // the namespace, where a capture counting frames would see them.
        let v6 = format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6");
        if std::path::Path::new(&v6).exists() {
            std::fs::write(&v6, "1").unwrap_or_else(|e| panic!("{v6}: {e}"));
        }
        must("ip", &["link", "set", &host, "up"]);
        bring_up(&ns, &inner, cidr);
        let mac = must(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "cat",
                &format!("/sys/class/net/{inner}/address"),
            ],
        )
        .trim()
        .to_string();
        VethNs {
            ns,
            host,
            inner,
            ip: cidr.split('/').next().unwrap().to_string(),
            mac,
        }
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.ns];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Frames the inner end has received.
    pub fn rx_packets(&self) -> u64 {
        let o = self.exec(&[
            "cat",
            &format!("/sys/class/net/{}/statistics/rx_packets", self.inner),
        ]);
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    }

    /// Pings `ip` from inside the namespace; returns how many of `count` were answered.
    pub fn ping(&self, ip: &str, count: u32) -> u32 {
        ping_in(
            &self.ns,
            ip,
            &Ping {
                count,
                ..Ping::default()
            },
        )
    }

    /// Sets the MTU of both ends of the pair.
    pub fn set_mtu(&self, mtu: u32) {
        let m = mtu.to_string();
        must("ip", &["link", "set", &self.host, "mtu", &m]);
        must(
            "ip",
            &["-n", &self.ns, "link", "set", &self.inner, "mtu", &m],
        );
    }

    /// Sends `count` Ethernet frames (EtherType 0x88b5, 64 bytes) to `dst_mac` with
    /// trafgen, one every `gap_us` microseconds, pinned to core 0; returns how many
    /// trafgen says it sent.
    pub fn trafgen(&self, dir: &Scratch, dst_mac: &str, count: u64, gap_us: u32) -> u64 {
        self.trafgen_vlan(dir, dst_mac, None, count, gap_us)
    }

    /// As `trafgen`, with an 802.1Q tag carrying `vlan` when given (the frames stay 64
    /// bytes).
    pub fn trafgen_vlan(
        &self,
        dir: &Scratch,
        dst_mac: &str,
        vlan: Option<u16>,
        count: u64,
        gap_us: u32,
    ) -> u64 {
        which("trafgen");
        let bytes = |mac: &str| {
            mac.split(':')
                .map(|b| format!("0x{b}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let conf = dir.path(&format!("trafgen-{}-{}.cfg", self.ns, vlan.unwrap_or(0)));
        std::fs::write(
            &conf,
            format!(
                "{{ {}, {}, {}0x88, 0xb5, fill(0x55, {}) }}\n",
                bytes(dst_mac),
                bytes(&self.mac),
                vlan.map_or(String::new(), |v| format!(
                    "0x81, 0x00, {:#04x}, {:#04x}, ",
                    v >> 8,
                    v & 0xff
                )),
                if vlan.is_some() { 42 } else { 46 }
            ),
        )
        .unwrap();
        self.run_trafgen(&conf, count, &["-t", &format!("{gap_us}us")])
    }

    /// Runs trafgen on the inner end, on core 0, sending `count` frames of `conf`
    /// (`extra`: more trafgen options); returns the count trafgen reports sent.
    pub fn run_trafgen(&self, conf: &std::path::Path, count: u64, extra: &[&str]) -> u64 {
        let count = count.to_string();
        let mut args = vec![
            "taskset",
            "-c",
            "0",
            "trafgen",
            "--dev",
            &self.inner,
            "--conf",
            conf.to_str().unwrap(),
            "-n",
            &count,
            "-q",
        ];
        args.extend_from_slice(extra);
        let o = self.exec(&args);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "trafgen failed:\n{out}");
        out.lines()
            .find(|l| l.contains("packets outgoing"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count from trafgen in {}:\n{out}", self.ns))
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.ns]);
        let _ = sh("ip", &["link", "del", &self.host]);
    }
}

/// How [`ping_in`] pings (iputils ping).
pub struct Ping {
    pub count: u32,
    /// ICMP payload bytes (`-s`); ping's default (56) when `None`.
    pub size: Option<u32>,
    /// Set Don't Fragment and never fragment locally (`-M do`).
    pub dont_fragment: bool,
}

impl Default for Ping {
    fn default() -> Ping {
        Ping {
            count: 3,
            size: None,
            dont_fragment: false,
        }
    }
}

/// Pings `ip` from namespace `ns`; returns how many were answered.
pub fn ping_in(ns: &str, ip: &str, p: &Ping) -> u32 {
    let (count, size) = (p.count.to_string(), p.size.unwrap_or(56).to_string());
    let mut args = vec![
        "netns", "exec", ns, "ping", "-c", &count, "-W", "2", "-i", "0.3",
    ];
    args.extend(["-s", &size]);
    if p.dont_fragment {
        args.extend(["-M", "do"]);
    }
    args.push(ip);
    let o = sh("ip", &args);
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!(
        "[{ns} ping -s {size}{} {ip}] {}",
        if p.dont_fragment { " -M do" } else { "" },
        out.lines().last().unwrap_or("")
    );
    out.lines()
        .find_map(|l| {
            l.split(", ")
                .find(|p| p.ends_with("received"))
                .and_then(|p| p.split(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Brings `iface`, already in namespace `ns`, up with address `cidr`, and the
/// namespace's loopback; only IPv4 in the namespace (no router solicitations or DAD
/// in the counts).
fn bring_up(ns: &str, iface: &str, cidr: &str) {
    must(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ],
    );
    must("ip", &["-n", ns, "link", "set", "lo", "up"]);
    must("ip", &["-n", ns, "addr", "add", cidr, "dev", iface]);
    must("ip", &["-n", ns, "link", "set", iface, "up"]);
}

/// A namespace holding a device the switch made (a tap port's), moved into it after
/// the switch started, with an IPv4 address. The namespace is removed on drop.
pub struct NsDevice {
    pub ns: String,
    pub iface: String,
    pub ip: String,
}

impl NsDevice {
    /// Moves `iface` into a new namespace named after `tag` and gives it `cidr`.
    pub fn adopt(tag: &str, iface: &str, cidr: &str) -> NsDevice {
        let ns = format!("vswtest-{}-{tag}", std::process::id() % 100_000);
        let _ = sh("ip", &["netns", "del", &ns]);
        must("ip", &["netns", "add", &ns]);
        must("ip", &["link", "set", iface, "netns", &ns]);
        bring_up(&ns, iface, cidr);
        NsDevice {
            ns,
            iface: iface.to_string(),
            ip: cidr.split('/').next().unwrap().to_string(),
        }
    }

    pub fn ping(&self, ip: &str, p: &Ping) -> u32 {
        ping_in(&self.ns, ip, p)
    }

    /// The device's MTU, as the namespace's kernel has it.
    pub fn mtu(&self) -> u32 {
        must(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "cat",
                &format!("/sys/class/net/{}/mtu", self.iface),
            ],
        )
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for NsDevice {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.ns]);
    }
}

/// Whether an XDP program is attached to a host interface.
pub fn xdp_attached(iface: &str) -> bool {
    must("ip", &["link", "show", "dev", iface]).contains("xdp")
}

/// The interface's promiscuity count (0 when nobody holds promiscuous mode).
pub fn promiscuity(iface: &str) -> u32 {
    let s = must("ip", &["-d", "link", "show", "dev", iface]);
    let i = s.find("promiscuity ").expect("promiscuity in ip -d link");
    s[i + 12..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
