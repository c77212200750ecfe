//! QEMU test guests: building their images, booting one on a vhost-user socket, and
//! reading the VSW- lines its /init prints (see tests/guest/README.md).

use super::{capture, which};
use std::path::PathBuf;
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
}

impl Guest {
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
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest/qemu-guest.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script);
        if let Some(p) = opts.mem_path {
            cmd.args(["--mem-path", p]);
        }
        let mut child = cmd
            .arg("--sock")
            .arg(&sock)
            .arg("--images")
            .arg(images)
            .args(["--mac", mac, "--append", append])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu");
        let out = capture(&mut child, name);
        Guest { name, child, out }
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
