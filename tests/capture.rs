//! `vswitch ctl capture`: frames of a port, read back by tcpdump. A ping between two
//! namespaces on AF_XDP ports is captured with the right MACs, addresses and count;
//! `-w -` streams into `tcpdump -r -`; 802.1Q tags are kept and `--vlan` selects by
//! them; the capture ends when its client does; and under full testpmd load two
//! captures at once cost the switch no frame, whatever they drop themselves.

mod common;

use common::netns::VethNs;
use common::*;
use pcap_file::pcap::PcapReader;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn port(name: &str, driver: &str, iface: &str) -> String {
    format!("[[port]]\nname = \"{name}\"\ndriver = \"{driver}\"\niface = \"{iface}\"\n\n")
}

/// What to capture, as `ctl capture` options.
#[derive(Default)]
struct CaptureOpts<'a> {
    port: &'a str,
    direction: Option<&'a str>,
    count: Option<u64>,
    vlan: Option<u16>,
    snaplen: Option<u32>,
}

/// A running `vswitch ctl capture ... -w FILE` client.
struct CaptureClient {
    child: Child,
    stderr: Arc<Mutex<String>>,
    file: PathBuf,
}

impl CaptureClient {
    /// Starts the client and waits until the switch runs the capture.
    fn start(sw: &Switch, o: &CaptureOpts, file: &Path) -> CaptureClient {
        let mut args = vec!["capture".to_string(), o.port.to_string()];
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                args.extend([k.to_string(), v]);
            }
        };
        opt("--direction", o.direction.map(str::to_string));
        opt("--count", o.count.map(|n| n.to_string()));
        opt("--vlan", o.vlan.map(|n| n.to_string()));
        opt("--snaplen", o.snaplen.map(|n| n.to_string()));
        args.extend(["-w".to_string(), file.display().to_string()]);
        let mut child = Command::new(bin())
            .args(["ctl", "--socket"])
            .arg(&sw.ctl)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        let t0 = Instant::now();
        while !stderr.lock().unwrap().contains("writing to") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "capture did not start: {}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        CaptureClient {
            child,
            stderr,
            file: file.to_path_buf(),
        }
    }

    /// Waits for the client to end by itself (the capture reached its count).
    fn wait(mut self, timeout: Duration) -> PathBuf {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "capture client: {st}: {}",
                    self.stderr.lock().unwrap()
                );
                return self.file.clone();
            }
            assert!(
                t0.elapsed() < timeout,
                "capture client still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the client as a user or a script would: SIGTERM (not SIGINT, which a
    /// shell without job control, as CI's, makes its background jobs ignore).
    fn stop(mut self) -> PathBuf {
        kill(self.child.id(), "TERM");
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(5) {
                kill(self.child.id(), "KILL");
                panic!("the capture client outlived SIGTERM by 5 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.file.clone()
    }
}

fn kill(pid: u32, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
}

/// `tcpdump -r FILE -nn -e` (with `extra`), one line per frame.
fn tcpdump(file: &Path, extra: &[&str]) -> Vec<String> {
    which("tcpdump");
    let out = Command::new("tcpdump")
        .args(["-r"])
        .arg(file)
        .args(["-nn", "-e"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tcpdump -r {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Frames tcpdump cannot decode get a hex dump on lines of their own: not frames.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\t'))
        .map(str::to_string)
        .collect()
}

/// The switch's capture lines in `ctl show`.
fn captures(sw: &Switch) -> Vec<String> {
    sw.ctl("show")
        .lines()
        .filter(|l| l.starts_with("capture "))
        .map(str::to_string)
        .collect()
}

fn wait_no_capture(sw: &Switch, why: &str) {
    let t0 = Instant::now();
    while !captures(sw).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{why}: the capture still runs: {:?}",
            captures(sw)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_ping_on_af_xdp_ports_reads_back_in_tcpdump() {
    let dir = Scratch::new("capture-ping");
    let a = VethNs::new("pa", "10.81.0.1/24");
    let b = VethNs::new("pb", "10.81.0.2/24");
    let cfg = write_config_ports(
        &dir,
        &(port("a", "af-xdp", &a.host) + &port("b", "af-xdp", &b.host)),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    // Neighbours resolved first: the capture then holds the pings alone.
    assert_eq!(a.ping(&b.ip, 2), 2);

    // --count 10 on both directions of port a: 5 echo requests in, 5 replies out,
    // 60 bytes kept of each.
    let t_start = SystemTime::now();
    let c = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "a",
            count: Some(10),
            snaplen: Some(60),
            ..Default::default()
        },
        &dir.path("ping.pcap"),
    );
    assert_eq!(captures(&sw).len(), 1, "{:?}", captures(&sw));
    assert_eq!(a.ping(&b.ip, 5), 5);
    let file = c.wait(Duration::from_secs(10));
    let t_end = SystemTime::now();
    let lines = tcpdump(&file, &[]);
    for l in &lines {
        eprintln!("tcpdump: {l}");
    }
    assert_eq!(lines.len(), 10, "--count 10: {lines:#?}");
    // The records themselves: 60 of 98 bytes kept, wall-clock times in order (raw
    // records: pcap-file 2.0's parsed ones refuse a frame longer than the snaplen,
    // which is what a snaplen is for; tcpdump and Wireshark take them).
    let mut r = PcapReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    assert_eq!(r.header().snaplen, 60);
    assert_eq!(
        r.header().ts_resolution,
        pcap_file::TsResolution::NanoSecond
    );
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap();
    let mut last = since_epoch(t_start);
    while let Some(p) = r.next_raw_packet() {
        let p = p.unwrap();
        assert_eq!((p.incl_len, p.orig_len, p.data.len()), (60, 98, 60));
        let ts = Duration::new(p.ts_sec.into(), p.ts_frac);
        assert!(ts >= last && ts <= since_epoch(t_end), "{ts:?}");
        last = ts;
    }
    let (ip_a, ip_b) = (a.ip.as_str(), b.ip.as_str());
    let requests = lines
        .iter()
        .filter(|l| {
            l.contains(&format!("{} > {}", a.mac, b.mac))
                && l.contains(&format!("{ip_a} > {ip_b}: ICMP echo request"))
        })
        .count();
    let replies = lines
        .iter()
        .filter(|l| {
            l.contains(&format!("{} > {}", b.mac, a.mac))
                && l.contains(&format!("{ip_b} > {ip_a}: ICMP echo reply"))
        })
        .count();
    assert_eq!((requests, replies), (5, 5), "{lines:#?}");
    wait_no_capture(&sw, "after --count 10");

    // -w - into tcpdump -r -, rx only, with a short snaplen: tcpdump takes 3 frames
    // and leaves; the next frame the switch captures finds no reader and ends it.
    let sh = format!(
        "{} ctl --socket {} capture a --direction rx --snaplen 64 -w - | tcpdump -r - -nn -e -c 3",
        bin(),
        sw.ctl.display()
    );
    let pipe = Command::new("sh")
        .args(["-c", &sh])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while captures(&sw).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "piped capture did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        captures(&sw)[0].contains("direction=rx snaplen=64"),
        "{:?}",
        captures(&sw)
    );
    assert_eq!(a.ping(&b.ip, 4), 4);
    let out = pipe.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("tcpdump -r -:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("ICMP echo request")
                && l.contains(&format!("{} > {}", a.mac, b.mac))),
        "rx only: {text}"
    );
    assert_eq!(a.ping(&b.ip, 1), 1);
    wait_no_capture(&sw, "after its reader left");

    // A client stopped by a signal takes its capture with it.
    let c = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "b",
            direction: Some("tx"),
            ..Default::default()
        },
        &dir.path("b.pcap"),
    );
    assert_eq!(a.ping(&b.ip, 2), 2);
    // The writer looks for frames every 20 ms: give it the last one before the signal.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let file = c.stop();
    wait_no_capture(&sw, "after SIGTERM to its client");
    eprintln!("capture gone {:?} after SIGTERM", t0.elapsed());
    let lines = tcpdump(&file, &[]);
    assert!(
        lines.len() >= 2
            && lines
                .iter()
                .all(|l| l.contains(&format!("{} > {}", a.mac, b.mac))),
        "tx of b: {lines:#?}"
    );

    // A capture whose port leaves ends, and its client with it.
    let c = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "b",
            ..Default::default()
        },
        &dir.path("gone.pcap"),
    );
    sw.ctl_ok(&["del-port", "b"]);
    c.wait(Duration::from_secs(5));
    wait_no_capture(&sw, "after its port left");

    // Refusals name what is wrong, and exit 2.
    for (args, want) in [
        (
            &["capture", "nope", "-w", "/dev/null"][..],
            "no port named \"nope\"",
        ),
        (
            &["capture", "a", "--vlan", "5000", "-w", "/dev/null"][..],
            "--vlan \"5000\"",
        ),
        (&["capture", "a"][..], "usage: capture PORT"),
    ] {
        let (code, out) = sw.ctl_try(args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out}");
    }
    let log = sw.stop();
    assert!(log.contains("capture done: 10 frames written"), "{log}");
    assert!(
        log.contains("capture done: the port left the switch"),
        "{log}"
    );
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
}

