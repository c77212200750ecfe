//! The control socket under clients that misbehave: one connects and never sends,
//! one asks for the MAC table and never reads the reply. Neither may keep other
//! clients from being answered, nor the switch from stopping on SIGTERM.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Stations flooded in, so that `ctl fdb` (about 38 bytes a line) is far larger than
/// a unix socket's send buffer (about 200 KiB): its reply cannot be written unless the
/// client reads.
const STATIONS: u64 = 20_000;

/// A client that connects and never sends, and one that sends `fdb` and never reads.
fn stuck_clients(sw: &Switch) -> (UnixStream, UnixStream) {
    let silent = UnixStream::connect(&sw.ctl).unwrap();
    let mut greedy = UnixStream::connect(&sw.ctl).unwrap();
    greedy.write_all(b"fdb\n").unwrap();
    // Let the switch accept both before the next client comes.
    std::thread::sleep(Duration::from_millis(300));
    (silent, greedy)
}

#[test]
fn stuck_control_clients_delay_neither_others_nor_shutdown() {
    let dir = Scratch::new("ctl");
    let cfg = write_config(&dir, &server_ports(&["flood"]), "[fdb]\ncapacity = 65536\n");
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let sent = flood_guest(
        &dir.path("flood.sock"),
        &FloodOpts {
            first_mac: 0,
            frames: STATIONS,
            stop: None,
        },
    );
    assert_eq!(sent, STATIONS);
    let fdb = sw.ctl("fdb");
    assert_eq!(
        fdb.lines().count() as u64,
        STATIONS + 1,
        "every station learned"
    );
    assert!(fdb.len() > 512 << 10, "fdb reply only {} bytes", fdb.len());

    let stuck = stuck_clients(&sw);
    let t0 = Instant::now();
    let show = sw.ctl("show");
    let took = t0.elapsed();
    eprintln!("ctl show answered in {took:?} beside two stuck clients");
    assert!(
        show.contains(&format!("fdb: {STATIONS} of 65536")),
        "{show}"
    );
    assert!(took < Duration::from_secs(2), "ctl show took {took:?}");
    drop(stuck);

    // SIGTERM while two more are stuck.
    let _stuck = stuck_clients(&sw);
    let t0 = Instant::now();
    let log = sw.stop();
    let took = t0.elapsed();
    eprintln!("stopped in {took:?} with two stuck control clients");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
}
