//! Soak (`scripts/soak.sh MINUTES`): everything at once for a while, then the switch's
//! resources compared with the start.
//!
//! Ports vm1 and vm2 carry testpmd traffic, testpmd restarted every 30 s (guests
//! reconnecting); port `flood` gets a guest transmitting from ever-new source MACs,
//! reconnecting every 100000 frames (a MAC flood, with table aging at 10 s); port `evil`
//! cycles through hostile frontends. After a warm-up round everything stops and the
//! switch's RSS, open fds, mappings and free mbufs are sampled; then everything runs
//! for `SOAK_MINUTES`, stops, and they are sampled again. The test fails if fds or
//! mappings grew, RSS grew by more than `RSS_SLACK_KB`, or the free mbufs at rest
//! differ by more than the PMD thread's cache can hold (at stop the switch must have
//! every mbuf back, exactly).
//!
//! The hostile frontends include a blocking call eventfd loaded to its maximum and
//! the guest memory file truncated to 0 under live rings.

mod common;
use common::*;
use pmd::vhost::driver::{DriverMem, DriverRing};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most the switch's RSS may grow between the two samples.
const RSS_SLACK_KB: u64 = 8 << 10;
/// Most free mbufs a PMD thread's cache may hold apart from the pool's ring
/// (`pmd::mempool::CACHE_MAX + CACHE_BURST`).
const PMD_CACHE_MBUFS: u64 = 320;
/// How long the warm-up round runs.
const WARMUP: Duration = Duration::from_secs(30);
/// How long one testpmd lives before it is replaced.
const GUEST_LIFE: Duration = Duration::from_secs(30);
/// Frames a flood guest sends before it disconnects and a new one connects.
const FLOOD_FRAMES: u64 = 100_000;

/// What the soak's threads did, for the report.
#[derive(Default)]
struct Activity {
    testpmd_starts: AtomicU64,
    flood_frames: AtomicU64,
    flood_connections: AtomicU64,
    attacks: AtomicU64,
}

/// What runs during a round.
struct RoundOpts<'a> {
    dir: &'a Scratch,
    sw: &'a Switch,
    length: Duration,
    activity: &'a Activity,
}

/// Runs testpmd, the flood and the hostile frontends at once for `opts.length`; returns
/// when all of them have stopped and disconnected.
fn round(opts: &RoundOpts) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| guests(opts, &stop));
        s.spawn(|| flood(opts, &stop));
        s.spawn(|| hostile(opts, &stop));
        let t0 = Instant::now();
        while t0.elapsed() < opts.length {
            std::thread::sleep(Duration::from_secs(1));
            // The switch stays alive and answers throughout.
            let _ = opts.sw.ctl("show");
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// Sleeps up to `d`, returning early (false) once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// testpmd on vm1 and vm2 forwarding to each other, replaced every `GUEST_LIFE`.
fn guests(opts: &RoundOpts, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let mut tp = Testpmd::start(opts.dir, ["vm1", "vm2"], false, "soak");
        opts.activity.testpmd_starts.fetch_add(1, Ordering::Relaxed);
        tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
        tp.cmd("start tx_first 4", "tx_first");
        sleep_unless(stop, GUEST_LIFE.saturating_sub(t0.elapsed()));
        tp.cmd("stop", "Done.");
        tp.quit();
    }
}

