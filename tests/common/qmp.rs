//! A QMP client for tests that drive QEMU (live migration): commands as JSON over
//! QEMU's `-qmp unix:PATH,server=on,wait=off` socket.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects (retrying while QEMU starts) and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Qmp {
        let t0 = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(60),
                        "QMP {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut q = Qmp {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        q.run("qmp_capabilities", json!({}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).expect("QMP read");
        assert!(n > 0, "QMP: QEMU closed the socket");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP: {e}: {line}"))
    }

    /// Ends QEMU (`quit`) and waits until it has closed the socket (at once if it
    /// already has).
    pub fn quit(mut self) {
        let _ = writeln!(self.w, "{}", json!({"execute": "quit"}));
        let mut line = String::new();
        while matches!(self.r.read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
    }

    /// Runs a command; returns its `return` value (events in between are skipped).
    /// An `error` reply fails the test.
    pub fn run(&mut self, cmd: &str, args: Value) -> Value {
        let msg = json!({"execute": cmd, "arguments": args});
        writeln!(self.w, "{msg}").expect("QMP write");
        loop {
            let v = self.read();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "QMP {cmd}: {v}");
        }
    }
}
