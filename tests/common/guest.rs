//! QEMU test guests: building their images, booting one on a vhost-user socket, and
//! reading the VSW- lines its /init prints (see tests/guest/README.md).

use super::{capture, which};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn images() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/guest");
    which("qemu-system-x86_64");
    let st = Command::new("bash")
        .arg(root.join("tests/guest/build.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "tests/guest/build.sh failed");
    out
}

pub struct Guest {
    name: &'static str,
    child: Child,
    out: Arc<Mutex<String>>,
}

/// Options of [`Guest::boot_with`] beyond the usual.
#[derive(Default)]
pub struct BootOpts<'a> {
    /// Guest RAM in a file under this directory (`memory-backend-file`, e.g.
    /// `/dev/hugepages`) instead of a memfd.
    pub mem_path: Option<&'a str>,
    /// QEMU's `host_mtu`: the MTU the guest is told (sent to the switch with
    /// `NET_SET_MTU`).
    pub host_mtu: Option<u16>,
    /// The NIC without checksum and segmentation offloads (QEMU enables them by
    /// default).
    pub no_offloads: bool,
    /// Packed virtqueues (`packed=on`) instead of split ones.
    pub packed: bool,
}

/// Who listens on a guest's vhost-user socket.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub enum SocketRole {
    /// QEMU connects and retries every second (`reconnect-ms=1000`): the switch's
    /// port is in server mode.
    #[default]
    QemuConnects,
    /// QEMU creates the socket and listens (`server=on,wait=off`): the switch's port
    /// is in client mode.
    QemuListens,
}

/// A guest to boot with [`Guest::launch`].
pub struct GuestSpec<'a> {
    /// Tag of its console lines in the test's output.
    pub name: &'static str,
    /// Its vhost-user socket.
    pub sock: PathBuf,
    pub mac: &'a str,
    /// Kernel command line for its /init (`vsw.ip=... vsw.role=...`).
    pub append: &'a str,
    /// Directory from [`images`].
    pub images: &'a Path,
    pub socket: SocketRole,
    /// Guest RAM in a file under this directory instead of a memfd.
    pub mem_path: Option<&'a str>,
    /// Run QEMU as this user (with the user's groups) instead of root.
    pub user: Option<&'a str>,
    /// QEMU's `host_mtu` for the NIC.
    pub host_mtu: Option<u16>,
    /// The NIC without checksum and segmentation offloads.
    pub no_offloads: bool,
    /// Packed virtqueues (QEMU's `packed=on`) instead of split ones.
    pub packed: bool,
    /// More QEMU arguments (a QMP socket, `-incoming`).
    pub qemu_args: &'a [String],
}

impl Guest {
    /// Boots a guest as `spec` says (console collected, QEMU killed on drop).
    pub fn launch(spec: &GuestSpec) -> Guest {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest/qemu-guest.sh");
        let mut cmd = match spec.user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={u}"),
                    &format!("--regid={u}"),
                    "--init-groups",
                    "--",
                    "bash",
                ]);
                c
            }
            None => Command::new("bash"),
        };
        cmd.arg(script);
        if let Some(p) = spec.mem_path {
            cmd.args(["--mem-path", p]);
        }
        if spec.no_offloads {
            cmd.arg("--no-offloads");
        }
        if spec.packed {
            cmd.arg("--packed");
        }
        if let Some(m) = spec.host_mtu {
            cmd.args(["--host-mtu", &m.to_string()]);
        }
        if spec.socket == SocketRole::QemuListens {
            cmd.arg("--server");
        }
        let mut child = cmd
            .arg("--sock")
            .arg(&spec.sock)
            .arg("--images")
            .arg(spec.images)
            .args(["--mac", spec.mac, "--append", spec.append])
            .arg("--")
            .args(spec.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu");
        let out = capture(&mut child, spec.name);
        Guest {
            name: spec.name,
            child,
            out,
        }
    }

    /// Everything the guest and QEMU have printed so far (whole lines).
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// The console as it grows, for a thread that watches it.
    pub fn console(&self) -> Arc<Mutex<String>> {
        self.out.clone()
    }

    /// QEMU's process id (the script execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn boot(
        name: &'static str,
        sock: PathBuf,
        mac: &str,
        append: &str,
        images: &PathBuf,
    ) -> Guest {
        Guest::boot_with(name, sock, mac, append, images, &BootOpts::default())
    }

    pub fn boot_with(
        name: &'static str,
        sock: PathBuf,
        mac: &str,
        append: &str,
        images: &PathBuf,
        opts: &BootOpts,
    ) -> Guest {
        Guest::launch(&GuestSpec {
            name,
            sock,
            mac,
            append,
            images,
            socket: SocketRole::QemuConnects,
            mem_path: opts.mem_path,
            user: None,
            host_mtu: opts.host_mtu,
            no_offloads: opts.no_offloads,
            packed: opts.packed,
            qemu_args: &[],
        })
    }

    /// Waits for a console line starting with `prefix`; returns it.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let o = self.out.lock().unwrap().clone();
            if let Some(l) = o.lines().find(|l| l.contains(prefix)) {
                return l[l.find(prefix).unwrap()..].to_string();
            }
            if let Some(l) = o.lines().find(|l| l.contains("VSW-ERROR")) {
                panic!("guest {}: {l}\n{o}", self.name);
            }
            assert!(
                t0.elapsed() < timeout,
                "guest {}: no {prefix} within {timeout:?}:\n{o}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_exit(mut self, timeout: Duration) {
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < timeout,
                "guest {} did not power off",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn num(line: &str, key: &str) -> u64 {
    let i = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    line[i + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
