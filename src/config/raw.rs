//! The configuration as serde reads it, before the checks that span keys.
//!
//! A `[[port]]` is one serde type, [`RawPort`]: the keys every port has, and the
//! driver's own keys as an enum internally tagged by `driver`, each variant with
//! `deny_unknown_fields` and typed keywords. The file, `vswitch ctl add-port` and a
//! reload all go through it (see [`super::de`]), so a key means the same everywhere.

use pmd::nic::af_xdp::{XdpMode, ZeroCopy};
use pmd::vhost::Mode;
use serde::{de, Deserialize};
use std::fmt;
use std::path::PathBuf;

use super::VlanMode;

/// The drivers, as `driver` names them (the variants of [`RawDriver`]).
pub(crate) const DRIVERS: &[&str] = &["vhost-user", "af-xdp", "af-packet", "tap", "vxlan"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub switch: RawSwitch,
    #[serde(default)]
    pub mempool: RawMempool,
    #[serde(default)]
    pub fdb: RawFdb,
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Each table goes through [`RawPort`] on its own, so that its errors can name
    /// the port, the key and the value.
    #[serde(default)]
    pub port: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSwitch {
    pub pmd_cores: Vec<i64>,
    pub control_socket: Option<PathBuf>,
    pub tx_stall_ms: Option<u64>,
    pub pmd_sleep_max_us: Option<i64>,
    pub pmd_auto_lb: Option<bool>,
    pub pmd_auto_lb_interval_secs: Option<i64>,
    pub pmd_auto_lb_load_threshold: Option<i64>,
    pub socket_group: Option<GroupSpec>,
    pub socket_mode: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMempool {
    pub mbufs: Option<i64>,
    pub large_mbufs: Option<i64>,
    pub hugepages: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFdb {
    pub capacity: Option<i64>,
    pub aging_secs: Option<i64>,
    pub max_per_port: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<String>,
    pub latency_histograms: Option<bool>,
}

/// One `[[port]]` table. Integers are read as `i64` and their ranges checked by
/// hand, so that the error can say the range.
#[derive(Debug, Deserialize)]
pub(crate) struct RawPort {
    pub name: String,
    pub queues: Option<i64>,
    pub vlan_mode: Option<VlanMode>,
    pub tag: Option<i64>,
    pub trunks: Option<Vec<i64>>,
    // `flatten` and `deny_unknown_fields` do not mix, so unknown keys are refused
    // by each driver's variant, which sees every key but the ones above.
    #[serde(flatten)]
    pub driver: RawDriver,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "driver")]
pub(crate) enum RawDriver {
    #[serde(rename = "vhost-user")]
    VhostUser(RawVhostUser),
    #[serde(rename = "af-xdp")]
    AfXdp(RawAfXdp),
    #[serde(rename = "af-packet")]
    AfPacket(RawAfPacket),
    #[serde(rename = "tap")]
    Tap(RawTap),
    #[serde(rename = "vxlan")]
    Vxlan(RawVxlan),
}

impl RawDriver {
    /// The name `driver` gave.
    pub fn name(&self) -> &'static str {
        match self {
            RawDriver::VhostUser(_) => DRIVERS[0],
            RawDriver::AfXdp(_) => DRIVERS[1],
            RawDriver::AfPacket(_) => DRIVERS[2],
            RawDriver::Tap(_) => DRIVERS[3],
            RawDriver::Vxlan(_) => DRIVERS[4],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVhostUser {
    pub path: PathBuf,
    pub mode: Option<ModeKey>,
    pub max_guest_memory_gib: Option<i64>,
    pub socket_group: Option<GroupSpec>,
    pub socket_mode: Option<i64>,
    pub mtu: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAfXdp {
    pub iface: String,
    pub xdp_mode: Option<XdpModeKey>,
    pub zero_copy: Option<ZeroCopyKey>,
    pub tunnel_ip: Option<String>,
    pub tunnel_gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAfPacket {
    pub iface: String,
    pub tunnel_ip: Option<String>,
    pub tunnel_gateway: Option<String>,
}

/// A VXLAN tunnel port (see `switch::tunnel`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVxlan {
    /// The af-xdp or af-packet port with `tunnel_ip` that carries the tunnel.
    pub underlay: String,
    pub vni: i64,
    pub dst_port: Option<i64>,
    pub remotes: Option<Vec<String>>,
    pub learn_remotes: Option<bool>,
    pub evpn_vxlan: Option<String>,
    pub evpn_port: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTap {
    /// Default: the port's name.
    pub iface: Option<String>,
    pub mtu: Option<i64>,
}

/// `mode`: who listens on a vhost-user socket.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ModeKey {
    Server,
    Client,
}

impl From<ModeKey> for Mode {
    fn from(k: ModeKey) -> Mode {
        match k {
            ModeKey::Server => Mode::Server,
            ModeKey::Client => Mode::Client,
        }
    }
}

/// `xdp_mode`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum XdpModeKey {
    Auto,
    Native,
    Generic,
}

impl From<XdpModeKey> for XdpMode {
    fn from(k: XdpModeKey) -> XdpMode {
        match k {
            XdpModeKey::Auto => XdpMode::Auto,
            XdpModeKey::Native => XdpMode::Native,
            XdpModeKey::Generic => XdpMode::Generic,
        }
    }
}

/// `zero_copy`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ZeroCopyKey {
    Auto,
    On,
    Off,
}

impl From<ZeroCopyKey> for ZeroCopy {
    fn from(k: ZeroCopyKey) -> ZeroCopy {
        match k {
            ZeroCopyKey::Auto => ZeroCopy::Auto,
            ZeroCopyKey::On => ZeroCopy::On,
            ZeroCopyKey::Off => ZeroCopy::Off,
        }
    }
}

/// `socket_group`: a group's name or a numeric gid, resolved by
/// [`super::sockets::resolve_group`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GroupSpec {
    Name(String),
    Gid(i64),
}

impl fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupSpec::Name(n) => write!(f, "{n:?}"),
            GroupSpec::Gid(g) => write!(f, "{g}"),
        }
    }
}

impl<'de> Deserialize<'de> for GroupSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<GroupSpec, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = GroupSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group name or a numeric gid")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GroupSpec, E> {
                Ok(GroupSpec::Name(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GroupSpec, E> {
                Ok(GroupSpec::Gid(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<GroupSpec, E> {
                Ok(GroupSpec::Gid(i64::try_from(n).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}
