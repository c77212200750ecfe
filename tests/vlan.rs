//! VLAN modes end to end, with the Linux kernel as the peer of every port: each switch
//! port is an af-packet port on a veth pair whose far end sits in a namespace of its
//! own. trafgen in one namespace writes whole frames (802.1Q tag included); tcpdump in
//! every namespace records what arrives, with the tag (the receiving kernel moves it
//! into metadata; tcpdump reads it back from there). Each step sends a few frames from
//! one port and checks exactly which namespaces got how many, tagged how, against the
//! switch's own counters (`rx_packets`, `tx_packets`, `tx_flood`, `drop_vlan`). IPv6 is
//! off in the namespaces and on the host ends, so the kernel sends nothing of its own
//! and the counts are exact.

mod common;
use common::netns::VethNs;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BCAST: &str = "ff:ff:ff:ff:ff:ff";
/// Stations, by the port they send from (the frames are written whole: any source).
const MAC_ACC: &str = "02:00:00:00:0a:01";
const MAC_TRUNK: &str = "02:00:00:00:0b:01";
const MAC_NU: &str = "02:00:00:00:0c:01";
const MAC_NT: &str = "02:00:00:00:0d:01";
/// A station the switch must not learn (its frames are all refused).
const MAC_ROGUE: &str = "02:00:00:00:0e:01";
/// One station seen in two VLANs, behind two ports.
const MAC_TWICE: &str = "02:00:00:00:0f:01";

/// The ports of the main lab.
const ACC: &str = "acc";
const TRUNK: &str = "trunk";
const NU: &str = "nu";
const NT: &str = "nt";

/// The main lab: an access port of VLAN 10, a trunk of VLANs 10 and 20, and a
/// native-untagged and a native-tagged port whose native VLAN is 20 and which trunk
/// VLAN 10 as well.
const MAIN: &[LabPort] = &[
    LabPort {
        name: ACC,
        vlan_keys: "vlan_mode = \"access\"\ntag = 10",
    },
    LabPort {
        name: TRUNK,
        vlan_keys: "trunks = [10, 20]",
    },
    LabPort {
        name: NU,
        vlan_keys: "vlan_mode = \"native-untagged\"\ntag = 20\ntrunks = [10]",
    },
    LabPort {
        name: NT,
        vlan_keys: "vlan_mode = \"native-tagged\"\ntag = 20\ntrunks = [10]",
    },
];

/// Time for stray frames to show up after the expected ones have.
const SETTLE: Duration = Duration::from_millis(300);

/// One port of a lab.
struct LabPort {
    name: &'static str,
    /// Its `vlan_mode`, `tag` and `trunks` keys (TOML lines; empty: a plain trunk).
    vlan_keys: &'static str,
}

/// What to build: the ports, and a short word that keeps this test's namespaces and
/// interfaces apart from another's.
struct LabSpec<'a> {
    tag: &'a str,
    ports: &'a [LabPort],
}

/// An 802.1Q tag.
#[derive(Clone, Copy, Debug)]
struct Tag {
    vid: u16,
    /// Priority code point, 0..=7.
    pcp: u8,
}

impl Tag {
    fn vlan(vid: u16) -> Option<Tag> {
        Some(Tag { vid, pcp: 0 })
    }
}

/// A 60-byte Ethernet frame of EtherType 0x88b5 (local experimental), tagged or not.
#[derive(Clone, Copy, Debug)]
struct Frame {
    dst: &'static str,
    src: &'static str,
    tag: Option<Tag>,
}

/// How a frame leaves a port, as the namespace behind it sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Untagged,
    Tagged(u16),
}

/// A port a step's frames must reach, and how.
struct Out<'a> {
    port: &'a str,
    wire: Wire,
}

/// What the switch does with a step's frames.
enum Fate<'a> {
    /// Flooded in their VLAN: every one reaches exactly these ports (none: no other
    /// port carries the VLAN; that is not a drop) and no other.
    Flood(&'a [Out<'a>]),
    /// Sent to the one port their destination was learned on (in their VLAN).
    Unicast(Out<'a>),
    /// Refused by the VLAN mode of the port they came in on: counted there as
    /// `drop_vlan`, seen nowhere, and their source is not learned.
    Refused,
}

