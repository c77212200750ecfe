//! A hand-written vhost-user frontend for tests that play a guest, well-behaved or
//! hostile: it sends whatever message it is told to, with whatever file descriptors,
//! so a test can send what QEMU would and what no real frontend should.
//!
//! Messages are framed as the vhost-user specification says (request, flags = 1,
//! body size, body); the request codes come from the `vhost` crate.

use pmd::vhost::driver::{DriverMem, DriverRing};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::FrontendReq;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const GET_FEATURES: u32 = FrontendReq::GET_FEATURES as u32;
pub const SET_FEATURES: u32 = FrontendReq::SET_FEATURES as u32;
pub const SET_OWNER: u32 = FrontendReq::SET_OWNER as u32;
pub const SET_MEM_TABLE: u32 = FrontendReq::SET_MEM_TABLE as u32;
pub const SET_VRING_NUM: u32 = FrontendReq::SET_VRING_NUM as u32;
pub const SET_VRING_ADDR: u32 = FrontendReq::SET_VRING_ADDR as u32;
pub const SET_VRING_BASE: u32 = FrontendReq::SET_VRING_BASE as u32;
pub const GET_VRING_BASE: u32 = FrontendReq::GET_VRING_BASE as u32;
pub const SET_VRING_KICK: u32 = FrontendReq::SET_VRING_KICK as u32;
pub const SET_VRING_CALL: u32 = FrontendReq::SET_VRING_CALL as u32;
pub const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;
/// `VIRTIO_F_VERSION_1`.
pub const VERSION_1: u64 = 1 << 32;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const MRG_RXBUF: u64 = 1 << 15;

/// One connection to a vhost-user port's socket, as the frontend (the guest's side).
pub struct Frontend(pub UnixStream);

impl Frontend {
    /// Connects to `path`, retrying for up to 10 s (the switch may still be binding).
    /// Replies are waited for at most 5 s.
    pub fn connect(path: &Path) -> Frontend {
        let t0 = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return Frontend(s);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "cannot connect to {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends request `req` with `body` and `fds` as ancillary data; any code, any body.
    pub fn send(&mut self, req: u32, body: &[u8], fds: &[std::fs::File]) {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.0.send_with_fds(&[&m[..]], &raw).expect("send");
    }

    /// Sends a request without a body and returns the u64 of its reply.
    pub fn get_u64(&mut self, req: u32) -> u64 {
        self.send(req, &[], &[]);
        let mut b = [0u8; 20];
        self.0.read_exact(&mut b).expect("reply");
        u64::from_le_bytes(b[12..20].try_into().unwrap())
    }

    /// True once the switch has closed the connection.
    pub fn closed_by_switch(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(self.0.read(&mut b), Ok(0)) || matches!(self.0.read(&mut b), Ok(0))
    }

    /// A `vhost_vring_state` message (`SET_VRING_NUM`, `SET_VRING_BASE`, ...).
    pub fn vring_state(&mut self, req: u32, index: u32, num: u32) {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&num.to_le_bytes());
        self.send(req, &b, &[]);
    }

