//! TAP ports: a TAP device that gives the host's own network stack a port on the
//! switch, like an OVS internal port.
//!
//! The switch creates the device (named by `iface`), sets it administratively up and
//! leaves addresses, routes and namespaces to the host's tools; the device disappears
//! when the switch exits. Frames cross with one `read`/`write` system call each, so
//! this port is for management and host traffic, not for line rate. The device gets
//! the port's `mtu`.
//!
//! Offloads, as QEMU's TAP backend uses them: the device has a virtio-net header
//! (`IFF_VNET_HDR`) and takes checksum and TCP segmentation offload
//! (`TUNSETOFFLOAD`), so the host's stack hands the switch 64 KiB TCP segments with
//! partial checksums, and takes them back the same way: one system call per 64 KiB
//! instead of per 1500 bytes. Every read goes into a large buffer (a frame of any
//! length may come) and a frame that fits a small one is copied down.

use super::{os_err, NicError};
use crate::mempool::{Mbuf, MempoolCache};
use crate::offload::{Caps, NetHdr};
use crate::port::{max_frame, Port, PortStats, Traffic, TxLane};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Debug)]
pub struct TapConfig {
    pub name: String,
    pub iface: String,
    pub mtu: u16,
}

const IFF_TAP: libc::c_short = libc::IFF_TAP as libc::c_short;
const IFF_NO_PI: libc::c_short = libc::IFF_NO_PI as libc::c_short;
const IFF_VNET_HDR: libc::c_short = libc::IFF_VNET_HDR as libc::c_short;
/// What the device may hand us, and takes from us: partial checksums and TCP
/// segmentation over IPv4 and IPv6, with ECN.
const TUN_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

pub struct TapPort {
    cfg: TapConfig,
    dev: File,
    stats: PortStats,
    /// Polls left to skip: after an empty read the next few polls make no system call,
    /// so an idle TAP port costs its PMD little.
    skip: AtomicU32,
}

/// Polls skipped after an empty read.
const IDLE_SKIP: u32 = 8;

impl TapPort {
    pub fn open(cfg: TapConfig) -> Result<TapPort, NicError> {
        let iface = cfg.iface.as_str();
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| os_err(iface, "opening /dev/net/tun", e))?;
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which ifr is.
        if unsafe { libc::ioctl(dev.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(os_err(
                iface,
                "creating the TAP device",
                std::io::Error::last_os_error(),
            ));
        }
        let hdr_len = NetHdr::LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int, TUNSETOFFLOAD takes its argument by
        // value; dev is the device opened above.
        let r = unsafe {
            let r = libc::ioctl(dev.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len);
            if r < 0 {
                r
            } else {
                libc::ioctl(
                    dev.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    TUN_OFFLOADS as libc::c_ulong,
                )
            }
        };
        if r < 0 {
            return Err(os_err(
                iface,
                "enabling the TAP device's offloads",
                std::io::Error::last_os_error(),
            ));
        }
        set_mtu(iface, cfg.mtu)
            .map_err(|e| os_err(iface, &format!("setting the MTU to {}", cfg.mtu), e))?;
        set_up(iface).map_err(|e| os_err(iface, "setting the TAP device up", e))?;
        tracing::info!(port = %cfg.name, iface, "tap port open");
        Ok(TapPort {
            cfg,
            dev,
            stats: PortStats::default(),
            skip: AtomicU32::new(0),
        })
    }
}

use std::os::unix::fs::OpenOptionsExt;

impl TapPort {
    /// Reads one frame: its virtio-net header into `hdr`, the frame into `m`'s whole
    /// capacity. Returns the frame's length.
    fn read_frame(&self, hdr: &mut [u8; NetHdr::LEN], m: &mut Mbuf) -> std::io::Result<usize> {
        let cap = m.capacity();
        let data = m.set_len(cap);
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: data.as_mut_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            },
        ];
        // SAFETY: both iovecs point at writable memory of their length, borrowed for
        // the call.
        let r = unsafe { libc::readv(self.dev.as_raw_fd(), iov.as_ptr(), 2) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((r as usize).saturating_sub(NetHdr::LEN))
    }

    /// Writes one frame behind its virtio-net header.
    fn write_frame(&self, hdr: &[u8; NetHdr::LEN], frame: &[u8]) -> std::io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at readable memory of their length (writev does not
        // write through them), borrowed for the call.
        let r = unsafe { libc::writev(self.dev.as_raw_fd(), iov.as_ptr(), 2) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// A received frame with header `h`: kept with its offload metadata (counted in
    /// `rx_offload`), or dropped and counted if the header asks for what cannot be
    /// done or the frame is too long; copied down to a small buffer when it fits.
    fn accept(
        &self,
        cache: &mut MempoolCache,
        mut m: Mbuf,
        h: NetHdr,
        tr: &mut Traffic,
    ) -> Option<Mbuf> {
        if !super::take_vnet_hdr(&self.stats, &mut m, h, max_frame(self.cfg.mtu), tr) {
            cache.free(m);
            return None;
        }
        let m = cache.fit(m);
        if m.is_none() {
            PortStats::add(&self.stats.drop_no_mbuf, 1);
        }
        m
    }
}

/// Sets an interface's MTU (SIOCSIFMTU).
fn set_mtu(iface: &str, mtu: u16) -> Result<(), std::io::Error> {
    if_ioctl(iface, |s, ifr| {
        ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        // SAFETY: SIOCSIFMTU reads an ifreq, which ifr is; s is an open socket.
        unsafe { libc::ioctl(s, libc::SIOCSIFMTU, ifr) }
    })
}

/// Sets IFF_UP on an interface.
fn set_up(iface: &str) -> Result<(), std::io::Error> {
    if_ioctl(iface, |s, ifr| {
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq, which ifr is; s is
        // an open socket.
        unsafe {
            let r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut *ifr);
            if r != 0 {
                return r;
            }
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, ifr)
        }
    })
}