#[test]
fn vlan_tags_are_kept_and_selected() {
    let dir = Scratch::new("capture-vlan");
    let a = VethNs::new("va", "10.82.0.1/24");
    let b = VethNs::new("vb", "10.82.0.2/24");
    let cfg = write_config_ports(
        &dir,
        &(port("a", "af-packet", &a.host) + &port("b", "af-packet", &b.host)),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    // Trunk ports: tagged frames pass with their tags. Capture VLAN 10 only.
    let c = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "a",
            direction: Some("rx"),
            vlan: Some(10),
            count: Some(5),
            ..Default::default()
        },
        &dir.path("vlan.pcap"),
    );
    assert_eq!(a.trafgen_vlan(&dir, &b.mac, Some(20), 5, 1000), 5);
    assert_eq!(a.trafgen_vlan(&dir, &b.mac, None, 5, 1000), 5);
    assert_eq!(a.trafgen_vlan(&dir, &b.mac, Some(10), 5, 1000), 5);
    let file = c.wait(Duration::from_secs(10));
    let lines = tcpdump(&file, &[]);
    for l in &lines {
        eprintln!("tcpdump: {l}");
    }
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("vlan 10") && l.contains(&format!("{} > {}", a.mac, b.mac))),
        "{lines:#?}"
    );
    assert!(
        tcpdump(&file, &["vlan 10"]).len() == 5,
        "tcpdump's own vlan filter"
    );
    // A capture still running when the switch stops ends, and so does its client.
    let c = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "b",
            ..Default::default()
        },
        &dir.path("stop.pcap"),
    );
    let log = sw.stop();
    c.wait(Duration::from_secs(5));
    assert!(
        log.contains("capture done: the switch is stopping"),
        "{log}"
    );
}