    /// `SET_VRING_ADDR` of ring `index` with the addresses of `r`.
    pub fn vring_addr(&mut self, index: u32, r: &DriverRing) {
        let a = r.addrs();
        let mut b = Vec::new();
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [a.desc, a.used, a.avail, 0u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.send(SET_VRING_ADDR, &b, &[]);
    }

    /// `SET_MEM_TABLE` with one region per memory, and the files of the first `nfds`
    /// of them (fewer than the regions is a lie the switch must refuse).
    pub fn mem_table(&mut self, mems: &[&DriverMem], nfds: usize) {
        let mut b = (mems.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for m in mems {
            let r = m.region();
            for v in [r.guest_phys, r.size, r.user_addr, r.mmap_offset] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        let files: Vec<std::fs::File> = mems.iter().take(nfds).map(|m| m.file()).collect();
        self.send(SET_MEM_TABLE, &b, &files);
    }

    /// `SET_VRING_KICK` or `SET_VRING_CALL` (`req`) of ring `index` with a fresh
    /// non-blocking eventfd, as QEMU sends.
    pub fn eventfd_msg(&mut self, req: u32, index: u64) {
        let f = eventfd_file();
        self.send(req, &index.to_le_bytes(), &[f]);
    }
}

/// A fresh non-blocking eventfd holding 0.
pub fn eventfd_file() -> std::fs::File {
    pmd::vhost::driver::eventfd(0, false)
}

/// Size of the virtio-net header with `VERSION_1` (and `MRG_RXBUF`).
pub const NET_HDR: usize = 12;

/// How [`Frontend::device_with`] sets up its device.
#[derive(Default)]
pub struct DeviceOpts {
    /// What the call eventfds hold when sent (QEMU: 0).
    pub call_count: u64,
    /// Call eventfds without O_NONBLOCK (QEMU: non-blocking).
    pub call_blocking: bool,
}

impl Frontend {
    /// Connects to `sock` and sets up a valid device on `mem`: receive ring (0) at
    /// offset 0, transmit ring (1) at 0x10000, 256 entries each, both live once this
    /// returns (the receive ring offers no buffers). Keep the connection open.
    pub fn device(sock: &Path, mem: &DriverMem) -> Frontend {
        Frontend::device_with(sock, mem, &DeviceOpts::default())
    }

    /// As [`Frontend::device`], with call eventfds as `opts` says.
    pub fn device_with(sock: &Path, mem: &DriverMem, opts: &DeviceOpts) -> Frontend {
        let mut f = Frontend::connect(sock);
        f.send(SET_OWNER, &[], &[]);
        f.send(SET_FEATURES, &(VERSION_1 | MRG_RXBUF).to_le_bytes(), &[]);
        f.mem_table(&[mem], 1);
        for (i, base) in [(0u32, 0u64), (1, TX_RING)] {
            let r = DriverRing::new(mem, base, RING_SIZE);
            f.vring_state(SET_VRING_NUM, i, RING_SIZE as u32);
            f.vring_state(SET_VRING_BASE, i, 0);
            f.vring_addr(i, &r);
            let call = pmd::vhost::driver::eventfd(opts.call_count, opts.call_blocking);
            f.send(SET_VRING_CALL, &(i as u64).to_le_bytes(), &[call]);
            f.eventfd_msg(SET_VRING_KICK, i as u64);
        }
        f
    }
}

/// Offset of the transmit ring that [`Frontend::device`] sets up.
pub const TX_RING: u64 = 0x10000;
/// Entries of each ring [`Frontend::device`] sets up.
pub const RING_SIZE: u16 = 256;
/// Offset of the frame buffers a [`flood_guest`] transmits from (2 KiB each).
pub const FLOOD_BUFS: u64 = 0x100000;

/// What a [`flood_guest`] sends.
pub struct FloodOpts<'a> {
    /// Source MAC of the first frame, as the low 40 bits of `02:xx:xx:xx:xx:xx`;
    /// each further frame comes from the next MAC.
    pub first_mac: u64,
    /// Frames to send (fewer if `stop` is set first).
    pub frames: u64,
    /// Set by another thread to stop early.
    pub stop: Option<&'a AtomicBool>,
}

/// A guest on vhost-user socket `sock` that transmits 60-byte broadcast frames, each
/// from a new source MAC (a MAC flood), through a ring it keeps full, until
/// `opts.frames` are sent and taken by the switch; then it disconnects. Returns the
/// frames sent.
pub fn flood_guest(sock: &Path, opts: &FloodOpts) -> u64 {
    let mem = DriverMem::new(0, 4 << 20, 0x1_0000_0000, 0x7f00_0000_0000);
    let _f = Frontend::device(sock, &mem);
    let mut tx = DriverRing::new(&mem, TX_RING, RING_SIZE);
    let stopped = || opts.stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let mut sent = 0u64;
    while sent < opts.frames && !stopped() {
        wait_used(&tx, |in_flight| in_flight < RING_SIZE);
        let slot = (sent % RING_SIZE as u64) as u16;
        let off = FLOOD_BUFS + 2048 * slot as u64;
        mem.write(off, &flood_frame(opts.first_mac + sent));
        tx.set_desc(slot, tx.gpa(off), (NET_HDR + 60) as u32, 0, 0);
        tx.push(slot);
        sent += 1;
    }
    wait_used(&tx, |in_flight| in_flight == 0);
    sent
}

/// Waits (at most 10 s) until the frames the switch has not yet taken from `tx`
/// satisfy `ok`.
fn wait_used(tx: &DriverRing, ok: impl Fn(u16) -> bool) {
    let t0 = Instant::now();
    while !ok(tx.avail_idx.wrapping_sub(tx.used_idx())) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the switch stopped taking frames from the flood guest"
        );
        std::thread::yield_now();
    }
}

/// A virtio-net header and a 60-byte broadcast frame from MAC `02:<mac's low 40 bits>`.
pub fn flood_frame(mac: u64) -> Vec<u8> {
    let mut b = vec![0u8; NET_HDR + 60];
    let e = &mut b[NET_HDR..];
    e[..6].fill(0xff);
    e[6] = 0x02;
    e[7..12].copy_from_slice(&mac.to_be_bytes()[3..]);
    e[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    b
}
