//! FRR's BGP EVPN drives a tunnel port: the switch follows a kernel vxlan device that
//! FRR programs but that carries no traffic (the shadow), and tells FRR its own MACs.
//!
//! FRR's zebra installs what BGP learned as FDB entries on the shadow vxlan device:
//! remote MACs with their endpoint (`MAC dst IP self extern_learn`) and the flood
//! list (`00:00:00:00:00:00 dst IP`). A [`Follower`] thread reads them over rtnetlink
//! (a dump, then RTNLGRP_NEIGH notifications, new and deleted) into the tunnel port's
//! MAC table and flood list. The other way, every second it writes the MACs the switch
//! learned on its other ports, in the tunnel port's VLAN, as static FDB entries on a
//! port of the shadow bridge (`evpn_port`), where zebra sees them as local and
//! advertises them (type-2 routes); MACs the switch forgot are deleted. No frame of
//! the switch crosses the shadow devices.
//!
//! Built on `netlink-packet-route` and `netlink-sys` (rust-netlink's crates, the ones
//! `rtnetlink` is made of, used without its async runtime: this is one blocking thread).

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use switch::fdb::Mac;
use switch::tunnel::Tunnel;
use switch::FdbSource;

/// rtnetlink's multicast group of neighbour (and bridge FDB) changes.
const RTNLGRP_NEIGH: u32 = 3;
/// How often local MACs are written to the shadow bridge and remote MACs refreshed.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the (non-blocking) notification socket is read when it was empty.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a tunnel port's EVPN follower needs.
#[derive(Clone, Debug)]
pub struct EvpnConfig {
    /// The tunnel port's name (its MACs are not advertised as local).
    pub port: String,
    /// The shadow vxlan device FRR programs, and the shadow bridge's port on which the
    /// switch's local MACs are written.
    pub vxlan: String,
    pub mac_port: String,
    /// The VLAN of the switch the tunnel's MACs are in (0: untagged, a trunk port).
    pub vlan: u16,
}

/// Why a follower could not start or stopped.
#[derive(Debug)]
pub enum EvpnError {
    NoDevice { key: &'static str, name: String },
    Netlink(std::io::Error),
}

impl fmt::Display for EvpnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvpnError::NoDevice { key, name } => {
                write!(
                    f,
                    "{key} {name:?}: no such interface in the switch's network namespace"
                )
            }
            EvpnError::Netlink(e) => write!(f, "rtnetlink: {e}"),
        }
    }
}

impl From<std::io::Error> for EvpnError {
    fn from(e: std::io::Error) -> EvpnError {
        EvpnError::Netlink(e)
    }
}

/// A running follower; stopped (its thread joined) on drop.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following `cfg.vxlan` for `tunnel`.
    pub fn start(
        cfg: EvpnConfig,
        tunnel: Arc<Tunnel>,
        fdb: FdbSource,
    ) -> Result<Follower, EvpnError> {
        let ifindex = |key, name: &str| {
            pmd::nic::ifindex(name).map_err(|_| EvpnError::NoDevice {
                key,
                name: name.to_string(),
            })
        };
        let f = Following {
            vxlan: ifindex("evpn_vxlan", &cfg.vxlan)?,
            mac_port: ifindex("evpn_port", &cfg.mac_port)?,
            events: events_socket()?,
            requests: request_socket()?,
            remote: HashMap::new(),
            flood: HashSet::new(),
            seq: 0,
            local: HashSet::new(),
            cfg,
            tunnel,
            fdb,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("evpn-{}", f.cfg.port))
            .spawn(move || f.run(&s2))
            .map_err(EvpnError::Netlink)?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn events_socket() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    // Every neighbour change of the namespace comes here (the switch's own writes
    // too): room for bursts of them.
    s.set_rx_buf_sz(4 << 20)?;
    s.add_membership(RTNLGRP_NEIGH)?;
    s.set_non_blocking(true)?;
    Ok(s)
}

fn request_socket() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// The follower thread's state.
struct Following {
    cfg: EvpnConfig,
    vxlan: u32,
    mac_port: u32,
    events: Socket,
    requests: Socket,
    tunnel: Arc<Tunnel>,
    fdb: FdbSource,
    /// Remote MACs as FRR installed them, refreshed in the tunnel every second.
    remote: HashMap<Mac, Ipv4Addr>,
    /// The flood list as FRR installed it.
    flood: HashSet<Ipv4Addr>,
    /// The last request's sequence number.
    seq: u32,
    /// Local MACs written to the shadow bridge.
    local: HashSet<Mac>,
}

