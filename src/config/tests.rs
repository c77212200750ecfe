//! `Config::port_from_args` (the `add-port` arguments) and the pieces it shares with
//! the file's parser.

use super::de::{self, DeError};
use super::raw::DRIVERS;
use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vswitch-config-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A switch with a server-mode port "vm1" and a TAP port "host".
fn running(d: &Dir, switch_extra: &str) -> Config {
    let text = format!(
        "[switch]\npmd_cores = [0]\ncontrol_socket = {:?}\n{switch_extra}\n\
         [[port]]\nname = \"vm1\"\ndriver = \"vhost-user\"\npath = {:?}\n\
         [[port]]\nname = \"host\"\ndriver = \"tap\"\n",
        d.path("ctl.sock"),
        d.path("vm1.sock")
    );
    Config::parse(Path::new("/test/vswitch.toml"), &text).unwrap()
}

#[track_caller]
fn refused(cfg: &Config, name: &str, args: &[&str]) -> String {
    let e = cfg.port_from_args(name, args).unwrap_err();
    assert_eq!(
        e.origin,
        Origin::AddPort {
            name: name.to_string()
        }
    );
    e.to_string()
}

#[test]
fn add_port_reads_values_as_toml_or_as_strings() {
    use toml::Value;
    assert_eq!(args::value("2"), Value::Integer(2));
    assert_eq!(args::value("0o660"), Value::Integer(0o660));
    assert_eq!(
        args::value("[10,20]"),
        Value::Array(vec![Value::Integer(10), Value::Integer(20)])
    );
    assert_eq!(args::value("client"), Value::String("client".into()));
    assert_eq!(
        args::value("/tmp/x.sock"),
        Value::String("/tmp/x.sock".into())
    );
    assert_eq!(args::value("\"a b\""), Value::String("a b".into()));
    assert_eq!(args::value(""), Value::String("".into()));
    // Text that is more than one value stays a string.
    assert_eq!(args::value("1\nx = 2"), Value::String("1\nx = 2".into()));
}

#[test]
fn add_port_builds_the_same_port_as_the_file() {
    let d = Dir::new();
    let cfg = running(&d, "");
    let path = d.path("vm3.sock");
    let p = cfg
        .port_from_args(
            "vm3",
            &[
                "driver=vhost-user",
                &format!("path={path}"),
                "mode=server",
                "queues=2",
                "socket_mode=0o600",
                "socket_group=0",
                "vlan_mode=native-untagged",
                "tag=5",
                "trunks=[20,10]",
            ],
        )
        .unwrap();
    let expect = PortConfig {
        name: "vm3".into(),
        queues: 2,
        vlan: VlanConfig {
            mode: VlanMode::NativeUntagged,
            tag: 5,
            trunks: vec![5, 10, 20],
        },
        kind: PortKind::VhostUser {
            path: path.clone().into(),
            mode: Mode::Server,
            max_memory: (DEFAULT_MAX_GUEST_MEMORY_GIB as u64) << 30,
            socket_perms: SocketPerms {
                gid: Some(0),
                mode: 0o600,
            },
            mtu: 1500,
        },
    };
    assert_eq!(p, expect);

    // The same keys in a file give the same port.
    let text = format!(
        "[switch]\npmd_cores = [0]\ncontrol_socket = {:?}\n[[port]]\nname = \"vm3\"\n\
         driver = \"vhost-user\"\npath = {path:?}\nmode = \"server\"\nqueues = 2\n\
         socket_mode = 0o600\nsocket_group = 0\nvlan_mode = \"native-untagged\"\ntag = 5\n\
         trunks = [20, 10]\n",
        d.path("ctl.sock")
    );
    let file = Config::parse(Path::new("/test/x.toml"), &text).unwrap();
    assert_eq!(file.ports, vec![expect]);
}

