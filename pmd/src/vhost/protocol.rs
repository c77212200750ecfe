//! The vhost-user control plane of one port: the socket (listening or connecting),
//! the frontend's requests, and the rings they describe.
//!
//! Written against QEMU 10 and DPDK 22.11 virtio-user as they really behave
//! (see README, "vhost-user"): requests are accepted in any order that makes sense
//! in the end (SET_VRING_ENABLE before SET_FEATURES, ring addresses before the
//! memory table), and a ring goes live only once everything it needs is known and
//! valid. Any change to a live ring takes it down first (grace period), so a PMD
//! thread never sees a ring or a mapping that is being changed.
//!
//! The wire types (request codes, message bodies, flags) are rust-vmm `vhost`'s;
//! file descriptors arrive via `vmm-sys-util`'s `ScmSocket`.

use super::log::{DirtyLog, LogError};
use super::mem::{GuestMemory, MemError, RegionDesc, MAX_REGIONS};
use super::notify::{check_eventfd, Irq, NotEventfd, Notifier};
use super::packed::PackedRing;
use super::ring::{Ring, RingBase};
use super::virtq::{LiveRing, RingAddrs, RingFeatures};
use super::{Mode, RingState, Shared, VhostConfig};
use crate::offload::Caps;
use crate::port::PortStats;
use crate::ratelimit::RateLimit;
use crate::rcu::Rcu;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserMsgValidator, VhostUserProtocolFeatures, VhostUserVirtioFeatures, VhostUserVringAddr,
    VhostUserVringAddrFlags, VhostUserVringState, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vhost::vhost_user::Listener;
use virtio_bindings::{virtio_config, virtio_net, virtio_ring};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// A feature bit as a mask (virtio-bindings gives bit numbers).
const fn bit(n: u32) -> u64 {
    1 << n
}
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF);
pub const VIRTIO_NET_F_MQ: u64 = bit(virtio_net::VIRTIO_NET_F_MQ);
pub const VIRTIO_NET_F_MTU: u64 = bit(virtio_net::VIRTIO_NET_F_MTU);
pub const VIRTIO_NET_F_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_CSUM);
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM);
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4);
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6);
pub const VIRTIO_NET_F_GUEST_ECN: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_ECN);
pub const VIRTIO_NET_F_HOST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO4);
pub const VIRTIO_NET_F_HOST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO6);
pub const VIRTIO_NET_F_HOST_ECN: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_ECN);
/// The offloads offered, both ways: checksums, and TCP segmentation over IPv4 and
/// IPv6 with ECN (never UDP).
pub const OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = bit(virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);
pub const VIRTIO_RING_F_EVENT_IDX: u64 = bit(virtio_ring::VIRTIO_RING_F_EVENT_IDX);
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// Dirty-page logging on (`VHOST_F_LOG_ALL`): QEMU sets it while it migrates the guest.
pub const VHOST_F_LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
pub const VIRTIO_F_VERSION_1: u64 = bit(virtio_config::VIRTIO_F_VERSION_1);
/// Packed virtqueues (virtio 1.1, `packed.rs`).
pub const VIRTIO_F_RING_PACKED: u64 = bit(virtio_config::VIRTIO_F_RING_PACKED);

/// Virtio features this backend implements. Bits are only ever added to this set: a
/// frontend that reconnects restores what its guest acknowledged before, and QEMU
/// refuses a backend that offers less ("vhost lacks feature mask").
/// `VIRTIO_NET_F_MTU` reaches the guest only when QEMU is given `host_mtu`.
pub const OFFERED_FEATURES: u64 = VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_MQ
    | VIRTIO_NET_F_MTU
    | OFFLOAD_FEATURES
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VHOST_F_LOG_ALL
    | VIRTIO_F_RING_PACKED
    | VIRTIO_F_VERSION_1;

/// What a guest that negotiated `f` takes in the frames it receives.
pub fn guest_caps(f: u64) -> Caps {
    let mut c = Caps::NONE;
    for (bit, cap) in [
        (VIRTIO_NET_F_GUEST_CSUM, Caps::CSUM),
        (VIRTIO_NET_F_GUEST_TSO4, Caps::TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, Caps::TSO6),
        (VIRTIO_NET_F_GUEST_ECN, Caps::ECN),
    ] {
        if f & bit != 0 {
            c = c.with(cap);
        }
    }
    c
}

/// Protocol features this backend implements: multiqueue, acknowledged requests,
/// the frontend's MTU (`NET_SET_MTU`, checked against the port's `mtu`), and live
/// migration: a shared dirty log (`LOG_SHMFD`) and the destination's announcement
/// of the guest (`RARP`).
pub fn offered_protocol_features() -> u64 {
    (VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MTU
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP)
        .bits()
}

const HDR_LEN: usize = 12;
const VRING_NOFD: u64 = 1 << 8;