/// One FDB entry of the shadow vxlan device, as FRR installs it.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Flood(Ipv4Addr),
    Remote(Mac, Ipv4Addr),
}

impl Following {
    fn run(mut self, stop: &AtomicBool) {
        tracing::info!(port = %self.cfg.port, vxlan = %self.cfg.vxlan, "EVPN: following the shadow vxlan device");
        if let Err(e) = self.dump() {
            tracing::error!(port = %self.cfg.port, "EVPN: dump of the shadow device's FDB failed: {e}");
        }
        let mut last_sync = Instant::now() - SYNC_EVERY;
        let mut buf = vec![0u8; 1 << 16];
        while !stop.load(Relaxed) {
            match self.events.recv(&mut &mut buf[..], 0) {
                Ok(n) => self.events_in(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(POLL_EVERY)
                }
                Err(e) => {
                    // ENOBUFS: notifications were lost; read the table again.
                    tracing::warn!(port = %self.cfg.port, "EVPN: {e}; reading the table again");
                    if let Err(e) = self.dump() {
                        tracing::error!(port = %self.cfg.port, "EVPN: dump failed: {e}");
                    }
                }
            }
            if last_sync.elapsed() >= SYNC_EVERY {
                last_sync = Instant::now();
                self.refresh_remote();
                self.sync_local();
            }
        }
        // Leave nothing of the switch's in the shadow bridge.
        let local: Vec<Mac> = self.local.drain().collect();
        for mac in local {
            let _ = self.write_local(mac, false);
        }
    }

    /// Reads the shadow device's whole table and makes the tunnel match it: what is
    /// new is added, what is gone (deletions whose notifications were lost) removed.
    /// Notifications already queued are read first, so that none undoes the dump.
    fn dump(&mut self) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = self.events.recv(&mut &mut buf[..], 0) {
            self.events_in(&buf[..n]);
        }
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = self.vxlan;
        self.seq += 1;
        let replies = request(
            &self.requests,
            RouteNetlinkMessage::GetNeighbour(m),
            NLM_F_DUMP,
            self.seq,
        )?;
        let mut entries = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewNeighbour(n) = r {
                entries.extend(self.entry(&n));
            }
        }
        let gone_macs: Vec<Mac> = self
            .remote
            .keys()
            .filter(|m| {
                !entries
                    .iter()
                    .any(|e| matches!(e, Entry::Remote(x, _) if x == *m))
            })
            .copied()
            .collect();
        let gone_flood: Vec<Ipv4Addr> = self
            .flood
            .iter()
            .filter(|ip| !entries.contains(&Entry::Flood(**ip)))
            .copied()
            .collect();
        for mac in gone_macs {
            let ip = self.remote[&mac];
            self.apply(Entry::Remote(mac, ip), false);
        }
        for ip in gone_flood {
            self.apply(Entry::Flood(ip), false);
        }
        for e in entries {
            self.apply(e, true);
        }
        Ok(())
    }

    fn events_in(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(b) else {
                return;
            };
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    if let Some(e) = self.entry(&n) {
                        self.apply(e, true);
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                    if let Some(e) = self.entry(&n) {
                        self.apply(e, false);
                    }
                }
                _ => {}
            }
            if len == 0 || len > b.len() {
                return;
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
    }

    /// An entry of the shadow vxlan device's own table (`self`, with a destination).
    fn entry(&self, n: &NeighbourMessage) -> Option<Entry> {
        let h = &n.header;
        if h.family != AddressFamily::Bridge
            || h.ifindex != self.vxlan
            || !h.flags.contains(NeighbourFlags::Own)
        {
            return None;
        }
        let mut mac = None;
        let mut dst = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    mac = Some(Mac::from_slice(l))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                // A bridge entry's destination is not parsed by its family: 4 bytes.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                    dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                _ => {}
            }
        }
        let (mac, dst) = (mac?, dst?);
        if dst.is_unspecified() || dst.is_multicast() || dst.is_broadcast() {
            return None;
        }
        Some(if mac.0 == [0; 6] {
            Entry::Flood(dst)
        } else {
            Entry::Remote(mac, dst)
        })
    }

    fn apply(&mut self, e: Entry, add: bool) {
        let port = &self.cfg.port;
        match (e, add) {
            (Entry::Flood(ip), true) => {
                if !self.flood.insert(ip) {
                    return;
                }
                if !self.tunnel.flood_add(ip) {
                    tracing::warn!(%port, %ip, "EVPN: endpoint table full");
                }
                tracing::info!(%port, %ip, "EVPN: flood list +");
            }
            (Entry::Flood(ip), false) => {
                self.flood.remove(&ip);
                self.tunnel.flood_remove(ip);
                tracing::info!(%port, %ip, "EVPN: flood list -");
            }
            (Entry::Remote(mac, ip), true) => {
                if self.remote.insert(mac, ip) == Some(ip) {
                    return;
                }
                self.tunnel.set_remote_mac(mac, ip);
                tracing::info!(%port, %mac, %ip, "EVPN: remote MAC");
            }
            (Entry::Remote(mac, _), false) => {
                self.remote.remove(&mac);
                self.tunnel.remove_remote_mac(mac);
                tracing::info!(%port, %mac, "EVPN: remote MAC withdrawn");
            }
        }
    }

    /// Remote MACs are set again before the tunnel's table would age them out.
    fn refresh_remote(&self) {
        for (&mac, &ip) in &self.remote {
            self.tunnel.set_remote_mac(mac, ip);
        }
    }

    /// The switch's MACs on its other ports in the tunnel's VLAN, written to (and
    /// removed from) the shadow bridge. MACs on tunnel ports (remote ones) and on
    /// underlays (the underlay network's) are not this host's stations. A write that
    /// fails is logged and tried again at the next sync; a delete of an entry that is
    /// no longer there (zebra moved it) is done.
    fn sync_local(&mut self) {
        let vlan = self.cfg.vlan;
        let now: HashSet<Mac> = self
            .fdb
            .entries_where(|p| p.driver() != "vxlan" && !p.is_underlay())
            .into_iter()
            .filter(|e| e.vlan == vlan)
            .filter_map(|e| parse_mac(&e.mac))
            .filter(|m| !m.is_multicast())
            .collect();
        let gone: Vec<Mac> = self.local.difference(&now).copied().collect();
        let new: Vec<Mac> = now.difference(&self.local).copied().collect();
        for mac in gone {
            match self.write_local(mac, false) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    tracing::warn!(port = %self.cfg.port, %mac, "EVPN: removing a local MAC: {e}");
                    continue;
                }
            }
            self.local.remove(&mac);
        }
        for mac in new {
            match self.write_local(mac, true) {
                Ok(()) => {
                    self.local.insert(mac);
                    tracing::info!(port = %self.cfg.port, %mac, "EVPN: local MAC written to the shadow bridge");
                }
                Err(e) => {
                    tracing::warn!(port = %self.cfg.port, %mac, "EVPN: writing a local MAC: {e}")
                }
            }
        }
    }

    /// `bridge fdb add|del MAC dev MAC_PORT master static`.
    fn write_local(&mut self, mac: Mac, add: bool) -> std::io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = self.mac_port;
        m.header.state = NeighbourState::Noarp;
        m.header.flags = NeighbourFlags::Controller;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        let (msg, flags) = if add {
            (
                RouteNetlinkMessage::NewNeighbour(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        } else {
            (RouteNetlinkMessage::DelNeighbour(m), 0)
        };
        self.seq += 1;
        request(&self.requests, msg, flags | NLM_F_ACK, self.seq).map(|_| ())
    }
}