/// Flood guests on port `flood`, each from new MACs, one after the other.
fn flood(opts: &RoundOpts, stop: &AtomicBool) {
    let sock = opts.dir.path("flood.sock");
    while !stop.load(Ordering::Relaxed) {
        let first_mac = opts.activity.flood_frames.load(Ordering::Relaxed);
        let sent = flood_guest(
            &sock,
            &FloodOpts {
                first_mac,
                frames: FLOOD_FRAMES,
                stop: Some(stop),
            },
        );
        opts.activity
            .flood_frames
            .fetch_add(sent, Ordering::Relaxed);
        opts.activity
            .flood_connections
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One hostile frontend on `sock`: it connects, misbehaves, and goes.
type Attack = fn(&Path);

/// Hostile frontends on port `evil`, round robin.
fn hostile(opts: &RoundOpts, stop: &AtomicBool) {
    let attacks: [Attack; 8] = [
        garbage_request,
        missing_fd,
        ring_index_out_of_range,
        descriptor_outside_memory,
        table_replaced_under_rings,
        hang_up_mid_handshake,
        full_blocking_call_fd,
        memory_truncated,
    ];
    let sock = opts.dir.path("evil.sock");
    for a in attacks.iter().cycle() {
        if !sleep_unless(stop, Duration::from_millis(50)) {
            break;
        }
        a(&sock);
        opts.activity.attacks.fetch_add(1, Ordering::Relaxed);
    }
}

fn guest_mem() -> DriverMem {
    DriverMem::new(0, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000)
}

fn garbage_request(sock: &Path) {
    let mut f = Frontend::connect(sock);
    f.send(9999, &[], &[]);
    assert!(
        f.closed_by_switch(),
        "switch kept a frontend that sent garbage"
    );
}

fn missing_fd(sock: &Path) {
    let mem = guest_mem();
    let mut f = Frontend::connect(sock);
    f.send(SET_OWNER, &[], &[]);
    f.mem_table(&[&mem], 0);
    assert!(f.closed_by_switch(), "memory table without its fd accepted");
}

fn ring_index_out_of_range(sock: &Path) {
    let mut f = Frontend::connect(sock);
    f.vring_state(SET_VRING_NUM, 77, 256);
    assert!(f.closed_by_switch(), "vring index 77 accepted");
}

/// A valid device whose transmit ring then offers a buffer outside its memory.
fn descriptor_outside_memory(sock: &Path) {
    let mem = guest_mem();
    let _f = Frontend::device(sock, &mem);
    let mut tx = DriverRing::new(&mem, TX_RING, RING_SIZE);
    std::thread::sleep(Duration::from_millis(100));
    tx.set_desc(0, mem.gpa_base - 4096, 1500, 0, 0);
    tx.push(0);
    std::thread::sleep(Duration::from_millis(100));
}

/// A valid device whose memory table is replaced while its rings run.
fn table_replaced_under_rings(sock: &Path) {
    let mem = guest_mem();
    let mut f = Frontend::device(sock, &mem);
    std::thread::sleep(Duration::from_millis(100));
    let mem2 = DriverMem::new(0, 8 << 20, 0x2_0000_0000, 0x7f10_0000_0000);
    f.vring_addr(0, &DriverRing::new(&mem2, 0, RING_SIZE));
    f.mem_table(&[&mem2], 1);
    std::thread::sleep(Duration::from_millis(100));
}

fn hang_up_mid_handshake(sock: &Path) {
    let mem = guest_mem();
    let mut f = Frontend::connect(sock);
    f.send(SET_OWNER, &[], &[]);
    f.send(SET_FEATURES, &(VERSION_1 | MRG_RXBUF).to_le_bytes(), &[]);
    f.mem_table(&[&mem], 1);
    f.vring_state(SET_VRING_NUM, 0, 256);
}

/// A device whose call eventfds are blocking and one short of full, then a frame to
/// send: the switch must not block interrupting it.
fn full_blocking_call_fd(sock: &Path) {
    let mem = guest_mem();
    let _f = Frontend::device_with(
        sock,
        &mem,
        &DeviceOpts {
            call_count: 0xffff_ffff_ffff_fffe,
            call_blocking: true,
        },
    );
    let mut tx = DriverRing::new(&mem, TX_RING, RING_SIZE);
    mem.write(FLOOD_BUFS, &flood_frame(0xdead));
    tx.set_desc(0, tx.gpa(FLOOD_BUFS), (NET_HDR + 60) as u32, 0, 0);
    tx.push(0);
    std::thread::sleep(Duration::from_millis(200));
}

/// A device whose memory file shrinks to nothing while the switch polls its rings.
fn memory_truncated(sock: &Path) {
    let mem = guest_mem();
    let _f = Frontend::device(sock, &mem);
    std::thread::sleep(Duration::from_millis(100));
    mem.file().set_len(0).expect("truncate guest memory");
    std::thread::sleep(Duration::from_millis(200));
}

/// The switch's resources at one moment.
#[derive(Clone, Copy)]
struct Sample {
    rss_kb: u64,
    hwm_kb: u64,
    fds: u64,
    maps: u64,
    free_mbufs: u64,
}

fn status_kb(status: &str, key: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Samples the switch once it is at rest: every guest gone, one second settled.
fn sample(sw: &Switch) -> Sample {
    sw.wait_show("all ports down", Duration::from_secs(20), |s| {
        !s.contains("up=true")
    });
    std::thread::sleep(Duration::from_secs(1));
    let proc = format!("/proc/{}", sw.pid());
    let status = std::fs::read_to_string(format!("{proc}/status")).unwrap();
    let show = sw.ctl("show");
    let free = show
        .lines()
        .find_map(|l| l.strip_prefix("mempool: free="))
        .unwrap_or_else(|| panic!("no mempool line in show:\n{show}"));
    Sample {
        rss_kb: status_kb(&status, "VmRSS:"),
        hwm_kb: status_kb(&status, "VmHWM:"),
        fds: std::fs::read_dir(format!("{proc}/fd")).unwrap().count() as u64,
        maps: std::fs::read_to_string(format!("{proc}/maps"))
            .unwrap()
            .lines()
            .count() as u64,
        free_mbufs: free.split_whitespace().next().unwrap().parse().unwrap(),
    }
}

fn print_table(minutes: f64, a: &Sample, b: &Sample) {
    eprintln!("\nsoak: {minutes} min");
    eprintln!("{:<12} {:>10} {:>10} {:>10}", "", "start", "end", "delta");
    for (k, x, y) in [
        ("rss_kb", a.rss_kb, b.rss_kb),
        ("hwm_kb", a.hwm_kb, b.hwm_kb),
        ("fds", a.fds, b.fds),
        ("maps", a.maps, b.maps),
        ("free_mbufs", a.free_mbufs, b.free_mbufs),
    ] {
        eprintln!("{k:<12} {x:>10} {y:>10} {:>+10}", y as i64 - x as i64);
    }
}

#[test]
#[ignore = "long: run by scripts/soak.sh MINUTES"]
fn soak() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .expect("SOAK_MINUTES (run scripts/soak.sh MINUTES)")
        .parse()
        .expect("SOAK_MINUTES is a number of minutes");
    let dir = Scratch::new("soak");
    let cfg = write_config(
        &dir,
        &server_ports(&["vm1", "vm2", "flood", "evil"]),
        "[fdb]\naging_secs = 10\n",
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let activity = Activity::default();
    let mut opts = RoundOpts {
        dir: &dir,
        sw: &sw,
        length: WARMUP,
        activity: &activity,
    };
    round(&opts);
    let start = sample(&sw);
    let (vm1, evil) = (sw.port_stats("vm1"), sw.port_stats("evil"));
    opts.length = Duration::from_secs_f64(minutes * 60.0);
    round(&opts);
    let end = sample(&sw);
    let (vm1_end, evil_end) = (sw.port_stats("vm1"), sw.port_stats("evil"));
    print_table(minutes, &start, &end);
    eprintln!(
        "testpmd starts={} flood frames={} flood connections={} hostile frontends={}; \
         during the soak: vm1 rx_packets +{}, evil guest_errors +{}",
        activity.testpmd_starts.load(Ordering::Relaxed),
        activity.flood_frames.load(Ordering::Relaxed),
        activity.flood_connections.load(Ordering::Relaxed),
        activity.attacks.load(Ordering::Relaxed),
        vm1_end["rx_packets"] - vm1["rx_packets"],
        evil_end["guest_errors"] - evil["guest_errors"],
    );
    assert!(
        vm1_end["rx_packets"] > vm1["rx_packets"],
        "no testpmd traffic"
    );
    assert!(
        evil_end["guest_errors"] > evil["guest_errors"],
        "no attack counted"
    );
    assert!(end.fds <= start.fds, "open fds grew");
    assert!(end.maps <= start.maps, "mappings grew");
    assert!(
        end.rss_kb <= start.rss_kb + RSS_SLACK_KB,
        "RSS grew by more than {RSS_SLACK_KB} kB"
    );
    assert!(
        end.free_mbufs.abs_diff(start.free_mbufs) <= PMD_CACHE_MBUFS,
        "free mbufs at rest differ by more than a PMD cache holds"
    );
    let log = sw.stop();
    assert!(
        log.contains("free_mbufs=8192 total=8192"),
        "mbufs leaked at stop"
    );
}