#[test]
fn add_port_nic_drivers_and_defaults() {
    let d = Dir::new();
    let cfg = running(&d, "");
    let p = cfg
        .port_from_args("up", &["driver=af-xdp", "iface=eth0", "xdp_mode=generic"])
        .unwrap();
    assert_eq!(
        p.kind,
        PortKind::AfXdp {
            iface: "eth0".into(),
            xdp_mode: XdpMode::Generic,
            zero_copy: ZeroCopy::Auto,
            tunnel: None
        }
    );
    assert_eq!((p.queues, p.vlan.clone()), (1, VlanConfig::default()));
    let p = cfg
        .port_from_args("t2", &["driver=tap", "vlan_mode=access", "tag=100"])
        .unwrap();
    assert_eq!(
        p.kind,
        PortKind::Tap {
            iface: "t2".into(),
            mtu: 1500
        }
    );
    assert_eq!(
        p.vlan,
        VlanConfig {
            mode: VlanMode::Access,
            tag: 100,
            trunks: vec![]
        }
    );
    let p = cfg
        .port_from_args("pk", &["driver=af-packet", "iface=eth1"])
        .unwrap();
    assert_eq!(
        p.kind,
        PortKind::AfPacket {
            iface: "eth1".into(),
            tunnel: None
        }
    );
    // A client-mode port: the peer owns the socket, its permissions stay unset.
    let p = cfg
        .port_from_args(
            "c",
            &[
                "driver=vhost-user",
                "mode=client",
                &format!("path={}", d.path("c.sock")),
            ],
        )
        .unwrap();
    assert!(matches!(
        p.kind,
        PortKind::VhostUser { mode: Mode::Client, socket_perms, .. } if socket_perms == SocketPerms::default()
    ));
}

#[test]
fn add_port_errors_read_like_the_files() {
    let d = Dir::new();
    let cfg = running(&d, "");
    let path = format!("path={}", d.path("vm3.sock"));
    let vh = |extra: &[&'static str]| -> Vec<String> {
        let mut v = vec!["driver=vhost-user".to_string(), path.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |name: &str, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&cfg, name, &a)
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vh(&["mode=x"]),
            "add-port \"vm3\": key 'mode' = \"x\": must be \"server\" or \"client\"",
        ),
        (
            vec!["mode=server".into()],
            "add-port \"vm3\": key 'driver' is missing: one of \"vhost-user\", \"af-xdp\", \"af-packet\", \"tap\" or \"vxlan\"",
        ),
        (
            vec!["driver=e1000".into()],
            "add-port \"vm3\": key 'driver' = \"e1000\": must be \"vhost-user\", \"af-xdp\", \"af-packet\", \"tap\" or \"vxlan\"",
        ),
        (
            vec!["driver=vhost-user".into()],
            "add-port \"vm3\": key 'path' is missing: driver \"vhost-user\" needs the socket's path",
        ),
        (
            vh(&["iface=eth0"]),
            "add-port \"vm3\": key 'iface' does not apply to driver \"vhost-user\" (only to af-xdp, af-packet, tap)",
        ),
        (vh(&["speed=10"]), "unknown field `speed`: driver \"vhost-user\" takes name, driver, queues"),
        (vh(&["queues"]), "add-port \"vm3\": argument \"queues\": expected key=value"),
        (vh(&["=1"]), "argument \"=1\": expected key=value"),
        (vh(&["name=x"]), "key 'name' = \"x\": the port's name is the command's first argument"),
        (vh(&["queues=1", "queues=2"]), "key 'queues' is given twice"),
        (vh(&["queues=0"]), "add-port \"vm3\": key 'queues' = 0: must be 1..=16"),
        (vh(&["queues=two"]), "key 'queues' = \"two\": expected an integer, found string \"two\""),
        (vh(&["trunks=[1,x]"]), "key 'trunks' = \"[1,x]\": expected an array"),
        (vh(&["trunks=[1,\"x\"]"]), "key 'trunks' = [1, \"x\"]: expected an integer"),
        (vh(&["vlan_mode=3"]), "key 'vlan_mode' = 3: must be \"trunk\", \"access\", \"native-tagged\" or \"native-untagged\""),
        (vh(&["tag=5"]), "key 'tag' = 5: does not apply to vlan_mode \"trunk\""),
        (vh(&["socket_mode=0o1660"]), "key 'socket_mode' = 0o1660: must be within 0o777"),
        (vh(&["socket_mode=0o460"]), "key 'socket_mode' = 0o460: must give the owner read and write"),
        (vh(&["socket_group=no-such-group-here"]), "key 'socket_group' = \"no-such-group-here\": no such group"),
        (vh(&["socket_group=-1"]), "key 'socket_group' = -1: a gid must be 0..=4294967294"),
        (vh(&["mode=client", "socket_mode=0o600"]), "key 'socket_mode' = 0o600: does not apply to mode \"client\""),
        (vh(&["mode=client", "socket_group=0"]), "key 'socket_group' = 0: does not apply to mode \"client\""),
        (
            vec!["driver=vhost-user".into(), "path=rel.sock".into()],
            "key 'path' = \"rel.sock\": must be an absolute path",
        ),
        (
            vec!["driver=vhost-user".into(), "path=/nonexistent/x/a.sock".into()],
            "key 'path' = \"/nonexistent/x/a.sock\": directory /nonexistent/x does not exist",
        ),
        (
            vec!["driver=af-xdp".into(), "iface=eth0".into(), "socket_mode=0o600".into()],
            "key 'socket_mode' does not apply to driver \"af-xdp\" (only to vhost-user)",
        ),
        (
            vec!["driver=tap".into(), "queues=2".into()],
            "key 'queues' = 2: driver \"tap\" has one queue",
        ),
    ];
    for (args, needle) in cases {
        let msg = run("vm3", args.clone());
        assert!(msg.contains(needle), "{args:?}: {needle:?} not in {msg:?}");
    }
    let msg = run("bad name", vh(&[]));
    assert!(
        msg.contains("key 'name' = \"bad name\": 1-32 characters"),
        "{msg}"
    );
}

