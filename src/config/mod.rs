//! The TOML configuration: parsing, defaults and validation.
//!
//! Every error names where the configuration came from (the file, or `add-port`),
//! the key and the offending value, and makes `vswitch run`/`check` exit with code 2.
//!
//! A `[[port]]` is read by one serde type, internally tagged by `driver` with typed
//! keys per driver (`raw.rs`), then checked by hand only where keys or ports meet
//! (`port.rs`). The file, `vswitch ctl add-port` ([`Config::port_from_args`]) and a
//! reload ([`Config::load`] again, then a comparison with the running [`Config`])
//! share both steps, so a key means the same and fails with the same words in each.

mod args;
mod de;
mod error;
mod port;
mod raw;
mod sockets;
#[cfg(test)]
mod tests;
mod tunnel;
mod vlan;

pub use error::{ConfigError, Origin};
pub use pmd::sockperm::SocketPerms;
pub use sockets::DEFAULT_SOCKET_MODE;

use pmd::hugepage::HugepagePolicy;
use pmd::nic::af_xdp::{XdpMode, ZeroCopy};
use pmd::vhost::Mode;
use raw::{RawConfig, RawFdb, RawMempool, RawMetrics, RawSwitch};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub file: PathBuf,
    pub pmd_cores: Vec<usize>,
    pub control_socket: PathBuf,
    /// `[switch] socket_group` and `socket_mode`: for the control socket, and the
    /// default of server-mode vhost-user sockets.
    pub socket_perms: SocketPerms,
    pub tx_stall_ms: u64,
    /// `[switch] pmd_sleep_max_us`: longest wait of an idle PMD thread (0: busy-poll).
    pub pmd_sleep_max_us: u64,
    /// `[switch] pmd_auto_lb`: re-place rx queues by load on its own; `None` when off.
    pub pmd_auto_lb: Option<AutoLb>,
    pub mbufs: u32,
    /// `[mempool] large_mbufs`: buffers of 64 KiB for frames longer than an mbuf.
    pub large_mbufs: u32,
    pub hugepages: HugepagePolicy,
    pub fdb_capacity: usize,
    pub aging_secs: u32,
    pub max_per_port: usize,
    /// `[metrics] listen`: where the Prometheus endpoint listens; `None` when off
    /// (`listen = ""`).
    pub metrics_listen: Option<SocketAddr>,
    /// `[metrics] latency_histograms`: whether PMD threads record latency.
    pub latency_histograms: bool,
    pub ports: Vec<PortConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub name: String,
    pub queues: usize,
    pub vlan: VlanConfig,
    pub kind: PortKind,
}

/// What a port is, with the settings of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortKind {
    VhostUser {
        path: PathBuf,
        mode: Mode,
        /// Most guest memory the frontend may have the switch map, in bytes.
        max_memory: u64,
        /// Server mode: the socket's group and mode (the port's `socket_group` and
        /// `socket_mode`, else the switch's). Client mode: unused, the default.
        socket_perms: SocketPerms,
        mtu: u16,
    },
    AfXdp {
        iface: String,
        xdp_mode: XdpMode,
        zero_copy: ZeroCopy,
        /// `tunnel_ip`: the port is an underlay, a tunnel endpoint with this address.
        tunnel: Option<TunnelIp>,
    },
    AfPacket {
        iface: String,
        tunnel: Option<TunnelIp>,
    },
    Tap {
        iface: String,
        /// Set on the device when the switch creates it.
        mtu: u16,
    },
    /// A VXLAN tunnel port on the underlay port `underlay`.
    Vxlan {
        underlay: String,
        vni: u32,
        dst_port: u16,
        /// The flood list (head-end replication).
        remotes: Vec<Ipv4Addr>,
        learn_remotes: bool,
        /// Driven by FRR's BGP EVPN through these shadow devices.
        evpn: Option<EvpnShadow>,
    },
}

/// A tunnel port's EVPN shadow: the kernel vxlan device FRR programs
/// (`evpn_vxlan`) and the shadow bridge's port where the switch writes its MACs
/// (`evpn_port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvpnShadow {
    pub vxlan: String,
    pub port: String,
}