/// A request that ends the connection (the frontend broke the protocol), with what
/// it sent.
#[derive(Debug)]
pub enum ProtocolError {
    /// The socket failed (`op` says where).
    Io {
        op: &'static str,
        errno: i32,
    },
    BodyTooLarge {
        req: u32,
        size: usize,
    },
    BadFlags {
        req: u32,
        flags: u32,
    },
    UnknownRequest(u32),
    BodySize {
        req: FrontendReq,
        got: usize,
        want: usize,
    },
    InvalidBody(FrontendReq),
    FdCount {
        req: FrontendReq,
        got: usize,
        want: usize,
    },
    VringIndex {
        req: FrontendReq,
        index: u64,
        count: usize,
    },
    NotOffered {
        req: FrontendReq,
        bits: u64,
    },
    RingSize {
        index: usize,
        num: u32,
    },
    Log(LogError),
    BaseTooLarge(u32),
    PayloadBits {
        req: FrontendReq,
        value: u64,
    },
    NoFd(FrontendReq),
    NotEventfd {
        req: FrontendReq,
        err: NotEventfd,
    },
    EnableValue(u32),
    Unsupported(FrontendReq),
    MemTableBody {
        regions: usize,
        len: usize,
    },
    MemTable(MemError),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ProtocolError as E;
        match self {
            E::Io { op, errno } => {
                write!(f, "{op}: {}", std::io::Error::from_raw_os_error(*errno))
            }
            E::BodyTooLarge { req, size } => {
                write!(
                    f,
                    "request {req} has a {size}-byte body (max {MAX_MSG_SIZE})"
                )
            }
            E::BadFlags { req, flags } => write!(f, "request {req} has bad flags {flags:#x}"),
            E::UnknownRequest(c) => write!(f, "unknown request code {c}"),
            E::BodySize { req, got, want } => {
                write!(f, "{req:?}: body is {got} bytes, expected {want}")
            }
            E::InvalidBody(req) => write!(f, "{req:?}: invalid body"),
            E::FdCount { req, got, want } => {
                write!(
                    f,
                    "{req:?} came with {got} file descriptors, expected {want}"
                )
            }
            E::VringIndex { req, index, count } => write!(
                f,
                "{req:?}: vring index {index} out of range (this port has {count})"
            ),
            E::NotOffered { req, bits } => {
                write!(f, "{req:?} {bits:#x} has bits this backend did not offer")
            }
            E::RingSize { index, num } => write!(
                f,
                "SET_VRING_NUM: ring {index} size {num} is not a power of two up to 32768"
            ),
            E::Log(e) => write!(f, "SET_LOG_BASE: {e}"),
            E::BaseTooLarge(b) => write!(f, "SET_VRING_BASE: base {b} does not fit a split ring"),
            E::PayloadBits { req, value } => write!(
                f,
                "{req:?}: payload {value:#x} has bits above the index and NOFD flag"
            ),
            E::NoFd(req) => write!(f, "{req:?}: no file descriptor attached"),
            E::NotEventfd { req, err } => write!(f, "{req:?}: {err}"),
            E::EnableValue(v) => write!(f, "SET_VRING_ENABLE: value {v} is neither 0 nor 1"),
            E::Unsupported(req) => write!(f, "request {req:?} is not supported by this backend"),
            E::MemTableBody { regions, len } => {
                write!(f, "SET_MEM_TABLE: {regions} regions in a {len}-byte body")
            }
            E::MemTable(e) => write!(f, "SET_MEM_TABLE: {e}"),
        }
    }
}

type Res<T> = Result<T, ProtocolError>;

fn io_err(op: &'static str, e: &std::io::Error) -> ProtocolError {
    use std::io::ErrorKind as K;
    let errno = e.raw_os_error().unwrap_or(match e.kind() {
        K::TimedOut => libc::ETIMEDOUT,
        K::UnexpectedEof => libc::ECONNRESET,
        K::Interrupted => libc::EINTR,
        _ => libc::EIO,
    });
    ProtocolError::Io { op, errno }
}

/// What the frontend told us about one virtqueue.
#[derive(Default)]
struct VqCfg {
    size: u32,
    addrs: Option<RingAddrs>,
    /// Where the ring resumes: SET_VRING_BASE's value, or where this switch's ring
    /// stopped.
    base: RingBase,
    kicked: bool,
    enabled: bool,
    kick: Option<File>,
    /// Guest-physical address of the used ring for the dirty log
    /// (`VHOST_VRING_F_LOG` and `log_guest_addr` in SET_VRING_ADDR).
    log_used: Option<u64>,
}

/// One connection's state.
struct Conn {
    sh: Arc<Shared>,
    features: u64,
    features_set: bool,
    protocol_features: u64,
    mem: Option<Arc<GuestMemory>>,
    /// The dirty log from SET_LOG_BASE; rings write to it while `VHOST_F_LOG_ALL` is set.
    log: Option<Arc<DirtyLog>>,
    vqs: Vec<VqCfg>,
}

/// Client mode: the first retry comes after this, doubling up to `RECONNECT_MAX`.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long a client-mode port waits before its next connection attempt: doubling
/// from [`RECONNECT_MIN`] to [`RECONNECT_MAX`] while the peer is away, back to the
/// minimum once a connection is made (so a restarting QEMU is found quickly, and an
/// absent one costs a connect every 5 s, not 5 a second).
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(RECONNECT_MIN)
    }
}

impl Backoff {
    /// The wait after a failed attempt; the next one will be longer.
    pub fn failed(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(RECONNECT_MAX);
        d
    }
    pub fn connected(&mut self) {
        self.0 = RECONNECT_MIN;
    }
}

pub(super) fn spawn(sh: Arc<Shared>) -> Result<JoinHandle<()>, String> {
    let listener = match sh.cfg.mode {
        Mode::Server => {
            let l = Listener::new(&sh.cfg.path, true).map_err(|e| {
                format!(
                    "port {}: cannot listen on {}: {e}",
                    sh.cfg.name,
                    sh.cfg.path.display()
                )
            })?;
            l.set_nonblocking(true)
                .map_err(|e| format!("port {}: {e}", sh.cfg.name))?;
            sh.cfg.socket_perms.apply(&sh.cfg.path).map_err(|e| {
                let _ = std::fs::remove_file(&sh.cfg.path);
                format!(
                    "port {}: cannot set the group and mode of {}: {e}",
                    sh.cfg.name,
                    sh.cfg.path.display()
                )
            })?;
            Some(l)
        }
        Mode::Client => None,
    };
    std::thread::Builder::new()
        .name(format!("vhost-{}", sh.cfg.name))
        .spawn(move || run(sh, listener))
        .map_err(|e| e.to_string())
}