#[test]
fn add_port_refuses_what_the_running_ports_hold() {
    let d = Dir::new();
    let cfg = running(&d, "");
    let path = |f: &str| format!("path={}", d.path(f));
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "vm1",
            vec!["driver=vhost-user".into(), path("new.sock")],
            "add-port \"vm1\": key 'name' = \"vm1\": duplicate port name",
        ),
        (
            "vm2",
            vec!["driver=vhost-user".into(), path("vm1.sock")],
            "socket path used twice",
        ),
        (
            "vm2",
            vec!["driver=vhost-user".into(), path("ctl.sock")],
            "socket path used twice",
        ),
        (
            "t",
            vec!["driver=af-packet".into(), "iface=host".into()],
            "key 'iface' = \"host\": interface used by two ports",
        ),
    ];
    for (name, args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let msg = refused(&cfg, name, &a);
        assert!(msg.contains(needle), "{args:?}: {needle:?} not in {msg:?}");
    }
    // Once the running view drops a port, its name, path and interface are free.
    let smaller = cfg
        .without_port("vm1")
        .unwrap()
        .without_port("host")
        .unwrap();
    assert!(cfg.without_port("nope").is_none());
    let p = smaller
        .port_from_args("vm1", &["driver=vhost-user", &path("vm1.sock")])
        .unwrap();
    let back = smaller.with_port(p.clone());
    assert_eq!(back.port("vm1"), Some(&p));
    assert_eq!(
        back.with_port(p).ports.len(),
        1,
        "with_port replaces by name"
    );
}

#[test]
fn switch_socket_perms_are_resolved_and_inherited() {
    let d = Dir::new();
    let cfg = running(&d, "");
    assert_eq!(
        cfg.socket_perms,
        SocketPerms {
            gid: None,
            mode: DEFAULT_SOCKET_MODE
        }
    );
    let cfg = running(&d, "socket_group = \"root\"\nsocket_mode = 0o666\n");
    let sw = SocketPerms {
        gid: Some(0),
        mode: 0o666,
    };
    assert_eq!(cfg.socket_perms, sw);
    assert!(
        matches!(&cfg.ports[0].kind, PortKind::VhostUser { socket_perms, .. } if *socket_perms == sw)
    );
    // A port's own keys override the switch's one by one.
    let p = cfg
        .port_from_args(
            "vm3",
            &[
                "driver=vhost-user",
                &format!("path={}", d.path("vm3.sock")),
                "socket_mode=0o600",
            ],
        )
        .unwrap();
    assert!(matches!(p.kind, PortKind::VhostUser { socket_perms, .. }
        if socket_perms == SocketPerms { gid: Some(0), mode: 0o600 }));
    // A string of digits that is no group's name is a gid, as chown takes it.
    let cfg = running(&d, "socket_group = \"4242\"\n");
    assert_eq!(cfg.socket_perms.gid, Some(4242));
}