impl PortKind {
    /// A NIC port's tunnel endpoint, if it is an underlay.
    pub fn tunnel_ip(&self) -> Option<&TunnelIp> {
        match self {
            PortKind::AfXdp { tunnel, .. } | PortKind::AfPacket { tunnel, .. } => tunnel.as_ref(),
            _ => None,
        }
    }
}

/// An underlay's tunnel endpoint: `tunnel_ip = "A.B.C.D/LEN"` and `tunnel_gateway`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelIp {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl TunnelIp {
    /// Whether `a` is in the endpoint's prefix (on-link).
    pub fn on_link(&self, a: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        u32::from(a) & mask == u32::from(self.ip) & mask
    }
}

/// A port's VLANs (`vlan_mode`, `tag`, `trunks`), as Open vSwitch defines them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VlanConfig {
    pub mode: VlanMode,
    /// The access or native VLAN, 1..=4094; 0 for a trunk port.
    pub tag: u16,
    /// VLANs carried (sorted, no repeats; for the native modes the native VLAN is
    /// included when the list is not empty); empty: all of them.
    pub trunks: Vec<u16>,
}

/// `vlan_mode`: the switch's own type, read straight from the file.
pub use switch::vlan::VlanMode;

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vswitch/vswitch.ctl";
/// Where the Prometheus endpoint listens unless `[metrics] listen` says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";
/// Guest memory a vhost-user port maps at most, unless configured (1 TiB).
pub const DEFAULT_MAX_GUEST_MEMORY_GIB: i64 = 1024;
/// The largest `max_guest_memory_gib` accepted (64 TiB: half the address space).
pub const MAX_GUEST_MEMORY_GIB: i64 = 64 * 1024;
/// `[mempool] large_mbufs` unless configured: 512 buffers of 68 KiB (34 MiB, as the
/// default small pool).
pub const DEFAULT_LARGE_MBUFS: i64 = 512;
/// Most ports a switch holds (its port numbers).
pub const MAX_PORTS: usize = switch::plan::MAX_PORTS;

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigError::new(&Origin::File(file.into()), format!("cannot read: {e}"))
        })?;
        Config::parse(file, &text)
    }

    /// Parses `text`, read from `file`: each section, then each port against the
    /// switch and the ports before it.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let origin = Origin::File(file.into());
        let err = |msg: String| ConfigError::new(&origin, msg);
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let sw = switch_section(raw.switch).map_err(err)?;
        let (mbufs, large_mbufs, hugepages) = mempool_section(raw.mempool).map_err(err)?;
        let (fdb_capacity, aging_secs, max_per_port) = fdb_section(raw.fdb).map_err(err)?;
        let latency_histograms = raw.metrics.latency_histograms.unwrap_or(true);
        let metrics_listen = metrics_section(raw.metrics).map_err(err)?;
        let mut cfg = Config {
            file: file.into(),
            pmd_cores: sw.pmd_cores,
            control_socket: sw.control_socket,
            socket_perms: sw.socket_perms,
            tx_stall_ms: sw.tx_stall_ms,
            pmd_sleep_max_us: sw.pmd_sleep_max_us,
            pmd_auto_lb: sw.pmd_auto_lb,
            mbufs,
            large_mbufs,
            hugepages,
            fdb_capacity,
            aging_secs,
            max_per_port,
            metrics_listen,
            latency_histograms,
            ports: Vec::new(),
        };
        cfg.ports = cfg.file_ports(&raw.port).map_err(err)?;
        Ok(cfg)
    }

    /// The `[[port]]` tables, each checked against the ones before it.
    fn file_ports(&self, tables: &[toml::Table]) -> Result<Vec<PortConfig>, String> {
        if tables.is_empty() {
            return Err("no [[port]] tables: a switch needs ports".into());
        }
        if tables.len() > MAX_PORTS {
            return Err(format!(
                "{} [[port]] tables: at most {MAX_PORTS}",
                tables.len()
            ));
        }
        let mut taken = port::Taken::default();
        let mut ports = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let at = match t.get("name").and_then(toml::Value::as_str) {
                Some(name) => format!("[[port]] #{} ({name:?})", i + 1),
                None => format!("[[port]] #{}", i + 1),
            };
            let p = port::port(t, self, &taken).map_err(|m| format!("{at}: {m}"))?;
            taken.add(&p);
            ports.push(p);
        }
        Ok(ports)
    }

    /// The port that `vswitch ctl add-port NAME key=value...` describes, checked as
    /// a `[[port]]` table of this configuration would be, against its ports (name,
    /// socket path, interface) and its control socket. Each value is read as TOML
    /// when it is a TOML value (`queues=2`, `trunks=[10,20]`, `socket_mode=0o660`),
    /// else as a string (`mode=client`, `path=/tmp/x.sock`).
    pub fn port_from_args(&self, name: &str, args: &[&str]) -> Result<PortConfig, ConfigError> {
        let origin = Origin::AddPort { name: name.into() };
        let err = |msg: String| ConfigError::new(&origin, msg);
        if self.ports.len() >= MAX_PORTS {
            return Err(err(format!(
                "the switch has {MAX_PORTS} ports, the most it takes"
            )));
        }
        let table = args::table(name, args).map_err(err)?;
        port::port(&table, self, &port::Taken::of(&self.ports)).map_err(err)
    }

    /// This configuration with `p` added, or in place of the port of the same name.
    pub fn with_port(&self, p: PortConfig) -> Config {
        let mut c = self.clone();
        match c.ports.iter_mut().find(|q| q.name == p.name) {
            Some(q) => *q = p,
            None => c.ports.push(p),
        }
        c
    }

    /// This configuration without the port `name`; `None` if it has no such port.
    pub fn without_port(&self, name: &str) -> Option<Config> {
        let i = self.ports.iter().position(|p| p.name == name)?;
        let mut c = self.clone();
        c.ports.remove(i);
        Some(c)
    }

    /// The port `name`.
    pub fn port(&self, name: &str) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.name == name)
    }
}