/// Sleeps `d` in short steps, keeping the interrupt watchdog and `stop` in view.
fn nap(sh: &Shared, d: Duration) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < d && !sh.stop.load(Ordering::SeqCst) {
        sh.notifier.watchdog();
        std::thread::sleep(d.min(Duration::from_millis(50)));
    }
}

/// Waits for the next frontend: accepts (server) or connects with backoff (client).
fn next_stream(
    sh: &Shared,
    listener: &Option<Listener>,
    backoff: &mut Backoff,
) -> Option<UnixStream> {
    match listener {
        Some(l) => match l.accept() {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                nap(sh, Duration::from_millis(50));
                None
            }
            Err(e) => {
                if let Some(suppressed) = sh.log_limit.allow() {
                    tracing::warn!(port = %sh.cfg.name, suppressed, "accept: {e}");
                }
                nap(sh, Duration::from_millis(200));
                None
            }
        },
        None => match UnixStream::connect(&sh.cfg.path) {
            Ok(s) => {
                backoff.connected();
                Some(s)
            }
            Err(_) => {
                nap(sh, backoff.failed());
                None
            }
        },
    }
}

fn run(sh: Arc<Shared>, listener: Option<Listener>) {
    let mut backoff = Backoff::default();
    while !sh.stop.load(Ordering::SeqCst) {
        let Some(stream) = next_stream(&sh, &listener, &mut backoff) else {
            continue;
        };
        sh.connections.fetch_add(1, Ordering::Relaxed);
        // A frontend reconnecting in a loop must not fill the log either.
        let logged = sh.conn_log_limit.allow();
        if let Some(suppressed) = logged {
            tracing::info!(port = %sh.cfg.name, path = %sh.cfg.path.display(), suppressed, "vhost-user frontend connected");
        }
        let mut conn = Conn::new(sh.clone());
        let why = conn.serve(stream);
        conn.teardown_all();
        sh.notifier.clear_calls();
        sh.connected.store(false, Ordering::SeqCst);
        sh.set_tx_caps(Caps::NONE);
        sh.logging.store(false, Ordering::Relaxed);
        *sh.dirty_log.lock().unwrap() = None;
        sh.update_up();
        match why {
            Ok(()) if logged.is_some() => {
                tracing::info!(port = %sh.cfg.name, "vhost-user frontend disconnected")
            }
            Ok(()) => {}
            Err(e) => {
                if !matches!(e, ProtocolError::Io { .. }) {
                    PortStats::add(&sh.stats.guest_errors, 1);
                }
                if let Some(suppressed) = sh.log_limit.allow() {
                    tracing::error!(port = %sh.cfg.name, suppressed, "vhost-user connection closed: {e}");
                }
            }
        }
    }
    if sh.cfg.mode == Mode::Server {
        let _ = std::fs::remove_file(&sh.cfg.path);
    }
}

/// One message off the wire: header fields, body and file descriptors.
struct Msg {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    files: Vec<File>,
}

/// Time the rest of a message may take once its first bytes arrived.
const MSG_DEADLINE: Duration = Duration::from_secs(1);

/// Fills `buf` from the socket by `deadline` (TimedOut past it, Interrupted on stop).
fn read_by(
    s: &mut UnixStream,
    buf: &mut [u8],
    deadline: std::time::Instant,
    sh: &Shared,
) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        if std::time::Instant::now() > deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if sh.stop.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => got += k,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                sh.notifier.watchdog()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one message: header, file descriptors and body.
fn recv_msg(s: &mut UnixStream, sh: &Shared) -> Res<Option<Msg>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
    let (n, nfds) = loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr() as *mut libc::c_void,
            iov_len: HDR_LEN,
        }];
        // SAFETY: iov points at `hdr`, a live local buffer of HDR_LEN bytes; fds has room
        // for MAX_ATTACHED_FD_ENTRIES descriptors, each of which we take ownership of below.
        match unsafe { s.recv_with_fds(&mut iov, &mut fds) } {
            Ok(v) => break v,
            Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {
                sh.notifier.watchdog();
                continue;
            }
            Err(e) => {
                return Err(ProtocolError::Io {
                    op: "recvmsg",
                    errno: e.errno(),
                })
            }
        }
    };
    // SAFETY: recvmsg returned nfds new descriptors that nothing else owns.
    let files: Vec<File> = fds[..nfds]
        .iter()
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None); // peer closed
    }
    // The rest of the message must follow within MSG_DEADLINE: a frontend sending a
    // byte just inside each read timeout cannot hold this thread (and shutdown).
    let deadline = std::time::Instant::now() + MSG_DEADLINE;
    if n < HDR_LEN {
        read_by(s, &mut hdr[n..], deadline, sh).map_err(|e| io_err("short header", &e))?;
    }
    let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    if size > MAX_MSG_SIZE {
        return Err(ProtocolError::BodyTooLarge { req: code, size });
    }
    let mut body = vec![0u8; size];
    read_by(s, &mut body, deadline, sh).map_err(|e| io_err("short body", &e))?;
    Ok(Some(Msg {
        code,
        flags,
        body,
        files,
    }))
}