/// One step: `count` copies of `frame` sent into port `from`, and what must become of them.
struct Step<'a> {
    what: &'a str,
    from: &'a str,
    frame: Frame,
    count: u64,
    fate: Fate<'a>,
}

/// A frame as tcpdump showed it.
#[derive(Clone, Debug)]
struct Seen {
    src: String,
    dst: String,
    /// VLAN id and priority of its 802.1Q tag.
    tag: Option<(u16, u8)>,
    line: String,
}

/// Reads one line of `tcpdump -e -n -t`, e.g.
/// `02:00:00:00:0a:01 > ff:ff:ff:ff:ff:ff, ethertype 802.1Q (0x8100), length 64: vlan 10, p 0, ethertype ...`.
/// A line it cannot read still counts as a frame (with empty fields).
fn parse_tcpdump(line: &str) -> Seen {
    let mut words = line.split_whitespace();
    let (src, arrow, dst) = (words.next(), words.next(), words.next());
    let (src, dst) = match (src, arrow, dst) {
        (Some(s), Some(">"), Some(d)) => (s.to_string(), d.trim_end_matches(',').to_string()),
        _ => (String::new(), String::new()),
    };
    let tag = line.split_once(": vlan ").and_then(|(_, rest)| {
        let vid = rest.split(',').next()?.trim().parse().ok()?;
        let pcp = rest
            .split_once(", p ")?
            .1
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        Some((vid, pcp))
    });
    Seen {
        src,
        dst,
        tag,
        line: line.to_string(),
    }
}

/// tcpdump on a namespace's end of its veth pair: every frame that end receives.
struct Capture {
    child: Child,
    frames: Arc<Mutex<Vec<Seen>>>,
}

impl Capture {
    fn start(net: &VethNs) -> Capture {
        which("tcpdump");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.ns, "tcpdump", "-l", "-e", "-n", "-t"])
            .args(["-Q", "in", "-i", &net.inner])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let f = frames.clone();
        std::thread::spawn(move || {
            // Frame lines start at the margin; the payload's hex dump is indented.
            for line in out.lines().map_while(Result::ok) {
                if !line.starts_with(char::is_whitespace) && !line.is_empty() {
                    f.lock().unwrap().push(parse_tcpdump(&line));
                }
            }
        });
        let err = Arc::new(Mutex::new(String::new()));
        let e = err.clone();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let cap = Capture { child, frames };
        // tcpdump says so once its socket is open: nothing after that is missed.
        let t0 = Instant::now();
        while !err.lock().unwrap().contains("listening on") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "tcpdump in {} did not start: {}",
                net.ns,
                err.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cap
    }

    fn len(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    fn since(&self, from: usize) -> Vec<Seen> {
        self.frames.lock().unwrap()[from..].to_vec()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every port's counters from one `ctl stats`.
type Stats = BTreeMap<String, BTreeMap<String, u64>>;

fn stats(sw: &Switch) -> Stats {
    sw.ctl("stats")
        .lines()
        .filter_map(|l| l.strip_prefix("port "))
        .filter_map(|l| l.split_once(": "))
        .map(|(name, kvs)| {
            let kv = kvs
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
                .collect();
            (name.to_string(), kv)
        })
        .collect()
}

/// A forwarding table entry as `ctl fdb` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    port: String,
    vlan: u16,
    mac: String,
}

/// Builds an expected table entry.
struct Learned<'a> {
    port: &'a str,
    vlan: u16,
    mac: &'a str,
}

/// The switch under test, its ports' namespaces and a capture in each. Dropped in
/// this order: captures, switch, namespaces (with their veths), scratch directory.
struct Lab {
    caps: BTreeMap<String, Capture>,
    sw: Option<Switch>,
    nets: BTreeMap<String, VethNs>,
    dir: Scratch,
}

