//! One `[[port]]`: serde reads the table ([`super::raw::RawPort`]), then the checks
//! that span keys or ports. Shared by the file, `add-port` and a reload; errors are
//! messages naming the key and the value, the caller says where the table was.

use super::de::{self, DeError};
use super::raw::{RawAfXdp, RawDriver, RawPort, RawVhostUser, DRIVERS};
use super::sockets::{self, check_dir};
use super::tunnel;
use super::{
    vlan, Config, PortConfig, PortKind, TunnelIp, DEFAULT_MAX_GUEST_MEMORY_GIB,
    MAX_GUEST_MEMORY_GIB,
};
use pmd::sockperm::SocketPerms;
use pmd::vhost::Mode;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use toml::{Table, Value};

/// Keys every port takes, whatever its driver (the fields of [`RawPort`]).
const COMMON_KEYS: &[&str] = &["name", "driver", "queues", "vlan_mode", "tag", "trunks"];

/// What the ports checked so far hold: names, socket paths, interfaces.
#[derive(Default)]
pub(crate) struct Taken {
    names: HashSet<String>,
    paths: HashSet<PathBuf>,
    ifaces: HashSet<String>,
    /// Underlay ports (with `tunnel_ip`) by name.
    underlays: HashMap<String, TunnelIp>,
    /// Tunnels: (underlay, VNI, UDP port).
    tunnels: HashSet<(String, u32, u16)>,
}

impl Taken {
    pub fn of(ports: &[PortConfig]) -> Taken {
        let mut t = Taken::default();
        for p in ports {
            t.add(p);
        }
        t
    }

    pub fn add(&mut self, p: &PortConfig) {
        self.names.insert(p.name.clone());
        match &p.kind {
            PortKind::VhostUser { path, .. } => {
                self.paths.insert(path.clone());
            }
            PortKind::AfXdp { iface, .. }
            | PortKind::AfPacket { iface, .. }
            | PortKind::Tap { iface, .. } => {
                self.ifaces.insert(iface.clone());
            }
            PortKind::Vxlan {
                underlay,
                vni,
                dst_port,
                ..
            } => {
                self.tunnels.insert((underlay.clone(), *vni, *dst_port));
            }
        }
        if let Some(t) = p.kind.tunnel_ip() {
            self.underlays.insert(p.name.clone(), t.clone());
        }
    }

    /// The endpoint of underlay port `name`, if it is one.
    pub fn underlay(&self, name: &str) -> Option<&TunnelIp> {
        self.underlays.get(name)
    }

    pub fn has_tunnel(&self, underlay: &str, vni: u32, dst_port: u16) -> bool {
        self.tunnels
            .contains(&(underlay.to_string(), vni, dst_port))
    }
}

/// Reads and checks one table against the switch `sw` and the ports in `taken`.
pub(crate) fn port(table: &Table, sw: &Config, taken: &Taken) -> Result<PortConfig, String> {
    let raw = de::raw_port(table).map_err(|e| explain(table, e))?;
    check(raw, sw, taken)
}

/// A serde error in the file's words: the key, its value, what is wrong.
fn explain(table: &Table, e: DeError) -> String {
    let driver = table.get("driver").and_then(Value::as_str).unwrap_or("?");
    match e {
        DeError::MissingField("driver") => {
            format!("key 'driver' is missing: one of {}", de::one_of(DRIVERS))
        }
        DeError::MissingField(key) => {
            let what = match key {
                "path" => format!(": driver {driver:?} needs the socket's path"),
                "iface" => format!(": driver {driver:?} needs the interface's name"),
                "underlay" => format!(": driver {driver:?} needs its underlay port's name"),
                "vni" => format!(": driver {driver:?} needs the VXLAN network identifier"),
                _ => String::new(),
            };
            format!("key '{key}' is missing{what}")
        }
        DeError::UnknownField { field, expected } => {
            unknown_key(&field, &table[&field], driver, expected)
        }
        other => match de::culprit(table) {
            Some((key, value, _)) if key == "driver" => {
                format!("key 'driver' = {value}: must be {}", de::one_of(DRIVERS))
            }
            Some((key, value, e)) => format!("key '{key}' = {value}: {e}"),
            None => other.to_string(),
        },
    }
}

/// A key `driver` does not take: another driver's, or nobody's.
fn unknown_key(key: &str, value: &Value, driver: &str, own: &[&str]) -> String {
    let takers = de::drivers_taking(key, value);
    if takers.is_empty() {
        let keys: Vec<&str> = COMMON_KEYS.iter().chain(own).copied().collect();
        format!(
            "unknown field `{key}`: driver {driver:?} takes {}",
            keys.join(", ")
        )
    } else {
        let hint = if key == "mtu" && driver == "vxlan" {
            "; a vxlan port has its underlay's MTU less 50 bytes"
        } else if key == "mtu" {
            "; an af-xdp or af-packet port has its interface's MTU: `ip link set IFACE mtu N`"
        } else {
            ""
        };
        format!(
            "key '{key}' does not apply to driver {driver:?} (only to {}){hint}",
            takers.join(", ")
        )
    }
}