fn body_as<T: ByteValued + VhostUserMsgValidator + Default>(
    req: FrontendReq,
    body: &[u8],
) -> Res<T> {
    if body.len() != std::mem::size_of::<T>() {
        return Err(ProtocolError::BodySize {
            req,
            got: body.len(),
            want: std::mem::size_of::<T>(),
        });
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(body);
    if !v.is_valid() {
        return Err(ProtocolError::InvalidBody(req));
    }
    Ok(v)
}

fn body_u64(req: FrontendReq, body: &[u8]) -> Res<u64> {
    if body.len() != 8 {
        return Err(ProtocolError::BodySize {
            req,
            got: body.len(),
            want: 8,
        });
    }
    Ok(u64::from_le_bytes(body.try_into().unwrap()))
}

/// A reply message for request `req`.
fn reply_msg(req: u32, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(HDR_LEN + payload.len());
    msg.extend_from_slice(&req.to_le_bytes());
    msg.extend_from_slice(&(1u32 | VhostUserHeaderFlag::REPLY.bits()).to_le_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    msg.extend_from_slice(payload);
    msg
}

impl Conn {
    fn new(sh: Arc<Shared>) -> Conn {
        let n = sh.vrings.len();
        Conn {
            sh,
            features: 0,
            features_set: false,
            protocol_features: 0,
            mem: None,
            log: None,
            vqs: (0..n).map(|_| VqCfg::default()).collect(),
        }
    }

    fn serve(&mut self, mut s: UnixStream) -> Res<()> {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| io_err("set_read_timeout", &e))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| io_err("set_write_timeout", &e))?;
        self.sh.connected.store(true, Ordering::SeqCst);
        self.sh.update_up();
        while let Some(m) = recv_msg(&mut s, &self.sh)? {
            self.sh.notifier.watchdog();
            if let Some(reply) = self.dispatch(m)? {
                s.write_all(&reply).map_err(|e| io_err("send reply", &e))?;
            }
        }
        Ok(())
    }

    /// Checks and handles one message, exactly as it came off the socket; returns the
    /// reply to send, if any.
    fn dispatch(&mut self, m: Msg) -> Res<Option<Vec<u8>>> {
        let Msg {
            code,
            flags,
            body,
            files,
        } = m;
        if flags & 0x3 != 1 || flags & VhostUserHeaderFlag::REPLY.bits() != 0 {
            return Err(ProtocolError::BadFlags { req: code, flags });
        }
        if body.len() > MAX_MSG_SIZE {
            return Err(ProtocolError::BodyTooLarge {
                req: code,
                size: body.len(),
            });
        }
        let req = FrontendReq::try_from(code).map_err(|_| ProtocolError::UnknownRequest(code))?;
        check_fds(req, &body, files.len())?;
        tracing::debug!(port = %self.sh.cfg.name, ?req, len = body.len(), fds = files.len(), "request");
        let need_reply = flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0
            && self.protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
        Ok(match self.handle(req, &body, files)? {
            Reply::Value(v) => Some(reply_msg(code, &v.to_le_bytes())),
            Reply::Bytes(b) => Some(reply_msg(code, &b)),
            Reply::Ack(ok) if need_reply => Some(reply_msg(code, &u64::from(!ok).to_le_bytes())),
            Reply::Ack(_) => None,
        })
    }

    fn vq_index(&self, req: FrontendReq, i: u64) -> Res<usize> {
        if i >= self.vqs.len() as u64 {
            return Err(ProtocolError::VringIndex {
                req,
                index: i,
                count: self.vqs.len(),
            });
        }
        Ok(i as usize)
    }

    /// Logs a request this backend refuses without closing the connection (rate-limited).
    fn refused(&self, req: FrontendReq) {
        if let Some(suppressed) = self.sh.log_limit.allow() {
            tracing::warn!(port = %self.sh.cfg.name, ?req, suppressed, "request for a feature not offered; refused");
        }
    }

    fn handle(&mut self, req: FrontendReq, body: &[u8], files: Vec<File>) -> Res<Reply> {
        use FrontendReq as R;
        Ok(match req {
            R::GET_FEATURES => Reply::Value(OFFERED_FEATURES),
            R::SET_FEATURES => {
                let f = body_u64(req, body)?;
                if f & !OFFERED_FEATURES != 0 {
                    return Err(ProtocolError::NotOffered { req, bits: f });
                }
                let changed = f != self.features;
                self.features = f;
                self.features_set = true;
                self.note_logging();
                self.sh.set_tx_caps(guest_caps(f));
                if changed {
                    self.refresh_all();
                }
                if f & VHOST_F_LOG_ALL == 0 && self.log.is_some() {
                    // Logging ended: no ring holds the area any more. QEMU frees it
                    // and sends a new one before it logs again.
                    self.log = None;
                    *self.sh.dirty_log.lock().unwrap() = None;
                }
                Reply::Ack(true)
            }
            R::GET_PROTOCOL_FEATURES => Reply::Value(offered_protocol_features()),
            R::SET_PROTOCOL_FEATURES => {
                let f = body_u64(req, body)?;
                if f & !offered_protocol_features() != 0 {
                    return Err(ProtocolError::NotOffered { req, bits: f });
                }
                self.protocol_features = f;
                Reply::Ack(true)
            }
            R::GET_QUEUE_NUM => Reply::Value(self.sh.cfg.queues as u64),
            R::SET_OWNER => Reply::Ack(true),
            R::RESET_OWNER => {
                self.teardown_all();
                self.sh.notifier.clear_calls();
                self.sh.logging.store(false, Ordering::Relaxed);
                *self.sh.dirty_log.lock().unwrap() = None;
                let sh = self.sh.clone();
                *self = Conn::new(sh);
                Reply::Ack(true)
            }
            R::SET_MEM_TABLE => {
                let mem = parse_mem_table(body, files, self.sh.cfg.max_memory)?;
                // Take every ring down (grace period) before the old mapping can go.
                self.teardown_all();
                self.mem = Some(Arc::new(mem));
                self.refresh_all();
                Reply::Ack(true)
            }
            R::SET_VRING_NUM | R::SET_VRING_ADDR | R::SET_VRING_BASE | R::SET_VRING_ENABLE => {
                self.set_vring(req, body)?
            }
            R::GET_VRING_BASE => {
                let v: VhostUserVringState = body_as(req, body)?;
                let i = self.vq_index(req, v.index as u64)?;
                // The ring stops here: it goes live again only after a new kick.
                self.teardown(i);
                self.vqs[i].kicked = false;
                // What the ring owed goes to the call fd it had, before that goes.
                self.sh.notifier.drain(i);
                self.sh.notifier.set_call(i, None);
                let base = self.vqs[i].base.value();
                let reply = VhostUserVringState::new(i as u32, base);
                Reply::Bytes(reply.as_slice().to_vec())
            }
            R::SET_VRING_KICK | R::SET_VRING_CALL | R::SET_VRING_ERR => {
                self.set_vring_fd(req, body, files)?
            }
            R::GET_MAX_MEM_SLOTS => Reply::Value(MAX_REGIONS as u64),
            R::NET_SET_MTU => Reply::Ack(self.set_mtu(body_u64(req, body)?)),
            R::SET_LOG_BASE => self.set_log_base(body, files)?,
            R::SEND_RARP => {
                self.sh.announce(body_u64(req, body)?);
                Reply::Ack(true)
            }
            R::SET_BACKEND_REQ_FD | R::SET_LOG_FD => {
                // Not offered: a frontend that sends them anyway gets a failure when it
                // asks for an acknowledgement, and any descriptor is closed.
                self.refused(req);
                Reply::Ack(false)
            }
            other => return Err(ProtocolError::Unsupported(other)),
        })
    }

    /// NET_SET_MTU (QEMU's `host_mtu`): the MTU the guest will be told. Acknowledged
    /// when the port carries it; refused above the port's `mtu`, which QEMU reports
    /// ("N Bytes MTU not supported by the backend") and then does not start the device.
    fn set_mtu(&self, mtu: u64) -> bool {
        let port = self.sh.cfg.mtu;
        let ok = (crate::port::MIN_MTU as u64..=port as u64).contains(&mtu);
        if let Some(suppressed) = self.sh.log_limit.allow() {
            if ok {
                tracing::info!(port = %self.sh.cfg.name, mtu, suppressed, "frontend set the guest's MTU");
            } else {
                tracing::warn!(port = %self.sh.cfg.name, mtu, port_mtu = port, suppressed,
                    "frontend asked for an MTU the port does not carry; refused (raise the port's mtu)");
            }
        }
        ok
    }

    /// SET_VRING_NUM, _ADDR, _BASE and _ENABLE: one field of one ring.
    fn set_vring(&mut self, req: FrontendReq, body: &[u8]) -> Res<Reply> {
        use FrontendReq as R;
        if req == R::SET_VRING_ADDR {
            let v: VhostUserVringAddr = body_as(req, body)?;
            let i = self.vq_index(req, v.index as u64)?;
            // body_as refused flags other than VHOST_VRING_F_LOG.
            let log_flag = VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits();
            let flags = v.flags;
            self.vqs[i].addrs = Some(RingAddrs {
                desc: v.descriptor,
                avail: v.available,
                used: v.used,
            });
            self.vqs[i].log_used = (flags & log_flag != 0).then_some(v.log);
            self.refresh(i);
            return Ok(Reply::Ack(true));
        }
        let v: VhostUserVringState = body_as(req, body)?;
        let i = self.vq_index(req, v.index as u64)?;
        let num = v.num;
        match req {
            R::SET_VRING_NUM => {
                if num == 0 || num > super::virtq::MAX_RING || !num.is_power_of_two() {
                    return Err(ProtocolError::RingSize { index: i, num });
                }
                self.vqs[i].size = num;
            }
            R::SET_VRING_BASE => {
                if num > u16::MAX as u32 && self.features & VIRTIO_F_RING_PACKED == 0 {
                    return Err(ProtocolError::BaseTooLarge(num));
                }
                // Take a running ring down first, so the base it stopped at does not
                // overwrite the one given here.
                self.teardown(i);
                self.vqs[i].base = RingBase::Frontend(num);
            }
            _ => {
                if num > 1 {
                    return Err(ProtocolError::EnableValue(num));
                }
                // QEMU 10 sends this before SET_FEATURES: accept it in any order.
                self.vqs[i].enabled = num == 1;
            }
        }
        self.refresh(i);
        Ok(Reply::Ack(true))
    }

    /// Logs when dirty logging turns on or off (SET_FEATURES with or without
    /// `VHOST_F_LOG_ALL`), and warns when it is on without a log area.
    fn note_logging(&self) {
        let on = self.features & VHOST_F_LOG_ALL != 0;
        if self.sh.logging.swap(on, Ordering::Relaxed) != on {
            tracing::info!(port = %self.sh.cfg.name, on, "dirty page logging (live migration)");
        }
        if on && self.log.is_none() {
            tracing::warn!(port = %self.sh.cfg.name, "VHOST_F_LOG_ALL without SET_LOG_BASE: nothing is logged");
        }
    }

    /// SET_LOG_BASE: the dirty log's file, size and offset. Every ring is rebuilt with
    /// the new area (each after a grace period, so none writes to the old one after
    /// it is unmapped); rings keep their place, none stops. The reply carries no
    /// payload, as QEMU reads it.
    fn set_log_base(&mut self, body: &[u8], files: Vec<File>) -> Res<Reply> {
        let req = FrontendReq::SET_LOG_BASE;
        let l: VhostUserLog = body_as(req, body)?; // refuses size 0 and overflow
        let file = files.into_iter().next().ok_or(ProtocolError::NoFd(req))?;
        let (size, offset) = (l.mmap_size, l.mmap_offset);
        let log = DirtyLog::map(&file, size, offset).map_err(ProtocolError::Log)?;
        tracing::info!(port = %self.sh.cfg.name, size, "dirty log area set");
        self.log = Some(Arc::new(log));
        *self.sh.dirty_log.lock().unwrap() = self.log.clone();
        if self.features & VHOST_F_LOG_ALL != 0 {
            self.refresh_all(); // rings move to the new area
        }
        Ok(Reply::Bytes(Vec::new()))
    }

    /// SET_VRING_KICK, _CALL and _ERR: an eventfd (or none) for one ring.
    fn set_vring_fd(&mut self, req: FrontendReq, body: &[u8], files: Vec<File>) -> Res<Reply> {
        use FrontendReq as R;
        let v = body_u64(req, body)?;
        if v >> 9 != 0 {
            return Err(ProtocolError::PayloadBits { req, value: v });
        }
        let i = self.vq_index(req, v & 0xff)?;
        let f = if v & VRING_NOFD != 0 {
            None
        } else {
            let f = files.into_iter().next().ok_or(ProtocolError::NoFd(req))?;
            check_eventfd(&f).map_err(|err| ProtocolError::NotEventfd { req, err })?;
            Some(f)
        };
        match req {
            R::SET_VRING_KICK => {
                self.vqs[i].kick = f;
                self.vqs[i].kicked = true;
                self.refresh(i);
            }
            R::SET_VRING_CALL => {
                self.sh.notifier.set_call(i, f.map(Arc::new));
                self.refresh(i);
            }
            _ => {} // error eventfd: we report errors in our own log and counters
        }
        Ok(Reply::Ack(true))
    }

    fn ring_features(&self) -> RingFeatures {
        let f = self.features;
        RingFeatures {
            event_idx: f & VIRTIO_RING_F_EVENT_IDX != 0,
            mrg_rxbuf: f & VIRTIO_NET_F_MRG_RXBUF != 0,
            indirect: f & VIRTIO_RING_F_INDIRECT_DESC != 0,
            hdr_len: if f & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
                12
            } else {
                10
            },
            max_frame: crate::port::max_frame(self.sh.cfg.mtu),
            host_offload: f & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6)
                != 0,
            guest_caps: guest_caps(f),
        }
    }

    /// Takes ring `i` down: hide it, wait for PMD threads to leave it, then drop it,
    /// keeping where it stopped as the base for a later restart. What it owed the guest
    /// is raised on drop and goes to the ring's current call fd.
    fn teardown(&mut self, i: usize) {
        let slot = &self.sh.vrings[i];
        if slot.set(RingState::Down) == RingState::Down {
            // SAFETY: it was down since the last grace period, so no PMD thread holds
            // it; only this thread writes it.
            debug_assert!(unsafe { (*slot.ring.get()).is_none() });
            return;
        }
        self.sh.update_up();
        self.sh.rcu.synchronize();
        // SAFETY: the state is Down and a grace period passed: no PMD thread is inside.
        if let Some(old) = unsafe { (*slot.ring.get()).take() } {
            self.vqs[i].base = RingBase::Stopped(old.base());
        }
        slot.logging.store(false, Ordering::Relaxed);
    }

    fn teardown_all(&mut self) {
        let mut any = false;
        for s in self.sh.vrings.iter() {
            any |= s.set(RingState::Down) != RingState::Down;
        }
        self.sh.update_up();
        if any {
            self.sh.rcu.synchronize();
        }
        for i in 0..self.vqs.len() {
            let slot = &self.sh.vrings[i];
            // SAFETY: every ring is down and a grace period passed (or none was up).
            if let Some(old) = unsafe { (*slot.ring.get()).take() } {
                self.vqs[i].base = RingBase::Stopped(old.base());
            }
            slot.logging.store(false, Ordering::Relaxed);
        }
    }

    fn refresh_all(&mut self) {
        for i in 0..self.vqs.len() {
            self.refresh(i);
        }
    }

    /// Re-validates ring `i` from scratch and makes it live if it is complete.
    /// A duplicate of ring `i`'s kick fd for its `LiveRing` (an idle PMD thread waits
    /// on it); `None`, logged, if it cannot be duplicated (the ring is then polled on
    /// timeouts while its thread sleeps).
    fn kick_for_ring(&self, i: usize) -> Option<std::os::fd::OwnedFd> {
        let kick = self.vqs[i].kick.as_ref()?;
        match kick.try_clone() {
            Ok(f) => Some(f.into()),
            Err(e) => {
                tracing::warn!(port = %self.sh.cfg.name, vring = i, "cannot duplicate the kick fd: {e}");
                None
            }
        }
    }

    fn refresh(&mut self, i: usize) {
        self.teardown(i);
        let sh = self.sh.clone();
        let slot = &sh.vrings[i];
        let with_proto = self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let vq = &self.vqs[i];
        // Without PROTOCOL_FEATURES a ring is enabled once kicked; with it, by SET_VRING_ENABLE.
        let enabled = if with_proto || !self.features_set {
            vq.enabled
        } else {
            true
        };
        let (Some(mem), Some(addrs)) = (&self.mem, vq.addrs) else {
            return;
        };
        if !self.features_set || vq.size == 0 || !vq.kicked || !enabled {
            return;
        }
        let irq = sh
            .notifier
            .has_call(i)
            .then(|| Irq::new(sh.notifier.clone(), i));
        let log = match (&self.log, self.features & VHOST_F_LOG_ALL != 0) {
            (Some(log), true) => Some(log.clone()),
            _ => None,
        };
        let kick = self.kick_for_ring(i);
        let built = if self.features & VIRTIO_F_RING_PACKED != 0 {
            PackedRing::new(
                mem.clone(),
                vq.size,
                addrs,
                vq.base,
                self.ring_features(),
                irq,
            )
            .map(|r| r.with_kick(kick))
            .map(|r| match log {
                Some(log) => r.with_log(log),
                None => r,
            })
            .map(Ring::Packed)
        } else {
            LiveRing::new(
                mem.clone(),
                vq.size,
                addrs,
                vq.base.value() as u16,
                self.ring_features(),
                irq,
            )
            .map(|r| r.with_kick(kick))
            .map(|r| match log {
                Some(log) => r.with_log(log, vq.log_used),
                None => r,
            })
            .map(Ring::Split)
        };
        match built {
            Ok(ring) => {
                slot.logging.store(ring.logging(), Ordering::Relaxed);
                slot.packed
                    .store(matches!(ring, Ring::Packed(_)), Ordering::Relaxed);
                // SAFETY: the ring is down (teardown above), so no PMD thread holds it.
                unsafe { *slot.ring.get() = Some(ring) };
                slot.set(RingState::Live);
                sh.update_up();
                tracing::debug!(port = %sh.cfg.name, vring = i, "ring live");
            }
            Err(e) => {
                slot.set(RingState::Broken);
                sh.update_up();
                sh.stats.guest_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = sh.log_limit.allow() {
                    tracing::error!(port = %sh.cfg.name, vring = i, suppressed, "ring rejected: {e}");
                }
            }
        }
    }
}