/// `[switch]`, checked.
struct SwitchSection {
    pmd_cores: Vec<usize>,
    control_socket: PathBuf,
    socket_perms: SocketPerms,
    tx_stall_ms: u64,
    pmd_sleep_max_us: u64,
    pmd_auto_lb: Option<AutoLb>,
}

/// Automatic re-placement of rx queues (OVS's `pmd-auto-lb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoLb {
    /// `pmd_auto_lb_interval_secs`: how often it is considered (default 60).
    pub interval_secs: u64,
    /// `pmd_auto_lb_load_threshold`: only when the busiest PMD thread spends at least
    /// this percentage of its cycles on its queues (default 95, as OVS).
    pub load_threshold: u8,
}

fn switch_section(raw: RawSwitch) -> Result<SwitchSection, String> {
    let pmd_cores = pmd_cores(&raw.pmd_cores)?;
    // The control socket's directory need not exist: the service creates it.
    let control_socket = raw
        .control_socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    let base = SocketPerms {
        gid: None,
        mode: DEFAULT_SOCKET_MODE,
    };
    let socket_perms = sockets::perms("switch.", raw.socket_group.as_ref(), raw.socket_mode, base)?;
    let tx_stall_ms = raw.tx_stall_ms.unwrap_or(100);
    if tx_stall_ms == 0 || tx_stall_ms > 10_000 {
        return Err(format!(
            "key 'switch.tx_stall_ms' = {tx_stall_ms}: must be 1..=10000"
        ));
    }
    let sleep = raw.pmd_sleep_max_us.unwrap_or(0);
    let most = switch::sleep::MAX_SLEEP_US;
    if !(0..=most as i64).contains(&sleep) {
        return Err(format!(
            "key 'switch.pmd_sleep_max_us' = {sleep}: must be 0..={most} (microseconds; 0: PMD threads busy-poll)"
        ));
    }
    let interval = raw.pmd_auto_lb_interval_secs.unwrap_or(60);
    if !(1..=86_400).contains(&interval) {
        return Err(format!(
            "key 'switch.pmd_auto_lb_interval_secs' = {interval}: must be 1..=86400"
        ));
    }
    let threshold = raw.pmd_auto_lb_load_threshold.unwrap_or(95);
    if !(0..=100).contains(&threshold) {
        return Err(format!(
            "key 'switch.pmd_auto_lb_load_threshold' = {threshold}: must be 0..=100 (percent)"
        ));
    }
    let pmd_auto_lb = raw.pmd_auto_lb.unwrap_or(false).then_some(AutoLb {
        interval_secs: interval as u64,
        load_threshold: threshold as u8,
    });
    Ok(SwitchSection {
        pmd_cores,
        control_socket,
        socket_perms,
        tx_stall_ms,
        pmd_sleep_max_us: sleep as u64,
        pmd_auto_lb,
    })
}

