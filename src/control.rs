//! The control socket: `vswitch ctl` talks to a running switch over a unix socket.
//!
//! One request per connection: a line with a command, answered with text and EOF.
//! Commands: `show`, `stats`, `fdb`, `fdb-flush`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

pub const COMMANDS: &[&str] = &["show", "stats", "fdb", "fdb-flush"];

/// Serves one pending connection, if any; `answer` maps a command to its reply.
pub fn serve_pending(l: &UnixListener, answer: &mut dyn FnMut(&str) -> String) {
    while let Ok((mut s, _)) = l.accept() {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let _ = BufReader::new(&mut s).take(256).read_line(&mut line);
        let cmd = line.trim();
        let reply = if COMMANDS.contains(&cmd) {
            answer(cmd)
        } else {
            format!(
                "error: unknown command {cmd:?}; commands: {}\n",
                COMMANDS.join(", ")
            )
        };
        let _ = s.write_all(reply.as_bytes());
    }
}

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A socket left by a switch that did not stop cleanly; refuse if one still answers.
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another switch answers on control socket {}",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The client side: sends `cmd`, returns the reply.
pub fn request(path: &Path, cmd: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
