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

use super::mem::{GuestMemory, RegionDesc, MAX_REGIONS};
use super::virtq::{LiveRing, RingAddrs, RingFeatures};
use super::{Mode, Shared};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserMsgValidator, VhostUserProtocolFeatures, VhostUserVringAddr, VhostUserVringState,
    MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vhost::vhost_user::Listener;
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio features this backend implements.
pub const OFFERED_FEATURES: u64 = VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_MQ
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VIRTIO_F_VERSION_1;

/// Protocol features this backend implements: multiqueue and acknowledged requests.
pub fn offered_protocol_features() -> u64 {
    (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK).bits()
}

const HDR_LEN: usize = 12;
const VRING_NOFD: u64 = 1 << 8;

/// A request that ends the connection (the frontend broke the protocol).
#[derive(Debug)]
pub struct ProtocolError(pub String);

type Res<T> = Result<T, ProtocolError>;

fn perr<T>(s: impl Into<String>) -> Res<T> {
    Err(ProtocolError(s.into()))
}

/// What the frontend told us about one virtqueue.
#[derive(Default)]
struct VqCfg {
    size: u32,
    addrs: Option<RingAddrs>,
    base: u16,
    kicked: bool,
    enabled: bool,
    call: Option<Arc<File>>,
    _kick: Option<File>,
}

/// One connection's state.
struct Conn {
    sh: Arc<Shared>,
    features: u64,
    features_set: bool,
    protocol_features: u64,
    mem: Option<Arc<GuestMemory>>,
    vqs: Vec<VqCfg>,
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
            Some(l)
        }
        Mode::Client => None,
    };
    std::thread::Builder::new()
        .name(format!("vhost-{}", sh.cfg.name))
        .spawn(move || run(sh, listener))
        .map_err(|e| e.to_string())
}