impl Lab {
    fn new(spec: LabSpec) -> Lab {
        which("trafgen");
        let dir = Scratch::new(&format!("vlan-{}", spec.tag));
        let mut nets = BTreeMap::new();
        let mut toml = String::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let net = VethNs::new(
                &format!("{}{}", spec.tag, p.name),
                &format!("10.78.{i}.1/24"),
            );
            toml += &format!(
                "[[port]]\nname = \"{}\"\ndriver = \"af-packet\"\niface = \"{}\"\n{}\n\n",
                p.name, net.host, p.vlan_keys
            );
            nets.insert(p.name.to_string(), net);
        }
        let cfg = write_config_ports(&dir, &toml);
        let sw = Switch::start(&cfg, dir.path("ctl.sock"));
        let caps = nets
            .iter()
            .map(|(name, net)| (name.clone(), Capture::start(net)))
            .collect();
        Lab {
            caps,
            sw: Some(sw),
            nets,
            dir,
        }
    }

    fn sw(&self) -> &Switch {
        self.sw.as_ref().unwrap()
    }

    /// Sends `count` copies of `frame` from the namespace behind `port` with trafgen.
    fn send(&self, port: &str, frame: Frame, count: u64) {
        let net = &self.nets[port];
        let bytes = |mac: &str| {
            mac.split(':')
                .map(|b| format!("0x{b}, "))
                .collect::<String>()
        };
        let (tag, fill) = match frame.tag {
            Some(t) => {
                let tci = u16::from(t.pcp) << 13 | t.vid;
                (
                    format!("0x81, 0x00, {:#04x}, {:#04x}, ", tci >> 8, tci & 0xff),
                    42,
                )
            }
            None => (String::new(), 46),
        };
        let conf = self.dir.path(&format!("{port}.trafgen"));
        std::fs::write(
            &conf,
            format!(
                "{{ {}{}{tag}0x88, 0xb5, fill(0x55, {fill}) }}\n",
                bytes(frame.dst),
                bytes(frame.src)
            ),
        )
        .unwrap();
        let sent = net.run_trafgen(&conf, count, &["--cpus", "1"]);
        assert_eq!(sent, count, "trafgen in {}", net.ns);
    }

    /// Runs a step and checks everything about it: what each namespace received (how
    /// many, from and to whom, with which tag and priority) and the switch's counters
    /// of every port.
    fn step(&self, s: Step) {
        let before = stats(self.sw());
        let marks: BTreeMap<&str, usize> = self
            .caps
            .iter()
            .map(|(n, c)| (n.as_str(), c.len()))
            .collect();
        self.send(s.from, s.frame, s.count);
        // Wait until the switch has taken the frames in and each namespace has seen
        // what the switch says it sent there; then a while longer for strays.
        let delta = |now: &Stats, port: &str, k: &str| now[port][k] - before[port][k];
        let t0 = Instant::now();
        loop {
            let now = stats(self.sw());
            let done = delta(&now, s.from, "rx_packets") >= s.count
                && self.caps.iter().all(|(n, c)| {
                    (c.len() - marks[n.as_str()]) as u64 >= delta(&now, n, "tx_packets")
                });
            if done || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(SETTLE);
        let after = stats(self.sw());
        let seen: BTreeMap<&str, Vec<Seen>> = self
            .caps
            .iter()
            .map(|(n, c)| (n.as_str(), c.since(marks[n.as_str()])))
            .collect();

        let want: BTreeMap<&str, Wire> = match &s.fate {
            Fate::Flood(outs) => outs.iter().map(|o| (o.port, o.wire)).collect(),
            Fate::Unicast(o) => [(o.port, o.wire)].into(),
            Fate::Refused => BTreeMap::new(),
        };
        for port in want.keys().chain([&s.from]) {
            assert!(self.caps.contains_key(*port), "no port {port} in this lab");
        }
        let flood = matches!(s.fate, Fate::Flood(_));
        let sent_tag = match s.frame.tag {
            Some(t) => format!("tagged {} p {}", t.vid, t.pcp),
            None => "untagged".to_string(),
        };
        let mut line = format!(
            "vlan step {:?}: {} sent {} {sent_tag} {} > {} | tcpdump:",
            s.what, s.from, s.count, s.frame.src, s.frame.dst
        );
        for (n, v) in &seen {
            let tags: BTreeSet<String> = v
                .iter()
                .map(|f| match f.tag {
                    Some((vid, p)) => format!("vlan {vid} p {p}"),
                    None => "untagged".to_string(),
                })
                .collect();
            let tags: Vec<String> = tags.into_iter().collect();
            line += &format!(" {n}={}", v.len());
            if !v.is_empty() {
                line += &format!(" ({})", tags.join(", "));
            }
        }
        line += " | switch:";
        for n in seen.keys() {
            line += &format!(
                " {n} rx={} tx={} tx_flood={} drop_vlan={};",
                delta(&after, n, "rx_packets"),
                delta(&after, n, "tx_packets"),
                delta(&after, n, "tx_flood"),
                delta(&after, n, "drop_vlan")
            );
        }
        eprintln!("{line}");

        let ctx = || format!("step {:?}:\n{line}\n{}", s.what, self.sw().ctl("stats"));
        assert_eq!(
            delta(&after, s.from, "rx_packets"),
            s.count,
            "{} did not take in every frame; {}",
            s.from,
            ctx()
        );
        for (&port, got) in &seen {
            let n = if want.contains_key(port) { s.count } else { 0 };
            let frames: Vec<&str> = got.iter().map(|f| f.line.as_str()).collect();
            assert_eq!(
                got.len() as u64,
                n,
                "frames seen behind {port}: {frames:#?}; {}",
                ctx()
            );
            assert_eq!(delta(&after, port, "tx_packets"), n, "{port} tx; {}", ctx());
            assert_eq!(
                delta(&after, port, "tx_flood"),
                if flood { n } else { 0 },
                "{port} tx_flood; {}",
                ctx()
            );
            let refused = if matches!(s.fate, Fate::Refused) && port == s.from {
                s.count
            } else {
                0
            };
            assert_eq!(
                delta(&after, port, "drop_vlan"),
                refused,
                "{port} drop_vlan; {}",
                ctx()
            );
            // Every other way of losing a frame stays at 0.
            for (k, v) in &after[port] {
                if (k.starts_with("drop_") && k != "drop_vlan") || k == "learn_refused" {
                    assert_eq!(*v, before[port][k], "{port} {k}; {}", ctx());
                }
            }
            let Some(&wire) = want.get(port) else {
                continue;
            };
            // A pushed tag has priority 0; a rewritten one keeps the frame's.
            let tag = match wire {
                Wire::Untagged => None,
                Wire::Tagged(v) => Some((v, s.frame.tag.map_or(0, |t| t.pcp))),
            };
            for f in got {
                assert!(
                    f.src == s.frame.src && f.dst == s.frame.dst && f.tag == tag,
                    "behind {port} expected {} > {} with tag {tag:?}, saw: {}; {}",
                    s.frame.src,
                    s.frame.dst,
                    f.line,
                    ctx()
                );
            }
        }
    }

    /// Checks that `ctl fdb` lists exactly these entries.
    fn assert_fdb(&self, want: &[Learned]) {
        let fdb = self.sw().ctl("fdb");
        let got: BTreeSet<Entry> = fdb
            .lines()
            .skip(1)
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(w.len(), 4, "fdb line {l:?}");
                Entry {
                    port: w[0].to_string(),
                    vlan: w[1].parse().unwrap(),
                    mac: w[2].to_string(),
                }
            })
            .collect();
        let want: BTreeSet<Entry> = want
            .iter()
            .map(|l| Entry {
                port: l.port.to_string(),
                vlan: l.vlan,
                mac: l.mac.to_string(),
            })
            .collect();
        eprintln!("vlan fdb:\n{}", fdb.trim_end());
        assert_eq!(got, want, "ctl fdb:\n{fdb}");
    }

    /// Stops the switch (it must stop cleanly, every mbuf back in the pool).
    fn finish(mut self) {
        self.caps.clear();
        let log = self.sw.take().unwrap().stop();
        assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
    }
}