/// Refuses a request with more or fewer file descriptors than it carries.
fn check_fds(req: FrontendReq, body: &[u8], nfds: usize) -> Res<()> {
    use FrontendReq as R;
    let want = match req {
        R::SET_MEM_TABLE => return Ok(()), // checked against the region count when parsed
        R::SET_VRING_KICK | R::SET_VRING_CALL | R::SET_VRING_ERR => {
            let v = body_u64(req, body)?;
            if v & VRING_NOFD != 0 {
                0
            } else {
                1
            }
        }
        R::SET_LOG_BASE => 1,
        R::SET_BACKEND_REQ_FD | R::SET_LOG_FD => return Ok(()), // refused anyway
        _ => 0,
    };
    if nfds != want {
        return Err(ProtocolError::FdCount {
            req,
            got: nfds,
            want,
        });
    }
    Ok(())
}

enum Reply {
    Value(u64),
    Bytes(Vec<u8>),
    Ack(bool),
}

fn parse_mem_table(body: &[u8], files: Vec<File>, limit: u64) -> Res<GuestMemory> {
    let hl = std::mem::size_of::<VhostUserMemory>();
    let rl = std::mem::size_of::<VhostUserMemoryRegion>();
    if body.len() < hl {
        return Err(ProtocolError::BodySize {
            req: FrontendReq::SET_MEM_TABLE,
            got: body.len(),
            want: hl,
        });
    }
    let mut m = VhostUserMemory::default();
    m.as_mut_slice().copy_from_slice(&body[..hl]);
    let n = m.num_regions as usize;
    if !m.is_valid() || n > MAX_REGIONS || body.len() != hl + n * rl {
        return Err(ProtocolError::MemTableBody {
            regions: n,
            len: body.len(),
        });
    }
    let descs: Vec<RegionDesc> = (0..n)
        .map(|k| {
            let mut r = VhostUserMemoryRegion::default();
            r.as_mut_slice()
                .copy_from_slice(&body[hl + k * rl..hl + (k + 1) * rl]);
            RegionDesc {
                guest_phys: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            }
        })
        .collect();
    GuestMemory::map_limited(&descs, files, limit).map_err(ProtocolError::MemTable)
}

