//! Ports that come and go while the switch forwards: `ctl add-port`, `ctl del-port`
//! and `ctl reload` (and SIGHUP) against dpdk-testpmd, the kernel (TAP devices, veth
//! pairs for AF_PACKET) and QEMU guests.

mod common;
use common::frontend::Frontend;
use common::guest::{images, num, Guest};
use common::netns::{must, sh};
use common::*;
use pmd::vhost::driver::DriverMem;
use std::time::{Duration, Instant};

/// Sets a sysctl for the length of a test and puts the old value back on drop.
struct Sysctl {
    key: &'static str,
    old: String,
}

impl Sysctl {
    fn set(key: &'static str, value: &str) -> Sysctl {
        let old = must("sysctl", &["-n", key]).trim().to_string();
        must("sysctl", &["-qw", &format!("{key}={value}")]);
        Sysctl { key, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = sh("sysctl", &["-qw", &format!("{}={}", self.key, self.old)]);
    }
}

/// Veth pairs in the host namespace, both ends down (AF_PACKET ports that carry nothing).
struct Veths(Vec<String>);

impl Veths {
    fn new(prefix: &str, n: usize) -> Veths {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        for v in &names {
            let _ = sh("ip", &["link", "del", v]);
            must(
                "ip",
                &[
                    "link",
                    "add",
                    v,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{v}p"),
                ],
            );
        }
        Veths(names)
    }
}

impl Drop for Veths {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = sh("ip", &["link", "del", v]);
        }
    }
}

/// The `ctl add-port` arguments of the churn's port `i` (of 50): vhost-user server
/// and client, TAP and AF_PACKET.
fn churn_port(dir: &Scratch, veths: &Veths, tag: &str, i: usize) -> Vec<String> {
    let name = format!("{tag}{i}");
    let kv: Vec<String> = match i % 5 {
        0 | 1 => vec![
            "driver=vhost-user".into(),
            format!("path={}", dir.path(&format!("{name}.sock")).display()),
            "mode=server".into(),
            format!("queues={}", 1 + i % 2),
        ],
        2 => vec![
            "driver=vhost-user".into(),
            format!("path={}", dir.path(&format!("{name}.sock")).display()),
            "mode=client".into(),
        ],
        3 => vec!["driver=tap".into(), format!("iface={tag}tap{i}")],
        _ => vec![
            "driver=af-packet".into(),
            format!("iface={}", veths.0[i / 5]),
        ],
    };
    std::iter::once(name).chain(kv).collect()
}

