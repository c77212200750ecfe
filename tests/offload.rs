//! Checksum and TCP segmentation offload with real TCP stacks. QEMU guests (TCG) on
//! vhost-user ports with QEMU's default offloads on send an 8 MiB TCP stream to a
//! guest with offloads (the 64 KiB segments pass untouched) and to one without (the
//! switch cuts them), each receiver checking the data's SHA-256. Network namespaces
//! behind tap ports, whose devices take and give 64 KiB TSO segments with partial
//! checksums, as QEMU's TAP backend does. Between two taps the segments cross
//! untouched (the switch counts them as `rx_offload`, makes no segment); towards an
//! af-packet port, which takes offloads (PACKET_VNET_HDR), they leave whole for the
//! kernel to cut, and its namespace's partial checksums come back with the frames;
//! towards an af-xdp port, which takes none, the switch cuts them into segments of
//! the sender's size and computes their checksums (`tx_segments`), losing none for
//! want of queue room (`drop_tx_full`). Each
//! path carries a 16 MiB transfer whose SHA-256 the receiver checks, and iperf3 for a
//! few seconds, whose rate is reported, not asserted (benches/tcp measures).

mod common;
use common::guest::{images, num, BootOpts, Guest};
use common::netns::{must, sh, NsDevice, VethNs};
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const TRANSFER: usize = 16 << 20;

fn tap_port(name: &str, iface: &str) -> String {
    format!("[[port]]\nname = \"{name}\"\ndriver = \"tap\"\niface = \"{iface}\"\n")
}

fn nic_port(name: &str, driver: &str, iface: &str) -> String {
    format!("[[port]]\nname = \"{name}\"\ndriver = \"{driver}\"\niface = \"{iface}\"\n")
}

/// Sends TRANSFER bytes of a fixed pseudo-random stream from namespace `from` to
/// `ip:port` in namespace `to` over TCP; returns (sender's SHA-256, receiver's byte
/// count and SHA-256).
fn transfer(from: &str, to: &str, ip: &str, port: u16) -> (String, String) {
    let server = format!(
        "import socket,hashlib\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0',{port})); s.listen(1); s.settimeout(30)\n\
         c,_=s.accept(); c.settimeout(30); h=hashlib.sha256(); n=0\n\
         while True:\n  d=c.recv(1<<20)\n  if not d: break\n  h.update(d); n+=len(d)\n\
         print(n, h.hexdigest())\n"
    );
    let rx = Command::new("ip")
        .args(["netns", "exec", to, "/usr/bin/python3", "-c", &server])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 server");
    std::thread::sleep(Duration::from_millis(500));
    let client = format!(
        "import socket,hashlib,random\n\
         data=random.Random(7).randbytes({TRANSFER})\n\
         c=socket.create_connection(('{ip}',{port}),timeout=30); c.sendall(data); c.close()\n\
         print({TRANSFER}, hashlib.sha256(data).hexdigest())\n"
    );
    let sent = sh(
        "ip",
        &["netns", "exec", from, "/usr/bin/python3", "-c", &client],
    );
    assert!(
        sent.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let got = rx.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&sent.stdout).trim().to_string(),
        String::from_utf8_lossy(&got.stdout).trim().to_string(),
    )
}

