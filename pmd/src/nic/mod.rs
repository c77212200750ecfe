//! NIC ports: Linux network interfaces joined to the switch without the kernel's
//! network stack in the data path.
//!
//! - [`af_xdp`]: an AF_XDP socket per queue, whose UMEM is the switch's own mbuf pool,
//!   fed by a small XDP program ([`bpf`]) that the port loads and removes.
//! - [`af_packet`]: a TPACKET_V3 mmap ring, for interfaces or kernels where AF_XDP
//!   cannot run (one copy each way).
//! - [`tap`]: a TAP device, giving the host's own network stack a port on the switch.
//!
//! This module owns what they share: interface lookup, promiscuous mode held by a
//! socket (so that the kernel undoes it when the process dies, however it dies), and
//! the error type, whose messages always name the interface.

pub mod af_packet;
pub mod af_xdp;
pub mod bpf;
pub mod tap;

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A NIC port could not be opened. The message names the interface and the cause.
#[derive(Debug)]
pub struct NicError(pub String);

impl fmt::Display for NicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NicError {}

/// Formats an OS error on `iface` while doing `what`, with a hint for the usual causes.
pub(crate) fn os_err(iface: &str, what: &str, e: std::io::Error) -> NicError {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (no permission: run as root, or with CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF)"
        }
        Some(libc::ENODEV) => " (no such interface)",
        _ => "",
    };
    NicError(format!("interface {iface:?}: {what}: {e}{hint}"))
}

/// Whether `name` can be a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The interface's index, or an error naming it.
pub fn ifindex(iface: &str) -> Result<u32, NicError> {
    let c = CString::new(iface).map_err(|_| NicError(format!("interface {iface:?}: bad name")))?;
    // SAFETY: c is a NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(NicError(format!(
            "interface {iface:?}: no such interface ({})",
            std::io::Error::last_os_error()
        )));
    }
    Ok(idx)
}

/// Number of rx queues the kernel shows for the interface (1 when sysfs does not say).
pub fn rx_queue_count(iface: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// The interface's MTU, as sysfs reports it: what an af-xdp or af-packet port
/// carries.
pub fn iface_mtu(iface: &str) -> Result<u16, NicError> {
    let path = format!("/sys/class/net/{iface}/mtu");
    let text =
        std::fs::read_to_string(&path).map_err(|e| os_err(iface, &format!("reading {path}"), e))?;
    text.trim()
        .parse::<u32>()
        .map(|m| m.min(u16::MAX as u32) as u16)
        .map_err(|_| NicError(format!("interface {iface:?}: {path} says {text:?}")))
}

/// The interface's MAC address, as sysfs reports it.
pub fn iface_mac(iface: &str) -> Result<[u8; 6], NicError> {
    let path = format!("/sys/class/net/{iface}/address");
    let text =
        std::fs::read_to_string(&path).map_err(|e| os_err(iface, &format!("reading {path}"), e))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| NicError(format!("interface {iface:?}: {path} says {text:?}")))
}

/// The interface's operational state as sysfs reports it ("up", "down", ...).
pub fn operstate(iface: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/operstate"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Creates a socket, mapping failure to an error naming the interface.
pub(crate) fn socket(iface: &str, domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, NicError> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(os_err(iface, "socket", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `int` socket option's value.
pub(crate) fn getsockopt_int(fd: &OwnedFd, level: i32, opt: i32) -> Result<i32, std::io::Error> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given, for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// `setsockopt` with a value of any plain type.
pub(crate) fn setsockopt<T>(
    fd: &OwnedFd,
    level: i32,
    opt: i32,
    val: &T,
) -> Result<(), std::io::Error> {
    // SAFETY: val points at size_of::<T>() readable bytes for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Promiscuous mode on an interface, held for as long as this value lives.
///
/// It is a membership of an AF_PACKET socket that receives nothing (protocol 0), so the
/// kernel counts it like any other promiscuous user and drops it when the socket closes,
/// including when the process is killed: nothing is left behind to undo by hand.
pub struct Promisc {
    _fd: OwnedFd,
}

impl Promisc {
    pub fn hold(iface: &str, ifindex: u32) -> Result<Promisc, NicError> {
        let fd = socket(iface, libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        add_promisc(&fd, ifindex).map_err(|e| os_err(iface, "promiscuous mode", e))?;
        Ok(Promisc { _fd: fd })
    }
}

/// Adds a PACKET_MR_PROMISC membership to a packet socket.
pub(crate) fn add_promisc(fd: &OwnedFd, ifindex: u32) -> Result<(), std::io::Error> {
    let mr = libc::packet_mreq {
        mr_ifindex: ifindex as i32,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)
}

/// An anonymous shared mapping of a file descriptor's ring area, unmapped on drop.
pub(crate) struct RingMap {
    pub ptr: *mut u8,
    pub len: usize,
}

impl RingMap {
    pub fn map(fd: &OwnedFd, len: usize, offset: i64) -> Result<RingMap, std::io::Error> {
        // SAFETY: a fresh shared mapping of the socket's ring at an address the kernel picks;
        // it aliases nothing else in this process.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingMap {
            ptr: p as *mut u8,
            len,
        })
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly one mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

// SAFETY: the mapping is plain memory shared with the kernel; the ports that hold it
// serialise their accesses (one rx poller per queue, a lock per tx queue).
unsafe impl Send for RingMap {}
// SAFETY: as above.
unsafe impl Sync for RingMap {}

/// Takes a received frame's virtio-net header (tap, and AF_PACKET with
/// PACKET_VNET_HDR) as its metadata: a header asking for what cannot be done drops
/// the frame (`drop_offload`), as does a frame without TSO longer than `limit`
/// (`drop_mtu`; a TSO frame is longer by design, its segments are checked by the
/// egress step); otherwise a header that asks for something is kept (`rx_offload`).
/// Returns whether the frame is kept.
pub(crate) fn take_vnet_hdr(
    stats: &crate::port::PortStats,
    m: &mut crate::mempool::Mbuf,
    h: crate::offload::NetHdr,
    limit: usize,
    tr: &mut crate::port::Traffic,
) -> bool {
    use crate::port::PortStats;
    if h.is_plain() {
        if m.len() > limit {
            PortStats::add(&stats.drop_mtu, 1);
            return false;
        }
        return true;
    }
    if let Err(e) = h.check() {
        tracing::debug!("dropped: {e}");
        PortStats::add(&stats.drop_offload, 1);
        return false;
    }
    if h.gso_type == crate::offload::GSO_NONE && m.len() > limit {
        PortStats::add(&stats.drop_mtu, 1);
        return false;
    }
    m.set_offload(h);
    tr.rx_offload += 1;
    true
}

/// Tells the kernel to look at a socket's tx ring (`sendto` with no data).
#[inline]
pub(crate) fn kick_tx(fd: &OwnedFd) {
    // SAFETY: a zero-length send with no buffer and no address.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        );
    }
}

/// Tells the kernel to look at a socket's fill ring and go on receiving (`recvfrom`
/// with no buffer), for a driver that asked for it (need_wakeup).
#[cold]
pub(crate) fn wake_rx(fd: &OwnedFd) {
    // SAFETY: a zero-length receive with no buffer and no address.
    unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
}