/// A connection's request handling without a socket, for fuzzing and tests: each
/// request goes through the same checks and handlers as one read from the socket
/// (flags, size, request code, file descriptor count, body, state changes), on a
/// port of its own with no PMD threads.
pub struct Session {
    conn: Conn,
}

impl Session {
    /// A server-mode port `name` with `queues` queue pairs (its socket is not bound).
    pub fn new(name: &str, queues: usize) -> Session {
        let queues = queues.max(1);
        let sh = Arc::new(Shared {
            vrings: (0..2 * queues).map(|_| super::VringSlot::new()).collect(),
            cfg: VhostConfig {
                name: name.to_string(),
                path: std::path::PathBuf::new(),
                mode: Mode::Server,
                queues,
                max_memory: super::mem::DEFAULT_MAX_GUEST_MEMORY,
                socket_perms: crate::sockperm::SocketPerms::default(),
                mtu: crate::port::DEFAULT_MTU,
            },
            rcu: Rcu::new(),
            stats: PortStats::default(),
            connected: AtomicBool::new(true),
            up: AtomicBool::new(false),
            connections: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            notifier: Notifier::new(name, 2 * queues),
            log_limit: RateLimit::new(),
            conn_log_limit: RateLimit::new(),
            drop_log_limit: RateLimit::new(),
            tx_caps: std::sync::atomic::AtomicU8::new(0),
            rarp: AtomicU64::new(0),
            rarp_sent: AtomicU64::new(0),
            logging: AtomicBool::new(false),
            dirty_log: std::sync::Mutex::new(None),
        });
        Session {
            conn: Conn::new(sh),
        }
    }