#[test]
fn fifty_ports_come_and_go_under_traffic_losing_nothing() {
    which("dpdk-testpmd");
    // The kernel sends IPv6 autoconfiguration frames on a TAP device the switch sets
    // up; they would be flooded to testpmd and spoil its exact counts.
    let _v6 = Sysctl::set("net.ipv6.conf.default.disable_ipv6", "1");
    let veths = Veths::new("vsrt", 10);
    let dir = Scratch::new("churn");
    let cfg = write_config(&dir, &server_ports(&["vm1", "vm2"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], false, "churn");
    wait_both_up(&sw);
    traffic_round(&sw, &mut tp, 2, || {});
    let before = sw.resources();
    let free_before = mempool_free(&sw);

    const ROUNDS: usize = 3;
    const PORTS: usize = 50;
    let mem = DriverMem::new(0, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000);
    let mut churn_secs = 0.0;
    let mut per_round = Vec::new();
    let moved = traffic_round(&sw, &mut tp, 0, || {
        let t0 = Instant::now();
        for round in 0..ROUNDS {
            for i in 0..PORTS {
                let args = churn_port(&dir, &veths, "ch", i);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                sw.ctl_ok(&[&["add-port"], &args[..]].concat());
            }
            // A frontend on every fifth port (server mode) maps its memory and sets
            // its rings live, so the ports go while holding guest memory.
            let guests: Vec<_> = (0..PORTS)
                .step_by(5)
                .map(|i| Frontend::device(&dir.path(&format!("ch{i}.sock")), &mem))
                .collect();
            let show = sw.wait_show("the frontends' rings live", Duration::from_secs(10), |s| {
                s.lines()
                    .filter(|l| l.starts_with("port ") && l.contains("vrings=[live,live"))
                    .count()
                    == guests.len() + 2
            });
            assert_eq!(
                show.lines().filter(|l| l.starts_with("port ")).count(),
                PORTS + 2,
                "round {round}:\n{show}"
            );
            assert!(
                sw.resources().named_maps > before.named_maps,
                "the frontends' memory is not mapped"
            );
            let stats = sw.ctl("stats");
            for l in stats.lines().filter(|l| l.starts_with("port ch")) {
                for kv in l.split_whitespace().filter(|kv| kv.starts_with("drop_")) {
                    assert!(kv.ends_with("=0"), "round {round}: {l}");
                }
            }
            let servers: Vec<_> = (0..PORTS)
                .filter(|i| i % 5 <= 1)
                .map(|i| dir.path(&format!("ch{i}.sock")))
                .collect();
            assert!(servers.iter().all(|p| p.exists()), "server socket not made");
            for i in 0..PORTS {
                sw.ctl_ok(&["del-port", &format!("ch{i}")]);
            }
            assert!(
                servers.iter().all(|p| !p.exists()),
                "server socket left behind"
            );
            drop(guests);
            per_round.push(settled(&sw, &before));
        }
        churn_secs = t0.elapsed().as_secs_f64();
    });
    eprintln!(
        "{} ports added and removed in {churn_secs:.1} s while {moved} frames crossed without a loss",
        ROUNDS * PORTS
    );
    let show = sw.ctl("show");
    assert_eq!(
        show.lines().filter(|l| l.starts_with("port ")).count(),
        2,
        "{show}"
    );
    // Ports' threads, sockets and mappings are gone. The C library keeps the stacks
    // and malloc arenas of ended threads for reuse: those may grow in the first round,
    // never after it.
    eprintln!("switch before the churn: {before:?}; after each round: {per_round:?}");
    let after = per_round[ROUNDS - 1];
    assert_eq!(
        (after.fds, after.threads, after.named_maps),
        (before.fds, before.threads, before.named_maps),
        "the churn leaked"
    );
    assert_eq!(
        after.maps, per_round[0].maps,
        "mappings grow round by round"
    );
    let free_after = mempool_free(&sw);
    eprintln!("free mbufs before the churn: {free_before}, after: {free_after}");
    assert_eq!(free_after, free_before, "mbufs leaked");
    for i in (0..PORTS).filter(|i| i % 5 == 3) {
        assert!(!std::path::Path::new(&format!("/sys/class/net/chtap{i}")).exists());
    }
    tp.quit();
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

/// The switch's resources once its closed ports' threads have ended (they end
/// shortly after `del-port` returns), or after 5 s.
fn settled(sw: &Switch, want: &Resources) -> Resources {
    let t0 = Instant::now();
    let mut r = sw.resources();
    while (r.fds, r.threads, r.named_maps) != (want.fds, want.threads, want.named_maps)
        && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
        r = sw.resources();
    }
    r
}

/// The pool's free count from `ctl show`.
fn mempool_free(sw: &Switch) -> u64 {
    let show = sw.ctl("show");
    let line = show
        .lines()
        .find(|l| l.starts_with("mempool:"))
        .unwrap_or_else(|| panic!("no mempool line:\n{show}"));
    num(line, "free=")
}

#[test]
fn reload_adds_removes_and_changes_ports_and_leaves_the_rest_forwarding() {
    which("dpdk-testpmd");
    let _v6 = Sysctl::set("net.ipv6.conf.default.disable_ipv6", "1");
    let dir = Scratch::new("reload");
    let vhost = |name: &str, extra: &str| {
        format!(
            "[[port]]\nname = \"{name}\"\ndriver = \"vhost-user\"\npath = \"{}\"\n{extra}\n",
            dir.path(&format!("{name}.sock")).display()
        )
    };
    let tap = |name: &str| format!("[[port]]\nname = \"{name}\"\ndriver = \"tap\"\n\n");
    let first = [
        vhost("vm1", ""),
        vhost("vm2", ""),
        tap("rlgone"),
        vhost("changed", "queues = 1"),
    ]
    .concat();
    let cfg = write_config_ports(&dir, &first);
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], false, "reload");
    wait_both_up(&sw);
    traffic_round(&sw, &mut tp, 2, || {});

    // The edit (below): one port added, one removed, one changed (now two queues).
    let second = [
        vhost("vm1", ""),
        vhost("vm2", ""),
        vhost("changed", "queues = 2"),
        tap("rlnew"),
    ]
    .concat();
    // A refused reload changes nothing, though the file also holds the edit: an
    // unknown key, then a key that needs a restart.
    write_config_ports(&dir, &second);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("driver = \"tap\"", "driver = \"tap\"\nbogus = 1"),
    )
    .unwrap();
    let show0 = sw.ctl("show");
    let unchanged = |what: &str| {
        let show = sw.ctl("show");
        assert_eq!(port_lines(&show), port_lines(&show0), "{what}:\n{show}");
        assert!(
            show.contains(" rlgone: ") && !show.contains("rxq changed:1:"),
            "{what}:\n{show}"
        );
        assert!(
            !std::path::Path::new("/sys/class/net/rlnew").exists(),
            "{what}"
        );
    };
    let (code, out) = sw.ctl_try(&["reload"]);
    eprintln!("reload of a bad file: exit {code}: {}", out.trim());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("vswitch.toml") && out.contains("bogus"),
        "{out}"
    );
    unchanged("after a reload of a bad file");
    std::fs::write(&cfg, text.replace("pmd_cores = [", "pmd_cores = [0, ")).unwrap();
    let (code, out) = sw.ctl_try(&["reload"]);
    eprintln!("reload with new PMD cores: exit {code}: {}", out.trim());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("switch.pmd_cores"), "{out}");
    unchanged("after a refused reload");

    // A reload that fails part way is undone: a port is added, then the changed port
    // cannot open (its socket path is a directory), so the added one is closed and the
    // old one opened again.
    std::fs::create_dir(dir.path("adir")).unwrap();
    let failing = [
        vhost("vm1", ""),
        vhost("vm2", ""),
        tap("rlgone"),
        tap("rlnew"),
        format!(
            "[[port]]\nname = \"changed\"\ndriver = \"vhost-user\"\npath = \"{}\"\n",
            dir.path("adir").display()
        ),
    ]
    .concat();
    write_config_ports(&dir, &failing);
    let (code, out) = sw.ctl_try(&["reload"]);
    eprintln!("reload that fails part way: exit {code}: {}", out.trim());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    let show = sw.ctl("show");
    let mut now = port_lines(&show);
    let mut was = port_lines(&show0);
    now.sort();
    was.sort();
    assert_eq!(now, was, "{show}");
    assert!(show.contains("changed.sock"), "{show}");
    assert!(dir.path("changed.sock").exists());
    assert!(!std::path::Path::new("/sys/class/net/rlnew").exists());

    write_config_ports(&dir, &second);
    let mut reply = String::new();
    traffic_round(&sw, &mut tp, 2, || {
        reply = sw.ctl_ok(&["reload"]);
    });
    eprintln!("{}", reply.trim());
    assert!(
        reply.contains("1 added, 1 removed, 1 changed, 2 unchanged"),
        "{reply}"
    );
    let show = sw.ctl("show");
    assert!(
        show.contains(" rlnew: ") && !show.contains(" rlgone: "),
        "{show}"
    );
    assert!(
        show.contains("rxq changed:0:") && show.contains("rxq changed:1:"),
        "{show}"
    );
    assert!(std::path::Path::new("/sys/class/net/rlnew").exists());
    assert!(!std::path::Path::new("/sys/class/net/rlgone").exists());

    // SIGHUP does the same: back to the first file.
    write_config_ports(&dir, &first);
    must("kill", &["-HUP", &sw.pid().to_string()]);
    sw.wait_show(
        "the first file's ports after SIGHUP",
        Duration::from_secs(10),
        |s| s.contains(" rlgone: ") && !s.contains(" rlnew: ") && !s.contains("rxq changed:1:"),
    );
    assert!(sw.log().contains("SIGHUP: reloaded"), "{}", sw.log());
    traffic_round(&sw, &mut tp, 2, || {});
    tp.quit();
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

