//! Shared helpers of the integration tests: a scratch directory, a running switch
//! that is stopped (SIGTERM) when dropped, the control command, and DPDK testpmd.
#![allow(dead_code)]

pub mod frontend;
pub mod guest;
pub mod netns;
pub mod qmp;

#[allow(unused_imports)] // not every test plays a frontend
pub use frontend::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The switch under test: this build's, or `VSWITCH_BIN` (to run a test against
/// another build, e.g. to show a new test fails on an older one).
pub fn bin() -> String {
    std::env::var("VSWITCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vswitch").to_string())
}

/// A fresh directory under /tmp, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = PathBuf::from(format!("/tmp/vswitch-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Collects what a child prints on stdout and stderr (echoed with a tag) into a string.
pub fn capture(child: &mut Child, tag: &str) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for r in streams {
        let (o, tag) = (out.clone(), tag.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let mut o = o.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
    }
    out
}

/// Server-mode, single-queue ports with these names.
pub fn server_ports<'a>(names: &[&'a str]) -> Vec<PortSpec<'a>> {
    names
        .iter()
        .map(|&name| PortSpec {
            name,
            mode: "server",
            queues: 1,
        })
        .collect()
}

/// One `[[port]]` of a test config.
pub struct PortSpec<'a> {
    pub name: &'a str,
    pub mode: &'a str,
    pub queues: usize,
}

/// Writes a config with the given ports (sockets in the scratch dir) and returns its path.
pub fn write_config(dir: &Scratch, ports: &[PortSpec], extra: &str) -> PathBuf {
    write_config_cores(dir, ports, extra, &[pmd_core()])
}

/// As `write_config`, with the PMD cores given.
pub fn write_config_cores(
    dir: &Scratch,
    ports: &[PortSpec],
    extra: &str,
    cores: &[usize],
) -> PathBuf {
    let cores: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    let mut s = format!(
        "[switch]\npmd_cores = [{}]\ncontrol_socket = \"{}\"\n{extra}\n{}[mempool]\nmbufs = 8192\nhugepages = \"auto\"\n",
        cores.join(", "),
        dir.path("ctl.sock").display(),
        metrics_off(extra),
    );
    for p in ports {
        s += &format!(
            "\n[[port]]\nname = \"{}\"\ndriver = \"vhost-user\"\npath = \"{}\"\nmode = \"{}\"\nqueues = {}\n",
            p.name,
            dir.path(&format!("{}.sock", p.name)).display(),
            p.mode,
            p.queues
        );
    }
    let f = dir.path("vswitch.toml");
    std::fs::write(&f, s).unwrap();
    f
}

/// Writes a config whose `[[port]]` tables are `ports` (TOML text), with the usual
/// switch and mempool sections, and returns its path.
pub fn write_config_ports(dir: &Scratch, ports: &str) -> PathBuf {
    let s = format!(
        "[switch]\npmd_cores = [{}]\ncontrol_socket = \"{}\"\n\n{}[mempool]\nmbufs = 8192\nhugepages = \"auto\"\n\n{ports}",
        pmd_core(),
        dir.path("ctl.sock").display(),
        metrics_off(ports),
    );
    let f = dir.path("vswitch.toml");
    std::fs::write(&f, s).unwrap();
    f
}

/// `[metrics] listen = ""` unless `text` has its own `[metrics]`: switches of the
/// tests do not serve metrics by default, so that two at once (or one beside a switch
/// run by hand) do not both want the default address.
pub fn metrics_off(text: &str) -> &'static str {
    if text.contains("[metrics]") {
        ""
    } else {
        "[metrics]\nlisten = \"\"\n\n"
    }
}

/// The core the switch's PMD runs on: the last one (testpmd and guests get the others).
pub fn pmd_core() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        - 1
}