    /// Handles one request; `Ok(Some(bytes))` is the reply message the socket would
    /// send. An error is what would close the connection.
    pub fn request(
        &mut self,
        code: u32,
        flags: u32,
        body: &[u8],
        files: Vec<File>,
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        self.conn.dispatch(Msg {
            code,
            flags,
            body: body.to_vec(),
            files,
        })
    }

    /// The port's rings as `ctl show` names them (`live`, `down`, `broken`).
    pub fn ring_states(&self) -> Vec<RingState> {
        self.conn.sh.vrings.iter().map(|v| v.state()).collect()
    }

    /// Delivers interrupts raised so far (there is no notifier thread here).
    pub fn deliver_interrupts(&self) {
        self.conn.sh.notifier.deliver();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.teardown_all();
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_to_a_cap_and_resets_on_connect() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.connected();
        assert_eq!(b.failed(), RECONNECT_MIN);
    }
}

#[cfg(test)]
mod mtu_tests {
    use super::*;

    /// NET_SET_MTU with NEED_REPLY, as QEMU sends it for `host_mtu`: the reply's
    /// value (0 = acknowledged).
    fn set_mtu(s: &mut Session, mtu: u64) -> u64 {
        let flags = 1 | VhostUserHeaderFlag::NEED_REPLY.bits();
        let code = FrontendReq::NET_SET_MTU as u32;
        let reply = s
            .request(code, flags, &mtu.to_le_bytes(), Vec::new())
            .expect("not a protocol error")
            .expect("a reply was asked for");
        u64::from_le_bytes(reply[HDR_LEN..].try_into().unwrap())
    }