fn out(port: &str, wire: Wire) -> Out<'_> {
    Out { port, wire }
}

#[test]
fn access_and_trunk_ports() {
    let lab = Lab::new(LabSpec {
        tag: "a",
        ports: MAIN,
    });
    use Wire::*;
    lab.step(Step {
        what: "untagged into the access port: VLAN 10, tagged 10 on the trunks",
        from: ACC,
        frame: Frame {
            dst: BCAST,
            src: MAC_ACC,
            tag: None,
        },
        count: 3,
        fate: Fate::Flood(&[
            out(TRUNK, Tagged(10)),
            out(NU, Tagged(10)),
            out(NT, Tagged(10)),
        ]),
    });
    lab.step(Step {
        what: "VLAN 10 from the trunk: untagged out of the access port",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_TRUNK,
            tag: Tag::vlan(10),
        },
        count: 3,
        fate: Fate::Flood(&[out(ACC, Untagged), out(NU, Tagged(10)), out(NT, Tagged(10))]),
    });
    lab.step(Step {
        what: "VLAN 10 from the trunk to the learned access station",
        from: TRUNK,
        frame: Frame {
            dst: MAC_ACC,
            src: MAC_TRUNK,
            tag: Tag::vlan(10),
        },
        count: 2,
        fate: Fate::Unicast(out(ACC, Untagged)),
    });
    lab.step(Step {
        what: "the access station to the learned trunk station",
        from: ACC,
        frame: Frame {
            dst: MAC_TRUNK,
            src: MAC_ACC,
            tag: None,
        },
        count: 2,
        fate: Fate::Unicast(out(TRUNK, Tagged(10))),
    });
    lab.step(Step {
        what: "tagged (its own VLAN) into the access port: refused",
        from: ACC,
        frame: Frame {
            dst: BCAST,
            src: MAC_ROGUE,
            tag: Tag::vlan(10),
        },
        count: 2,
        fate: Fate::Refused,
    });
    lab.step(Step {
        what: "tagged (another VLAN) into the access port: refused",
        from: ACC,
        frame: Frame {
            dst: MAC_TRUNK,
            src: MAC_ROGUE,
            tag: Tag::vlan(20),
        },
        count: 1,
        fate: Fate::Refused,
    });
    lab.step(Step {
        what: "priority-tagged into the access port: VLAN 10, the priority kept",
        from: ACC,
        frame: Frame {
            dst: BCAST,
            src: MAC_ACC,
            tag: Some(Tag { vid: 0, pcp: 5 }),
        },
        count: 1,
        fate: Fate::Flood(&[
            out(TRUNK, Tagged(10)),
            out(NU, Tagged(10)),
            out(NT, Tagged(10)),
        ]),
    });
    lab.step(Step {
        what: "VLAN 30 into the trunk of 10 and 20: refused",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_ROGUE,
            tag: Tag::vlan(30),
        },
        count: 2,
        fate: Fate::Refused,
    });
    lab.step(Step {
        what: "untagged (VLAN 0) into the trunk of 10 and 20: refused",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_ROGUE,
            tag: None,
        },
        count: 1,
        fate: Fate::Refused,
    });
    lab.step(Step {
        what: "VLAN 20 from the trunk: flooded in VLAN 20 only, not to the access port",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_TRUNK,
            tag: Tag::vlan(20),
        },
        count: 3,
        fate: Fate::Flood(&[out(NU, Untagged), out(NT, Tagged(20))]),
    });
    // Refused frames taught the table nothing: no MAC_ROGUE.
    lab.assert_fdb(&[
        Learned {
            port: ACC,
            vlan: 10,
            mac: MAC_ACC,
        },
        Learned {
            port: TRUNK,
            vlan: 10,
            mac: MAC_TRUNK,
        },
        Learned {
            port: TRUNK,
            vlan: 20,
            mac: MAC_TRUNK,
        },
    ]);
    lab.finish();
}

