//! Bad configurations: each exits with code 2 and a message naming the file, the
//! key and the value. Every example in configs/ passes `vswitch check`.

mod common;
use common::*;
use std::process::Command;

/// Writes `text` to `file` and runs `vswitch CMD --config file`: (exit code, stderr).
fn vswitch_with(cmd: &str, file: &std::path::Path, text: &str) -> (i32, String) {
    std::fs::write(file, text).unwrap();
    let out = Command::new(bin())
        .args([cmd, "--config"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(dir: &Scratch, name: &str, text: &str) -> (i32, String) {
    vswitch_with("check", &dir.path(name), text)
}

fn good_port(dir: &Scratch, name: &str) -> String {
    format!(
        "[[port]]\nname = \"{name}\"\ndriver = \"vhost-user\"\npath = \"{}\"\n",
        dir.path(&format!("{name}.sock")).display()
    )
}

fn base(dir: &Scratch) -> String {
    format!(
        "[switch]\npmd_cores = [0]\ncontrol_socket = \"{}\"\n",
        dir.path("ctl.sock").display()
    )
}

#[track_caller]
fn expect_error(dir: &Scratch, case: &str, text: &str, needles: &[&str]) {
    let (code, err) = check(dir, &format!("{case}.toml"), text);
    assert_eq!(code, 2, "{case}: exit code {code}, stderr: {err}");
    assert!(
        err.contains(&format!("{case}.toml")),
        "{case}: file not named in: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{case}: {n:?} not in: {err}");
    }
    eprintln!("{case}: {}", err.trim());
}

#[test]
fn bad_configs_exit_2_with_file_key_and_value() {
    let d = Scratch::new("cfg");
    let p1 = good_port(&d, "a");
    let p2 = good_port(&d, "b");
    let b = base(&d);

    let (code, out) = check(&d, "ok.toml", &format!("{b}{p1}{p2}"));
    assert_eq!(code, 0, "{out}");

    expect_error(
        &d,
        "unknown-key",
        &format!("{b}colour = \"blue\"\n{p1}"),
        &["unknown field `colour`"],
    );
    expect_error(
        &d,
        "unknown-port-key",
        &format!("{b}{p1}speed = 10\n"),
        &["unknown field `speed`", "port"],
    );
    expect_error(
        &d,
        "guest-memory-limit",
        &format!("{b}{p1}max_guest_memory_gib = 0\n"),
        &["key 'max_guest_memory_gib' = 0", "must be 1..=65536"],
    );
    expect_error(
        &d,
        "mtu-too-big",
        &format!("{b}{p1}mtu = 9216\n"),
        &["key 'mtu' = 9216", "must be 68..=9000"],
    );
    expect_error(
        &d,
        "mtu-on-af-packet",
        &format!(
            "{b}[[port]]\nname = \"n\"\ndriver = \"af-packet\"\niface = \"eth9\"\nmtu = 9000\n"
        ),
        &[
            "key 'mtu' does not apply to driver \"af-packet\" (only to vhost-user, tap)",
            "ip link set IFACE mtu N",
        ],
    );
    expect_error(
        &d,
        "large-mbufs",
        &format!("{b}[mempool]\nlarge_mbufs = 8\n{p1}"),
        &["key 'mempool.large_mbufs' = 8", "must be 256..=65536"],
    );
    expect_error(
        &d,
        "dup-name",
        &format!("{b}{p1}{p1}"),
        &["key 'name' = \"a\"", "duplicate port name"],
    );
    let p1_renamed = p1.replace("name = \"a\"", "name = \"c\"");
    expect_error(
        &d,
        "dup-path",
        &format!("{b}{p1}{p1_renamed}"),
        &["key 'path'", "a.sock", "used twice"],
    );
    expect_error(
        &d,
        "bad-core",
        &format!("{}{p1}", b.replace("pmd_cores = [0]", "pmd_cores = [4096]")),
        &["key 'switch.pmd_cores' has core 4096"],
    );
    expect_error(
        &d,
        "dup-core",
        &format!("{}{p1}", b.replace("pmd_cores = [0]", "pmd_cores = [0, 0]")),
        &["core 0 twice"],
    );
    expect_error(
        &d,
        "no-core",
        &format!("{}{p1}", b.replace("pmd_cores = [0]", "pmd_cores = []")),
        &["switch.pmd_cores"],
    );
    expect_error(
        &d,
        "no-dir",
        &format!(
            "{b}{}",
            p1.replace(&d.0.display().to_string(), "/nonexistent/dir")
        ),
        &[
            "key 'path' = \"/nonexistent/dir/a.sock\"",
            "directory /nonexistent/dir does not exist",
        ],
    );
    expect_error(
        &d,
        "bad-mode",
        &format!("{b}{p1}mode = \"peer\"\n"),
        &["key 'mode' = \"peer\""],
    );
    expect_error(
        &d,
        "bad-driver",
        &format!("{b}{}", p1.replace("vhost-user", "e1000")),
        &["key 'driver' = \"e1000\""],
    );
    expect_error(
        &d,
        "bad-queues",
        &format!("{b}{p1}queues = 0\n"),
        &["key 'queues' = 0"],
    );
    expect_error(
        &d,
        "bad-hugepages",
        &format!("{b}[mempool]\nhugepages = \"maybe\"\n{p1}"),
        &["key 'mempool.hugepages' = \"maybe\""],
    );
    expect_error(
        &d,
        "bad-mbufs",
        &format!("{b}[mempool]\nmbufs = 10\n{p1}"),
        &["key 'mempool.mbufs' = 10"],
    );
    expect_error(
        &d,
        "bad-aging",
        &format!("{b}[fdb]\naging_secs = 0\n{p1}"),
        &["key 'fdb.aging_secs' = 0"],
    );
    expect_error(&d, "no-ports", &b, &["no [[port]]"]);
    expect_error(&d, "not-toml", "[switch\npmd_cores = [0]\n", &["line 1"]);
    expect_error(
        &d,
        "wrong-type",
        &format!("{}{p1}", b.replace("pmd_cores = [0]", "pmd_cores = \"0\"")),
        &["pmd_cores"],
    );
    let rel = p1.replace(&format!("{}/a.sock", d.0.display()), "a.sock");
    expect_error(
        &d,
        "relative-path",
        &format!("{b}{rel}"),
        &["key 'path' = \"a.sock\"", "absolute"],
    );

    // NIC ports: each driver takes its own keys, and needs an interface.
    let nic = |driver: &str, keys: &str| {
        format!("[[port]]\nname = \"n\"\ndriver = \"{driver}\"\n{keys}\n")
    };
    expect_error(
        &d,
        "xdp-no-iface",
        &format!("{b}{}", nic("af-xdp", "")),
        &["[[port]] #1 (\"n\")", "key 'iface' is missing"],
    );
    expect_error(
        &d,
        "xdp-bad-mode",
        &format!(
            "{b}{}",
            nic("af-xdp", "iface = \"eth0\"\nxdp_mode = \"fast\"")
        ),
        &["key 'xdp_mode' = \"fast\"", "\"native\""],
    );
    expect_error(
        &d,
        "xdp-bad-zc",
        &format!(
            "{b}{}",
            nic("af-xdp", "iface = \"eth0\"\nzero_copy = \"yes\"")
        ),
        &["key 'zero_copy' = \"yes\""],
    );
    expect_error(
        &d,
        "xdp-path",
        &format!(
            "{b}{}",
            nic("af-xdp", "iface = \"eth0\"\npath = \"/tmp/x.sock\"")
        ),
        &["key 'path' does not apply to driver \"af-xdp\""],
    );
    expect_error(
        &d,
        "vhost-iface",
        &format!("{b}{p1}iface = \"eth0\"\n"),
        &["key 'iface' does not apply to driver \"vhost-user\""],
    );
    expect_error(
        &d,
        "packet-queues",
        &format!("{b}{}", nic("af-packet", "iface = \"eth0\"\nqueues = 2")),
        &["key 'queues' = 2", "one queue"],
    );
    expect_error(
        &d,
        "bad-iface",
        &format!("{b}{}", nic("af-packet", "iface = \"eth0/../x\"")),
        &["key 'iface' = \"eth0/../x\"", "not an interface name"],
    );
    expect_error(
        &d,
        "iface-twice",
        &format!(
            "{b}{}{}",
            nic("af-packet", "iface = \"eth0\""),
            nic("af-xdp", "iface = \"eth0\"").replace("\"n\"", "\"m\"")
        ),
        &[
            "[[port]] #2 (\"m\")",
            "key 'iface' = \"eth0\"",
            "used by two ports",
        ],
    );
    expect_error(
        &d,
        "vhost-no-path",
        &format!("{b}[[port]]\nname = \"v\"\ndriver = \"vhost-user\"\n"),
        &["key 'path' is missing"],
    );

    // Socket permissions: [switch] socket_group/socket_mode, a port's override.
    expect_error(
        &d,
        "unknown-group",
        &format!("{b}socket_group = \"no-such-group-vswitch\"\n{p1}"),
        &[
            "key 'switch.socket_group' = \"no-such-group-vswitch\"",
            "no such group",
        ],
    );
    expect_error(
        &d,
        "bad-gid",
        &format!("{b}socket_group = -5\n{p1}"),
        &["key 'switch.socket_group' = -5", "a gid must be"],
    );
    expect_error(
        &d,
        "bad-group-type",
        &format!("{b}socket_group = [1]\n{p1}"),
        &["socket_group", "a group name or a numeric gid"],
    );
    expect_error(
        &d,
        "socket-mode-decimal",
        &format!("{b}socket_mode = 660\n{p1}"),
        &["key 'switch.socket_mode' = 0o1224", "within 0o777", "octal"],
    );
    expect_error(
        &d,
        "sleep-too-long",
        &format!("{b}pmd_sleep_max_us = 20000\n{p1}"),
        &["key 'switch.pmd_sleep_max_us' = 20000", "must be 0..=10000"],
    );
    expect_error(
        &d,
        "sleep-negative",
        &format!("{b}pmd_sleep_max_us = -1\n{p1}"),
        &["key 'switch.pmd_sleep_max_us' = -1"],
    );
    expect_error(
        &d,
        "socket-mode-no-owner",
        &format!("{b}socket_mode = 0o066\n{p1}"),
        &["key 'switch.socket_mode' = 0o066", "owner read and write"],
    );
    expect_error(
        &d,
        "port-socket-mode",
        &format!("{b}{p1}socket_mode = 0o1000\n"),
        &[
            "[[port]] #1 (\"a\")",
            "key 'socket_mode' = 0o1000",
            "within 0o777",
        ],
    );
    expect_error(
        &d,
        "port-unknown-group",
        &format!("{b}{p1}socket_group = \"no-such-group-vswitch\"\n"),
        &[
            "key 'socket_group' = \"no-such-group-vswitch\"",
            "no such group",
        ],
    );
    expect_error(
        &d,
        "client-socket-mode",
        &format!("{b}{p1}mode = \"client\"\nsocket_mode = 0o600\n"),
        &[
            "key 'socket_mode' = 0o600",
            "does not apply to mode \"client\"",
        ],
    );
    expect_error(
        &d,
        "client-socket-group",
        &format!("{b}{p1}mode = \"client\"\nsocket_group = \"root\"\n"),
        &[
            "key 'socket_group' = \"root\"",
            "does not apply to mode \"client\"",
        ],
    );
    expect_error(
        &d,
        "nic-socket-mode",
        &format!(
            "{b}{}",
            nic("af-packet", "iface = \"eth0\"\nsocket_mode = 0o600")
        ),
        &["key 'socket_mode' does not apply to driver \"af-packet\" (only to vhost-user)"],
    );
    expect_error(
        &d,
        "tap-socket-group",
        &format!("{b}{}", nic("tap", "socket_group = \"root\"")),
        &["key 'socket_group' does not apply to driver \"tap\" (only to vhost-user)"],
    );

    // VLAN modes.
    expect_error(
        &d,
        "bad-vlan-mode",
        &format!("{b}{p1}vlan_mode = \"hybrid\"\n"),
        &["key 'vlan_mode' = \"hybrid\"", "\"native-untagged\""],
    );
    expect_error(
        &d,
        "access-no-tag",
        &format!("{b}{p1}vlan_mode = \"access\"\n"),
        &["key 'tag' is missing", "vlan_mode \"access\""],
    );
    expect_error(
        &d,
        "native-no-tag",
        &format!("{b}{p1}vlan_mode = \"native-tagged\"\n"),
        &["key 'tag' is missing", "vlan_mode \"native-tagged\""],
    );
    expect_error(
        &d,
        "trunk-tag",
        &format!("{b}{p1}tag = 10\n"),
        &["key 'tag' = 10", "does not apply to vlan_mode \"trunk\""],
    );
    expect_error(
        &d,
        "tag-range",
        &format!("{b}{p1}vlan_mode = \"access\"\ntag = 4095\n"),
        &["key 'tag' = 4095", "1..=4094"],
    );
    expect_error(
        &d,
        "access-trunks",
        &format!("{b}{p1}vlan_mode = \"access\"\ntag = 10\ntrunks = [10, 20]\n"),
        &[
            "key 'trunks' = [10, 20]",
            "does not apply to vlan_mode \"access\"",
        ],
    );
    expect_error(
        &d,
        "trunk-range",
        &format!("{b}{p1}trunks = [10, 4096]\n"),
        &["key 'trunks' = [10, 4096]", "VLAN 4096 is not 0..=4095"],
    );
    expect_error(
        &d,
        "trunk-twice",
        &format!("{b}{p1}trunks = [10, 20, 10]\n"),
        &["key 'trunks' = [10, 20, 10]", "VLAN 10 twice"],
    );
    expect_error(
        &d,
        "native-trunk-0",
        &format!("{b}{p1}vlan_mode = \"native-untagged\"\ntag = 5\ntrunks = [0, 5]\n"),
        &["key 'trunks' = [0, 5]", "VLAN 0"],
    );
    expect_error(
        &d,
        "trunks-type",
        &format!("{b}{p1}trunks = \"10,20\"\n"),
        &["key 'trunks' = \"10,20\"", "expected an array"],
    );
    expect_error(
        &d,
        "metrics-listen",
        &format!("{b}[metrics]\nlisten = \"localhost:9477\"\n{p1}"),
        &[
            "key 'metrics.listen' = \"localhost:9477\"",
            "IP address and port",
        ],
    );
    expect_error(
        &d,
        "metrics-no-port",
        &format!("{b}[metrics]\nlisten = \"127.0.0.1\"\n{p1}"),
        &["key 'metrics.listen' = \"127.0.0.1\""],
    );

    // The control socket's directory is made at start; other directories must exist.
    let run_dir = d.path("run/vswitch");
    let ok = format!(
        "[switch]\npmd_cores = [0]\ncontrol_socket = \"{0}/ctl.sock\"\n\
         [[port]]\nname = \"a\"\ndriver = \"vhost-user\"\npath = \"{0}/a.sock\"\n",
        run_dir.display()
    );
    let (code, out) = check(&d, "ctl-dir-missing.toml", &ok);
    assert_eq!(code, 0, "{out}");
    assert!(!run_dir.exists(), "check created a directory");
    expect_error(
        &d,
        "other-dir-missing",
        &ok.replace(
            &format!("{}/a.sock", run_dir.display()),
            "/nonexistent/dir/a.sock",
        ),
        &["key 'path' = \"/nonexistent/dir/a.sock\"", "does not exist"],
    );

    // Every new key in a good configuration.
    let good = format!(
        "{b}socket_group = \"root\"\nsocket_mode = 0o660\n{p1}socket_mode = 0o600\n\
         vlan_mode = \"native-tagged\"\ntag = 5\ntrunks = [6, 7]\n{p2}vlan_mode = \"access\"\ntag = 6\n"
    );
    let (code, out) = check(&d, "new-keys.toml", &good);
    assert_eq!(code, 0, "{out}");

    // VXLAN: the underlay's endpoint, and the tunnel port's own keys.
    let ul = |extra: &str| {
        format!("[[port]]\nname = \"up\"\ndriver = \"af-packet\"\niface = \"eth9\"\n{extra}\n")
    };
    let vx = |extra: &str| {
        format!("[[port]]\nname = \"vx\"\ndriver = \"vxlan\"\nunderlay = \"up\"\n{extra}\n")
    };
    let cases: &[(&str, String, &[&str])] = &[
        (
            "tunnel-ip",
            ul("tunnel_ip = \"10.99.0.1\""),
            &["key 'tunnel_ip' = \"10.99.0.1\"", "prefix length"],
        ),
        (
            "tunnel-ip-len",
            ul("tunnel_ip = \"10.99.0.1/33\""),
            &["key 'tunnel_ip' = \"10.99.0.1/33\""],
        ),
        (
            "tunnel-gw-alone",
            ul("tunnel_gateway = \"10.99.0.254\""),
            &[
                "key 'tunnel_gateway' = \"10.99.0.254\"",
                "needs key 'tunnel_ip'",
            ],
        ),
        (
            "tunnel-gw-off-link",
            ul("tunnel_ip = \"10.99.0.1/24\"\ntunnel_gateway = \"10.98.0.1\""),
            &["key 'tunnel_gateway' = \"10.98.0.1\"", "10.99.0.1/24"],
        ),
        (
            "vxlan-no-underlay",
            vx("vni = 1"),
            &["key 'underlay' = \"up\"", "tunnel_ip"],
        ),
        (
            "vxlan-not-underlay",
            ul("") + &vx("vni = 1"),
            &["key 'underlay' = \"up\""],
        ),
        (
            "vxlan-no-vni",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx(""),
            &["key 'vni' is missing"],
        ),
        (
            "vxlan-vni",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 16777216"),
            &["key 'vni' = 16777216", "0..=16777215"],
        ),
        (
            "vxlan-port",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\ndst_port = 0"),
            &["key 'dst_port' = 0"],
        ),
        (
            "vxlan-remote",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nremotes = [\"10.99.0.300\"]"),
            &["key 'remotes' = \"10.99.0.300\""],
        ),
        (
            "vxlan-remote-self",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nremotes = [\"10.99.0.1\"]"),
            &["key 'remotes' = \"10.99.0.1\"", "another endpoint"],
        ),
        (
            "vxlan-no-route",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nremotes = [\"192.0.2.9\"]"),
            &["key 'remotes' = \"192.0.2.9\"", "no tunnel_gateway"],
        ),
        (
            "vxlan-queues",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nqueues = 2"),
            &["key 'queues' = 2", "one queue"],
        ),
        (
            "vxlan-mtu",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nmtu = 1450"),
            &["key 'mtu'", "vxlan"],
        ),
        (
            "evpn-half",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nevpn_vxlan = \"vx1\""),
            &["key 'evpn_vxlan' = \"vx1\"", "needs key 'evpn_port'"],
        ),
        (
            "evpn-other-half",
            ul("tunnel_ip = \"10.99.0.1/24\"") + &vx("vni = 1\nevpn_port = \"mc1\""),
            &["key 'evpn_port' = \"mc1\"", "needs key 'evpn_vxlan'"],
        ),
        (
            "evpn-name",
            ul("tunnel_ip = \"10.99.0.1/24\"")
                + &vx("vni = 1\nevpn_vxlan = \"a/b\"\nevpn_port = \"mc1\""),
            &["key 'evpn_vxlan' = \"a/b\""],
        ),
        (
            "vxlan-twice",
            ul("tunnel_ip = \"10.99.0.1/24\"")
                + &vx("vni = 7")
                + &vx("vni = 7").replace("\"vx\"", "\"vx2\""),
            &["key 'vni' = 7", "already has a vxlan port"],
        ),
    ];
    for (case, ports, needles) in cases {
        expect_error(&d, case, &format!("{b}{ports}"), needles);
    }
    let good = format!(
        "{b}{}{}",
        ul("tunnel_ip = \"10.99.0.1/24\"\ntunnel_gateway = \"10.99.0.254\""),
        vx("vni = 42\nremotes = [\"10.99.0.2\", \"192.0.2.9\"]\ndst_port = 8472\nlearn_remotes = true")
    );
    let (code, out) = check(&d, "vxlan-good.toml", &good);
    assert_eq!(code, 0, "{out}");

    // A missing file is an error too.
    let out = Command::new(bin())
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml: cannot read"));
}

#[test]
fn run_with_bad_config_exits_2_and_starts_nothing() {
    let d = Scratch::new("cfgrun");
    let text = format!("{}{}mode = \"peer\"\n", base(&d), good_port(&d, "a"));
    let (code, err) = vswitch_with("run", &d.path("bad.toml"), &text);
    assert_eq!(code, 2);
    assert!(err.contains("key 'mode' = \"peer\""), "{err}");
    assert!(
        !d.path("a.sock").exists() && !d.path("ctl.sock").exists(),
        "a failed start left sockets behind"
    );
}

/// An address another socket holds: `run` exits 2 naming the key and the address, and
/// leaves no control socket behind.
#[test]
fn metrics_address_in_use_exits_2() {
    let d = Scratch::new("cfgmetrics");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let text = format!(
        "{}[metrics]\nlisten = \"{addr}\"\n{}",
        base(&d),
        good_port(&d, "a")
    );
    let (code, err) = vswitch_with("run", &d.path("metrics.toml"), &text);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("metrics.toml") && err.contains(&format!("key 'metrics.listen' = \"{addr}\"")),
        "{err}"
    );
    assert!(!d.path("ctl.sock").exists(), "control socket left behind");
    eprintln!("metrics in use: {}", err.trim());
}

#[test]
fn hugepages_required_but_too_few_exits_2_with_how_to_reserve() {
    let d = Scratch::new("cfghp");
    // 4M mbufs of 2176 bytes = 8.5 GiB of hugepages: more than any test machine reserves.
    let text = format!(
        "{}[mempool]\nmbufs = 4194304\nhugepages = \"required\"\n{}",
        base(&d),
        good_port(&d, "a")
    );
    let (code, err) = vswitch_with("run", &d.path("hp.toml"), &text);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mempool.hugepages") && err.contains("/proc/sys/vm/nr_hugepages"),
        "{err}"
    );
}

#[test]
fn every_example_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // The examples put sockets under /tmp/vswitch.
            std::fs::create_dir_all("/tmp/vswitch").unwrap();
            let out = Command::new(bin())
                .args(["check", "--config"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 2, "expected example configs in configs/");
}
