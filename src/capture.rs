//! `vswitch ctl capture`: the control plane's side of packet capture. The switch
//! turns a capture's frames into a pcap stream on the control connection that asked
//! for it (a writer thread per capture), and the client saves that stream to a file
//! or writes it to stdout.
//!
//! The request is `capture PORT [--direction rx|tx|both] [--count N] [--snaplen N]
//! [--vlan N]`; the reply is a line, `ok capture ID on PORT` or `error: ...`, then the
//! pcap stream until the capture ends: `--count` frames written, the client gone (its
//! connection closed), the port removed, or the switch stopping. The file is written
//! by the client, as the user who runs it, never by the switch.
//!
//! The pcap format (nanosecond timestamps, Ethernet link type) is written with the
//! `pcap-file` crate; see `switch::capture` for where frames are seen.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapParser, PcapWriter};
use pcap_file::{DataLink, PcapError, TsResolution};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switch::capture::{Capture, CaptureSpec, Direction};
use switch::CaptureSource;

/// `--snaplen` when not given: whole frames, as tcpdump's default (262144).
pub const DEFAULT_SNAPLEN: u32 = 262_144;
/// How long a writer with nothing to write waits for frames (and looks whether its
/// client is still there).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long one write to a client that does not read may block before the writer
/// looks at its stop flags again.
const WRITE_WAIT: Duration = Duration::from_millis(200);
/// Bytes of pcap a writer keeps for a client that does not read before it stops
/// taking frames (they are then dropped, and counted, in the capture's slots).
const MAX_PENDING: usize = 4 << 20;

/// A capture request, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub port: String,
    pub spec: CaptureSpec,
    /// Frames to write before the capture ends by itself.
    pub count: Option<u64>,
}

/// Why a capture request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    NoPort,
    /// An option this command does not have.
    Unknown(String),
    /// An option without its value.
    Missing(&'static str),
    /// An option's value out of its range.
    Bad {
        option: &'static str,
        value: String,
        want: &'static str,
    },
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NoPort => write!(f, "{}", usage()),
            RequestError::Unknown(o) => write!(f, "unknown option {o:?}; {}", usage()),
            RequestError::Missing(o) => write!(f, "{o} needs a value"),
            RequestError::Bad {
                option,
                value,
                want,
            } => write!(f, "{option} {value:?}: {want}"),
        }
    }
}

pub fn usage() -> &'static str {
    "usage: capture PORT [--direction rx|tx|both] [--count N] [--snaplen N] [--vlan N] -w FILE|-"
}

impl Request {
    /// The words after `capture` (`-w` is the client's and is not sent).
    pub fn parse(args: &[&str]) -> Result<Request, RequestError> {
        let mut port = None;
        let mut spec = CaptureSpec {
            direction: Direction::Both,
            snaplen: DEFAULT_SNAPLEN,
            vlan: None,
        };
        let mut count = None;
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            let mut value =
                |option: &'static str| it.next().copied().ok_or(RequestError::Missing(option));
            let bad = |option, value: &str, want| RequestError::Bad {
                option,
                value: value.to_string(),
                want,
            };
            match a {
                "--direction" | "-Q" => {
                    let v = value("--direction")?;
                    spec.direction = Direction::parse(v)
                        .ok_or_else(|| bad("--direction", v, "must be rx, tx or both"))?;
                }
                "--count" | "-c" => {
                    let v = value("--count")?;
                    count = Some(v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        bad("--count", v, "must be a number of frames, 1 or more")
                    })?);
                }
                "--snaplen" | "-s" => {
                    let v = value("--snaplen")?;
                    spec.snaplen = v
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| (14..=DEFAULT_SNAPLEN).contains(&n))
                        .ok_or_else(|| bad("--snaplen", v, "must be 14 to 262144 bytes"))?;
                }
                "--vlan" => {
                    let v = value("--vlan")?;
                    spec.vlan = Some(
                        v.parse::<u16>()
                            .ok()
                            .filter(|&n| n <= 4095)
                            .ok_or_else(|| bad("--vlan", v, "must be a VLAN id, 0 to 4095"))?,
                    );
                }
                o if o.starts_with('-') => return Err(RequestError::Unknown(o.to_string())),
                p if port.is_none() => port = Some(p.to_string()),
                o => return Err(RequestError::Unknown(o.to_string())),
            }
        }
        Ok(Request {
            port: port.ok_or(RequestError::NoPort)?,
            spec,
            count,
        })
    }
}