#[test]
fn native_tagged_and_native_untagged_ports() {
    let lab = Lab::new(LabSpec {
        tag: "n",
        ports: MAIN,
    });
    use Wire::*;
    lab.step(Step {
        what: "untagged into native-untagged: VLAN 20",
        from: NU,
        frame: Frame {
            dst: BCAST,
            src: MAC_NU,
            tag: None,
        },
        count: 3,
        fate: Fate::Flood(&[out(TRUNK, Tagged(20)), out(NT, Tagged(20))]),
    });
    lab.step(Step {
        what: "untagged into native-tagged: VLAN 20",
        from: NT,
        frame: Frame {
            dst: BCAST,
            src: MAC_NT,
            tag: None,
        },
        count: 3,
        fate: Fate::Flood(&[out(TRUNK, Tagged(20)), out(NU, Untagged)]),
    });
    lab.step(Step {
        what: "VLAN 20 from the trunk: untagged on native-untagged, tagged on native-tagged",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_TRUNK,
            tag: Tag::vlan(20),
        },
        count: 3,
        fate: Fate::Flood(&[out(NU, Untagged), out(NT, Tagged(20))]),
    });
    lab.step(Step {
        what: "VLAN 20 from the trunk to the native-untagged station",
        from: TRUNK,
        frame: Frame {
            dst: MAC_NU,
            src: MAC_TRUNK,
            tag: Tag::vlan(20),
        },
        count: 2,
        fate: Fate::Unicast(out(NU, Untagged)),
    });
    lab.step(Step {
        what: "VLAN 20 from the trunk to the native-tagged station",
        from: TRUNK,
        frame: Frame {
            dst: MAC_NT,
            src: MAC_TRUNK,
            tag: Tag::vlan(20),
        },
        count: 2,
        fate: Fate::Unicast(out(NT, Tagged(20))),
    });
    lab.step(Step {
        what: "the native VLAN tagged into native-untagged: VLAN 20",
        from: NU,
        frame: Frame {
            dst: BCAST,
            src: MAC_NU,
            tag: Tag::vlan(20),
        },
        count: 2,
        fate: Fate::Flood(&[out(TRUNK, Tagged(20)), out(NT, Tagged(20))]),
    });
    lab.step(Step {
        what: "a trunked VLAN (10) into native-tagged: tagged out of native-untagged too",
        from: NT,
        frame: Frame {
            dst: BCAST,
            src: MAC_NT,
            tag: Tag::vlan(10),
        },
        count: 2,
        fate: Fate::Flood(&[
            out(ACC, Untagged),
            out(TRUNK, Tagged(10)),
            out(NU, Tagged(10)),
        ]),
    });
    lab.step(Step {
        what: "VLAN 30 into native-untagged: refused",
        from: NU,
        frame: Frame {
            dst: BCAST,
            src: MAC_ROGUE,
            tag: Tag::vlan(30),
        },
        count: 2,
        fate: Fate::Refused,
    });
    lab.step(Step {
        what: "VLAN 30 into native-tagged: refused",
        from: NT,
        frame: Frame {
            dst: BCAST,
            src: MAC_ROGUE,
            tag: Tag::vlan(30),
        },
        count: 2,
        fate: Fate::Refused,
    });
    lab.assert_fdb(&[
        Learned {
            port: NU,
            vlan: 20,
            mac: MAC_NU,
        },
        Learned {
            port: NT,
            vlan: 20,
            mac: MAC_NT,
        },
        Learned {
            port: TRUNK,
            vlan: 20,
            mac: MAC_TRUNK,
        },
        Learned {
            port: NT,
            vlan: 10,
            mac: MAC_NT,
        },
    ]);
    lab.finish();
}