fn run(sh: Arc<Shared>, listener: Option<Listener>) {
    while !sh.stop.load(Ordering::SeqCst) {
        let stream = match &listener {
            Some(l) => match l.accept() {
                Ok(Some(s)) => s,
                Ok(None) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(port = %sh.cfg.name, "accept: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
            None => match UnixStream::connect(&sh.cfg.path) {
                Ok(s) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        sh.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(port = %sh.cfg.name, path = %sh.cfg.path.display(), "vhost-user frontend connected");
        let mut conn = Conn::new(sh.clone());
        let why = conn.serve(stream);
        conn.teardown_all();
        sh.connected.store(false, Ordering::SeqCst);
        sh.update_up();
        match why {
            Ok(()) => tracing::info!(port = %sh.cfg.name, "vhost-user frontend disconnected"),
            Err(e) => tracing::error!(port = %sh.cfg.name, "vhost-user connection closed: {}", e.0),
        }
    }
    if sh.cfg.mode == Mode::Server {
        let _ = std::fs::remove_file(&sh.cfg.path);
    }
}

/// Reads one message: header, file descriptors and body.
fn recv_msg(s: &mut UnixStream, sh: &Shared) -> Res<Option<(u32, u32, Vec<u8>, Vec<File>)>> {
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
            Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => continue,
            Err(e) => return perr(format!("recvmsg: {e}")),
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
    if n < HDR_LEN {
        s.read_exact(&mut hdr[n..])
            .map_err(|e| ProtocolError(format!("short header: {e}")))?;
    }
    let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    if size > MAX_MSG_SIZE {
        return perr(format!(
            "request {req} has a {size}-byte body (max {MAX_MSG_SIZE})"
        ));
    }
    if flags & 0x3 != 1 || flags & VhostUserHeaderFlag::REPLY.bits() != 0 {
        return perr(format!("request {req} has bad flags {flags:#x}"));
    }
    let mut body = vec![0u8; size];
    s.read_exact(&mut body)
        .map_err(|e| ProtocolError(format!("short body of request {req}: {e}")))?;
    Ok(Some((req, flags, body, files)))
}

fn body_as<T: ByteValued + VhostUserMsgValidator + Default>(
    req: FrontendReq,
    body: &[u8],
) -> Res<T> {
    if body.len() != std::mem::size_of::<T>() {
        return perr(format!(
            "{req:?}: body is {} bytes, expected {}",
            body.len(),
            std::mem::size_of::<T>()
        ));
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(body);
    if !v.is_valid() {
        return perr(format!("{req:?}: invalid body"));
    }
    Ok(v)
}

fn body_u64(req: FrontendReq, body: &[u8]) -> Res<u64> {
    if body.len() != 8 {
        return perr(format!("{req:?}: body is {} bytes, expected 8", body.len()));
    }
    Ok(u64::from_le_bytes(body.try_into().unwrap()))
}

fn send_reply(s: &mut UnixStream, req: u32, payload: &[u8]) -> Res<()> {
    let mut msg = Vec::with_capacity(HDR_LEN + payload.len());
    msg.extend_from_slice(&req.to_le_bytes());
    msg.extend_from_slice(&(1u32 | VhostUserHeaderFlag::REPLY.bits()).to_le_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    msg.extend_from_slice(payload);
    s.write_all(&msg)
        .map_err(|e| ProtocolError(format!("send reply: {e}")))
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
            vqs: (0..n).map(|_| VqCfg::default()).collect(),
        }
    }

    fn serve(&mut self, mut s: UnixStream) -> Res<()> {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| ProtocolError(e.to_string()))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| ProtocolError(e.to_string()))?;
        self.sh.connected.store(true, Ordering::SeqCst);
        self.sh.update_up();
        while let Some((code, flags, body, files)) = recv_msg(&mut s, &self.sh)? {
            let req = FrontendReq::try_from(code)
                .map_err(|_| ProtocolError(format!("unknown request code {code}")))?;
            check_fds(req, &body, files.len())?;
            tracing::debug!(port = %self.sh.cfg.name, ?req, len = body.len(), fds = files.len(), "request");
            let need_reply = flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0
                && self.protocol_features & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0;
            match self.handle(req, &body, files)? {
                Reply::Value(v) => send_reply(&mut s, code, &v.to_le_bytes())?,
                Reply::Bytes(b) => send_reply(&mut s, code, &b)?,
                Reply::Ack(ok) => {
                    if need_reply {
                        send_reply(&mut s, code, &(if ok { 0u64 } else { 1u64 }).to_le_bytes())?
                    }
                }
            }
        }
        Ok(())
    }

    fn vq_index(&self, req: FrontendReq, i: u64) -> Res<usize> {
        let i = i as usize;
        if i >= self.vqs.len() {
            return perr(format!(
                "{req:?}: vring index {i} out of range (this port has {})",
                self.vqs.len()
            ));
        }
        Ok(i)
    }

    fn handle(&mut self, req: FrontendReq, body: &[u8], files: Vec<File>) -> Res<Reply> {
        use FrontendReq as R;
        Ok(match req {
            R::GET_FEATURES => Reply::Value(OFFERED_FEATURES),
            R::SET_FEATURES => {
                let f = body_u64(req, body)?;
                if f & !OFFERED_FEATURES != 0 {
                    return perr(format!(
                        "SET_FEATURES {f:#x} has bits this backend did not offer"
                    ));
                }
                let changed = f != self.features;
                self.features = f;
                self.features_set = true;
                if changed {
                    self.refresh_all();
                }
                Reply::Ack(true)
            }
            R::GET_PROTOCOL_FEATURES => Reply::Value(offered_protocol_features()),
            R::SET_PROTOCOL_FEATURES => {
                let f = body_u64(req, body)?;
                if f & !offered_protocol_features() != 0 {
                    return perr(format!(
                        "SET_PROTOCOL_FEATURES {f:#x} has bits this backend did not offer"
                    ));
                }
                self.protocol_features = f;
                Reply::Ack(true)
            }
            R::GET_QUEUE_NUM => Reply::Value(self.sh.cfg.queues as u64),
            R::SET_OWNER => Reply::Ack(true),
            R::RESET_OWNER => {
                self.teardown_all();
                let sh = self.sh.clone();
                *self = Conn::new(sh);
                Reply::Ack(true)
            }
            R::SET_MEM_TABLE => {
                let mem = parse_mem_table(body, files)?;
                // Take every ring down (grace period) before the old mapping can go.
                self.teardown_all();
                self.mem = Some(Arc::new(mem));
                self.refresh_all();
                Reply::Ack(true)
            }
            R::SET_VRING_NUM => {
                let v: VhostUserVringState = body_as(req, body)?;
                let i = self.vq_index(req, v.index as u64)?;
                let num = v.num;
                if num == 0 || num > super::virtq::MAX_RING || !num.is_power_of_two() {
                    return perr(format!(
                        "SET_VRING_NUM: ring {i} size {num} is not a power of two up to 32768"
                    ));
                }
                self.vqs[i].size = num;
                self.refresh(i);
                Reply::Ack(true)
            }
            R::SET_VRING_ADDR => {
                let v: VhostUserVringAddr = body_as(req, body)?;
                let i = self.vq_index(req, v.index as u64)?;
                if v.flags != 0 {
                    return perr("SET_VRING_ADDR: logging flag set but LOG_ALL was not negotiated");
                }
                self.vqs[i].addrs = Some(RingAddrs {
                    desc: v.descriptor,
                    avail: v.available,
                    used: v.used,
                });
                self.refresh(i);
                Reply::Ack(true)
            }
            R::SET_VRING_BASE => {
                let v: VhostUserVringState = body_as(req, body)?;
                let i = self.vq_index(req, v.index as u64)?;
                if v.num > u16::MAX as u32 {
                    return perr(format!(
                        "SET_VRING_BASE: base {} does not fit a split ring",
                        { v.num }
                    ));
                }
                // Take a running ring down first, so the base it stopped at does not
                // overwrite the one given here.
                self.teardown(i);
                self.vqs[i].base = v.num as u16;
                self.refresh(i);
                Reply::Ack(true)
            }
            R::GET_VRING_BASE => {
                let v: VhostUserVringState = body_as(req, body)?;
                let i = self.vq_index(req, v.index as u64)?;
                // The ring stops here: it goes live again only after a new kick.
                self.teardown(i);
                self.vqs[i].kicked = false;
                self.vqs[i].call = None;
                let base = self.vqs[i].base;
                let reply = VhostUserVringState::new(i as u32, base as u32);
                Reply::Bytes(reply.as_slice().to_vec())
            }
            R::SET_VRING_KICK | R::SET_VRING_CALL | R::SET_VRING_ERR => {
                let v = body_u64(req, body)?;
                if v >> 9 != 0 {
                    return perr(format!(
                        "{req:?}: payload {v:#x} has bits above the index and NOFD flag"
                    ));
                }
                let i = self.vq_index(req, v & 0xff)?;
                let mut files = files.into_iter();
                let f = if v & VRING_NOFD != 0 {
                    None
                } else {
                    Some(files.next().ok_or_else(|| {
                        ProtocolError(format!("{req:?}: no file descriptor attached"))
                    })?)
                };
                match req {
                    R::SET_VRING_KICK => {
                        self.vqs[i]._kick = f;
                        self.vqs[i].kicked = true;
                        self.refresh(i);
                    }
                    R::SET_VRING_CALL => {
                        self.vqs[i].call = f.map(Arc::new);
                        self.refresh(i);
                    }
                    _ => {} // error eventfd: we report errors in our own log and counters
                }
                Reply::Ack(true)
            }
            R::SET_VRING_ENABLE => {
                let v: VhostUserVringState = body_as(req, body)?;
                let i = self.vq_index(req, v.index as u64)?;
                if v.num > 1 {
                    return perr(format!("SET_VRING_ENABLE: value {} is neither 0 nor 1", {
                        v.num
                    }));
                }
                // QEMU 10 sends this before SET_FEATURES: accept it in any order.
                self.vqs[i].enabled = v.num == 1;
                self.refresh(i);
                Reply::Ack(true)
            }
            R::GET_MAX_MEM_SLOTS => Reply::Value(MAX_REGIONS as u64),
            R::SET_BACKEND_REQ_FD
            | R::SET_LOG_BASE
            | R::SET_LOG_FD
            | R::NET_SET_MTU
            | R::SEND_RARP => {
                // Not offered: a frontend that sends them anyway gets a failure when it
                // asks for an acknowledgement, and any descriptor is closed.
                tracing::warn!(port = %self.sh.cfg.name, ?req, "request for a feature not offered; refused");
                Reply::Ack(false)
            }
            other => {
                return perr(format!(
                    "request {other:?} is not supported by this backend"
                ))
            }
        })
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
        }
    }

    /// Takes ring `i` down: hide it, wait for PMD threads to leave it, then drop it,
    /// keeping where it stopped as the base for a later restart.
    fn teardown(&mut self, i: usize) {
        let slot = &self.sh.vrings[i];
        if !slot.live.swap(false, Ordering::SeqCst) {
            // SAFETY: not live, and it was not live since the last grace period, so no PMD
            // thread holds it; only this thread writes it.
            debug_assert!(unsafe { (*slot.ring.get()).is_none() });
            return;
        }
        self.sh.update_up();
        self.sh.rcu.synchronize();
        // SAFETY: live is clear and a grace period passed: no PMD thread is inside.
        if let Some(old) = unsafe { (*slot.ring.get()).take() } {
            self.vqs[i].base = old.last_avail();
            let owed = old.owes();
            drop(old); // settles on the call eventfd the ring had
            if owed {
                // The frontend may have just replaced that eventfd (SET_VRING_CALL):
                // tell the current one too; an extra interrupt is harmless.
                if let Some(call) = &self.vqs[i].call {
                    let _ = (&**call).write_all(&1u64.to_ne_bytes());
                }
            }
        }
    }

    fn teardown_all(&mut self) {
        let mut any = false;
        for s in self.sh.vrings.iter() {
            any |= s.live.swap(false, Ordering::SeqCst);
        }
        self.sh.update_up();
        if any {
            self.sh.rcu.synchronize();
        }
        for i in 0..self.vqs.len() {
            let slot = &self.sh.vrings[i];
            // SAFETY: every ring is hidden and a grace period passed (or none was live).
            if let Some(old) = unsafe { (*slot.ring.get()).take() } {
                self.vqs[i].base = old.last_avail();
            }
        }
    }

    fn refresh_all(&mut self) {
        for i in 0..self.vqs.len() {
            self.refresh(i);
        }
    }

    /// Re-validates ring `i` from scratch and makes it live if it is complete.
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
        match LiveRing::new(
            mem.clone(),
            vq.size,
            addrs,
            vq.base,
            self.ring_features(),
            vq.call.clone(),
        ) {
            Ok(ring) => {
                // SAFETY: the ring is not live (teardown above), so no PMD thread holds it.
                unsafe { *slot.ring.get() = Some(ring) };
                slot.broken.store(false, Ordering::Relaxed);
                slot.live.store(true, Ordering::SeqCst);
                sh.update_up();
                tracing::debug!(port = %sh.cfg.name, vring = i, "ring live");
            }
            Err(e) => {
                slot.broken.store(true, Ordering::Relaxed);
                sh.update_up();
                sh.stats.guest_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(port = %sh.cfg.name, vring = i, "ring rejected: {e}");
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
        R::SET_BACKEND_REQ_FD | R::SET_LOG_FD | R::SET_LOG_BASE => return Ok(()), // refused anyway
        _ => 0,
    };
    if nfds != want {
        return perr(format!(
            "{req:?} came with {nfds} file descriptors, expected {want}"
        ));
    }
    Ok(())
}

enum Reply {
    Value(u64),
    Bytes(Vec<u8>),
    Ack(bool),
}

fn parse_mem_table(body: &[u8], files: Vec<File>) -> Res<GuestMemory> {
    let hl = std::mem::size_of::<VhostUserMemory>();
    let rl = std::mem::size_of::<VhostUserMemoryRegion>();
    if body.len() < hl {
        return perr("SET_MEM_TABLE: body too short");
    }
    let mut m = VhostUserMemory::default();
    m.as_mut_slice().copy_from_slice(&body[..hl]);
    let n = m.num_regions as usize;
    if !m.is_valid() || n > MAX_REGIONS || body.len() != hl + n * rl {
        return perr(format!(
            "SET_MEM_TABLE: {n} regions in a {}-byte body",
            body.len()
        ));
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
    GuestMemory::map(&descs, files).map_err(|e| ProtocolError(format!("SET_MEM_TABLE: {e}")))
}