fn pmd_cores(cores: &[i64]) -> Result<Vec<usize>, String> {
    let ncpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cores.is_empty() {
        return Err("key 'switch.pmd_cores' = []: at least one PMD core is needed".into());
    }
    let mut out = Vec::new();
    for &c in cores {
        if c < 0 || c as usize >= ncpus {
            return Err(format!(
                "key 'switch.pmd_cores' has core {c}: this machine has cores 0..={}",
                ncpus - 1
            ));
        }
        if out.contains(&(c as usize)) {
            return Err(format!("key 'switch.pmd_cores' lists core {c} twice"));
        }
        out.push(c as usize);
    }
    Ok(out)
}

fn mempool_section(raw: RawMempool) -> Result<(u32, u32, HugepagePolicy), String> {
    let mbufs = raw.mbufs.unwrap_or(16384);
    if !(1024..=4_194_304).contains(&mbufs) {
        return Err(format!(
            "key 'mempool.mbufs' = {mbufs}: must be 1024..=4194304"
        ));
    }
    // Always some: the features a vhost-user port offers may not depend on them.
    let large = raw.large_mbufs.unwrap_or(DEFAULT_LARGE_MBUFS);
    if !(256..=65_536).contains(&large) {
        return Err(format!(
            "key 'mempool.large_mbufs' = {large}: must be 256..=65536"
        ));
    }
    let hugepages = match raw.hugepages.as_deref().unwrap_or("auto") {
        "auto" => HugepagePolicy::Auto,
        "required" => HugepagePolicy::Required,
        "off" => HugepagePolicy::Off,
        other => {
            return Err(format!(
                "key 'mempool.hugepages' = {other:?}: must be \"auto\", \"required\" or \"off\""
            ))
        }
    };
    Ok((mbufs as u32, large as u32, hugepages))
}

/// `[fdb]`: (capacity, aging_secs, max_per_port).
fn fdb_section(raw: RawFdb) -> Result<(usize, u32, usize), String> {
    let capacity = raw.capacity.unwrap_or(8192);
    if !(16..=16_777_216).contains(&capacity) {
        return Err(format!(
            "key 'fdb.capacity' = {capacity}: must be 16..=16777216"
        ));
    }
    let aging_secs = raw.aging_secs.unwrap_or(300);
    if !(1..=86_400).contains(&aging_secs) {
        return Err(format!(
            "key 'fdb.aging_secs' = {aging_secs}: must be 1..=86400"
        ));
    }
    let max_per_port = raw.max_per_port.unwrap_or(0);
    if max_per_port < 0 || max_per_port > capacity {
        return Err(format!(
            "key 'fdb.max_per_port' = {max_per_port}: must be 0 (capacity / ports) up to fdb.capacity"
        ));
    }
    Ok((capacity as usize, aging_secs as u32, max_per_port as usize))
}

/// `[metrics]`: the endpoint's address, or `None` for `listen = ""` (off). An IP
/// address and a port, not a host name: it is bound as written.
fn metrics_section(raw: RawMetrics) -> Result<Option<SocketAddr>, String> {
    let listen = raw
        .listen
        .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
    if listen.is_empty() {
        return Ok(None);
    }
    listen.parse().map(Some).map_err(|_| {
        format!(
            "key 'metrics.listen' = {listen:?}: must be an IP address and port such as \"{DEFAULT_METRICS_LISTEN}\" or \"[::1]:9477\", or \"\" for no metrics endpoint"
        )
    })
}