/// Runs `op` (ioctls on an `ifreq` naming `iface`) with a socket made for it.
fn if_ioctl(
    iface: &str,
    op: impl FnOnce(libc::c_int, &mut libc::ifreq) -> libc::c_int,
) -> Result<(), std::io::Error> {
    // SAFETY: plain syscall; the fd is closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, c) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = c as libc::c_char;
    }
    let r = op(s, &mut ifr);
    let e = std::io::Error::last_os_error();
    // SAFETY: s is the socket made above, closed once.
    unsafe { libc::close(s) };
    if r < 0 {
        Err(e)
    } else {
        Ok(())
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn rx_queues(&self) -> usize {
        1
    }

    fn rx_burst(
        &self,
        _q: usize,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let skip = self.skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Relaxed);
            return 0;
        }
        let mut n = 0;
        let mut bytes = 0u64;
        while n < out.len() {
            // A small buffer when no large one is free: a longer frame is then
            // dropped (below), rather than the port stopping to receive.
            let Some(mut m) = cache.alloc_large().or_else(|| cache.alloc()) else {
                break; // the frames wait in the device's queue
            };
            let mut hdr = [0u8; NetHdr::LEN];
            let r = self.read_frame(&mut hdr, &mut m);
            match r {
                Ok(len) if len > m.capacity() => {
                    // Cut to the buffer by the read (a GRO'd frame past 65407 bytes).
                    PortStats::add(&self.stats.drop_oversize, 1);
                    cache.free(m);
                }
                Ok(len) if len >= 14 => {
                    m.set_len(len);
                    let Some(m) = self.accept(cache, m, NetHdr::parse(&hdr), tr) else {
                        continue;
                    };
                    bytes += len as u64;
                    out[n] = Some(m);
                    n += 1;
                }
                Ok(_) => {
                    PortStats::add(&self.stats.drop_runt, 1);
                    cache.free(m);
                }
                Err(_) => {
                    // EAGAIN (nothing queued) or the device going away: nothing to receive.
                    cache.free(m);
                    if n == 0 {
                        self.skip.store(IDLE_SKIP, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        tr.rx_packets += n as u64;
        tr.rx_bytes += bytes;
        n
    }

    fn tx_burst(
        &self,
        _lane: &TxLane,
        cache: &mut MempoolCache,
        pkts: &mut [Option<Mbuf>],
        tr: &mut Traffic,
    ) -> usize {
        let (mut sent, mut ok, mut bytes) = (0, 0u64, 0u64);
        for slot in pkts.iter_mut() {
            let Some(m) = slot.take() else { break };
            // One write is one frame; a full queue or a device that is down drops it,
            // as a NIC would. The header says what the kernel is to complete or cut.
            let hdr = m.offload().unwrap_or_default().to_bytes();
            match self.write_frame(&hdr, m.data()) {
                Ok(_) => {
                    ok += 1;
                    bytes += m.len() as u64;
                }
                Err(_) => PortStats::add(&self.stats.drop_tx_down, 1),
            }
            cache.free(m);
            sent += 1;
        }
        tr.tx_packets += ok;
        tr.tx_bytes += bytes;
        sent
    }

    fn is_up(&self) -> bool {
        true
    }

    fn stats(&self) -> &PortStats {
        &self.stats
    }

    fn arm_wake(&self, _q: usize) -> crate::idle::Wake {
        // The first poll after the sleep reads.
        self.skip.store(0, Ordering::Relaxed);
        crate::idle::Wake::Fd(self.dev.as_raw_fd())
    }

    fn driver(&self) -> &'static str {
        "tap"
    }

    fn mtu(&self) -> u16 {
        self.cfg.mtu
    }

    fn tx_offloads(&self) -> Caps {
        Caps::ALL
    }

    fn describe(&self) -> String {
        format!(
            "driver=tap iface={} mtu={} link={}",
            self.cfg.iface,
            self.cfg.mtu,
            super::operstate(&self.cfg.iface)
        )
    }
}