/// iperf3 from `from` to `ip` in `to` for 3 s, both pinned to core 0 (the PMD has
/// core 1); returns the receiver's rate line.
fn iperf(from: &str, to: &str, ip: &str, port: u16) -> String {
    let port = port.to_string();
    must(
        "ip",
        &[
            "netns", "exec", to, "taskset", "-c", "0", "iperf3", "-s", "-1", "-D", "-p", &port,
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = must(
        "ip",
        &[
            "netns",
            "exec",
            from,
            "taskset",
            "-c",
            "0",
            "iperf3",
            "-c",
            ip,
            "-p",
            &port,
            "-t",
            "3",
            "--connect-timeout",
            "3000",
        ],
    );
    let line = out
        .lines()
        .find(|l| l.contains("receiver"))
        .unwrap_or("no receiver line")
        .to_string();
    eprintln!("iperf3 {from} -> {ip}: {line}");
    line
}

/// A veth's own end hands partial checksums on (it has checksum offload); an af-xdp
/// port takes frames as a NIC's wire has them, so the test turns it off in the
/// namespace, as a real NIC's peer would have computed them. (An af-packet port gets
/// the request with the frame, PACKET_VNET_HDR, and needs no such help.)
fn full_checksums(v: &VethNs) {
    must(
        "ip",
        &[
            "netns", "exec", &v.ns, "ethtool", "-K", &v.inner, "tx", "off",
        ],
    );
}

#[test]
fn tso_between_taps_passes_untouched_and_is_segmented_for_nics() {
    which("iperf3");
    which("ethtool");
    let dir = Scratch::new("offload");
    let id = std::process::id() % 100_000;
    let (ta, tb) = (format!("vs{id}oa"), format!("vs{id}ob"));
    let p = VethNs::new("op", "10.0.7.3/24");
    let x = VethNs::new("ox", "10.0.7.4/24");
    full_checksums(&x);
    let cfg = write_config_ports(
        &dir,
        &(tap_port("ta", &ta)
            + &tap_port("tb", &tb)
            + &nic_port("p", "af-packet", &p.host)
            + &nic_port("x", "af-xdp", &x.host)),
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let a = NsDevice::adopt("oa", &ta, "10.0.7.1/24");
    let b = NsDevice::adopt("ob", &tb, "10.0.7.2/24");

    // Tap to tap: 64 KiB segments cross as they are, both ways.
    let (sent, got) = transfer(&a.ns, &b.ns, &b.ip, 5301);
    eprintln!("tap -> tap: sent {sent}, received {got}");
    assert_eq!(sent, got, "tap -> tap: data differs");
    let (sent, got) = transfer(&b.ns, &a.ns, &a.ip, 5302);
    assert_eq!(sent, got, "tap -> tap (back): data differs");
    iperf(&a.ns, &b.ns, &b.ip, 5311);
    let (sa, sb) = (sw.port_stats("ta"), sw.port_stats("tb"));
    eprintln!(
        "ta rx_offload={} tx_segments={}; tb rx_offload={} tx_segments={}",
        sa["rx_offload"], sa["tx_segments"], sb["rx_offload"], sb["tx_segments"]
    );
    assert!(sa["rx_offload"] > 0 && sb["rx_offload"] > 0);
    assert_eq!(
        sa["tx_segments"] + sb["tx_segments"],
        0,
        "segmented between taps"
    );
    // Frames of up to 64 KiB came from a's stack: far more than an MTU on average.
    let mean = sa["rx_bytes"] / sa["rx_packets"];
    eprintln!("ta: {} frames of {mean} bytes on average", sa["rx_packets"]);
    assert!(
        mean > 8000,
        "ta received frames of {mean} bytes on average: no TSO"
    );

    // Tap to the NICs: to af-packet the 64 KiB frames go as they are, with their
    // requests, for the kernel to cut; to af-xdp they are cut in software by the
    // sender's segment size. The far ends' kernels check every checksum (a bad one
    // would stall the transfer).
    for (nic, port, v, tcp) in [("af-packet", "p", &p, 5312), ("af-xdp", "x", &x, 5313)] {
        let (sent, got) = transfer(&a.ns, &v.ns, &v.ip, 5303);
        eprintln!("tap -> {nic}: sent {sent}, received {got}");
        assert_eq!(sent, got, "tap -> {nic}: data differs");
        let (sent, got) = transfer(&v.ns, &a.ns, &a.ip, 5304);
        assert_eq!(sent, got, "{nic} -> tap: data differs");
        iperf(&a.ns, &v.ns, &v.ip, tcp);
        let s = sw.port_stats(port);
        eprintln!(
            "{port}: tx_segments={} drop_offload={} drop_tx_full={} rx_offload={} tx {} frames {} bytes",
            s["tx_segments"], s["drop_offload"], s["drop_tx_full"], s["rx_offload"],
            s["tx_packets"], s["tx_bytes"]
        );
        if port == "p" {
            assert_eq!(
                s["tx_segments"], 0,
                "segmented for af-packet, which takes TSO"
            );
            assert!(
                s["tx_bytes"] / s["tx_packets"].max(1) > 8000,
                "af-packet sent {} frames of {} bytes: no TSO",
                s["tx_packets"],
                s["tx_bytes"] / s["tx_packets"].max(1)
            );
            // The namespace's stack sent with partial checksums (no ethtool here):
            // they came with the frames and were passed on or completed.
            assert!(s["rx_offload"] > 0, "af-packet received no offload request");
        } else {
            assert!(
                s["tx_segments"] as usize >= TRANSFER / 1448,
                "{port} made {} segments",
                s["tx_segments"]
            );
        }
        // Segments wait for queue room (the PMD holds its rx back meanwhile): a train
        // of 64 KiB frames towards the slower port loses none.
        assert_eq!(
            s["drop_tx_full"], 0,
            "{port} dropped for want of queue room"
        );
        let in_ns = sh(
            "ip",
            &["netns", "exec", &v.ns, "nstat", "-az", "TcpInCsumErrors"],
        );
        let text = String::from_utf8_lossy(&in_ns.stdout);
        let errors: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("TcpInCsumErrors"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(errors, 0, "{nic}: the far end saw bad TCP checksums");
    }
    for port in ["ta", "tb", "p", "x"] {
        let s = sw.port_stats(port);
        assert_eq!(s["drop_offload"], 0, "{port} dropped offload frames");
    }
    drop((a, b));
    let log = sw.stop();
    assert!(
        log.contains("free_mbufs=8192") && log.contains("free_large_mbufs=512"),
        "buffers lost:\n{log}"
    );
}

/// The `sha=` field of a guest's VSW- line.
fn sha_of(line: &str) -> &str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("sha="))
        .unwrap_or_else(|| panic!("no sha= in {line}"))
}

#[test]
fn guests_with_and_without_offloads_get_intact_streams() {
    streams(false);
}

/// The same on packed virtqueues: offload headers, TSO frames and segmentation for a
/// guest without TSO cross a packed ring as they cross a split one.
#[test]
fn guests_on_packed_rings_get_intact_streams_with_and_without_offloads() {
    streams(true);
}

/// `packed`: the guests' NICs use packed virtqueues (`packed=on`).
fn streams(packed: bool) {
    let img = images();
    let dir = Scratch::new(if packed {
        "offload-packed"
    } else {
        "offload-qemu"
    });
    let cfg = write_config(
        &dir,
        &server_ports(&["vm1", "vm2", "vm3"]),
        "tx_stall_ms = 1000",
    );
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let plain = BootOpts {
        packed,
        ..BootOpts::default()
    };
    let without = BootOpts {
        no_offloads: true,
        packed,
        ..BootOpts::default()
    };
    let a = Guest::boot_with(
        "guest-a",
        dir.path("vm1.sock"),
        "52:54:00:00:06:0a",
        "vsw.ip=10.0.6.1/24 vsw.role=tcprecv",
        &img,
        &plain,
    );
    let c = Guest::boot_with(
        "guest-c",
        dir.path("vm3.sock"),
        "52:54:00:00:06:0c",
        "vsw.ip=10.0.6.3/24 vsw.role=tcprecv",
        &img,
        &without,
    );
    let b = Guest::boot_with(
        "guest-b",
        dir.path("vm2.sock"),
        "52:54:00:00:06:0b",
        "vsw.ip=10.0.6.2/24 vsw.role=tcpsend vsw.peer=10.0.6.1 vsw.peer2=10.0.6.3 vsw.kb=8192 vsw.wait=240",
        &img,
        &plain,
    );
    let sending = b.wait_line("VSW-SENDING", Duration::from_secs(300));
    let got_a = a.wait_line("VSW-RECEIVED", Duration::from_secs(400));
    let got_c = c.wait_line("VSW-RECEIVED", Duration::from_secs(400));
    let (s1, s2, s3) = (
        sw.port_stats("vm1"),
        sw.port_stats("vm2"),
        sw.port_stats("vm3"),
    );
    eprintln!("B: {sending}\nA (offloads): {got_a}\nC (none): {got_c}");
    eprintln!(
        "vm2 rx_offload={} rx {} frames {} bytes; vm1 tx_segments={}; vm3 tx_segments={}",
        s2["rx_offload"], s2["rx_packets"], s2["rx_bytes"], s1["tx_segments"], s3["tx_segments"]
    );
    assert_eq!(num(&got_a, "bytes="), 8 << 20, "A: {got_a}");
    assert_eq!(num(&got_c, "bytes="), 8 << 20, "C: {got_c}");
    assert_eq!(sha_of(&got_a), sha_of(&sending), "A got other data");
    assert_eq!(sha_of(&got_c), sha_of(&sending), "C got other data");
    assert!(s2["rx_offload"] > 0, "B sent no offload request");
    assert!(
        s2["rx_bytes"] / s2["rx_packets"] > 2000,
        "B's frames are not TSO frames"
    );
    assert_eq!(s1["tx_segments"], 0, "segmented for a guest that takes TSO");
    assert!(
        s3["tx_segments"] > 0,
        "not segmented for the guest without TSO"
    );
    for s in [&s1, &s2, &s3] {
        assert_eq!(s["drop_offload"] + s["guest_errors"] + s["drop_mtu"], 0);
    }
    let layout = if packed {
        "layout=packed "
    } else {
        "layout=split "
    };
    let show = sw.ctl("show");
    assert_eq!(show.matches(layout).count(), 3, "show:\n{show}");
    for g in [a, b, c] {
        g.wait_exit(Duration::from_secs(60));
    }
    sw.stop();
}
