//! Who may connect: `socket_group` and `socket_mode` on the control socket and on
//! server-mode vhost-user sockets. A QEMU run as an unprivileged user in the group
//! connects and its guest pings; one run as a user outside the group is refused by
//! the kernel, and so is `vswitch ctl` run by that user.

mod common;
use common::guest::{images, num, Guest, GuestSpec, SocketRole};
use common::netns::{must, sh};
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

const GROUP: &str = "vswtest-sock";
const MEMBER: &str = "vswtest-in";
const OUTSIDER: &str = "vswtest-out";

/// A system user (with a group of its own name), in `group` if given.
fn ensure_user(name: &str, group: Option<&str>) {
    if sh("id", &[name]).status.success() {
        return;
    }
    let mut args = vec![
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
    ];
    if let Some(g) = group {
        args.extend(["--groups", g]);
    }
    args.push(name);
    must("useradd", &args);
}

fn gid_of(group: &str) -> u32 {
    must("getent", &["group", group])
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn only_a_qemu_in_the_socket_group_can_connect() {
    which("setpriv");
    let img = images();
    must("groupadd", &["-f", GROUP]);
    ensure_user(MEMBER, Some(GROUP));
    ensure_user(OUTSIDER, None);
    let dir = Scratch::new("perm");
    let ports: Vec<String> = ["vm1", "vm2", "vm3"]
        .iter()
        .map(|n| {
            format!(
                "[[port]]\nname = \"{n}\"\ndriver = \"vhost-user\"\npath = \"{}\"\n",
                dir.path(&format!("{n}.sock")).display()
            )
        })
        .collect();
    let cfg = write_config_ports(&dir, &ports.concat());
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[switch]\n",
        &format!("[switch]\nsocket_group = \"{GROUP}\"\nsocket_mode = 0o660\ntx_stall_ms = 1000\n"),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));

    // The sockets have the group and mode; the process umask left nothing wider.
    let gid = gid_of(GROUP);
    for f in ["ctl.sock", "vm1.sock", "vm2.sock", "vm3.sock"] {
        let m = std::fs::metadata(dir.path(f)).unwrap();
        eprintln!(
            "{f}: mode {:o} gid {}",
            m.permissions().mode() & 0o777,
            m.gid()
        );
        assert_eq!(m.permissions().mode() & 0o777, 0o660, "{f}");
        assert_eq!(m.gid(), gid, "{f}");
    }

    // The control socket: a member may use ctl, an outsider may not.
    let ctl = |user: &str| {
        sh(
            "setpriv",
            &[
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--",
                &bin(),
                "ctl",
                "--socket",
                dir.path("ctl.sock").to_str().unwrap(),
                "show",
            ],
        )
    };
    assert!(ctl(MEMBER).status.success(), "a member's ctl failed");
    let out = ctl(OUTSIDER);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("ctl as {OUTSIDER}: {}", err.trim());
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "{err}"
    );

    // A QEMU of a member connects: its guest pings a guest of root's.
    let guest = |name: &'static str, port: &str, mac: &'static str, append: &'static str, user| {
        Guest::launch(&GuestSpec {
            name,
            sock: dir.path(&format!("{port}.sock")),
            mac,
            append,
            images: &img,
            socket: SocketRole::QemuConnects,
            mem_path: None,
            user,
            host_mtu: None,
            no_offloads: false,
            packed: false,
            qemu_args: &[],
        })
    };
    let b = guest(
        "guest-root",
        "vm2",
        "52:54:00:00:00:0b",
        "vsw.ip=10.0.0.2/24 vsw.role=idle vsw.secs=300",
        None,
    );
    let a = guest(
        "guest-member",
        "vm1",
        "52:54:00:00:00:0a",
        "vsw.ip=10.0.0.1/24 vsw.role=ping vsw.peer=10.0.0.2 vsw.count=3 vsw.wait=240",
        Some(MEMBER),
    );
    // An outsider's QEMU is refused at connect (it retries every second).
    let mut c = guest(
        "guest-outsider",
        "vm3",
        "52:54:00:00:00:0c",
        "vsw.ip=10.0.0.3/24 vsw.role=idle vsw.secs=300",
        Some(OUTSIDER),
    );
    let ping = a.wait_line("VSW-PING", Duration::from_secs(300));
    eprintln!("guest of {MEMBER}: {ping}");
    assert_eq!(num(&ping, "received="), 3, "{ping}");
    // QEMU: "Failed to connect to '.../vm3.sock': Permission denied", and it retries.
    let t0 = std::time::Instant::now();
    let refused = loop {
        if let Some(l) = c
            .output()
            .lines()
            .find(|l| l.contains("vm3.sock") && l.contains("Permission denied"))
        {
            break l.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no refusal of vm3.sock:\n{}",
            c.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        c.is_running(),
        "the outsider's QEMU gave up instead of retrying"
    );
    eprintln!("QEMU of {OUTSIDER}: {refused}");
    let show = sw.ctl("show");
    let vm3 = show.lines().find(|l| l.contains(" vm3: ")).unwrap();
    assert!(vm3.contains("connections=0"), "{vm3}");
    drop(c);
    drop(b);
    a.wait_exit(Duration::from_secs(60));
    sw.stop();
}