/// The writer threads of running captures, joined when the service stops.
#[derive(Default)]
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Writers {
    /// Serves a `capture` request on `s` (its request line read): refuses it, or
    /// starts the capture and a writer thread that owns the connection from then on.
    pub fn serve(&self, sw: &CaptureSource, args: &[&str], mut s: UnixStream) {
        let refuse = |s: &mut UnixStream, e: &dyn std::fmt::Display| {
            let _ = s.set_write_timeout(Some(WRITE_WAIT));
            let _ = s.write_all(format!("error: capture: {e}\n").as_bytes());
        };
        let req = match Request::parse(args) {
            Ok(r) => r,
            Err(e) => return refuse(&mut s, &e),
        };
        let k = match sw.start(&req.port, req.spec.clone()) {
            Ok(k) => k,
            Err(e) => return refuse(&mut s, &e),
        };
        let (sw2, stop) = (sw.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("capture-{}", k.id))
            .spawn({
                let k = k.clone();
                move || {
                    let sw = sw2;
                    let why = write_capture(&k, req.count, sw.tsc_hz(), &mut s, &stop);
                    sw.stop(&k);
                    tracing::info!(
                        capture = k.id,
                        port = k.port_name,
                        written = k.written.load(Ordering::Relaxed),
                        dropped = k.dropped(),
                        "capture done: {why}"
                    );
                }
            });
        match spawned {
            Ok(t) => {
                let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => {
                tracing::warn!("capture: cannot start a writer thread: {e}");
                sw.stop(&k);
            }
        }
    }

    /// Ends every capture and waits for its writer (within [`WRITE_WAIT`] or so).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Why a capture ended.
#[derive(Debug)]
enum Ended {
    Count(u64),
    ClientGone,
    PortGone,
    Stopping,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Count(n) => write!(f, "{n} frames written"),
            Ended::ClientGone => write!(f, "the client left"),
            Ended::PortGone => write!(f, "the port left the switch"),
            Ended::Stopping => write!(f, "the switch is stopping"),
        }
    }
}