#[test]
fn forwarding_table_learns_per_vlan() {
    let lab = Lab::new(LabSpec {
        tag: "f",
        ports: MAIN,
    });
    use Wire::*;
    // One station address in VLAN 10 behind the trunk and in VLAN 20 behind the
    // native-untagged port: two entries, neither moves the other.
    lab.step(Step {
        what: "MAC_TWICE in VLAN 10, from the trunk",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_TWICE,
            tag: Tag::vlan(10),
        },
        count: 1,
        fate: Fate::Flood(&[out(ACC, Untagged), out(NU, Tagged(10)), out(NT, Tagged(10))]),
    });
    lab.step(Step {
        what: "MAC_TWICE in VLAN 20, from native-untagged",
        from: NU,
        frame: Frame {
            dst: BCAST,
            src: MAC_TWICE,
            tag: None,
        },
        count: 1,
        fate: Fate::Flood(&[out(TRUNK, Tagged(20)), out(NT, Tagged(20))]),
    });
    lab.assert_fdb(&[
        Learned {
            port: TRUNK,
            vlan: 10,
            mac: MAC_TWICE,
        },
        Learned {
            port: NU,
            vlan: 20,
            mac: MAC_TWICE,
        },
    ]);
    lab.step(Step {
        what: "to MAC_TWICE in VLAN 10: the trunk only",
        from: ACC,
        frame: Frame {
            dst: MAC_TWICE,
            src: MAC_ACC,
            tag: None,
        },
        count: 2,
        fate: Fate::Unicast(out(TRUNK, Tagged(10))),
    });
    lab.step(Step {
        what: "to MAC_TWICE in VLAN 20: native-untagged only",
        from: NT,
        frame: Frame {
            dst: MAC_TWICE,
            src: MAC_NT,
            tag: None,
        },
        count: 2,
        fate: Fate::Unicast(out(NU, Untagged)),
    });
    lab.step(Step {
        what: "to the access station in VLAN 20, where it is unknown: flooded in VLAN 20",
        from: TRUNK,
        frame: Frame {
            dst: MAC_ACC,
            src: MAC_TRUNK,
            tag: Tag::vlan(20),
        },
        count: 2,
        fate: Fate::Flood(&[out(NU, Untagged), out(NT, Tagged(20))]),
    });
    lab.assert_fdb(&[
        Learned {
            port: ACC,
            vlan: 10,
            mac: MAC_ACC,
        },
        Learned {
            port: TRUNK,
            vlan: 10,
            mac: MAC_TWICE,
        },
        Learned {
            port: NU,
            vlan: 20,
            mac: MAC_TWICE,
        },
        Learned {
            port: NT,
            vlan: 20,
            mac: MAC_NT,
        },
        Learned {
            port: TRUNK,
            vlan: 20,
            mac: MAC_TRUNK,
        },
    ]);
    lab.finish();
}

