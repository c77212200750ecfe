//! The service files in dist/ and scripts/install.sh: the script installs into a
//! scratch root (binary, unit, example configuration, hugepage sysctl) without touching
//! the host, keeps an operator's configuration, and honours --prefix; systemd accepts
//! the installed unit (`systemd-analyze verify`, with no warning); the example
//! configuration passes `vswitch check` and runs; the unit's reload commands apply an
//! edit and refuse one that does not parse.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Options of one run of scripts/install.sh.
struct Install<'a> {
    destdir: &'a Path,
    prefix: Option<&'a str>,
    /// Install this binary instead of letting the script build one.
    bin: Option<&'a str>,
}

fn install(opts: &Install) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/install.sh"))
        .arg("--destdir")
        .arg(opts.destdir);
    if let Some(p) = opts.prefix {
        cmd.args(["--prefix", p]);
    }
    if let Some(b) = opts.bin {
        cmd.args(["--bin", b]);
    }
    let out = cmd.output().expect("run install.sh");
    eprintln!(
        "install.sh:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The unit's `ExecReload=` commands, pointed at a test's binary, config and switch.
struct Reload<'a> {
    unit: &'a str,
    binary: &'a str,
    config: &'a Path,
    pid: u32,
}

impl Reload<'_> {
    /// Runs them in order as systemd does, stopping at the first that fails; whether
    /// all succeeded.
    fn run(&self) -> bool {
        let cmds: Vec<String> = self
            .unit
            .lines()
            .filter_map(|l| l.strip_prefix("ExecReload="))
            .map(|c| {
                c.replace("/usr/local/bin/vswitch", self.binary)
                    .replace("/etc/vswitch/vswitch.toml", self.config.to_str().unwrap())
                    .replace("$MAINPID", &self.pid.to_string())
            })
            .collect();
        assert!(!cmds.is_empty(), "no ExecReload= in the unit");
        cmds.iter().all(|c| {
            let st = Command::new("sh").args(["-c", c]).status().unwrap();
            eprintln!("ExecReload={c}: {st}");
            st.success()
        })
    }
}