/// A `Write` that appends to a buffer the writer thread also drains to the client.
struct Sink(Rc<RefCell<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Converts the cycle counter to wall-clock time, from one reading of both.
struct Clock {
    cycles: u64,
    wall: Duration,
    hz: f64,
}

impl Clock {
    fn now(hz: u64) -> Clock {
        Clock {
            cycles: pmd::tsc::cycles(),
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            hz: hz.max(1) as f64,
        }
    }
    fn at(&self, cycles: u64) -> Duration {
        let d = cycles.wrapping_sub(self.cycles) as i64 as f64 / self.hz;
        if d >= 0.0 {
            self.wall + Duration::from_secs_f64(d)
        } else {
            self.wall.saturating_sub(Duration::from_secs_f64(-d))
        }
    }
}

/// The writer: the reply line, the pcap header, then each captured frame, until
/// the capture ends; returns why it did.
fn write_capture(
    k: &Capture,
    count: Option<u64>,
    tsc_hz: u64,
    s: &mut UnixStream,
    stop: &AtomicBool,
) -> Ended {
    let buf = Rc::new(RefCell::new(
        format!("ok capture {} on {}\n", k.id, k.port_name).into_bytes(),
    ));
    let header = PcapHeader {
        snaplen: k.spec.snaplen,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        endianness: pcap_file::Endianness::native(),
        ..PcapHeader::default()
    };
    let mut pcap = match PcapWriter::with_header(Sink(buf.clone()), header) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("capture: pcap header: {e}");
            return Ended::ClientGone;
        }
    };
    let mut readers = k.take_readers();
    let clock = Clock::now(tsc_hz);
    let _ = s.set_write_timeout(Some(WRITE_WAIT));
    let _ = s.set_read_timeout(Some(IDLE_WAIT));
    let mut written = 0u64;
    let why = loop {
        if stop.load(Ordering::Relaxed) {
            break Ended::Stopping;
        }
        // Read before the frames are taken: once it is set, no PMD thread adds any.
        let ended = k.ended.load(Ordering::Acquire);
        // Frames from every PMD thread's ring, while the client keeps up.
        let (mut took, mut drained) = (0, true);
        'rings: for r in readers.iter_mut() {
            loop {
                if buf.borrow().len() >= MAX_PENDING || count.is_some_and(|c| written >= c) {
                    drained = false;
                    break 'rings;
                }
                let Some(f) = r.next_frame() else { break };
                let p = PcapPacket::new(clock.at(f.cycles), f.orig_len, f.data);
                if let Err(e) = pcap.write_packet(&p) {
                    tracing::warn!(capture = k.id, "capture: frame not written: {e}");
                }
                written += 1;
                took += 1;
            }
        }
        k.written.store(written, Ordering::Relaxed);
        if send(s, &buf, stop, WRITE_WAIT).is_err() {
            return Ended::ClientGone;
        }
        if count.is_some_and(|c| written >= c) {
            break Ended::Count(written);
        }
        if ended && drained {
            break Ended::PortGone;
        }
        if took == 0 && client_left(s) {
            return Ended::ClientGone;
        }
    };
    // What the client has not taken yet is its frames too: a second more for them
    // (a client stuck for longer gets a file cut short).
    let _ = send(s, &buf, stop, Duration::from_secs(1));
    why
}

/// With nothing to write: waits [`IDLE_WAIT`] for the client's side to close.
fn client_left(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        // The client has nothing to say: what it sent is ignored, and the wait kept.
        Ok(_) => {
            std::thread::sleep(IDLE_WAIT);
            false
        }
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
        ),
    }
}

