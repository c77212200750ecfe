//! The control socket: `vswitch ctl` talks to a running switch over a unix socket.
//!
//! One request per connection: a line with a command and its arguments, separated
//! by spaces, answered with text and EOF; a reply that starts with `error:` is a
//! refusal. Commands: see [`COMMANDS`] and [`usage`].
//!
//! [`serve`] runs on the service's control thread, apart from its signal loop: a
//! client that connects and then sends nothing, or never reads its reply, holds one of
//! [`WORKERS`] workers for at most [`CONN_DEADLINE`] for its request and as long again
//! for its reply, and delays shutdown by no more than that (plus a port change already
//! running).

use pmd::sockperm::SocketPerms;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const COMMANDS: &[&str] = &[
    "show",
    "stats",
    "fdb",
    "fdb-flush",
    "add-port",
    "del-port",
    "reload",
    "rebalance",
    "capture",
];

/// Commands whose reply is a stream that lasts (the connection is handed over).
pub const STREAMING: &[&str] = &["capture"];

/// What answers requests: most commands with a reply, streaming ones by taking the
/// connection.
pub struct Handlers<'a> {
    pub answer: &'a (dyn Fn(&str) -> String + Sync),
    /// Gets the request line and the connection, and returns at once (a writer
    /// thread of its own keeps the connection).
    pub stream: &'a (dyn Fn(&str, UnixStream) + Sync),
}

/// How a command is used (for a request with the wrong arguments).
pub fn usage(cmd: &str) -> &'static str {
    match cmd {
        "add-port" => {
            "usage: add-port NAME driver=DRIVER key=value... (the keys of a [[port]] table)"
        }
        "del-port" => "usage: del-port NAME",
        "capture" => crate::capture::usage(),
        "show" | "stats" | "fdb" => "takes no arguments but --json",
        _ => "takes no arguments",
    }
}

/// How long one connection may take, from accept to the last byte of its reply.
pub const CONN_DEADLINE: Duration = Duration::from_secs(1);
/// Longest request line accepted, in bytes (the newline excluded).
pub const MAX_REQUEST: usize = 4096;
/// Connections served at once; more wait in the listen backlog.
pub const WORKERS: usize = 4;
/// How often an idle worker looks for a connection and for the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Why a connection ended without a complete exchange.
#[derive(Debug)]
pub enum ConnError {
    /// The client did not send its request, or take its reply, before the deadline.
    Deadline,
    /// The request line was longer than [`MAX_REQUEST`].
    TooLong,
    /// The request was not UTF-8.
    NotUtf8,
    Io(std::io::Error),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Deadline => write!(f, "client too slow ({CONN_DEADLINE:?} per request)"),
            ConnError::TooLong => write!(f, "request longer than {MAX_REQUEST} bytes"),
            ConnError::NotUtf8 => write!(f, "request is not UTF-8"),
            ConnError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> ConnError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ConnError::Deadline,
            _ => ConnError::Io(e),
        }
    }
}

/// Serves `l` (non-blocking, from [`bind`]) until `stop` is set; `answer` maps a
/// command to its reply. [`WORKERS`] threads each accept and serve one connection at
/// a time; returns when they have all finished, at most [`CONN_DEADLINE`] after `stop`.
pub fn serve(l: &UnixListener, stop: &AtomicBool, h: &Handlers) {
    std::thread::scope(|s| {
        for i in 0..WORKERS {
            std::thread::Builder::new()
                .name(format!("ctl-{i}"))
                .spawn_scoped(s, || worker(l, stop, h))
                .expect("spawn control worker");
        }
    });
}

fn worker(l: &UnixListener, stop: &AtomicBool, h: &Handlers) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                if let Err(e) = serve_conn(s, Instant::now() + CONN_DEADLINE, h) {
                    tracing::debug!(error = %e, "control connection dropped");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// One exchange: the request line, then the reply, both before `deadline`.
fn serve_conn(mut s: UnixStream, deadline: Instant, h: &Handlers) -> Result<(), ConnError> {
    s.set_nonblocking(false)?;
    // The client gets the same time again for the reply once it is made: the deadline
    // bounds what a slow client costs, not how long a port change takes.
    let budget = deadline.saturating_duration_since(Instant::now());
    let reply = match read_request(&mut s, deadline) {
        Ok(line) => {
            let line = line.trim();
            let cmd = line.split_whitespace().next().unwrap_or("");
            if STREAMING.contains(&cmd) {
                (h.stream)(line, s);
                return Ok(());
            }
            if COMMANDS.contains(&cmd) {
                // A bug in a command must not take the worker (and so the control
                // socket, four panics later) with it.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (h.answer)(line)))
                    .unwrap_or_else(|_| {
                        tracing::error!(request = line, "control command panicked");
                        format!("error: {cmd}: internal error (see the switch's log)\n")
                    })
            } else {
                format!(
                    "error: unknown command {cmd:?}; commands: {}\n",
                    COMMANDS.join(", ")
                )
            }
        }
        Err(e @ (ConnError::TooLong | ConnError::NotUtf8)) => format!("error: {e}\n"),
        Err(e) => return Err(e),
    };
    write_reply(&mut s, reply.as_bytes(), Instant::now() + budget)
}

/// Time left before `deadline`, or `Deadline` if none.
fn remaining(deadline: Instant) -> Result<Duration, ConnError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ConnError::Deadline)
    } else {
        Ok(left)
    }
}

