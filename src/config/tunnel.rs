//! The keys of VXLAN tunnels: an underlay's `tunnel_ip` and `tunnel_gateway` (on an
//! af-xdp or af-packet port), and a `driver = "vxlan"` port's own keys, checked
//! against the underlay ports before it.

use super::port::Taken;
use super::raw::RawVxlan;
use super::{EvpnShadow, PortKind, TunnelIp};
use std::net::Ipv4Addr;

/// VNIs are 24 bits.
const MAX_VNI: i64 = (1 << 24) - 1;
/// The UDP port of tunnels unless `dst_port` says otherwise.
pub(crate) const DEFAULT_DST_PORT: u16 = switch::tunnel::header::DEFAULT_PORT;

/// `tunnel_ip` and `tunnel_gateway` of a NIC port.
pub(super) fn endpoint(ip: Option<&str>, gw: Option<&str>) -> Result<Option<TunnelIp>, String> {
    let Some(text) = ip else {
        return match gw {
            Some(g) => Err(format!(
                "key 'tunnel_gateway' = {g:?}: needs key 'tunnel_ip' (the endpoint's address and prefix)"
            )),
            None => Ok(None),
        };
    };
    let bad = || {
        format!(
            "key 'tunnel_ip' = {text:?}: must be an IPv4 address and prefix length, like \"10.99.0.1/24\""
        )
    };
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = len.parse().map_err(|_| bad())?;
    if !(1..=32).contains(&prefix) || !unicast(ip) {
        return Err(bad());
    }
    let mut t = TunnelIp {
        ip,
        prefix,
        gateway: None,
    };
    if let Some(g) = gw {
        let gateway: Ipv4Addr = g
            .parse()
            .map_err(|_| format!("key 'tunnel_gateway' = {g:?}: must be an IPv4 address"))?;
        if !t.on_link(gateway) || gateway == ip {
            return Err(format!(
                "key 'tunnel_gateway' = {g:?}: must be another address in tunnel_ip's prefix {text}"
            ));
        }
        t.gateway = Some(gateway);
    }
    Ok(Some(t))
}

fn unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
}

/// A `driver = "vxlan"` port.
pub(super) fn vxlan(v: RawVxlan, taken: &Taken) -> Result<PortKind, String> {
    let Some(ep) = taken.underlay(&v.underlay) else {
        return Err(format!(
            "key 'underlay' = {:?}: no af-xdp or af-packet port of that name with tunnel_ip (it must come before this port)",
            v.underlay
        ));
    };
    if !(0..=MAX_VNI).contains(&v.vni) {
        return Err(format!("key 'vni' = {}: must be 0..={MAX_VNI}", v.vni));
    }
    let dst_port = match v.dst_port {
        None => DEFAULT_DST_PORT,
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => return Err(format!("key 'dst_port' = {p}: must be 1..=65535")),
    };
    let vni = v.vni as u32;
    if taken.has_tunnel(&v.underlay, vni, dst_port) {
        return Err(format!(
            "key 'vni' = {vni}: underlay {:?} already has a vxlan port with this VNI on UDP port {dst_port}",
            v.underlay
        ));
    }
    let mut remotes = Vec::new();
    for r in v.remotes.unwrap_or_default() {
        let ip: Ipv4Addr = r
            .parse()
            .map_err(|_| format!("key 'remotes' = {r:?}: must be an IPv4 address"))?;
        if !unicast(ip) || ip == ep.ip {
            return Err(format!(
                "key 'remotes' = {r:?}: must be another endpoint's unicast address"
            ));
        }
        if !ep.on_link(ip) && ep.gateway.is_none() {
            return Err(format!(
                "key 'remotes' = {r:?}: outside underlay {:?}'s prefix {}/{} and it has no tunnel_gateway",
                v.underlay, ep.ip, ep.prefix
            ));
        }
        if remotes.contains(&ip) {
            return Err(format!("key 'remotes' = {r:?}: listed twice"));
        }
        remotes.push(ip);
    }
    if remotes.len() > switch::tunnel::MAX_REMOTES {
        return Err(format!(
            "key 'remotes': {} endpoints, at most {}",
            remotes.len(),
            switch::tunnel::MAX_REMOTES
        ));
    }
    let evpn = match (v.evpn_vxlan, v.evpn_port) {
        (None, None) => None,
        (Some(vxlan), Some(port)) => {
            for (key, name) in [("evpn_vxlan", &vxlan), ("evpn_port", &port)] {
                if !pmd::nic::valid_ifname(name) {
                    return Err(format!("key '{key}' = {name:?}: not an interface name"));
                }
            }
            Some(EvpnShadow { vxlan, port })
        }
        (Some(x), None) => {
            return Err(format!(
                "key 'evpn_vxlan' = {x:?}: needs key 'evpn_port' (the shadow bridge's port for the switch's MACs)"
            ))
        }
        (None, Some(x)) => {
            return Err(format!(
                "key 'evpn_port' = {x:?}: needs key 'evpn_vxlan' (the shadow vxlan device FRR programs)"
            ))
        }
    };
    Ok(PortKind::Vxlan {
        underlay: v.underlay,
        vni,
        dst_port,
        remotes,
        learn_remotes: v.learn_remotes.unwrap_or(false),
        evpn,
    })
}