fn parse_mac(s: &str) -> Option<Mac> {
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (b.len() == 6).then(|| Mac::from_slice(&b))
}

/// Sends one request and collects its replies (until Done, or the ACK); messages of
/// other sequence numbers (what an earlier, failed request left) are skipped.
fn request(
    s: &Socket,
    msg: RouteNetlinkMessage,
    flags: u16,
    seq: u32,
) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut h = NetlinkHeader::default();
    h.flags = NLM_F_REQUEST | flags;
    h.sequence_number = seq;
    let mut req = NetlinkMessage::new(h, NetlinkPayload::from(msg));
    req.finalize();
    let mut out = vec![0u8; req.header.length as usize];
    req.serialize(&mut out[..]);
    s.send(&out, 0)?;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let mut b = &buf[..n];
        while !b.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(b)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let len = m.header.length as usize;
            let ours = m.header.sequence_number == seq;
            match m.payload {
                _ if !ours => {}
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(replies), // the ACK
                        Some(c) => Err(std::io::Error::from_raw_os_error(-c.get())),
                    };
                }
                NetlinkPayload::InnerMessage(r) => replies.push(r),
                _ => {}
            }
            if len == 0 || len > b.len() {
                break;
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs_as_the_table_prints_them() {
        assert_eq!(
            parse_mac("02:00:00:00:01:0a").map(|m| m.0),
            Some([2, 0, 0, 0, 1, 10])
        );
        assert_eq!(parse_mac("02:00:00:00:01"), None);
        assert_eq!(parse_mac("zz:00:00:00:01:02"), None);
    }
}