/// The names of the ports in `ctl show`.
fn port_lines(show: &str) -> Vec<String> {
    show.lines()
        .filter(|l| l.starts_with("port "))
        .map(|l| {
            l.split(':')
                .next()
                .unwrap()
                .split(' ')
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_guest_added_at_run_time_pings_and_after_del_port_gets_nothing() {
    let img = images();
    let dir = Scratch::new("addvm");
    let cfg = write_config(&dir, &server_ports(&["vm1"]), "tx_stall_ms = 1000");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let a = Guest::boot(
        "guest-a",
        dir.path("vm1.sock"),
        "52:54:00:00:00:0a",
        "vsw.ip=10.0.0.1/24 vsw.role=idle vsw.secs=300",
        &img,
    );
    a.wait_line("VSW-READY", Duration::from_secs(300));
    let sock = dir.path("vm3.sock");
    let reply = sw.ctl_ok(&[
        "add-port",
        "vm3",
        "driver=vhost-user",
        &format!("path={}", sock.display()),
    ]);
    eprintln!("{}", reply.trim());
    // B pings A twice a second for 60 s; the port goes away once pings flow.
    let b = Guest::boot(
        "guest-b",
        sock.clone(),
        "52:54:00:00:00:0b",
        "vsw.ip=10.0.0.2/24 vsw.role=ping vsw.peer=10.0.0.1 vsw.count=120 vsw.interval=0.5 vsw.wait=240",
        &img,
    );
    b.wait_line("VSW-PEER-UP", Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(5));
    let stats = sw.port_stats("vm3");
    assert!(
        stats["rx_packets"] > 5 && stats["tx_packets"] > 5,
        "{stats:?}"
    );
    sw.ctl_ok(&["del-port", "vm3"]);
    let gone_at = Instant::now();
    assert!(!sock.exists(), "vm3's socket is still there");
    let show = sw.ctl("show");
    assert!(!show.contains(" vm3: "), "{show}");
    assert!(!sw.ctl("fdb").contains("52:54:00:00:00:0b"));
    let ping = b.wait_line("VSW-PING", Duration::from_secs(120));
    let (sent, received) = (num(&ping, "sent="), num(&ping, "received="));
    eprintln!(
        "guest B, added at run time: {ping} ({:.0} s of pings after del-port got no reply)",
        gone_at.elapsed().as_secs_f64()
    );
    // About 10 replies came before del-port; none of the rest (over 100 pings) after it.
    assert!((5..=30).contains(&received), "{ping}");
    assert!(sent >= 100, "{ping}");
    // A is still served.
    assert!(sw.ctl("show").contains("port 0 vm1"));
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
    drop(a);
}

/// A switch with two PMD threads (cores 0 and 1) whose first thread polls both busy
/// ports (vm1 and vm2, testpmd's) and whose second polls two idle ones: added in this
/// order with no load yet, the queues alternate between the threads. `extra` is more
/// of `[switch]`.
fn busy_pair_on_one_thread(dir: &Scratch, extra: &str) -> (Switch, Testpmd) {
    which("dpdk-testpmd");
    let ports = server_ports(&["vm1", "idle1", "vm2", "idle2"]);
    let cfg = write_config_cores(dir, &ports, extra, &[0, 1]);
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let show = sw.ctl("show");
    assert!(
        show.contains("pmd core 0: rxqs [vm1:0 vm2:0]")
            && show.contains("pmd core 1: rxqs [idle1:0 idle2:0]"),
        "{show}"
    );
    let tp = Testpmd::start(dir, ["vm1", "vm2"], false, "rebal");
    sw.wait_show("vm1 and vm2 up", Duration::from_secs(30), |s| {
        s.lines()
            .filter(|l| (l.contains(" vm1: ") || l.contains(" vm2: ")) && l.ends_with("up=true"))
            .count()
            == 2
    });
    (sw, tp)
}

/// The core that `ctl show` puts rx queue `q` (e.g. "vm1:0") on.
fn core_of(show: &str, q: &str) -> String {
    show.lines()
        .find(|l| l.starts_with(&format!("rxq {q}:")))
        .unwrap_or_else(|| panic!("no rxq {q}:\n{show}"))
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string()
}

#[test]
fn rebalance_spreads_busy_queues_by_measured_cycles() {
    let dir = Scratch::new("rebal");
    let (sw, mut tp) = busy_pair_on_one_thread(&dir, "");
    let mut report = String::new();
    traffic_round(&sw, &mut tp, 8, || {
        // Let the load window fill (samples once a second).
        std::thread::sleep(Duration::from_secs(5));
        let show = sw.ctl("show");
        eprintln!("before rebalance:\n{show}");
        let share = |q: &str| {
            let l = show
                .lines()
                .find(|l| l.starts_with(&format!("rxq {q}:")))
                .unwrap();
            l.rsplit("share=")
                .next()
                .unwrap()
                .trim_end_matches('%')
                .parse::<f64>()
                .unwrap()
        };
        assert!(share("vm1:0") > 1.0 && share("vm2:0") > 1.0, "{show}");
        assert!(share("idle1:0") < 1.0, "{show}");
        report = sw.ctl_ok(&["rebalance"]);
    });
    eprintln!("ctl rebalance:\n{report}");
    assert!(report.contains("core 0 -> core 1"), "{report}");
    let show = sw.ctl("show");
    eprintln!("after rebalance:\n{show}");
    assert_ne!(core_of(&show, "vm1:0"), core_of(&show, "vm2:0"), "{show}");
    // Traffic still flows, losslessly, on the new placement.
    traffic_round(&sw, &mut tp, 2, || {});
    tp.quit();
    sw.stop();
}

#[test]
fn pmd_auto_lb_moves_a_busy_queue_on_its_own() {
    let dir = Scratch::new("autolb");
    // The threshold is low: testpmd shares the two cores, so no PMD thread is 95% busy.
    let (sw, mut tp) = busy_pair_on_one_thread(
        &dir,
        "pmd_auto_lb = true\npmd_auto_lb_interval_secs = 3\npmd_auto_lb_load_threshold = 10",
    );
    traffic_round(&sw, &mut tp, 10, || {
        sw.wait_show(
            "the busy queues on two cores",
            Duration::from_secs(10),
            |s| core_of(s, "vm1:0") != core_of(s, "vm2:0"),
        );
    });
    let log = sw.log();
    let line = log
        .lines()
        .find(|l| l.contains("rx queues re-placed by load"))
        .unwrap_or_else(|| panic!("no re-placement logged:\n{log}"));
    eprintln!("{line}");
    assert!(line.contains("auto=true"), "{line}");
    tp.quit();
    sw.stop();
}