#[test]
fn native_ports_of_every_vlan_do_not_carry_vlan_0() {
    // As in Open vSwitch, a native port trunks every VLAN when `trunks` is left out,
    // except VLAN 0: its untagged frames are the native VLAN's, so VLAN 0's frames
    // (untagged on a plain trunk) must not leave it untagged.
    const TRUNK2: &str = "trunk2";
    let lab = Lab::new(LabSpec {
        tag: "z",
        ports: &[
            LabPort {
                name: TRUNK,
                vlan_keys: "",
            },
            LabPort {
                name: TRUNK2,
                vlan_keys: "",
            },
            LabPort {
                name: NU,
                vlan_keys: "vlan_mode = \"native-untagged\"\ntag = 20",
            },
            LabPort {
                name: NT,
                vlan_keys: "vlan_mode = \"native-tagged\"\ntag = 20",
            },
            LabPort {
                name: ACC,
                vlan_keys: "vlan_mode = \"access\"\ntag = 10",
            },
        ],
    });
    use Wire::*;
    lab.step(Step {
        what: "VLAN 0 (untagged) from a plain trunk: the other plain trunk only",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_TRUNK,
            tag: None,
        },
        count: 2,
        fate: Fate::Flood(&[out(TRUNK2, Untagged)]),
    });
    lab.step(Step {
        what: "VLAN 30 from a plain trunk: every port that trunks it",
        from: TRUNK,
        frame: Frame {
            dst: BCAST,
            src: MAC_TRUNK,
            tag: Tag::vlan(30),
        },
        count: 2,
        fate: Fate::Flood(&[
            out(TRUNK2, Tagged(30)),
            out(NU, Tagged(30)),
            out(NT, Tagged(30)),
        ]),
    });
    lab.step(Step {
        what: "untagged into native-untagged: VLAN 20, not VLAN 0",
        from: NU,
        frame: Frame {
            dst: BCAST,
            src: MAC_NU,
            tag: None,
        },
        count: 2,
        fate: Fate::Flood(&[
            out(TRUNK, Tagged(20)),
            out(TRUNK2, Tagged(20)),
            out(NT, Tagged(20)),
        ]),
    });
    lab.finish();
}