/// Writes what `buf` holds to the client, for at most `wait` (or until `stop`): a
/// client that does not read, or reads slowly, holds the writer no longer. Fails
/// only if the client is gone.
fn send(
    s: &mut UnixStream,
    buf: &RefCell<Vec<u8>>,
    stop: &AtomicBool,
    wait: Duration,
) -> std::io::Result<()> {
    let mut b = buf.borrow_mut();
    let mut done = 0;
    let t0 = Instant::now();
    while done < b.len() {
        match s.write(&b[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Relaxed) || t0.elapsed() > wait {
            break;
        }
    }
    b.drain(..done);
    Ok(())
}

/// Why the client stopped short of a whole capture.
#[derive(Debug)]
enum ClientError {
    /// The command line is wrong (exit 2).
    Usage(String),
    /// The switch refused the capture; its reply line (exit 2).
    Refused(String),
    /// The switch could not be reached, or the output not written (exit 1).
    Io(String),
}

/// The client: `vswitch ctl capture PORT [options] -w FILE|-`. Sends the request,
/// then copies the pcap stream to FILE (or stdout for `-`) until the switch ends the
/// capture or this process is stopped (which ends it).
pub fn client(socket: &Path, args: &[String]) -> ExitCode {
    match run_client(socket, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Usage(e)) => {
            eprintln!("error: capture: {e}");
            ExitCode::from(2)
        }
        Err(ClientError::Refused(line)) => {
            eprint!("{line}");
            ExitCode::from(2)
        }
        Err(ClientError::Io(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_client(socket: &Path, args: &[String]) -> Result<(), ClientError> {
    let (out_path, request) = split_args(args)?;
    let (mut s, what) = open_capture(socket, &request)?;
    let mut out: Box<dyn Write> = if out_path == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let f = std::fs::File::create(&out_path)
            .map_err(|e| ClientError::Io(format!("capture: cannot write {out_path}: {e}")))?;
        Box::new(std::io::BufWriter::new(f))
    };
    eprintln!("{what}: writing to {out_path}");
    // SIGTERM and SIGINT end the copy between writes, not inside one: a fatal signal
    // can cut a write to a file short and leave a record half written. The socket's
    // read timeout lets an idle capture see the flag.
    let stop = Arc::new(AtomicBool::new(false));
    // A second signal ends the process at once (a client stuck writing to a stalled
    // pipe would otherwise never stop).
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .map_err(|e| ClientError::Io(format!("capture: cannot handle signals: {e}")))?;
    }
    s.set_read_timeout(Some(STOP_CHECK))
        .map_err(|e| ClientError::Io(format!("capture: {e}")))?;
    copy_stream(&mut s, &mut out, &out_path, &stop)
}

/// How often an idle capture client looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// `-w FILE` (the client's) apart from the words sent to the switch, checked.
fn split_args(args: &[String]) -> Result<(String, Vec<&str>), ClientError> {
    let mut out_path = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-w" {
            let p = it.next().ok_or_else(|| {
                ClientError::Usage("-w needs a file name, or - for stdout".into())
            })?;
            out_path = Some(p.clone());
        } else {
            rest.push(a.as_str());
        }
    }
    let out_path = out_path.ok_or_else(|| ClientError::Usage(usage().into()))?;
    Request::parse(&rest).map_err(|e| ClientError::Usage(e.to_string()))?;
    Ok((out_path, rest))
}

/// Connects, sends the request and reads the switch's answer: the connection, with
/// the pcap stream to follow, and what the switch said (`capture ID on PORT`) once it
/// runs the capture.
fn open_capture(socket: &Path, request: &[&str]) -> Result<(UnixStream, String), ClientError> {
    let unreachable = |e: std::io::Error| {
        ClientError::Io(format!(
            "cannot reach the switch at {}: {e}",
            socket.display()
        ))
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    // The write side stays open: the switch takes its closing as the end of the capture.
    s.write_all(format!("capture {}\n", request.join(" ")).as_bytes())
        .map_err(unreachable)?;
    let line = read_line(&mut s)
        .map_err(|e| ClientError::Io(format!("the switch did not answer: {e}")))?;
    if !line.starts_with("ok ") {
        return Err(ClientError::Refused(line));
    }
    Ok((s, line.trim_end().trim_start_matches("ok ").to_string()))
}

/// Copies the pcap stream to `out` until the switch closes it or `stop` is set (a
/// signal). A reader of stdout that went away (tcpdump -c) ends the capture with this
/// process, without error. Only whole records are written, each batch in one write,
/// and `stop` is seen only between writes: a client stopped by a signal (SIGTERM, as
/// `ctl capture` is meant to be stopped) leaves a file that ends on a record, never
/// inside one (a read from the socket can end anywhere).
fn copy_stream(
    s: &mut impl Read,
    out: &mut dyn Write,
    out_path: &str,
    stop: &AtomicBool,
) -> Result<(), ClientError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut pending = Vec::with_capacity(buf.len());
    let mut parser = None;
    let cannot_write =
        |e: std::io::Error| ClientError::Io(format!("capture: cannot write {out_path}: {e}"));
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(ClientError::Io(format!("capture: {e}"))),
        };
        pending.extend_from_slice(&buf[..n]);
        let whole = whole_records(&mut parser, &pending).map_err(|e| {
            ClientError::Io(format!(
                "capture: the switch sent a broken pcap stream: {e}"
            ))
        })?;
        if whole == 0 {
            continue;
        }
        match out.write_all(&pending[..whole]).and_then(|_| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(cannot_write(e)),
        }
        pending.drain(..whole);
    }
    out.flush().map_err(cannot_write)
}