/// Reads up to the first newline (or EOF), at most [`MAX_REQUEST`] bytes.
fn read_request(s: &mut UnixStream, deadline: Instant) -> Result<String, ConnError> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(nl);
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Err(ConnError::TooLong);
        }
        s.set_read_timeout(Some(remaining(deadline)?))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if buf.len() > MAX_REQUEST {
        return Err(ConnError::TooLong);
    }
    String::from_utf8(buf).map_err(|_| ConnError::NotUtf8)
}

/// Writes `reply`, giving up at `deadline` (a client that does not read).
fn write_reply(s: &mut UnixStream, mut reply: &[u8], deadline: Instant) -> Result<(), ConnError> {
    while !reply.is_empty() {
        s.set_write_timeout(Some(remaining(deadline)?))?;
        match s.write(reply) {
            Ok(0) => return Err(ConnError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => reply = &reply[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Binds the control socket at `path`, giving it the group and mode of `perms`. A
/// missing directory is made (mode 0755: the socket's own mode decides who may
/// connect), as for the default `/run/vswitch`.
pub fn bind(path: &Path, perms: &SocketPerms) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        make_dirs(dir)?;
    }
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
    perms.apply(path)?;
    Ok(l)
}

/// Makes `dir` and any missing parents, each mode 0755 (the process umask, 0077,
/// would leave them 0700 and keep the socket's group out).
fn make_dirs(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.is_dir())
        .collect();
    for d in missing.iter().rev() {
        std::fs::DirBuilder::new().mode(0o755).create(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        tracing::info!(dir = %d.display(), "made the control socket's directory");
    }
    Ok(())
}

/// The client side: sends `cmd`, returns the reply.
pub fn request(path: &Path, cmd: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    // A reload may open and close many ports before it answers.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        // The switch closed without answering: it did not take the request.
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the switch closed the connection without a reply",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_stream(_: &str, _: UnixStream) {
        unreachable!("not a streaming command")
    }

    fn handlers<'a>(answer: &'a (dyn Fn(&str) -> String + Sync)) -> Handlers<'a> {
        Handlers {
            answer,
            stream: &no_stream,
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (a, b)
    }

    #[test]
    fn silent_client_costs_at_most_the_deadline() {
        let (server, _client) = pair();
        let t0 = Instant::now();
        let r = serve_conn(
            server,
            Instant::now() + Duration::from_millis(200),
            &handlers(&|_| unreachable!("no request was sent")),
        );
        assert!(matches!(r, Err(ConnError::Deadline)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn client_that_does_not_read_costs_at_most_the_deadline() {
        let (server, mut client) = pair();
        client.write_all(b"fdb\n").unwrap();
        let big = "x".repeat(8 << 20);
        let t0 = Instant::now();
        let r = serve_conn(
            server,
            Instant::now() + Duration::from_millis(200),
            &handlers(&|_| big.clone()),
        );
        assert!(matches!(r, Err(ConnError::Deadline)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn long_request_is_refused() {
        let (server, mut client) = pair();
        // All of it is read (unread bytes at close would reset the connection).
        client.write_all(&[b'a'; MAX_REQUEST + 44]).unwrap();
        serve_conn(
            server,
            Instant::now() + Duration::from_secs(1),
            &handlers(&|_| unreachable!("too long to be a command")),
        )
        .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        assert_eq!(
            out,
            format!("error: request longer than {MAX_REQUEST} bytes\n")
        );
    }

    #[test]
    fn command_is_answered() {
        let (server, mut client) = pair();
        client.write_all(b"show\n").unwrap();
        serve_conn(
            server,
            Instant::now() + Duration::from_secs(1),
            &handlers(&|c| format!("answer to {c}\n")),
        )
        .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        assert_eq!(out, "answer to show\n");
    }

    #[test]
    fn a_panicking_command_is_answered_and_the_worker_goes_on() {
        let answer = |c: &str| -> String {
            if c == "reload" {
                panic!("bug");
            }
            format!("answer to {c}\n")
        };
        for (req, want) in [
            (
                "reload\n",
                "error: reload: internal error (see the switch's log)\n",
            ),
            ("show\n", "answer to show\n"),
        ] {
            let (server, mut client) = pair();
            client.write_all(req.as_bytes()).unwrap();
            serve_conn(
                server,
                Instant::now() + Duration::from_secs(1),
                &handlers(&answer),
            )
            .unwrap();
            let mut out = String::new();
            client.read_to_string(&mut out).unwrap();
            assert_eq!(out, want);
        }
    }
}
