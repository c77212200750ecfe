//! A hostile frontend on port "evil" while DPDK testpmd sends traffic through ports
//! vm1 and vm2: malformed and out-of-range control messages, a valid ring that then
//! carries a descriptor pointing outside guest memory, and control messages that
//! change a running ring and the memory table. Each is refused, logged and counted;
//! the switch keeps forwarding between vm1 and vm2 without a drop.

mod common;
use common::*;
use pmd::vhost::driver::{DriverMem, DriverRing, F_WRITE};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_log(sw: &Switch, needle: &str) {
    let t0 = Instant::now();
    while !sw.log().contains(needle) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "switch never logged {needle:?}:\n{}",
            sw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn evil_line(sw: &Switch) -> String {
    sw.ctl("show")
        .lines()
        .find(|l| l.starts_with("port 2 evil"))
        .unwrap()
        .to_string()
}

fn attack(sw: &Switch, sock: &Path) {
    // 1. An unknown request code.
    let mut f = Frontend::connect(sock);
    f.send(9999, &[], &[]);
    assert!(
        f.closed_by_switch(),
        "switch kept a connection that sent garbage"
    );
    wait_log(sw, "unknown request code 9999");

    // 2. A memory table with fewer file descriptors than regions.
    let mem = DriverMem::new(4096, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000);
    let mut f = Frontend::connect(sock);
    f.send(SET_OWNER, &[], &[]);
    f.mem_table(&[&mem], 0);
    assert!(f.closed_by_switch());
    wait_log(sw, "1 regions but 0 file descriptors");

    // 3. A ring index out of range, and a body of the wrong size.
    let mut f = Frontend::connect(sock);
    f.vring_state(SET_VRING_NUM, 77, 256);
    assert!(f.closed_by_switch());
    wait_log(sw, "vring index 77 out of range");
    let mut f = Frontend::connect(sock);
    f.send(SET_VRING_NUM, &[1, 2, 3], &[]);
    assert!(f.closed_by_switch());
    wait_log(sw, "body is 3 bytes");

    // A kick/call message whose NOFD flag says "no descriptor" but carries one.
    let mut f = Frontend::connect(sock);
    f.send(
        SET_VRING_CALL,
        &(1u64 << 8).to_le_bytes(),
        &[eventfd_file()],
    );
    assert!(f.closed_by_switch());
    wait_log(
        sw,
        "SET_VRING_CALL came with 1 file descriptors, expected 0",
    );

    // 4. A valid device; rings set up before the memory table (an order QEMU may use).
    let mut f = Frontend::connect(sock);
    f.send(SET_OWNER, &[], &[]);
    let offered = f.get_u64(GET_FEATURES);
    assert!(offered & VERSION_1 != 0 && offered & MRG_RXBUF != 0);
    f.send(SET_FEATURES, &(VERSION_1 | MRG_RXBUF).to_le_bytes(), &[]);
    let rx = DriverRing::new(&mem, 0, 256);
    let mut tx = DriverRing::new(&mem, 0x10000, 256);
    for (i, r) in [(0u32, &rx), (1, &tx)] {
        f.vring_state(SET_VRING_NUM, i, 256);
        f.vring_state(SET_VRING_BASE, i, 0);
        f.vring_addr(i, r);
    }
    f.mem_table(&[&mem], 1);
    for i in 0..2u64 {
        f.eventfd_msg(SET_VRING_CALL, i);
        f.eventfd_msg(SET_VRING_KICK, i);
    }
    let t0 = Instant::now();
    while !evil_line(sw).contains("vrings=[live,live]") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "evil rings never went live: {}",
            evil_line(sw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The guest transmits a chain pointing outside its memory.
    tx.set_desc(0, 0x1_0000_0000 - 4096, 1500, 0, 0);
    tx.push(0);
    wait_log(
        sw,
        "guest error, queue stopped: descriptor buffer outside guest memory",
    );
    assert!(
        evil_line(sw).contains("vrings=[live,broken]"),
        "{}",
        evil_line(sw)
    );

    // 5. Control messages that change a running ring: its address moves outside memory.
    let bad = DriverRing::new(&mem, (4 << 20) - 0x1000, 256);
    f.vring_addr(0, &bad);
    wait_log(
        sw,
        "ring rejected: avail ring 0x7f0000400000+518 is outside guest memory",
    );
    // A new memory table while rings run: rings are taken down and validated again.
    let mem2 = DriverMem::new(0, 8 << 20, 0x2_0000_0000, 0x7f10_0000_0000);
    f.vring_addr(0, &DriverRing::new(&mem2, 0, 256));
    f.mem_table(&[&mem2], 1);
    let t0 = Instant::now();
    while !evil_line(sw).contains("vrings=[live,") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ring 0 not live on the new table: {}",
            evil_line(sw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ring 1 still points into the old table: rejected against the new one.
    wait_log(sw, "ring rejected: descriptor table 0x7f0000010000");
    drop(f);
}

#[test]
fn hostile_frontend_is_contained_while_others_forward() {
    let dir = Scratch::new("evil");
    let cfg = write_config(&dir, &server_ports(&["vm1", "vm2", "evil"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut tp = Testpmd::start(&dir, ["vm1", "vm2"], false, "evil");
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    let sock = dir.path("evil.sock");
    let n = traffic_round(&sw, &mut tp, 4, || attack(&sw, &sock));
    let st = sw.port_stats("evil");
    eprintln!(
        "forwarded {n} frames between vm1 and vm2 during the attack; evil port guest_errors={}",
        st["guest_errors"]
    );
    assert!(st["guest_errors"] >= 3, "errors not counted: {st:?}");
    tp.quit();
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

/// Sets up a valid device on `sock` whose receive ring offers no buffers: a guest
/// that stopped taking frames. Returns the connection (keep it open).
fn stuck_guest(sock: &Path, mem: &DriverMem) -> Frontend {
    Frontend::device(sock, mem)
}

/// How the third guest's receive ring gets buffers while testpmd floods broadcast.
#[derive(Clone, Copy, Debug)]
enum SlowGuest {
    /// Never: a guest that stopped taking frames.
    Stuck,
    /// One new buffer every `every`, from a thread of the test: a guest that takes
    /// frames, but far too slowly.
    Trickle { every: Duration },
}

/// What `flood_past_slow_guest` saw.
struct FloodOutcome {
    /// testpmd port 0 (attached to vm1).
    testpmd_tx: u64,
    vm1: std::collections::HashMap<String, u64>,
    vm2: std::collections::HashMap<String, u64>,
    slow: std::collections::HashMap<String, u64>,
    /// Receive buffers the slow guest offered in all.
    slow_buffers: u64,
}

/// Port "slow" is a valid device whose receive ring fills as `guest` says; testpmd
/// sends broadcast frames through vm1 and vm2 for `secs` seconds, flooded to the
/// other of the two and to the slow guest. Checks that no mbuf leaked.
fn flood_past_slow_guest(tag: &str, guest: SlowGuest, secs: u64) -> FloodOutcome {
    let dir = Scratch::new(tag);
    let cfg = write_config(&dir, &server_ports(&["vm1", "vm2", "slow"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mem = DriverMem::new(0, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000);
    let _slow = stuck_guest(&dir.path("slow.sock"), &mem);
    let mut tp = Testpmd::start_opts(
        &dir,
        ["vm1", "vm2"],
        false,
        tag,
        1,
        ["ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff"],
    );
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    assert!(
        port_up(&sw, "port 2 slow"),
        "slow port should be up: {}",
        sw.ctl("show")
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let slow_buffers = std::thread::scope(|sc| {
        let feeder = match guest {
            SlowGuest::Stuck => None,
            SlowGuest::Trickle { every } => Some({
                let (mem, stop) = (&mem, &stop);
                sc.spawn(move || trickle(mem, every, stop))
            }),
        };
        tp.cmd("start tx_first 4", "tx_first");
        std::thread::sleep(Duration::from_secs(secs));
        tp.cmd("stop", "Done.");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        feeder.map_or(0, |h| h.join().unwrap())
    });
    std::thread::sleep(Duration::from_millis(500));
    let tpc = tp.port_stats();
    let out = FloodOutcome {
        testpmd_tx: tpc[0].tx,
        vm1: sw.port_stats("vm1"),
        vm2: sw.port_stats("vm2"),
        slow: sw.port_stats("slow"),
        slow_buffers,
    };
    eprintln!(
        "{guest:?}: testpmd port0 tx={} port1 rx={}; vm1 rx={} vm2 tx={}; slow guest offered {} buffers, tx={} drop_tx_full={}",
        tpc[0].tx,
        tpc[1].rx,
        out.vm1["rx_packets"],
        out.vm2["tx_packets"],
        out.slow_buffers,
        out.slow["tx_packets"],
        out.slow["drop_tx_full"]
    );
    assert_eq!(
        out.vm1["rx_packets"], out.testpmd_tx,
        "switch received all testpmd sent"
    );
    tp.quit();
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
    out
}

/// The slow guest's side of its receive ring (vring 0, as `stuck_guest` laid it out):
/// offers one 2 KiB buffer every `every` until `stop`. Returns how many it offered.
fn trickle(mem: &DriverMem, every: Duration, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut rx = DriverRing::new(mem, 0, 256);
    let mut n = 0u16;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Never more outstanding than the ring holds (a guest that overruns its own
        // ring would be a different test).
        if n.wrapping_sub(rx.used_idx()) < rx.size {
            let head = n % rx.size;
            rx.set_desc(
                head,
                rx.gpa(0x10_0000 + 2048 * head as u64),
                2048,
                F_WRITE,
                0,
            );
            rx.push(head);
            n = n.wrapping_add(1);
        }
        std::thread::sleep(every);
    }
    n as u64
}

/// Checks what every slow-guest test needs: vm2 got every frame, the others lost
/// none, testpmd was not throttled, and what the slow guest had no room for was
/// dropped and counted.
fn assert_others_unharmed(o: &FloodOutcome) {
    assert_eq!(
        o.vm2["tx_packets"], o.vm1["rx_packets"],
        "every broadcast from vm1 reached vm2"
    );
    assert_eq!(o.vm2["drop_tx_full"] + o.vm1["drop_tx_full"], 0);
    assert!(
        o.slow["tx_packets"] <= o.slow_buffers,
        "more frames than buffers"
    );
    assert!(
        o.slow["drop_tx_full"] > 0,
        "frames to the slow guest must be dropped and counted"
    );
    assert!(
        o.testpmd_tx > 100_000,
        "the slow guest throttled the others: only {} frames",
        o.testpmd_tx
    );
}

/// testpmd sends broadcast frames, flooded to vm2 and to a guest that takes none:
/// after `tx_stall_ms` the stuck guest's frames are dropped (counted) and it stops
/// holding back the others; vm2 gets every frame.
#[test]
fn stuck_guest_does_not_stall_the_others() {
    let o = flood_past_slow_guest("stuck", SlowGuest::Stuck, 3);
    assert_eq!(o.slow["tx_packets"], 0);
    assert_others_unharmed(&o);
}

/// As above, but the guest offers one receive buffer every 50 ms, well inside the
/// default `tx_stall_ms` (100; at 90 ms a sleep that overshoots on a loaded machine
/// would let the stall clock run out by chance): it takes frames, far too slowly to
/// keep its output queue from backing up. It must not hold the others to its rate.
#[test]
fn trickling_guest_does_not_throttle_the_others() {
    let o = flood_past_slow_guest(
        "trickle",
        SlowGuest::Trickle {
            every: Duration::from_millis(50),
        },
        3,
    );
    assert!(
        o.slow["tx_packets"] > 0,
        "the trickler got none of its frames"
    );
    assert_others_unharmed(&o);
}

/// Whether a line of `ctl show` starting with `prefix` says the port is up (waits
/// up to 10 s for it).
fn port_up(sw: &Switch, prefix: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if sw
            .ctl("show")
            .lines()
            .any(|l| l.starts_with(prefix) && l.ends_with("up=true"))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A valid device (`Frontend::device_with`) whose receive ring then gets
/// `rx_buffers` buffers of 2 KiB.
fn device_with_buffers(
    sock: &Path,
    mem: &DriverMem,
    rx_buffers: u16,
    opts: &DeviceOpts,
) -> Frontend {
    let f = Frontend::device_with(sock, mem, opts);
    let mut rx = DriverRing::new(mem, 0, RING_SIZE);
    for i in 0..rx_buffers {
        rx.set_desc(i, rx.gpa(0x20000 + 2048 * i as u64), 2048, 2, 0); // F_WRITE
        rx.push(i);
    }
    f
}

/// testpmd floods broadcast through vm1 and vm2 for 3 s while `during` runs; returns
/// (frames testpmd sent on port 0, the switch's stats of vm1, vm2, evil).
fn broadcast_flood(
    sw: &Switch,
    tp: &mut Testpmd,
    during: impl FnOnce(),
) -> (u64, [HashMap<String, u64>; 3]) {
    tp.cmd("start tx_first 4", "tx_first");
    std::thread::sleep(Duration::from_millis(500));
    during();
    std::thread::sleep(Duration::from_millis(2500));
    tp.cmd("stop", "Done.");
    std::thread::sleep(Duration::from_millis(500));
    let tpc = tp.port_stats();
    let st = [
        sw.port_stats("vm1"),
        sw.port_stats("vm2"),
        sw.port_stats("evil"),
    ];
    eprintln!(
        "broadcast: testpmd port0 tx={} port1 rx={}; vm1 rx={} vm2 tx={}; evil tx={} guest_errors={}",
        tpc[0].tx, tpc[1].rx, st[0]["rx_packets"], st[1]["tx_packets"], st[2]["tx_packets"], st[2]["guest_errors"]
    );
    // vm2 got every frame the switch took from vm1, and the flood was not throttled.
    assert_eq!(
        st[0]["rx_packets"], tpc[0].tx,
        "switch received all testpmd sent"
    );
    assert_eq!(
        st[1]["tx_packets"], st[0]["rx_packets"],
        "every broadcast reached vm2"
    );
    assert!(
        tpc[0].tx > 100_000,
        "the evil guest throttled the others: only {} frames",
        tpc[0].tx
    );
    (tpc[0].tx, st)
}

/// Switch with vm1, vm2 (testpmd, broadcast MACs) and evil; testpmd's links up.
fn flood_rig(dir: &Scratch) -> (Switch, Testpmd) {
    let cfg = write_config(dir, &server_ports(&["vm1", "vm2", "evil"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let tp = Testpmd::start_opts(
        dir,
        ["vm1", "vm2"],
        false,
        "flood",
        1,
        ["ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff"],
    );
    tp.wait_for("Checking link statuses", 0, Duration::from_secs(60));
    wait_both_up(&sw);
    (sw, tp)
}

fn show_field(sw: &Switch, port_line: &str, key: &str) -> u64 {
    let show = sw.ctl("show");
    let line = show
        .lines()
        .find(|l| l.starts_with(port_line))
        .unwrap_or_else(|| panic!("no {port_line:?} in {show}"));
    field(line, key)
}

/// A guest whose call eventfd is blocking and full: on today's design a write to it
/// would block the PMD thread forever. The switch drops and counts those interrupts;
/// the others keep forwarding and SIGTERM still stops it.
#[test]
fn a_full_blocking_call_eventfd_cannot_stop_the_switch() {
    let dir = Scratch::new("irq");
    let (sw, mut tp) = flood_rig(&dir);
    let mem = DriverMem::new(0, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000);
    // Blocking, and one write away from full: a write of 1 blocks forever.
    let _evil = device_with_buffers(
        &dir.path("evil.sock"),
        &mem,
        64,
        &DeviceOpts {
            call_count: 0xffff_ffff_ffff_fffe,
            call_blocking: true,
        },
    );
    sw.wait_show("evil up", Duration::from_secs(10), |s| {
        s.lines()
            .any(|l| l.starts_with("port 2 evil") && l.ends_with("up=true"))
    });
    let (_, st) = broadcast_flood(&sw, &mut tp, || {});
    assert_eq!(
        st[2]["tx_packets"], 64,
        "the evil guest got its 64 buffers' worth"
    );
    let dropped = show_field(&sw, "port 2 evil", "irq_dropped=");
    assert!(
        dropped >= 1,
        "interrupts to the full eventfd must be dropped and counted"
    );
    tp.quit();
    let t0 = Instant::now();
    let log = sw.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        t0.elapsed()
    );
    assert!(log.contains("guest interrupt dropped"), "{log}");
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}

/// A kick or call fd that is not an eventfd is refused and the connection closed.
#[test]
fn a_pipe_as_call_fd_is_refused() {
    let dir = Scratch::new("pipefd");
    let cfg = write_config(&dir, &server_ports(&["evil"]), "");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let mut f = Frontend::connect(&dir.path("evil.sock"));
    let (_r, w) = std::io::pipe().unwrap();
    f.send(
        SET_VRING_CALL,
        &0u64.to_le_bytes(),
        &[std::fs::File::from(std::os::fd::OwnedFd::from(w))],
    );
    assert!(f.closed_by_switch());
    wait_log(
        &sw,
        "SET_VRING_CALL: file descriptor is not an eventfd (it is pipe:",
    );
    sw.stop();
}

/// The guest's memory file shrinks to nothing while its rings run: the switch takes
/// SIGBUS in that mapping, recovers, stops that guest's rings, and vm1/vm2 go on.
#[test]
fn guest_memory_truncated_under_live_rings_breaks_only_that_guest() {
    let dir = Scratch::new("trunc");
    let (sw, mut tp) = flood_rig(&dir);
    let mem = DriverMem::new(0, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000);
    let _evil = device_with_buffers(&dir.path("evil.sock"), &mem, 256, &DeviceOpts::default());
    sw.wait_show("evil up", Duration::from_secs(10), |s| {
        s.lines()
            .any(|l| l.starts_with("port 2 evil") && l.ends_with("up=true"))
    });
    let (_, st) = broadcast_flood(&sw, &mut tp, || {
        mem.file().set_len(0).expect("truncate the guest's memory");
    });
    assert!(st[2]["guest_errors"] >= 1, "{:?}", st[2]);
    wait_log(&sw, "guest memory vanished under the ring");
    let line = evil_line(&sw);
    assert!(line.contains("broken"), "{line}");
    tp.quit();
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
    std::mem::forget(mem); // its own mapping is past the end of the file now
}