/// How many bytes at the front of `data` are whole: the file header (the first time,
/// which sets `parser` up) and the whole records after it.
fn whole_records(parser: &mut Option<PcapParser>, data: &[u8]) -> Result<usize, PcapError> {
    let mut rest = data;
    let p = match parser {
        Some(p) => p,
        None => match PcapParser::new(rest) {
            Ok((r, p)) => {
                rest = r;
                parser.insert(p)
            }
            Err(PcapError::IncompleteBuffer) => return Ok(0),
            Err(e) => return Err(e),
        },
    };
    loop {
        match p.next_raw_packet(rest) {
            Ok((r, _)) => rest = r,
            Err(PcapError::IncompleteBuffer) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(data.len() - rest.len())
}

/// The reply line, byte by byte (what follows it is the pcap stream).
fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 4096 {
        match s.read(&mut b)? {
            0 => break,
            _ => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
        }
    }
    let _ = s.set_read_timeout(None);
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `step` bytes at a time until its data runs out.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(self.data.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_client_writes_whole_records_only() {
        let header = PcapHeader {
            snaplen: 262144,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            ..Default::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        // Where each record ends: the 24-byte file header, then 16 + data per record.
        let mut ends = Vec::new();
        let mut end = 24;
        for len in [60usize, 1514, 97] {
            let data = vec![len as u8; len];
            let p = PcapPacket::new(Duration::from_nanos(len as u64), len as u32, &data);
            w.write_packet(&p).unwrap();
            end += 16 + len;
            ends.push(end);
        }
        let stream = w.into_writer();
        assert_eq!(stream.len(), end);
        // The stream stops 5 bytes into the third record's data, read 7 bytes at a time.
        let cut = ends[1] + 16 + 5;
        let mut out = Vec::new();
        copy_stream(
            &mut Trickle {
                data: &stream[..cut],
                step: 7,
            },
            &mut out,
            "test",
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(
            out,
            &stream[..ends[1]],
            "two whole records, not the third's start"
        );
        // Whole, it is copied as it came.
        let mut out = Vec::new();
        let mut r = Trickle {
            data: &stream,
            step: 1000,
        };
        copy_stream(&mut r, &mut out, "test", &AtomicBool::new(false)).unwrap();
        assert_eq!(out, stream);
        // A stream that is not pcap is refused, not copied.
        let mut out = Vec::new();
        let mut r = Trickle {
            data: &[0x55; 64],
            step: 64,
        };
        assert!(copy_stream(&mut r, &mut out, "test", &AtomicBool::new(false)).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn requests_parse_and_refuse_with_the_option_named() {
        let r =
            Request::parse(&["vm1", "--direction", "rx", "--count", "10", "--vlan", "7"]).unwrap();
        assert_eq!(r.port, "vm1");
        assert_eq!(r.spec.direction, Direction::Rx);
        assert_eq!(
            (r.count, r.spec.vlan, r.spec.snaplen),
            (Some(10), Some(7), DEFAULT_SNAPLEN)
        );
        for (args, want) in [
            (&["vm1", "--count", "0"][..], "--count \"0\": must be"),
            (&["vm1", "--direction", "up"][..], "--direction \"up\""),
            (&["vm1", "--vlan", "4096"][..], "--vlan \"4096\""),
            (&["vm1", "--snaplen", "10"][..], "--snaplen \"10\""),
            (&["vm1", "--count"][..], "--count needs a value"),
            (&["vm1", "--frob"][..], "unknown option \"--frob\""),
            (&["vm1", "vm2"][..], "unknown option \"vm2\""),
            (&[][..], "usage: capture PORT"),
        ] {
            let e = Request::parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