/// The checks serde cannot make: ranges, uniqueness, paths, keys that depend on
/// other keys.
fn check(raw: RawPort, sw: &Config, taken: &Taken) -> Result<PortConfig, String> {
    check_name(&raw.name, taken)?;
    let queues = raw.queues.unwrap_or(1);
    if !(1..=16).contains(&queues) {
        return Err(format!("key 'queues' = {queues}: must be 1..=16"));
    }
    if queues != 1
        && matches!(
            raw.driver,
            RawDriver::AfPacket(_) | RawDriver::Tap(_) | RawDriver::Vxlan(_)
        )
    {
        return Err(format!(
            "key 'queues' = {queues}: driver {:?} has one queue",
            raw.driver.name()
        ));
    }
    let vlan = vlan::check(raw.vlan_mode, raw.tag, raw.trunks.as_deref())?;
    let kind = match raw.driver {
        RawDriver::VhostUser(v) => vhost_user(v, sw, taken)?,
        RawDriver::AfXdp(x) => af_xdp(x, taken)?,
        RawDriver::AfPacket(p) => PortKind::AfPacket {
            iface: iface(&p.iface, taken)?,
            tunnel: tunnel::endpoint(p.tunnel_ip.as_deref(), p.tunnel_gateway.as_deref())?,
        },
        RawDriver::Tap(t) => PortKind::Tap {
            iface: iface(t.iface.as_deref().unwrap_or(&raw.name), taken)?,
            mtu: mtu(t.mtu)?,
        },
        RawDriver::Vxlan(v) => tunnel::vxlan(v, taken)?,
    };
    Ok(PortConfig {
        name: raw.name,
        queues: queues as usize,
        vlan,
        kind,
    })
}

fn check_name(name: &str, taken: &Taken) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 32 || !name.chars().all(ok) {
        return Err(format!(
            "key 'name' = {name:?}: 1-32 characters of a-z, A-Z, 0-9, '-', '_'"
        ));
    }
    if taken.names.contains(name) {
        return Err(format!("key 'name' = {name:?}: duplicate port name"));
    }
    Ok(())
}

fn vhost_user(v: RawVhostUser, sw: &Config, taken: &Taken) -> Result<PortKind, String> {
    let mode = v.mode.map_or(Mode::Server, Mode::from);
    let path = v.path;
    if !path.is_absolute() {
        return Err(format!("key 'path' = {path:?}: must be an absolute path"));
    }
    if taken.paths.contains(&path) || path == sw.control_socket {
        return Err(format!("key 'path' = {path:?}: socket path used twice"));
    }
    check_dir(&path, Some(sockets::parent(&sw.control_socket)))
        .map_err(|m| format!("key 'path' = {path:?}: {m}"))?;
    let gib = v
        .max_guest_memory_gib
        .unwrap_or(DEFAULT_MAX_GUEST_MEMORY_GIB);
    if !(1..=MAX_GUEST_MEMORY_GIB).contains(&gib) {
        return Err(format!(
            "key 'max_guest_memory_gib' = {gib}: must be 1..={MAX_GUEST_MEMORY_GIB}"
        ));
    }
    let socket_perms = match mode {
        Mode::Server => {
            sockets::perms("", v.socket_group.as_ref(), v.socket_mode, sw.socket_perms)?
        }
        Mode::Client => {
            client_refuses(
                "socket_group",
                v.socket_group.as_ref().map(ToString::to_string),
            )?;
            client_refuses("socket_mode", v.socket_mode.map(sockets::octal))?;
            SocketPerms::default()
        }
    };
    Ok(PortKind::VhostUser {
        path,
        mode,
        max_memory: (gib as u64) << 30,
        socket_perms,
        mtu: mtu(v.mtu)?,
    })
}

/// In client mode the peer creates the socket: its group and mode are the peer's.
fn client_refuses(key: &str, value: Option<String>) -> Result<(), String> {
    match value {
        None => Ok(()),
        Some(v) => Err(format!(
            "key '{key}' = {v}: does not apply to mode \"client\" (only to mode \"server\": \
             in client mode the peer creates the socket)"
        )),
    }
}

fn af_xdp(x: RawAfXdp, taken: &Taken) -> Result<PortKind, String> {
    Ok(PortKind::AfXdp {
        iface: iface(&x.iface, taken)?,
        xdp_mode: x
            .xdp_mode
            .map_or(pmd::nic::af_xdp::XdpMode::Auto, Into::into),
        zero_copy: x
            .zero_copy
            .map_or(pmd::nic::af_xdp::ZeroCopy::Auto, Into::into),
        tunnel: tunnel::endpoint(x.tunnel_ip.as_deref(), x.tunnel_gateway.as_deref())?,
    })
}

/// `mtu` of a vhost-user or tap port (af-xdp and af-packet ports take their
/// interface's).
fn mtu(v: Option<i64>) -> Result<u16, String> {
    use pmd::port::{DEFAULT_MTU, MAX_MTU, MIN_MTU};
    let v = v.unwrap_or(DEFAULT_MTU as i64);
    if !(MIN_MTU as i64..=MAX_MTU as i64).contains(&v) {
        return Err(format!("key 'mtu' = {v}: must be {MIN_MTU}..={MAX_MTU}"));
    }
    Ok(v as u16)
}

fn iface(name: &str, taken: &Taken) -> Result<String, String> {
    if !pmd::nic::valid_ifname(name) {
        return Err(format!(
            "key 'iface' = {name:?}: not an interface name (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    if taken.ifaces.contains(name) {
        return Err(format!(
            "key 'iface' = {name:?}: interface used by two ports"
        ));
    }
    Ok(name.to_string())
}