#[test]
fn two_captures_under_full_load_cost_the_switch_nothing() {
    let dir = Scratch::new("capture-load");
    let cfg = write_config(&dir, &server_ports(&["vm1", "vm2"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], false, "capture");
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let many = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "vm1",
            count: Some(200_000),
            ..Default::default()
        },
        &dir.path("vm1.pcap"),
    );
    let open = CaptureClient::start(
        &sw,
        &CaptureOpts {
            port: "vm2",
            direction: Some("rx"),
            snaplen: Some(96),
            ..Default::default()
        },
        &dir.path("vm2.pcap"),
    );
    assert_eq!(captures(&sw).len(), 2);
    // traffic_round asserts that every frame crossed and no drop counter moved. The
    // vm2 capture is stopped by SIGTERM half a second into the load (its file stays small).
    let mut vm2_file = None;
    let moved = traffic_round(&sw, &mut tp, 4, || {
        std::thread::sleep(Duration::from_millis(500));
        eprintln!("captures under load: {:#?}", captures(&sw));
        vm2_file = Some(open.stop());
    });
    eprintln!("switch moved {moved} frames");
    let file = many.wait(Duration::from_secs(30));
    let n = tcpdump(&file, &["-q"]).len();
    assert_eq!(n, 200_000, "--count 200000 under load");
    let n = tcpdump(&vm2_file.unwrap(), &["-q"]).len();
    assert!(n > 1000, "vm2 rx capture holds {n} frames");
    wait_no_capture(&sw, "after both ended");
    let log = sw.stop();
    tp.quit();
    let dropped: Vec<&str> = log.lines().filter(|l| l.contains("capture done")).collect();
    eprintln!("{dropped:#?}");
    assert!(log.contains("free_mbufs=8192"), "mbufs lost:\n{log}");
}
