//! The TOML configuration: parsing, defaults and validation.
//!
//! Every error names the file, the key and the offending value, and makes
//! `vswitch run`/`check` exit with code 2.

use pmd::hugepage::HugepagePolicy;
use pmd::nic::af_xdp::{XdpMode, ZeroCopy};
use pmd::vhost::Mode;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.msg)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    switch: RawSwitch,
    #[serde(default)]
    mempool: RawMempool,
    #[serde(default)]
    fdb: RawFdb,
    #[serde(default)]
    port: Vec<RawPort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    pmd_cores: Vec<i64>,
    control_socket: Option<PathBuf>,
    tx_stall_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMempool {
    mbufs: Option<i64>,
    hugepages: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFdb {
    capacity: Option<i64>,
    aging_secs: Option<i64>,
    max_per_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: String,
    driver: String,
    path: Option<PathBuf>,
    mode: Option<String>,
    queues: Option<i64>,
    iface: Option<String>,
    xdp_mode: Option<String>,
    zero_copy: Option<String>,
    max_guest_memory_gib: Option<i64>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub pmd_cores: Vec<usize>,
    pub control_socket: PathBuf,
    pub tx_stall_ms: u64,
    pub mbufs: u32,
    pub hugepages: HugepagePolicy,
    pub fdb_capacity: usize,
    pub aging_secs: u32,
    pub max_per_port: usize,
    pub ports: Vec<PortConfig>,
}

#[derive(Clone, Debug)]
pub struct PortConfig {
    pub name: String,
    pub queues: usize,
    pub kind: PortKind,
}

/// What a port is, with the settings of its driver.
#[derive(Clone, Debug)]
pub enum PortKind {
    VhostUser {
        path: PathBuf,
        mode: Mode,
        /// Most guest memory the frontend may have the switch map, in bytes.
        max_memory: u64,
    },
    AfXdp {
        iface: String,
        xdp_mode: XdpMode,
        zero_copy: ZeroCopy,
    },
    AfPacket {
        iface: String,
    },
    Tap {
        iface: String,
    },
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vswitch/vswitch.ctl";
/// Guest memory a vhost-user port maps at most, unless configured (1 TiB).
pub const DEFAULT_MAX_GUEST_MEMORY_GIB: i64 = 1024;
/// The largest `max_guest_memory_gib` accepted (64 TiB: half the address space).
pub const MAX_GUEST_MEMORY_GIB: i64 = 64 * 1024;

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let err = |msg: String| ConfigError {
            file: file.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
        Config::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |msg: String| ConfigError {
            file: file.to_path_buf(),
            msg,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;

        let ncpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if raw.switch.pmd_cores.is_empty() {
            return Err(err(
                "key 'switch.pmd_cores' = []: at least one PMD core is needed".into(),
            ));
        }
        let mut pmd_cores = Vec::new();
        for &c in &raw.switch.pmd_cores {
            if c < 0 || c as usize >= ncpus {
                return Err(err(format!(
                    "key 'switch.pmd_cores' has core {c}: this machine has cores 0..={}",
                    ncpus - 1
                )));
            }
            if pmd_cores.contains(&(c as usize)) {
                return Err(err(format!("key 'switch.pmd_cores' lists core {c} twice")));
            }
            pmd_cores.push(c as usize);
        }
        let control_socket = raw
            .switch
            .control_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
        check_dir(&control_socket).map_err(|m| {
            err(format!(
                "key 'switch.control_socket' = {:?}: {m}",
                control_socket
            ))
        })?;
        let tx_stall_ms = raw.switch.tx_stall_ms.unwrap_or(100);
        if tx_stall_ms == 0 || tx_stall_ms > 10_000 {
            return Err(err(format!(
                "key 'switch.tx_stall_ms' = {tx_stall_ms}: must be 1..=10000"
            )));
        }

        let mbufs = raw.mempool.mbufs.unwrap_or(16384);
        if !(1024..=4_194_304).contains(&mbufs) {
            return Err(err(format!(
                "key 'mempool.mbufs' = {mbufs}: must be 1024..=4194304"
            )));
        }
        let hugepages = match raw.mempool.hugepages.as_deref().unwrap_or("auto") {
            "auto" => HugepagePolicy::Auto,
            "required" => HugepagePolicy::Required,
            "off" => HugepagePolicy::Off,
            other => {
                return Err(err(format!(
                    "key 'mempool.hugepages' = {other:?}: must be \"auto\", \"required\" or \"off\""
                )))
            }
        };

        let fdb_capacity = raw.fdb.capacity.unwrap_or(8192);
        if !(16..=16_777_216).contains(&fdb_capacity) {
            return Err(err(format!(
                "key 'fdb.capacity' = {fdb_capacity}: must be 16..=16777216"
            )));
        }
        let aging_secs = raw.fdb.aging_secs.unwrap_or(300);
        if !(1..=86_400).contains(&aging_secs) {
            return Err(err(format!(
                "key 'fdb.aging_secs' = {aging_secs}: must be 1..=86400"
            )));
        }
        let max_per_port = raw.fdb.max_per_port.unwrap_or(0);
        if max_per_port < 0 || max_per_port > fdb_capacity {
            return Err(err(format!(
                "key 'fdb.max_per_port' = {max_per_port}: must be 0 (capacity / ports) up to fdb.capacity"
            )));
        }

        if raw.port.is_empty() {
            return Err(err("no [[port]] tables: a switch needs ports".into()));
        }
        if raw.port.len() > 1024 {
            return Err(err(format!(
                "{} [[port]] tables: at most 1024",
                raw.port.len()
            )));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        let mut ifaces = HashSet::new();
        let mut ports = Vec::new();
        for (i, p) in raw.port.iter().enumerate() {
            let at = format!("[[port]] #{} ({:?})", i + 1, p.name);
            if p.name.is_empty()
                || p.name.len() > 32
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err(format!(
                    "{at}: key 'name' = {:?}: 1-32 characters of a-z, 0-9, '-', '_'",
                    p.name
                )));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(format!(
                    "{at}: key 'name' = {:?}: duplicate port name",
                    p.name
                )));
            }
            let queues = p.queues.unwrap_or(1);
            if !(1..=16).contains(&queues) {
                return Err(err(format!(
                    "{at}: key 'queues' = {queues}: must be 1..=16"
                )));
            }
            // Keys that belong to other drivers are an error, not silently ignored.
            let only = |key: &str, set: bool, drivers: &str| {
                if set {
                    Err(err(format!(
                        "{at}: key '{key}' does not apply to driver {:?} (only to {drivers})",
                        p.driver
                    )))
                } else {
                    Ok(())
                }
            };
            let mut iface = |default: Option<&str>| -> Result<String, ConfigError> {
                let name = match (p.iface.as_deref(), default) {
                    (Some(n), _) => n,
                    (None, Some(d)) => d,
                    (None, None) => {
                        return Err(err(format!(
                            "{at}: key 'iface' is missing: driver {:?} needs the interface's name",
                            p.driver
                        )))
                    }
                };
                if !pmd::nic::valid_ifname(name) {
                    return Err(err(format!(
                        "{at}: key 'iface' = {name:?}: not an interface name (1-15 characters, no '/', ':' or spaces)"
                    )));
                }
                if !ifaces.insert(name.to_string()) {
                    return Err(err(format!(
                        "{at}: key 'iface' = {name:?}: interface used by two ports"
                    )));
                }
                Ok(name.to_string())
            };
            let kind = match p.driver.as_str() {
                "vhost-user" => {
                    only("iface", p.iface.is_some(), "af-xdp, af-packet, tap")?;
                    only("xdp_mode", p.xdp_mode.is_some(), "af-xdp")?;
                    only("zero_copy", p.zero_copy.is_some(), "af-xdp")?;
                    let Some(path) = p.path.clone() else {
                        return Err(err(format!(
                            "{at}: key 'path' is missing: driver \"vhost-user\" needs the socket's path"
                        )));
                    };
                    let mode = match p.mode.as_deref().unwrap_or("server") {
                        "server" => Mode::Server,
                        "client" => Mode::Client,
                        other => {
                            return Err(err(format!(
                                "{at}: key 'mode' = {other:?}: must be \"server\" or \"client\""
                            )))
                        }
                    };
                    if !path.is_absolute() {
                        return Err(err(format!(
                            "{at}: key 'path' = {path:?}: must be an absolute path"
                        )));
                    }
                    if !paths.insert(path.clone()) || path == control_socket {
                        return Err(err(format!(
                            "{at}: key 'path' = {path:?}: socket path used twice"
                        )));
                    }
                    check_dir(&path)
                        .map_err(|m| err(format!("{at}: key 'path' = {path:?}: {m}")))?;
                    let gib = p.max_guest_memory_gib.unwrap_or(DEFAULT_MAX_GUEST_MEMORY_GIB);
                    if !(1..=MAX_GUEST_MEMORY_GIB).contains(&gib) {
                        return Err(err(format!(
                            "{at}: key 'max_guest_memory_gib' = {gib}: must be 1..={MAX_GUEST_MEMORY_GIB}"
                        )));
                    }
                    PortKind::VhostUser {
                        path,
                        mode,
                        max_memory: (gib as u64) << 30,
                    }
                }
                "af-xdp" => {
                    only("path", p.path.is_some(), "vhost-user")?;
                    only("max_guest_memory_gib", p.max_guest_memory_gib.is_some(), "vhost-user")?;
                    only("mode", p.mode.is_some(), "vhost-user")?;
                    let xdp_mode = match p.xdp_mode.as_deref().unwrap_or("auto") {
                        "auto" => XdpMode::Auto,
                        "native" => XdpMode::Native,
                        "generic" => XdpMode::Generic,
                        other => {
                            return Err(err(format!(
                                "{at}: key 'xdp_mode' = {other:?}: must be \"auto\", \"native\" or \"generic\""
                            )))
                        }
                    };
                    let zero_copy = match p.zero_copy.as_deref().unwrap_or("auto") {
                        "auto" => ZeroCopy::Auto,
                        "on" => ZeroCopy::On,
                        "off" => ZeroCopy::Off,
                        other => {
                            return Err(err(format!(
                                "{at}: key 'zero_copy' = {other:?}: must be \"auto\", \"on\" or \"off\""
                            )))
                        }
                    };
                    PortKind::AfXdp {
                        iface: iface(None)?,
                        xdp_mode,
                        zero_copy,
                    }
                }
                "af-packet" | "tap" => {
                    only("path", p.path.is_some(), "vhost-user")?;
                    only("max_guest_memory_gib", p.max_guest_memory_gib.is_some(), "vhost-user")?;
                    only("mode", p.mode.is_some(), "vhost-user")?;
                    only("xdp_mode", p.xdp_mode.is_some(), "af-xdp")?;
                    only("zero_copy", p.zero_copy.is_some(), "af-xdp")?;
                    if queues != 1 {
                        return Err(err(format!(
                            "{at}: key 'queues' = {queues}: driver {:?} has one queue",
                            p.driver
                        )));
                    }
                    if p.driver == "tap" {
                        PortKind::Tap {
                            iface: iface(Some(&p.name))?,
                        }
                    } else {
                        PortKind::AfPacket { iface: iface(None)? }
                    }
                }
                other => {
                    return Err(err(format!(
                        "{at}: key 'driver' = {other:?}: supported drivers: \"vhost-user\", \"af-xdp\", \"af-packet\", \"tap\""
                    )))
                }
            };
            ports.push(PortConfig {
                name: p.name.clone(),
                queues: queues as usize,
                kind,
            });
        }
        Ok(Config {
            file: file.to_path_buf(),
            pmd_cores,
            control_socket,
            tx_stall_ms,
            mbufs: mbufs as u32,
            hugepages,
            fdb_capacity: fdb_capacity as usize,
            aging_secs: aging_secs as u32,
            max_per_port: max_per_port as usize,
            ports,
        })
    }
}

fn check_dir(sock: &Path) -> Result<(), String> {
    let dir = sock
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    Ok(())
}