#[test]
fn control_socket_directory_may_be_missing_and_its_sockets_with_it() {
    let d = Dir::new();
    let run_dir = d.path("run/vswitch");
    let text = format!(
        "[switch]\npmd_cores = [0]\ncontrol_socket = \"{run_dir}/vswitch.ctl\"\n\
         [[port]]\nname = \"a\"\ndriver = \"vhost-user\"\npath = \"{run_dir}/a.sock\"\n"
    );
    let cfg = Config::parse(Path::new("/t.toml"), &text).unwrap();
    // add-port too: the directory the service makes counts as there.
    cfg.port_from_args(
        "b",
        &["driver=vhost-user", &format!("path={run_dir}/b.sock")],
    )
    .unwrap();
    let other = format!("{}/b.sock", d.path("elsewhere"));
    let e = cfg
        .port_from_args("b", &["driver=vhost-user", &format!("path={other}")])
        .unwrap_err();
    assert!(e.msg.contains("does not exist"), "{e}");
    // The default control socket needs nothing on disk either.
    let text = "[switch]\npmd_cores = [0]\n[[port]]\nname = \"a\"\ndriver = \"tap\"\n";
    let cfg = Config::parse(Path::new("/t.toml"), text).unwrap();
    assert_eq!(cfg.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
}

#[test]
fn vlan_modes_follow_ovs() {
    let ok = |m: Option<VlanMode>, tag: Option<i64>, trunks: Option<&[i64]>| {
        vlan::check(m, tag, trunks).unwrap()
    };
    assert_eq!(ok(None, None, None), VlanConfig::default());
    assert_eq!(ok(None, None, Some(&[0, 30, 10])).trunks, vec![0, 10, 30]);
    assert_eq!(ok(None, None, Some(&[4095])).trunks, vec![4095]);
    // The native VLAN is trunked even when the list leaves it out.
    let n = ok(Some(VlanMode::NativeTagged), Some(7), Some(&[8]));
    assert_eq!((n.tag, n.trunks), (7, vec![7, 8]));
    assert!(ok(Some(VlanMode::NativeTagged), Some(7), None)
        .trunks
        .is_empty());
    let bad = |m: Option<VlanMode>, tag: Option<i64>, trunks: Option<&[i64]>, needle: &str| {
        let e = vlan::check(m, tag, trunks).unwrap_err();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    };
    bad(
        Some(VlanMode::Access),
        None,
        None,
        "key 'tag' is missing: vlan_mode \"access\"",
    );
    bad(
        Some(VlanMode::NativeUntagged),
        None,
        None,
        "key 'tag' is missing",
    );
    bad(
        Some(VlanMode::Access),
        Some(0),
        None,
        "key 'tag' = 0: must be 1..=4094",
    );
    bad(
        Some(VlanMode::Access),
        Some(4095),
        None,
        "key 'tag' = 4095: must be 1..=4094",
    );
    bad(
        None,
        Some(10),
        None,
        "key 'tag' = 10: does not apply to vlan_mode \"trunk\"",
    );
    bad(
        Some(VlanMode::Access),
        Some(10),
        Some(&[]),
        "key 'trunks' = []: does not apply to vlan_mode \"access\"",
    );
    bad(
        None,
        None,
        Some(&[1, 4096]),
        "key 'trunks' = [1, 4096]: VLAN 4096 is not 0..=4095",
    );
    bad(None, None, Some(&[-1]), "VLAN -1 is not 0..=4095");
    bad(
        None,
        None,
        Some(&[5, 6, 5]),
        "key 'trunks' = [5, 6, 5]: lists VLAN 5 twice",
    );
    bad(
        Some(VlanMode::NativeTagged),
        Some(3),
        Some(&[0, 3]),
        "VLAN 0 cannot be trunked in vlan_mode \"native-tagged\"",
    );
}

#[test]
fn every_driver_takes_the_common_keys_and_only_its_own() {
    use toml::Value;
    let v = Value::Integer(1);
    for key in ["queues", "vlan_mode", "tag", "trunks"] {
        assert_eq!(de::drivers_taking(key, &v), DRIVERS, "{key}");
    }
    assert_eq!(de::drivers_taking("path", &v), ["vhost-user"]);
    assert_eq!(
        de::drivers_taking("iface", &v),
        ["af-xdp", "af-packet", "tap"]
    );
    assert_eq!(de::drivers_taking("speed", &v), Vec::<&str>::new());
    // DRIVERS is the tagged enum's list of variants.
    let mut t = toml::Table::new();
    t.insert("name".into(), Value::String("x".into()));
    t.insert("driver".into(), Value::String("nope".into()));
    match de::raw_port(&t) {
        Err(DeError::UnknownVariant { expected, .. }) => assert_eq!(expected, DRIVERS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn metrics_listen_defaults_to_loopback_and_empty_turns_it_off() {
    let d = Dir::new();
    let default = running(&d, "");
    assert_eq!(
        default.metrics_listen,
        Some(super::DEFAULT_METRICS_LISTEN.parse().unwrap())
    );
    let off = running(&d, "[metrics]\nlisten = \"\"\n");
    assert_eq!(off.metrics_listen, None);
    let v6 = running(&d, "[metrics]\nlisten = \"[::1]:9100\"\n");
    assert_eq!(v6.metrics_listen, Some("[::1]:9100".parse().unwrap()));
    for bad in ["localhost:9477", "127.0.0.1", ":9477", "127.0.0.1:99999"] {
        let text = format!(
            "[switch]\npmd_cores = [0]\n[metrics]\nlisten = {bad:?}\n\
             [[port]]\nname = \"t\"\ndriver = \"tap\"\n"
        );
        let e = Config::parse(Path::new("/test/vswitch.toml"), &text).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("key 'metrics.listen' = {bad:?}")),
            "{msg}"
        );
    }
}