/// A running `vswitch run`, with its log collected.
pub struct Switch {
    child: Child,
    pub ctl: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Switch {
    pub fn start(config: &Path, ctl: PathBuf) -> Switch {
        Switch::start_in(config, ctl, None)
    }

    /// `start`, in network namespace `netns` when given (`ip netns exec`).
    pub fn start_in(config: &Path, ctl: PathBuf, netns: Option<&str>) -> Switch {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &bin()]);
                c
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env("VSWITCH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vswitch");
        let log = capture(&mut child, "vswitch");
        let sw = Switch { child, ctl, log };
        let t0 = Instant::now();
        while !sw.log().contains("vswitch running") {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "switch did not start:\n{}",
                sw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sw
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The switch's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ctl(&self, cmd: &str) -> String {
        let out = Command::new(bin())
            .args(["ctl", "--socket"])
            .arg(&self.ctl)
            .arg(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `vswitch ctl ARGS...` that may be refused: (exit code, stdout then stderr).
    pub fn ctl_try(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(bin())
            .args(["ctl", "--socket"])
            .arg(&self.ctl)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `vswitch ctl ARGS...` that must succeed; returns its output.
    #[track_caller]
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (code, out) = self.ctl_try(args);
        assert_eq!(code, 0, "ctl {args:?} failed: {out}");
        out
    }

    /// What the switch process holds: open fds, memory mappings, threads.
    pub fn resources(&self) -> Resources {
        let pid = self.pid();
        let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        Resources {
            fds: count(format!("/proc/{pid}/fd")),
            maps: std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .map(|s| s.lines().count())
                .unwrap_or(0),
            // Mappings of a file or socket: guest memory, hugepages, NIC rings.
            named_maps: std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .map(|s| {
                    s.lines()
                        .filter(|l| {
                            l.split_whitespace()
                                .nth(5)
                                .is_some_and(|p| !p.starts_with('['))
                        })
                        .count()
                })
                .unwrap_or(0),
            threads: count(format!("/proc/{pid}/task")),
        }
    }

    /// Counters of `port` from `ctl stats`.
    pub fn port_stats(&self, port: &str) -> HashMap<String, u64> {
        self.stats_line("port", port)
    }

    /// The driver's own numbers of `port` (`Port::gauges`) from `ctl stats`.
    pub fn port_state(&self, port: &str) -> HashMap<String, u64> {
        self.stats_line("state", port)
    }

    fn stats_line(&self, kind: &str, port: &str) -> HashMap<String, u64> {
        let s = self.ctl("stats");
        let line = s
            .lines()
            .find(|l| l.starts_with(&format!("{kind} {port}:")))
            .unwrap_or_else(|| panic!("no port {port} in stats:\n{s}"));
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    }

    /// Waits until `ctl show` satisfies `pred`.
    pub fn wait_show(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.ctl("show");
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out waiting for {what}; show:\n{s}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the switch dies with no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit status and asserts a clean stop.
    pub fn stop(mut self) -> String {
        // SAFETY-free: kill(1) by pid through the kill command.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "switch exited with {st}:\n{}", self.log());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "switch did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        assert!(!log.contains("panicked"), "switch panicked:\n{log}");
        log
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            std::thread::sleep(Duration::from_millis(500));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a switch process holds (see [`Switch::resources`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub fds: usize,
    /// All mappings; thread stacks and malloc arenas that the C library keeps for
    /// reuse after threads end count here too.
    pub maps: usize,
    pub named_maps: usize,
    pub threads: usize,
}

/// How testpmd's virtio-user ports connect (see `Testpmd::start_with`).
#[derive(Clone, Copy, Debug)]
pub struct TestpmdOpts<'a> {
    /// Testpmd listens (the switch is a client).
    pub server: bool,
    /// Queue pairs per port.
    pub queues: usize,
    /// The destination MAC each port sends to.
    pub peers: [&'a str; 2],
    /// Packed virtqueues (`packed_vq=1`) instead of split ones.
    pub packed: bool,
}

impl Default for TestpmdOpts<'_> {
    fn default() -> Self {
        TestpmdOpts {
            server: false,
            queues: 1,
            peers: [MAC1, MAC0],
            packed: false,
        }
    }
}

/// An interactive dpdk-testpmd with two virtio-user ports (the guest side).
pub struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
}

pub const MAC0: &str = "02:00:00:00:00:01";
pub const MAC1: &str = "02:00:00:00:00:02";

impl Testpmd {
    /// `server`: testpmd listens (the switch is a client). Sockets `<port>.sock` in `dir`.
    pub fn start(dir: &Scratch, ports: [&str; 2], server: bool, prefix: &str) -> Testpmd {
        Testpmd::start_mq(dir, ports, server, prefix, 1)
    }

    /// As `start`, with `queues` queue pairs per port.
    pub fn start_mq(
        dir: &Scratch,
        ports: [&str; 2],
        server: bool,
        prefix: &str,
        queues: usize,
    ) -> Testpmd {
        Testpmd::start_opts(dir, ports, server, prefix, queues, [MAC1, MAC0])
    }

    /// As `start_mq`, with the destination MAC each port sends to.
    pub fn start_opts(
        dir: &Scratch,
        ports: [&str; 2],
        server: bool,
        prefix: &str,
        queues: usize,
        peers: [&str; 2],
    ) -> Testpmd {
        let opts = TestpmdOpts {
            server,
            queues,
            peers,
            ..TestpmdOpts::default()
        };
        Testpmd::start_with(dir, ports, prefix, &opts)
    }

    /// Testpmd with its virtio-user ports on sockets `<port>.sock` in `dir`, as
    /// `opts` say; `prefix` names its DPDK runtime files.
    pub fn start_with(
        dir: &Scratch,
        ports: [&str; 2],
        prefix: &str,
        opts: &TestpmdOpts,
    ) -> Testpmd {
        which("dpdk-testpmd");
        let TestpmdOpts {
            server,
            queues,
            peers,
            packed,
        } = *opts;
        let srv = if server { ",server=1" } else { "" };
        let packed = if packed { ",packed_vq=1" } else { "" };
        let vdev = |i: usize, mac: &str| {
            format!(
                "net_virtio_user{i},path={},queues={queues},mac={mac}{srv}{packed}",
                dir.path(&format!("{}.sock", ports[i])).display(),
            )
        };
        // stdbuf: testpmd writes its answers with stdio, which a pipe would hold back.
        let mut child = Command::new("stdbuf")
            .args(["-o0", "-e0", "dpdk-testpmd"])
            .args([
                "-l",
                "0,1",
                "--main-lcore",
                "1",
                "--no-pci",
                "--in-memory",
                "--single-file-segments",
                "-m",
                "256",
            ])
            .arg(format!("--file-prefix={prefix}"))
            .args(["--log-level", "*:warning"])
            .arg("--vdev")
            .arg(vdev(0, MAC0))
            .arg("--vdev")
            .arg(vdev(1, MAC1))
            .args([
                "--",
                "-i",
                "--forward-mode=mac",
                "--nb-cores=1",
                "--txd=256",
                "--rxd=256",
            ])
            .arg(format!("--rxq={queues}"))
            .arg(format!("--txq={queues}"))
            .arg(format!("--eth-peer=0,{}", peers[0]))
            .arg(format!("--eth-peer=1,{}", peers[1]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dpdk-testpmd");
        let out = capture(&mut child, "testpmd");
        let stdin = child.stdin.take().unwrap();
        Testpmd { child, stdin, out }
    }

    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits for `needle` in the output after `from` bytes.
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let o = self.output();
            if o.len() > from && o[from..].contains(needle) {
                return o[from..].to_string();
            }
            assert!(
                t0.elapsed() < timeout,
                "testpmd: timed out waiting for {needle:?}:\n{o}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a command and returns what it printed up to `until`.
    pub fn cmd(&mut self, c: &str, until: &str) -> String {
        let from = self.output().len();
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        self.wait_for(until, from, Duration::from_secs(30))
    }

    /// RX and TX packet counts, and TX drops, of both ports from `show port stats all`
    /// and `show fwd stats all`.
    pub fn port_stats(&mut self) -> [PortCounts; 2] {
        let from = self.output().len();
        writeln!(self.stdin, "show port stats all").unwrap();
        self.stdin.flush().unwrap();
        let t0 = Instant::now();
        let s = loop {
            let o = self.output()[from..].to_string();
            if o.split("NIC statistics for port 1")
                .nth(1)
                .is_some_and(|t| t.contains("Tx-bps"))
            {
                break o;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "testpmd: no port stats:\n{o}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut res = [PortCounts::default(), PortCounts::default()];
        for (i, r) in res.iter_mut().enumerate() {
            let sect = s
                .split(&format!("NIC statistics for port {i}"))
                .nth(1)
                .unwrap_or_else(|| panic!("{s}"));
            r.rx = field(sect, "RX-packets:");
            r.tx = field(sect, "TX-packets:");
            r.rx_missed = field(sect, "RX-missed:");
            r.tx_errors = field(sect, "TX-errors:");
        }
        res
    }

    pub fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && t0.elapsed() < Duration::from_secs(15)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default, Debug, Clone, Copy)]
pub struct PortCounts {
    pub rx: u64,
    pub tx: u64,
    pub rx_missed: u64,
    pub tx_errors: u64,
}

pub fn field(s: &str, name: &str) -> u64 {
    let i = s.find(name).unwrap_or_else(|| panic!("no {name} in {s}"));
    s[i + name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn which(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success());
    assert!(
        ok.unwrap_or(false),
        "{cmd} is not installed: run the README's test command (scripts/test.sh), which installs it"
    );
}

/// Runs bounded ping-pong traffic (4 bursts of 32 per port kept in flight) for
/// `secs` (running `during` meanwhile) and checks every counter on both sides. Returns frames moved by the switch.
pub fn traffic_round(sw: &Switch, tp: &mut Testpmd, secs: u64, during: impl FnOnce()) -> u64 {
    let before0 = sw.port_stats("vm1");
    let before1 = sw.port_stats("vm2");
    let tp_before = tp.port_stats();
    tp.cmd("start tx_first 4", "tx_first");
    let t0 = Instant::now();
    during();
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed()));
    let stop = tp.cmd("stop", "Done.");
    // Let the switch drain what testpmd sent last.
    std::thread::sleep(Duration::from_millis(500));
    let tpc = tp.port_stats();
    let s0 = sw.port_stats("vm1");
    let s1 = sw.port_stats("vm2");
    let d = |a: &std::collections::HashMap<String, u64>,
             b: &std::collections::HashMap<String, u64>,
             k: &str| a[k] - b[k];

    // testpmd sent no frame it could not queue (TX-dropped), in either direction.
    for i in 0..2 {
        let sect = stop
            .split(&format!("Forward statistics for port {i}"))
            .nth(1)
            .expect("fwd stats");
        assert_eq!(
            field(sect, "TX-dropped:"),
            0,
            "testpmd port {i} dropped on tx:\n{stop}"
        );
    }
    // Everything testpmd sent reached the switch.
    let sent0 = tpc[0].tx - tp_before[0].tx;
    let sent1 = tpc[1].tx - tp_before[1].tx;
    assert_eq!(
        d(&s0, &before0, "rx_packets"),
        sent0,
        "switch vm1 rx vs testpmd port 0 tx"
    );
    assert_eq!(
        d(&s1, &before1, "rx_packets"),
        sent1,
        "switch vm2 rx vs testpmd port 1 tx"
    );
    // Two ports: everything from one goes to the other, nothing dropped.
    assert_eq!(
        d(&s1, &before1, "tx_packets"),
        sent0,
        "switch vm2 tx vs vm1 rx"
    );
    assert_eq!(
        d(&s0, &before0, "tx_packets"),
        sent1,
        "switch vm1 tx vs vm2 rx"
    );
    // Every drop counter, and refused learning, as the switch names them.
    for k in s0
        .keys()
        .filter(|k| k.starts_with("drop_") || *k == "learn_refused" || *k == "guest_errors")
    {
        assert_eq!(s0[k] + s1[k], before0[k] + before1[k], "switch counted {k}");
    }
    // What testpmd received is what the switch delivered, less the frames still in
    // testpmd's rx rings when forwarding stopped (4 bursts of 32 per stream, 2 queues).
    let got0 = tpc[0].rx - tp_before[0].rx;
    let got1 = tpc[1].rx - tp_before[1].rx;
    let del0 = d(&s0, &before0, "tx_packets");
    let del1 = d(&s1, &before1, "tx_packets");
    assert!(
        got0 <= del0 && del0 - got0 <= 512,
        "port 0 received {got0} of {del0} delivered"
    );
    assert!(
        got1 <= del1 && del1 - got1 <= 512,
        "port 1 received {got1} of {del1} delivered"
    );
    assert!(
        sent0 > 1000 && sent1 > 1000,
        "too little traffic: {sent0} / {sent1}"
    );
    eprintln!(
        "traffic round: testpmd port0 tx={sent0} rx={got0}, port1 tx={sent1} rx={got1}; switch vm1 rx={} tx={}, vm2 rx={} tx={}",
        d(&s0, &before0, "rx_packets"),
        del0,
        d(&s1, &before1, "rx_packets"),
        del1
    );
    // The table learned each MAC on its port.
    let fdb = sw.ctl("fdb");
    assert!(
        fdb.lines()
            .any(|l| l.starts_with("vm1") && l.contains(MAC0)),
        "fdb:\n{fdb}"
    );
    assert!(
        fdb.lines()
            .any(|l| l.starts_with("vm2") && l.contains(MAC1)),
        "fdb:\n{fdb}"
    );
    sent0 + sent1
}

/// Waits until ports vm1 and vm2 are both up.
pub fn wait_both_up(sw: &Switch) {
    sw.wait_show("vm1 and vm2 up", Duration::from_secs(30), |s| {
        s.lines()
            .filter(|l| {
                (l.starts_with("port 0 vm1") || l.starts_with("port 1 vm2"))
                    && l.ends_with("up=true")
            })
            .count()
            == 2
    });
}