    #[test]
    fn net_set_mtu_is_acknowledged_up_to_the_ports_mtu_only() {
        let mut s = Session::new("mtu", 1);
        let proto = offered_protocol_features();
        assert_ne!(proto & VhostUserProtocolFeatures::MTU.bits(), 0);
        assert_ne!(OFFERED_FEATURES & VIRTIO_NET_F_MTU, 0);
        let code = FrontendReq::SET_PROTOCOL_FEATURES as u32;
        s.request(code, 1, &proto.to_le_bytes(), Vec::new())
            .unwrap();
        // The session's port has the default MTU, 1500.
        assert_eq!(set_mtu(&mut s, 1500), 0, "the port's own MTU");
        assert_eq!(set_mtu(&mut s, 576), 0, "a smaller one");
        assert_eq!(set_mtu(&mut s, 1501), 1, "more than the port carries");
        assert_eq!(set_mtu(&mut s, 9000), 1);
        assert_eq!(set_mtu(&mut s, 67), 1, "less than IPv4's minimum");
    }

    fn set_log_base(s: &mut Session, size: u64, offset: u64, file: File) -> Res<Option<Vec<u8>>> {
        let body = VhostUserLog::new(size, offset);
        s.request(
            FrontendReq::SET_LOG_BASE as u32,
            1,
            body.as_slice(),
            vec![file],
        )
    }

    #[test]
    fn set_log_base_replies_without_payload_and_refuses_a_bad_area() {
        let mut s = Session::new("log", 1);
        let proto = offered_protocol_features();
        assert_ne!(proto & VhostUserProtocolFeatures::LOG_SHMFD.bits(), 0);
        assert_ne!(proto & VhostUserProtocolFeatures::RARP.bits(), 0);
        assert_ne!(OFFERED_FEATURES & VHOST_F_LOG_ALL, 0);
        let f = || super::super::driver::DriverMem::new(0, 8192, 0, 0).file();
        // As QEMU reads it: a header echoing the request, no payload.
        let reply = set_log_base(&mut s, 8192, 0, f())
            .unwrap()
            .expect("a reply");
        assert_eq!(reply.len(), HDR_LEN);
        assert_eq!(
            u32::from_le_bytes(reply[0..4].try_into().unwrap()),
            FrontendReq::SET_LOG_BASE as u32
        );
        assert_eq!(u32::from_le_bytes(reply[8..12].try_into().unwrap()), 0);
        // Longer than its file, or empty: the connection closes with the reason.
        let e = set_log_base(&mut s, 1 << 20, 0, f()).unwrap_err();
        assert!(e.to_string().contains("ends past its file"), "{e}");
        let e = set_log_base(&mut s, 0, 0, f()).unwrap_err();
        assert!(matches!(e, ProtocolError::InvalidBody(_)), "{e}");
        let e = set_log_base(&mut s, 2 << 30, 0, f()).unwrap_err();
        assert!(
            matches!(e, ProtocolError::Log(LogError::Size { .. })),
            "{e}"
        );
        // Without its file descriptor.
        let body = VhostUserLog::new(8192, 0);
        let e = s
            .request(FrontendReq::SET_LOG_BASE as u32, 1, body.as_slice(), vec![])
            .unwrap_err();
        assert!(matches!(e, ProtocolError::FdCount { .. }), "{e}");
        // Only VHOST_VRING_F_LOG among the ring address flags.
        let addr = VhostUserVringAddr {
            flags: 2,
            ..Default::default()
        };
        let e = s
            .request(
                FrontendReq::SET_VRING_ADDR as u32,
                1,
                addr.as_slice(),
                vec![],
            )
            .unwrap_err();
        assert!(matches!(e, ProtocolError::InvalidBody(_)), "{e}");
    }
}