/// `systemd-analyze verify` on `unit`: (success, what it printed).
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn install_script_stages_a_unit_systemd_accepts_and_a_config_that_runs() {
    which("systemd-analyze");
    let dir = Scratch::new("install");
    let root = dir.path("root");
    // The switch under test, rather than the script's own `cargo build --release`
    // (a cargo inside the test run could rebuild, and replace, the binary other tests use).
    let built = bin();
    let out = install(&Install {
        destdir: &root,
        prefix: None,
        bin: Some(&built),
    });
    assert!(out.status.success(), "install.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("systemd not told"),
        "a staged install must not reload systemd: {stdout}"
    );

    // What it installed, where, with which modes.
    let vswitch = root.join("usr/local/bin/vswitch");
    let unit = root.join("etc/systemd/system/vswitch.service");
    let conf = root.join("etc/vswitch/vswitch.toml");
    let sysctl = root.join("etc/sysctl.d/60-vswitch-hugepages.conf");
    assert_eq!(mode(&vswitch), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&conf), 0o644);
    assert_eq!(mode(&sysctl), 0o644);
    assert_eq!(
        std::fs::read(&vswitch).unwrap(),
        std::fs::read(&built).unwrap()
    );
    let example = std::fs::read_to_string(repo().join("dist/vswitch.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), example);
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/vswitch run --config /etc/vswitch/vswitch.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=vswitch",
        "RuntimeDirectoryPreserve=yes",
        "Restart=on-failure",
        "LimitMEMLOCK=infinity",
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "unit lacks {line:?}:\n{unit_text}"
        );
    }
    assert!(
        !unit_text.contains("Type=notify"),
        "the switch does not speak sd_notify"
    );

    // systemd accepts the unit as installed, its commands pointing at the staged
    // binary (verify checks that ExecStart's file exists): no error, no warning.
    let staged = dir.path("vswitch.service");
    std::fs::write(
        &staged,
        unit_text.replace("/usr/local/bin/vswitch", vswitch.to_str().unwrap()),
    )
    .unwrap();
    let (ok, said) = verify(&staged);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // ...and the same check refuses a unit whose binary is missing and one with a
    // misspelt key (verify only warns on those: any output fails the test above).
    let broken = dir.path("broken.service");
    let missing = dir.path("missing/vswitch");
    std::fs::write(
        &broken,
        unit_text.replace("/usr/local/bin/vswitch", missing.to_str().unwrap()),
    )
    .unwrap();
    let (ok, said) = verify(&broken);
    assert!(
        !ok || !said.trim().is_empty(),
        "verify accepted a missing binary"
    );
    std::fs::write(
        &broken,
        unit_text
            .replace("/usr/local/bin/vswitch", vswitch.to_str().unwrap())
            .replace("LimitMEMLOCK=", "LimitMEMLOK="),
    )
    .unwrap();
    let (_, said) = verify(&broken);
    assert!(said.contains("LimitMEMLOK"), "verify said: {said}");

    // The example configuration: its sockets live in the unit's RuntimeDirectory, it
    // passes `vswitch check`, and it runs (with that directory moved to scratch).
    assert!(
        example.contains("control_socket = \"/run/vswitch/")
            && example.contains("path = \"/run/vswitch/"),
        "the example's sockets should be in /run/vswitch (RuntimeDirectory=vswitch)"
    );
    let run_dir = dir.path("run-vswitch");
    std::fs::create_dir_all(&run_dir).unwrap();
    let local = dir.path("vswitch.toml");
    std::fs::write(
        &local,
        example.replace("/run/vswitch/", &format!("{}/", run_dir.display())),
    )
    .unwrap();
    let check = Command::new(&built)
        .args(["check", "--config"])
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "vswitch check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let sw = Switch::start(&local, run_dir.join("vswitch.ctl"));
    let show = sw.ctl("show");
    assert!(
        show.contains("vm1: driver=vhost-user mode=server")
            && show.contains("vm2: driver=vhost-user mode=client"),
        "show:\n{show}"
    );
    assert!(run_dir.join("vm1.sock").exists());

    // `systemctl reload`: the unit's ExecReload= commands, run as systemd runs them
    // (in order, stopping at the first that fails). An added port appears; a file that
    // does not parse fails the reload before the signal, and the switch keeps its ports.
    let reload = Reload {
        unit: &unit_text,
        binary: &built,
        config: &local,
        pid: sw.pid(),
    };
    let config = std::fs::read_to_string(&local).unwrap();
    let with_vm3 = format!(
        "{config}\n[[port]]\nname = \"vm3\"\ndriver = \"vhost-user\"\npath = \"{}\"\n",
        run_dir.join("vm3.sock").display()
    );
    std::fs::write(&local, &with_vm3).unwrap();
    assert!(reload.run(), "reload failed");
    sw.wait_show("vm3 added by the reload", Duration::from_secs(10), |s| {
        s.contains("vm3: driver=vhost-user mode=server")
    });
    std::fs::write(&local, format!("{with_vm3}colour = \"blue\"\n")).unwrap();
    assert!(!reload.run(), "a reload of a bad file succeeded");
    std::thread::sleep(Duration::from_millis(300));
    assert!(sw.ctl("show").contains("vm3: driver=vhost-user"));
    let log = sw.log();
    assert_eq!(
        log.matches("SIGHUP").count(),
        1,
        "the bad file reached the switch:\n{log}"
    );
    let log = sw.stop();
    assert!(log.contains("free_mbufs=16384"), "log:\n{log}");

    // Again, over it: the operator's configuration stays; --prefix moves the binary
    // and the unit's commands with it.
    let mine = format!("# edited by the operator\n{example}");
    std::fs::write(&conf, &mine).unwrap();
    let out = install(&Install {
        destdir: &root,
        prefix: Some("/opt/vsw"),
        bin: Some(&built),
    });
    assert!(out.status.success(), "second install.sh failed");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), mine);
    assert_eq!(mode(&root.join("opt/vsw/bin/vswitch")), 0o755);
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text
            .lines()
            .any(|l| l == "ExecStart=/opt/vsw/bin/vswitch run --config /etc/vswitch/vswitch.toml")
            && !unit_text.contains("/usr/local/bin"),
        "{unit_text}"
    );

    // A relative prefix is refused, and nothing is installed.
    let other = dir.path("other");
    let out = install(&Install {
        destdir: &other,
        prefix: Some("opt"),
        bin: Some(&built),
    });
    assert!(!out.status.success());
    assert!(!other.join("etc").exists());
}
