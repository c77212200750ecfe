//! TAP ports: a TAP device that gives the host's own network stack a port on the
//! switch, like an OVS internal port.
//!
//! The switch creates the device (named by `iface`), sets it administratively up and
//! leaves addresses, routes and namespaces to the host's tools; the device disappears
//! when the switch exits. Frames cross with one `read`/`write` system call each, so
//! this port is for management and host traffic, not for line rate. The device gets
//! the port's `mtu`; with an MTU above what an mbuf holds, frames are read into a
//! large buffer and copied down when they fit a small one.

use super::{os_err, NicError};
use crate::mempool::{Mbuf, MempoolCache, DATA_ROOM};
use crate::port::{max_frame, Port, PortStats, Traffic, TxLane};
use std::fs::File;
use std::io::{Read, Write};
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
        ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which ifr is.
        if unsafe { libc::ioctl(dev.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(os_err(
                iface,
                "creating the TAP device",
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
        let limit = max_frame(self.cfg.mtu);
        while n < out.len() {
            let m = if limit > DATA_ROOM {
                cache.alloc_large()
            } else {
                cache.alloc()
            };
            let Some(mut m) = m else {
                break; // the frames wait in the device's queue
            };
            let cap = m.capacity();
            let r = (&self.dev).read(m.set_len(cap));
            match r {
                Ok(len) if len > limit => {
                    PortStats::add(&self.stats.drop_mtu, 1);
                    cache.free(m);
                }
                Ok(len) if len >= 14 => {
                    m.set_len(len);
                    let Some(m) = cache.fit(m) else {
                        PortStats::add(&self.stats.drop_no_mbuf, 1);
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
            // as a NIC would.
            match (&self.dev).write(m.data()) {
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

    fn driver(&self) -> &'static str {
        "tap"
    }

    fn mtu(&self) -> u16 {
        self.cfg.mtu
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
