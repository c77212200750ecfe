//! Live migration of a guest between two ports of the switch, as QEMU's own
//! `tests/qtest/vhost-user-test.c` does it without KVM: a second QEMU with the same
//! command line and `-incoming` on port vm1b, `migrate` over QMP with the bandwidth
//! held low so that the dirty phase lasts while the switch writes into the guest,
//! then raised so that the migration ends.
//!
//! Guest A (migrating) pings guest B every 100 ms and receives a TCP stream from it
//! the whole time. A page the switch wrote during the migration and did not mark in
//! QEMU's dirty log would reach the destination stale, and the stream's SHA-256 (or
//! TCP itself) would show it. After the hand-over the destination announces the
//! guest (`SEND_RARP`) and the MAC table moves it to vm1b. The test prints the pings
//! lost and checks both the stream and the table; then it migrates the guest back.

mod common;
use common::guest::{images, num, Guest, GuestSpec, SocketRole};
use common::qmp::Qmp;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAC_A: &str = "52:54:00:00:00:0a";
const MAC_B: &str = "52:54:00:00:00:0b";
/// The dirty phase: QEMU sends guest memory at this rate for [`SLOW_FOR`], while B
/// sends its data.
const SLOW: u64 = 8 << 20;
/// Chunks of 8 MiB guest B streams to A (`vsw.repeat`).
const STREAM_CHUNKS: usize = 16;
const SLOW_FOR: Duration = Duration::from_secs(10);
/// Then this, for the migration to converge.
const FAST: u64 = 1 << 30;
/// Pings lost over one migration beyond which the test fails (OVS users report 5-10
/// at 100 ms; TCG guests on a shared two-core machine are slower to switch over).
const MAX_LOST: u64 = 30;

/// One QEMU of guest A: on `port`, with a QMP socket, and `-incoming` for a
/// destination.
struct Instance {
    guest: Guest,
    qmp_path: PathBuf,
}

struct Setup<'a> {
    dir: &'a Scratch,
    img: &'a Path,
    socket: SocketRole,
    /// Guest A's kernel command line (the same for every instance).
    append: String,
}

impl Setup<'_> {
    fn launch_a(&self, name: &'static str, port: &str, incoming: Option<&Path>) -> Instance {
        let qmp_path = self.dir.path(&format!("qmp-{name}.sock"));
        let mut args = vec![
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", qmp_path.display()),
        ];
        if let Some(p) = incoming {
            // Paused after the hand-over (-S), until the test has compared memory.
            args.push("-S".into());
            args.push("-incoming".into());
            args.push(format!("unix:{}", p.display()));
        }
        let guest = Guest::launch(&GuestSpec {
            name,
            sock: self.dir.path(&format!("{port}.sock")),
            mac: MAC_A,
            append: &self.append,
            images: self.img,
            socket: self.socket,
            mem_path: None,
            user: None,
            host_mtu: None,
            no_offloads: false,
            packed: false,
            qemu_args: &args,
        });
        Instance { guest, qmp_path }
    }
}

impl Setup<'_> {
    /// Guest B, on port vm2, with its own kernel command line.
    fn launch_b(&self, append: &str) -> Guest {
        Guest::launch(&GuestSpec {
            name: "guest-b",
            sock: self.dir.path("vm2.sock"),
            mac: MAC_B,
            append,
            images: self.img,
            socket: self.socket,
            mem_path: None,
            user: None,
            host_mtu: None,
            no_offloads: false,
            packed: false,
            qemu_args: &[],
        })
    }
}

/// The `VSW-REPLY seq=N` numbers printed by any of the consoles, sorted, unique.
fn replies(consoles: &[&Guest]) -> Vec<u64> {
    let mut v: Vec<u64> = consoles
        .iter()
        .flat_map(|g| {
            g.output()
                .lines()
                .filter(|l| l.starts_with("VSW-REPLY seq="))
                .map(|l| num(l, "seq="))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Pings without a reply between the first and the last reply seen.
fn lost(seqs: &[u64]) -> u64 {
    seqs.windows(2).map(|w| w[1] - w[0] - 1).sum()
}

/// Waits until `n` more replies than `from` have been seen on the consoles.
fn wait_replies(consoles: &[&Guest], from: usize, n: usize, what: &str) -> Vec<u64> {
    let t0 = Instant::now();
    loop {
        let r = replies(consoles);
        if r.len() >= from + n {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{what}: {} replies, waiting for {}:\n{}",
            r.len(),
            from + n,
            consoles.last().unwrap().output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_line(show: &str, port: &str) -> String {
    show.lines()
        .find(|l| l.split_whitespace().nth(2) == Some(&format!("{port}:")))
        .unwrap_or_else(|| panic!("no port {port}:\n{show}"))
        .to_string()
}

fn wait_connected(sw: &Switch, port: &str) {
    sw.wait_show(&format!("{port} connected"), Duration::from_secs(60), |s| {
        port_line(s, port).contains("connected=true")
    });
}

/// What one migration did.
struct Report {
    secs: f64,
    /// QEMU's passes over dirty memory (`ram.dirty-sync-count`).
    dirty_syncs: u64,
    downtime_ms: u64,
    /// The most rings the source port showed logging (`dirty_log=N`).
    logging_rings: u64,
}

/// Migrates from `src` to the QEMU listening at `uri` (started with `-S`). With
/// `slow_for`, the bandwidth stays at [`SLOW`] that long. When the migration has
/// completed, checks that the destination's memory is the source's, page for page,
/// then ends the source and starts the destination.
fn migrate(
    sw: &Switch,
    src: &Instance,
    src_port: &str,
    dst: &Instance,
    uri: &Path,
    slow_for: Option<Duration>,
) -> Report {
    let mut d = Qmp::connect(&dst.qmp_path); // QEMU is up and waits for the stream
    let r = migrate_paused(sw, src, src_port, uri, slow_for);
    let t0 = Instant::now();
    while d.run("query-status", json!({}))["status"] != "paused" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "destination not paused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (pages, differ) = compare_ram(src.guest.pid(), dst.guest.pid());
    eprintln!(
        "memory after the hand-over: {pages} pages of 4 KiB compared, {} differ{}",
        differ.len(),
        if differ.is_empty() {
            String::new()
        } else {
            format!(" (first: {:x?})", &differ[..differ.len().min(8)])
        }
    );
    assert!(
        differ.is_empty(),
        "pages the switch wrote during the migration reached the destination stale"
    );
    Qmp::connect(&src.qmp_path).quit();
    d.run("cont", json!({}));
    r
}

/// The guest RAM memfd of QEMU `pid` (its `memory-backend-memfd`).
fn ram_of(pid: u32) -> std::fs::File {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let p = e.unwrap().path();
        if let Ok(t) = std::fs::read_link(&p) {
            if t.to_string_lossy()
                .starts_with("/memfd:memory-backend-memfd")
            {
                return std::fs::File::open(&p).unwrap();
            }
        }
    }
    panic!("QEMU {pid} has no memory-backend-memfd");
}

/// Compares two stopped guests' RAM: (pages compared, offsets of pages that differ).
fn compare_ram(a: u32, b: u32) -> (u64, Vec<u64>) {
    use std::io::Read;
    let (mut fa, mut fb) = (ram_of(a), ram_of(b));
    let len = fa.metadata().unwrap().len();
    assert_eq!(len, fb.metadata().unwrap().len(), "RAM sizes differ");
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut differ = Vec::new();
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        for (k, (pa, pb)) in ba[..n].chunks(4096).zip(bb[..n].chunks(4096)).enumerate() {
            if pa != pb {
                differ.push(off + 4096 * k as u64);
            }
        }
        off += n as u64;
    }
    (len / 4096, differ)
}

/// Runs the migration until QEMU reports it completed (both sides then stopped).
fn migrate_paused(
    sw: &Switch,
    src: &Instance,
    src_port: &str,
    uri: &Path,
    slow_for: Option<Duration>,
) -> Report {
    let mut q = Qmp::connect(&src.qmp_path);
    let first = if slow_for.is_some() { SLOW } else { FAST };
    q.run("migrate-set-parameters", json!({"max-bandwidth": first}));
    let t0 = Instant::now();
    q.run("migrate", json!({"uri": format!("unix:{}", uri.display())}));
    let mut logging_rings = 0;
    let mut fast = slow_for.is_none();
    loop {
        let st = q.run("query-migrate", json!({}));
        let status = st["status"].as_str().unwrap_or("").to_string();
        if status == "completed" {
            let r = Report {
                secs: t0.elapsed().as_secs_f64(),
                dirty_syncs: st["ram"]["dirty-sync-count"].as_u64().unwrap_or(0),
                downtime_ms: st["downtime"].as_u64().unwrap_or(0),
                logging_rings,
            };
            return r;
        }
        assert!(
            matches!(
                status.as_str(),
                "setup" | "active" | "device" | "pre-switchover"
            ),
            "migration {status}: {st}\n{}",
            src.guest.output()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "migration did not complete: {st}"
        );
        logging_rings = logging_rings.max(num(&port_line(&sw.ctl("show"), src_port), "dirty_log="));
        if !fast && t0.elapsed() > slow_for.unwrap() {
            q.run("migrate-set-parameters", json!({"max-bandwidth": FAST}));
            fast = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (10 s at most) until `text` holds `needle`; else fails with `what`.
fn wait_text(text: &std::sync::Mutex<String>, needle: &str, what: &str) {
    let t0 = Instant::now();
    while !text.lock().unwrap().contains(needle) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (10 s at most) until the switch's table has `mac` on `port`.
fn wait_fdb(sw: &Switch, mac: &str, port: &str, what: &str) {
    let t0 = Instant::now();
    while fdb_port_of(sw, mac).as_deref() != Some(port) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: {mac} not on {port}:\n{}",
            sw.ctl("fdb")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fdb_port_of(sw: &Switch, mac: &str) -> Option<String> {
    sw.ctl("fdb")
        .lines()
        .find(|l| l.contains(mac))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
}

fn ports_config(dir: &Scratch, mode: &'static str) -> PathBuf {
    let ports: Vec<PortSpec> = ["vm1", "vm1b", "vm2"]
        .into_iter()
        .map(|name| PortSpec {
            name,
            mode,
            queues: 1,
        })
        .collect();
    write_config(dir, &ports, "")
}

/// How a run of [`migrate_with_stream`] is set up.
struct RunOpts {
    /// The switch's ports' `mode` ("server": QEMU connects; "client": QEMU listens).
    port_mode: &'static str,
    /// Migrate the guest back to vm1 afterwards.
    back: bool,
}

#[test]
fn server_mode_a_guest_migrates_with_its_stream_intact_and_back() {
    migrate_with_stream(RunOpts {
        port_mode: "server",
        back: true,
    });
}

#[test]
fn client_mode_a_guest_migrates_with_its_stream_intact() {
    migrate_with_stream(RunOpts {
        port_mode: "client",
        back: false,
    });
}

fn migrate_with_stream(opts: RunOpts) {
    let img = images();
    let dir = Scratch::new("migration");
    let socket = match opts.port_mode {
        "server" => SocketRole::QemuConnects,
        _ => SocketRole::QemuListens,
    };
    let setup = Setup {
        dir: &dir,
        img: &img,
        socket,
        append: "vsw.ip=10.0.0.1/24 vsw.role=migrant vsw.peer=10.0.0.2 vsw.kb=8192 vsw.repeat=16 vsw.count=3000 vsw.wait=240 vsw.secs=600"
            .into(),
    };
    let a1 = setup.launch_a("a-vm1", "vm1", None);
    let b = setup.launch_b("vsw.ip=10.0.0.2/24 vsw.role=tcpsend vsw.peer=10.0.0.1 vsw.kb=8192 vsw.repeat=16 vsw.wait=240 vsw.linger=600");
    let cfg = ports_config(&dir, opts.port_mode);
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    a1.guest
        .wait_line("VSW-STREAM-START", Duration::from_secs(300));
    let before = wait_replies(&[&a1.guest], 0, 10, "before migrating").len();
    let sending = b.wait_line("VSW-SENDING", Duration::from_secs(300));
    b.wait_line("VSW-PEER-UP", Duration::from_secs(300));

    // Out: vm1 -> vm1b, slow while B sends (it starts 2 s after VSW-PEER-UP).
    let uri = dir.path("migrate-1.sock");
    let a2 = setup.launch_a("a-vm1b", "vm1b", Some(&uri));
    wait_connected(&sw, "vm1b");
    let out = migrate(&sw, &a1, "vm1", &a2, &uri, Some(SLOW_FOR));
    let consoles = [&a1.guest, &a2.guest];
    let seqs = wait_replies(&consoles, before, 40, "after migrating");
    a2.guest.wait_line("VSW-RECEIVED", Duration::from_secs(180));
    let lost_out = lost(&seqs);
    eprintln!(
        "migration vm1 -> vm1b: {:.1} s, {} dirty passes, downtime {} ms; pings lost: {lost_out} of {}",
        out.secs,
        out.dirty_syncs,
        out.downtime_ms,
        seqs.last().unwrap() - seqs[0] + 1
    );
    // Every chunk arrived as sent, and the stream ran across the hand-over: chunks
    // completed on both sides of it.
    let want = sending.split("sha=").nth(1).unwrap().trim().to_string();
    // Whole lines only: the line being printed at the hand-over is cut in two, its
    // start on the source's console and its end on the destination's.
    let chunks = |g: &Guest| -> Vec<String> {
        g.output()
            .lines()
            .filter(|l| l.starts_with("VSW-CHUNK"))
            .filter_map(|l| l.split("sha=").nth(1).map(|h| h.trim().to_string()))
            .filter(|h| h.len() == 64)
            .collect()
    };
    let (on_src, on_dst) = (chunks(&a1.guest), chunks(&a2.guest));
    eprintln!(
        "stream: {} chunks of 8 MiB before the hand-over, {} after; B sent sha={want}",
        on_src.len(),
        on_dst.len()
    );
    assert!(on_src.len() + on_dst.len() >= STREAM_CHUNKS - 1);
    let done = a2.guest.wait_line("VSW-RECEIVED", Duration::from_secs(1));
    assert_eq!(num(&done, "chunks="), STREAM_CHUNKS as u64);
    for (i, c) in on_src.iter().chain(&on_dst).enumerate() {
        assert_eq!(c, &want, "chunk {i} arrived changed");
    }
    assert!(
        !on_src.is_empty() && !on_dst.is_empty(),
        "the stream did not run across the hand-over"
    );
    assert_eq!(out.logging_rings, 2, "vm1's rings did not both log");
    assert!(out.dirty_syncs >= 2, "no dirty phase: {}", out.dirty_syncs);
    assert!(lost_out <= MAX_LOST, "{lost_out} pings lost");
    let show = sw.ctl("show");
    let vm1b = port_line(&show, "vm1b");
    assert!(
        num(&vm1b, "rarp_sent=") >= 1,
        "the destination did not announce the guest: {vm1b}"
    );
    assert_eq!(fdb_port_of(&sw, MAC_A).as_deref(), Some("vm1b"));
    assert!(sw.log().contains("dirty log area set"));

    if !opts.back {
        drop((a1, a2, b));
        let log = sw.stop();
        assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
        return;
    }

    // And back: vm1b -> vm1 (free again: the source QEMU quit), at full speed.
    let uri = dir.path("migrate-2.sock");
    let a3 = setup.launch_a("a-vm1-again", "vm1", Some(&uri));
    wait_connected(&sw, "vm1");
    let back = migrate(&sw, &a2, "vm1b", &a3, &uri, None);
    let consoles = [&a1.guest, &a2.guest, &a3.guest];
    let n = replies(&consoles).len();
    let all = wait_replies(&consoles, n, 20, "after migrating back");
    let lost_back = lost(&all) - lost_out;
    eprintln!(
        "migration vm1b -> vm1: {:.1} s, downtime {} ms; pings lost: {lost_back}",
        back.secs, back.downtime_ms
    );
    assert!(lost_back <= MAX_LOST, "{lost_back} pings lost going back");
    assert_eq!(fdb_port_of(&sw, MAC_A).as_deref(), Some("vm1"));
    let show = sw.ctl("show");
    assert!(num(&port_line(&show, "vm1"), "rarp_sent=") >= 1, "{show}");
    for p in ["vm1", "vm1b", "vm2"] {
        assert_eq!(sw.port_stats(p)["guest_errors"], 0, "{p}");
    }
    drop((a1, a2, a3, b));
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

/// A veth pair in the host's namespace, joining two switches; deleted on drop.
struct Link(&'static str);

impl Link {
    fn new(a: &'static str, b: &'static str) -> Link {
        use common::netns::{must, sh};
        let _ = sh("ip", &["link", "del", a]);
        must("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
        for i in [a, b] {
            must("ip", &["link", "set", i, "up"]);
        }
        Link(a)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = common::netns::sh("ip", &["link", "del", self.0]);
    }
}

/// A switch's config: its own control socket, the vhost-user `ports` (server mode)
/// and an af-packet port `uplink` on `iface`; PMD threads sleep when idle, so two
/// switches and three guests share the machine's two cores.
fn switch_config(dir: &Scratch, name: &str, ports: &[&str], uplink: &str, iface: &str) -> PathBuf {
    let mut s = format!(
        "[switch]\npmd_cores = [{}]\ncontrol_socket = \"{}\"\npmd_sleep_max_us = 1000\n\n[metrics]\nlisten = \"\"\n\n[mempool]\nmbufs = 8192\nhugepages = \"auto\"\n",
        pmd_core(),
        dir.path(&format!("{name}.ctl")).display()
    );
    for p in ports {
        s += &format!(
            "\n[[port]]\nname = \"{p}\"\ndriver = \"vhost-user\"\npath = \"{}\"\nmode = \"server\"\n",
            dir.path(&format!("{p}.sock")).display()
        );
    }
    s += &format!("\n[[port]]\nname = \"{uplink}\"\ndriver = \"af-packet\"\niface = \"{iface}\"\n");
    let f = dir.path(&format!("{name}.toml"));
    std::fs::write(&f, s).unwrap();
    f
}

#[test]
fn a_guest_migrated_to_another_switch_is_found_through_the_uplink() {
    // Two switches joined by a veth pair (af-packet ports up1 and up2), as two hosts
    // on one network. Guest A, idle, moves from switch 1's vm1 to switch 2's vm1b
    // while B pings it every 100 ms. Switch 2 announces A (a RARP frame, flooded),
    // which tcpdump must see arrive on switch 1's uplink, and both tables move A.
    // (A's kernel also sends ARP soon after it resumes: a build without the
    // announcement lost 10 of B's pings here, this one 0-4; the frame on the wire is
    // what the test checks.)
    let img = images();
    let dir = Scratch::new("migration-2sw");
    let _link = Link::new("vswmig1", "vswmig2");
    let cfg1 = switch_config(&dir, "s1", &["vm1", "vm2"], "up1", "vswmig1");
    let cfg2 = switch_config(&dir, "s2", &["vm1b"], "up2", "vswmig2");
    let s1 = Switch::start(&cfg1, dir.path("s1.ctl"));
    let s2 = Switch::start(&cfg2, dir.path("s2.ctl"));
    let setup = Setup {
        dir: &dir,
        img: &img,
        socket: SocketRole::QemuConnects,
        append: "vsw.ip=10.0.0.1/24 vsw.role=idle vsw.secs=600".into(),
    };
    let a1 = setup.launch_a("a-s1", "vm1", None);
    let b = setup.launch_b("vsw.ip=10.0.0.2/24 vsw.role=pingstream vsw.peer=10.0.0.1 vsw.count=3000 vsw.wait=240 vsw.secs=600");
    b.wait_line("VSW-STREAM-START", Duration::from_secs(300));
    let before = wait_replies(&[&b], 0, 10, "before migrating").len();
    assert_eq!(fdb_port_of(&s1, MAC_A).as_deref(), Some("vm1"));

    let uri = dir.path("migrate.sock");
    let a2 = setup.launch_a("a-s2", "vm1b", Some(&uri));
    wait_connected(&s2, "vm1b");
    // What crosses the wire from switch 2 to switch 1: its announcement, flooded.
    which("tcpdump");
    let mut dump = std::process::Command::new("tcpdump")
        .args([
            "-l",
            "-e",
            "-n",
            "-Q",
            "in",
            "-i",
            "vswmig1",
            "ether proto 0x8035",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    let dumped = capture(&mut dump, "tcpdump");
    wait_text(&dumped, "listening on", "tcpdump did not start");
    let out = migrate(&s1, &a1, "vm1", &a2, &uri, None);
    wait_fdb(&s2, MAC_A, "vm1b", "switch 2");
    wait_fdb(&s1, MAC_A, "up1", "switch 1");
    wait_text(
        &dumped,
        "Reverse Request",
        "no RARP from switch 2 reached switch 1's uplink",
    );
    let _ = dump.kill();
    let _ = dump.wait();
    let rarp = dumped.lock().unwrap().clone();
    let rarp = rarp
        .lines()
        .find(|l| l.contains("Reverse Request"))
        .unwrap();
    assert!(rarp.contains(MAC_A), "{rarp}");
    eprintln!("on the wire between the switches: {rarp}");
    let seqs = wait_replies(&[&b], before, 30, "after migrating");
    let lost_out = lost(&seqs);
    eprintln!(
        "migration to the other switch: {:.1} s, downtime {} ms; B's pings to the silent guest lost: {lost_out}",
        out.secs, out.downtime_ms
    );
    let vm1b = port_line(&s2.ctl("show"), "vm1b");
    assert!(num(&vm1b, "rarp_sent=") >= 1, "{vm1b}");
    assert!(lost_out <= MAX_LOST, "{lost_out} pings lost");
    drop((a1, a2, b));
    for sw in [s1, s2] {
        let log = sw.stop();
        assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
    }
}
