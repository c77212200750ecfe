//! The ports of a running service and changes to them at run time: `ctl add-port`,
//! `ctl del-port` and `ctl reload` (also SIGHUP), turned into opens, closes and the
//! switch's `add_ports`/`remove_ports`.
//!
//! The file is the source of truth: `reload` makes the running ports match the file
//! (new ports opened, removed ports closed, changed ports closed and opened again,
//! unchanged ports untouched). `add-port` and `del-port` change the running switch
//! only, not the file, for orchestrators (libvirt hooks, nova, a CNI plugin) that
//! keep their own record; a later `reload` undoes them unless the file says the same.
//! A refused change changes nothing.

use pmd::nic::af_packet::{AfPacketPort, PacketConfig};
use pmd::nic::af_xdp::{AfXdpPort, XdpConfig};
use pmd::nic::tap::{TapConfig, TapPort};
use pmd::rcu::Rcu;
use pmd::vhost::{VhostConfig, VhostUserPort};
use pmd::{Mempool, Port};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use switch::tunnel::underlay::{Endpoint, UnderlayPort};
use switch::tunnel::{TunnelConfig, VxlanPort};
use switch::vlan::PortVlan;
use switch::{FdbSource, Switch, SwitchError};
use vswitch::config::{Config, ConfigError, EvpnShadow, PortConfig, PortKind, VlanMode};

/// Why a change was refused (nothing changed) or failed.
#[derive(Debug)]
pub enum ChangeError {
    Config(ConfigError),
    /// A key outside `[[port]]` differs from the running switch's.
    NeedsRestart {
        key: &'static str,
    },
    NoSuchPort(String),
    /// An underlay port cannot leave while tunnel ports use it.
    InUse {
        port: String,
        by: Vec<String>,
    },
    /// A port could not be opened.
    Open {
        port: String,
        msg: String,
    },
    Switch(SwitchError),
    /// A reload failed part way; the ports it had closed were opened again, but for
    /// those in `lost` (name, why): they stay closed until a reload or `add-port`.
    RolledBack {
        cause: Box<ChangeError>,
        lost: Vec<(String, String)>,
    },
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Config(e) => write!(f, "{e}"),
            ChangeError::NeedsRestart { key } => write!(
                f,
                "key '{key}' differs from the running switch's: it takes effect only on restart"
            ),
            ChangeError::NoSuchPort(n) => write!(f, "no port named {n:?}"),
            ChangeError::InUse { port, by } => write!(
                f,
                "port {port:?} is the underlay of tunnel port(s) {by:?}: remove them first"
            ),
            ChangeError::Open { port, msg } => write!(f, "port {port:?}: {msg}"),
            ChangeError::Switch(e) => write!(f, "{e}"),
            ChangeError::RolledBack { cause, lost } => {
                write!(f, "{cause}; nothing changed")?;
                for (name, why) in lost {
                    write!(
                        f,
                        "; but port {name:?} could not be opened again ({why}): it stays closed until a reload or add-port"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl From<SwitchError> for ChangeError {
    fn from(e: SwitchError) -> ChangeError {
        ChangeError::Switch(e)
    }
}

impl From<ConfigError> for ChangeError {
    fn from(e: ConfigError) -> ChangeError {
        ChangeError::Config(e)
    }
}

/// An open port: what the switch forwards through, and the vhost-user side again
/// (it is shut down before the PMD threads stop, see `service::run`), or the
/// underlay side (tunnel ports attach to it).
pub struct OpenPort {
    pub cfg: PortConfig,
    pub port: Arc<dyn Port>,
    vhost: Option<Arc<VhostUserPort>>,
    underlay: Option<Arc<UnderlayPort>>,
    /// A tunnel port's EVPN follower, held for its `Drop` (which stops the thread
    /// when the port closes).
    #[allow(dead_code)]
    evpn: Option<crate::evpn::Follower>,
}

/// What opening a port needs beyond its configuration.
#[derive(Clone)]
pub struct Env {
    pub pool: Arc<Mempool>,
    pub rcu: Arc<Rcu>,
    /// The switch's table, read by EVPN followers.
    pub fdb: FdbSource,
}

impl OpenPort {
    /// Opens the port `p` describes; a tunnel port finds its underlay in `open`.
    pub fn open(p: &PortConfig, env: &Env, open: &[OpenPort]) -> Result<OpenPort, String> {
        let (pool, rcu) = (&env.pool, &env.rcu);
        let mut o = match &p.kind {
            PortKind::VhostUser { .. } => {
                let v = open_vhost(p, rcu)?;
                OpenPort {
                    cfg: p.clone(),
                    port: v.clone(),
                    vhost: Some(v),
                    underlay: None,
                    evpn: None,
                }
            }
            PortKind::Vxlan { evpn, .. } => {
                let v = open_vxlan(p, env, open)?;
                let evpn = match evpn {
                    Some(shadow) => Some(follow(p, shadow, &v, env)?),
                    None => None,
                };
                OpenPort {
                    cfg: p.clone(),
                    port: v,
                    vhost: None,
                    underlay: None,
                    evpn,
                }
            }
            _ => OpenPort {
                cfg: p.clone(),
                port: open_driver(p, pool)?,
                vhost: None,
                underlay: None,
                evpn: None,
            },
        };
        if let Some(t) = p.kind.tunnel_ip() {
            let iface = match &p.kind {
                PortKind::AfXdp { iface, .. } | PortKind::AfPacket { iface, .. } => iface,
                _ => unreachable!("only NIC ports have tunnel_ip"),
            };
            let ep = Endpoint {
                ip: t.ip,
                prefix: t.prefix,
                gateway: t.gateway,
                mac: pmd::nic::iface_mac(iface).map_err(|e| e.to_string())?,
            };
            let u = Arc::new(UnderlayPort::new(o.port.clone(), ep, pool.clone()));
            o.port = u.clone();
            o.underlay = Some(u);
        }
        tracing::info!(port = %p.name, kind = ?p.kind, queues = p.queues, "port open");
        Ok(o)
    }

    /// Takes a vhost-user port's rings down and ends its control thread (the guest
    /// sees the link drop); other ports need nothing before they are dropped.
    pub fn shut_down(&self) {
        if let Some(v) = &self.vhost {
            v.shutdown();
        }
    }
}

impl Drop for OpenPort {
    fn drop(&mut self) {
        self.shut_down();
        tracing::info!(port = %self.cfg.name, "port closed");
    }
}

fn open_vhost(p: &PortConfig, rcu: &Arc<Rcu>) -> Result<Arc<VhostUserPort>, String> {
    let PortKind::VhostUser {
        path,
        mode,
        max_memory,
        socket_perms,
        mtu,
    } = &p.kind
    else {
        unreachable!("a vhost-user port's config")
    };
    let vc = VhostConfig {
        name: p.name.clone(),
        path: path.clone(),
        mode: *mode,
        queues: p.queues,
        max_memory: *max_memory,
        socket_perms: *socket_perms,
        mtu: *mtu,
    };
    Ok(Arc::new(VhostUserPort::open(vc, rcu.clone())?))
}

/// Opens the driver of a port other than vhost-user (see `open_vhost`: the service
/// keeps a handle to those).
fn open_driver(p: &PortConfig, pool: &Arc<Mempool>) -> Result<Arc<dyn Port>, String> {
    Ok(match &p.kind {
        PortKind::VhostUser { .. } => unreachable!("opened by open_vhost"),
        PortKind::AfXdp {
            iface,
            xdp_mode,
            zero_copy,
            ..
        } => {
            let xc = XdpConfig {
                name: p.name.clone(),
                iface: iface.clone(),
                queues: p.queues,
                xdp_mode: *xdp_mode,
                zero_copy: *zero_copy,
            };
            Arc::new(AfXdpPort::open(xc, pool.clone()).map_err(|e| e.to_string())?)
        }
        PortKind::AfPacket { iface, .. } => {
            let pc = PacketConfig {
                name: p.name.clone(),
                iface: iface.clone(),
            };
            Arc::new(AfPacketPort::open(pc).map_err(|e| e.to_string())?)
        }
        PortKind::Tap { iface, mtu } => {
            let tc = TapConfig {
                name: p.name.clone(),
                iface: iface.clone(),
                mtu: *mtu,
            };
            Arc::new(TapPort::open(tc).map_err(|e| e.to_string())?)
        }
        PortKind::Vxlan { .. } => unreachable!("opened by open_vxlan"),
    })
}

/// Opens a tunnel port on its underlay, which `open` holds.
fn open_vxlan(p: &PortConfig, env: &Env, open: &[OpenPort]) -> Result<Arc<VxlanPort>, String> {
    let PortKind::Vxlan {
        underlay,
        vni,
        dst_port,
        remotes,
        learn_remotes,
        ..
    } = &p.kind
    else {
        unreachable!("a vxlan port's config")
    };
    let u = open
        .iter()
        .find(|o| &o.cfg.name == underlay)
        .and_then(|o| o.underlay.clone())
        .ok_or_else(|| format!("underlay port {underlay:?} is not open"))?;
    let tc = TunnelConfig {
        name: p.name.clone(),
        vni: *vni,
        dst_port: *dst_port,
        remotes: remotes.clone(),
        learn_remotes: *learn_remotes,
        aging_secs: switch::tunnel::DEFAULT_AGING_SECS,
    };
    let v =
        VxlanPort::open(&tc, u, env.pool.clone(), env.rcu.clone()).map_err(|e| e.to_string())?;
    Ok(Arc::new(v))
}

/// Starts following the EVPN shadow devices of tunnel port `v`.
fn follow(
    p: &PortConfig,
    shadow: &EvpnShadow,
    v: &Arc<VxlanPort>,
    env: &Env,
) -> Result<crate::evpn::Follower, String> {
    let cfg = crate::evpn::EvpnConfig {
        port: p.name.clone(),
        vxlan: shadow.vxlan.clone(),
        mac_port: shadow.port.clone(),
        vlan: match p.vlan.mode {
            VlanMode::Trunk => 0,
            _ => p.vlan.tag,
        },
    };
    crate::evpn::Follower::start(cfg, v.tunnel().clone(), env.fdb.clone())
        .map_err(|e| e.to_string())
}

/// What the switch needs of open ports: each port with its VLAN settings.
fn members(open: &[OpenPort]) -> Vec<(Arc<dyn Port>, PortVlan)> {
    open.iter()
        .map(|o| (o.port.clone(), port_vlan(&o.cfg)))
        .collect()
}

/// The switch's VLAN settings for a port.
fn port_vlan(p: &PortConfig) -> PortVlan {
    let v = &p.vlan;
    match v.mode {
        VlanMode::Trunk => PortVlan::trunk(&v.trunks),
        VlanMode::Access => PortVlan::access(v.tag),
        native => PortVlan::native(native, v.tag, &v.trunks),
    }
}

/// Opens every port of `cfg`, in order; on an error, closes what it opened and says
/// which port failed.
pub fn open_all(cfg: &Config, env: &Env) -> Result<Vec<OpenPort>, ChangeError> {
    open_each(&cfg.ports, env)
}

fn open_each(ports: &[PortConfig], env: &Env) -> Result<Vec<OpenPort>, ChangeError> {
    let mut open = Vec::new();
    for p in ports {
        match OpenPort::open(p, env, &open) {
            Ok(o) => open.push(o),
            Err(msg) => {
                // Dropping what opened so far closes sockets and detaches XDP programs.
                drop(open);
                return Err(ChangeError::Open {
                    port: p.name.clone(),
                    msg,
                });
            }
        }
    }
    Ok(open)
}

/// The running ports and the configuration they came from.
pub struct Ports {
    env: Env,
    state: Mutex<State>,
}

struct State {
    /// The running configuration: the file as last loaded, with run-time changes.
    cfg: Config,
    /// In the order of `cfg.ports`.
    open: Vec<OpenPort>,
}

/// What a reload does to the ports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub removed: Vec<String>,
    pub added: Vec<PortConfig>,
    pub changed: Vec<PortConfig>,
    pub unchanged: usize,
}

/// Compares the ports of the running configuration with those of a new one, by name.
pub fn diff(old: &[PortConfig], new: &[PortConfig]) -> Diff {
    let mut d = Diff::default();
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            d.removed.push(o.name.clone());
        }
    }
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            None => d.added.push(n.clone()),
            Some(o) if o != n => d.changed.push(n.clone()),
            Some(_) => d.unchanged += 1,
        }
    }
    // A tunnel port is attached to its underlay's open port: when that one closes
    // (removed or changed), the tunnel is opened again on the new one.
    let moved: Vec<PortConfig> = new
        .iter()
        .filter(|n| match &n.kind {
            PortKind::Vxlan { underlay, .. } => {
                d.removed.contains(underlay) || d.changed.iter().any(|c| &c.name == underlay)
            }
            _ => false,
        })
        .filter(|n| old.contains(n))
        .cloned()
        .collect();
    d.unchanged -= moved.len();
    d.changed.extend(moved);
    // Opened in the file's order: an underlay before its tunnels.
    let at = |p: &PortConfig| new.iter().position(|n| n.name == p.name);
    d.changed.sort_by_key(at);
    d
}

/// The first key outside `[[port]]` whose value differs: a reload cannot apply it.
fn restart_key(old: &Config, new: &Config) -> Option<&'static str> {
    let keys: [(&'static str, bool); 15] = [
        ("switch.pmd_cores", old.pmd_cores != new.pmd_cores),
        (
            "switch.socket_group",
            old.socket_perms.gid != new.socket_perms.gid,
        ),
        (
            "switch.socket_mode",
            old.socket_perms.mode != new.socket_perms.mode,
        ),
        ("switch.pmd_auto_lb", old.pmd_auto_lb != new.pmd_auto_lb),
        (
            "switch.control_socket",
            old.control_socket != new.control_socket,
        ),
        ("switch.tx_stall_ms", old.tx_stall_ms != new.tx_stall_ms),
        (
            "switch.pmd_sleep_max_us",
            old.pmd_sleep_max_us != new.pmd_sleep_max_us,
        ),
        ("mempool.mbufs", old.mbufs != new.mbufs),
        ("mempool.large_mbufs", old.large_mbufs != new.large_mbufs),
        ("mempool.hugepages", old.hugepages != new.hugepages),
        ("fdb.capacity", old.fdb_capacity != new.fdb_capacity),
        ("fdb.aging_secs", old.aging_secs != new.aging_secs),
        ("fdb.max_per_port", old.max_per_port != new.max_per_port),
        ("metrics.listen", old.metrics_listen != new.metrics_listen),
        (
            "metrics.latency_histograms",
            old.latency_histograms != new.latency_histograms,
        ),
    ];
    keys.into_iter().find(|k| k.1).map(|k| k.0)
}

impl Ports {
    /// Opens the ports of `cfg` and adds them to `sw`.
    pub fn start(
        sw: &Switch,
        cfg: Config,
        pool: Arc<Mempool>,
        rcu: Arc<Rcu>,
    ) -> Result<Ports, ChangeError> {
        let env = Env {
            pool,
            rcu,
            fdb: sw.fdb_source(),
        };
        let open = open_all(&cfg, &env)?;
        sw.add_ports(members(&open))?;
        Ok(Ports {
            env,
            state: Mutex::new(State { cfg, open }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ctl add-port NAME key=value...`: the same keys and checks as a `[[port]]` table.
    pub fn add(&self, sw: &Switch, name: &str, args: &[&str]) -> Result<String, ChangeError> {
        let mut st = self.state();
        let pc = st.cfg.port_from_args(name, args)?;
        let n = self.open_and_add(sw, &mut st, pc)?;
        Ok(format!("added port {name:?} as port {n}\n"))
    }

    /// `ctl del-port NAME`.
    pub fn del(&self, sw: &Switch, name: &str) -> Result<String, ChangeError> {
        let mut st = self.state();
        self.remove_and_close(sw, &mut st, &[name.to_string()])?;
        Ok(format!("removed port {name:?}\n"))
    }

    /// `ctl reload` and SIGHUP: makes the ports match the file. Leaving and changed
    /// ports close first (a changed port reuses its own socket path or interface),
    /// then new and changed ones open one by one; if one fails, those opened are
    /// closed and the closed ones opened again.
    pub fn reload(&self, sw: &Switch) -> Result<String, ChangeError> {
        let mut st = self.state();
        let new = Config::load(&st.cfg.file)?;
        if let Some(key) = restart_key(&st.cfg, &new) {
            return Err(ChangeError::NeedsRestart { key });
        }
        let d = diff(&st.cfg.ports, &new.ports);
        check_ifaces(&d.added)?;
        check_ifaces(&d.changed)?;
        let leaving: Vec<String> = d
            .removed
            .iter()
            .cloned()
            .chain(d.changed.iter().map(|p| p.name.clone()))
            .collect();
        let old: Vec<PortConfig> = st
            .cfg
            .ports
            .iter()
            .filter(|p| leaving.contains(&p.name))
            .cloned()
            .collect();
        self.remove_and_close(sw, &mut st, &leaving)?;
        let mut opened = Vec::new();
        let mut opening: Vec<&PortConfig> = d.added.iter().chain(&d.changed).collect();
        opening.sort_by_key(|p| new.ports.iter().position(|n| n.name == p.name));
        for pc in opening {
            if let Err(e) = self.open_and_add(sw, &mut st, pc.clone()) {
                let lost = self.roll_back(sw, &mut st, &opened, &old);
                return Err(ChangeError::RolledBack {
                    cause: Box::new(e),
                    lost,
                });
            }
            opened.push(pc.name.clone());
        }
        // Keep the file's order.
        let mut open = std::mem::take(&mut st.open);
        open.sort_by_key(|o| new.ports.iter().position(|p| p.name == o.cfg.name));
        st.open = open;
        st.cfg = new;
        Ok(format!(
            "reloaded {}: {} added, {} removed, {} changed, {} unchanged\n",
            st.cfg.file.display(),
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.unchanged
        ))
    }

    /// Opens a port and adds it to the switch and to the running state; returns its
    /// port number. On an error nothing changed.
    fn open_and_add(
        &self,
        sw: &Switch,
        st: &mut State,
        pc: PortConfig,
    ) -> Result<usize, ChangeError> {
        let o = OpenPort::open(&pc, &self.env, &st.open).map_err(|msg| ChangeError::Open {
            port: pc.name.clone(),
            msg,
        })?;
        let n = sw.add_ports(members(std::slice::from_ref(&o)))?[0];
        st.cfg = st.cfg.with_port(pc);
        st.open.push(o);
        Ok(n)
    }

    /// Takes ports out of the switch and the running state, and closes them.
    fn remove_and_close(
        &self,
        sw: &Switch,
        st: &mut State,
        names: &[String],
    ) -> Result<(), ChangeError> {
        if names.is_empty() {
            return Ok(());
        }
        if let Some(n) = names
            .iter()
            .find(|n| !st.open.iter().any(|o| &o.cfg.name == *n))
        {
            return Err(ChangeError::NoSuchPort(n.clone()));
        }
        for o in st.open.iter().filter(|o| names.contains(&o.cfg.name)) {
            let by: Vec<String> = st
                .open
                .iter()
                .filter(|t| matches!(&t.cfg.kind, PortKind::Vxlan { underlay, .. } if *underlay == o.cfg.name))
                .filter(|t| !names.contains(&t.cfg.name))
                .map(|t| t.cfg.name.clone())
                .collect();
            if !by.is_empty() {
                return Err(ChangeError::InUse {
                    port: o.cfg.name.clone(),
                    by,
                });
            }
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        sw.remove_ports(&refs)?;
        let (closed, kept): (Vec<OpenPort>, Vec<OpenPort>) = std::mem::take(&mut st.open)
            .into_iter()
            .partition(|o| names.contains(&o.cfg.name));
        st.open = kept;
        st.cfg.ports.retain(|p| !names.contains(&p.name));
        close_all(closed);
        Ok(())
    }

    /// Undoes a reload that failed part way: closes the ports it `opened`, opens the
    /// `closed` ones again. Returns those that could not be opened again (they stay out
    /// of the running state, so that the next reload adds them).
    fn roll_back(
        &self,
        sw: &Switch,
        st: &mut State,
        opened: &[String],
        closed: &[PortConfig],
    ) -> Vec<(String, String)> {
        if let Err(e) = self.remove_and_close(sw, st, opened) {
            tracing::error!(error = %e, "reload roll-back: ports not closed");
        }
        let mut lost = Vec::new();
        for pc in closed {
            if let Err(e) = self.open_and_add(sw, st, pc.clone()) {
                tracing::error!(port = %pc.name, error = %e, "reload roll-back: port not opened again");
                lost.push((pc.name.clone(), e.to_string()));
            }
        }
        lost
    }

    /// Shuts the vhost-user ports down (before the PMD threads stop: taking rings
    /// down waits for their quiescent states).
    pub fn shut_down(&self) {
        shut_down_all(&self.state().open);
    }
}

/// Shuts vhost-user ports down: all are told first, then each is waited for, so that
/// it costs one port's time, not the sum.
fn shut_down_all(open: &[OpenPort]) {
    for o in open {
        if let Some(v) = &o.vhost {
            v.begin_shutdown();
        }
    }
    for o in open {
        o.shut_down();
    }
}

/// Closes ports (see [`shut_down_all`]).
fn close_all(open: Vec<OpenPort>) {
    shut_down_all(&open);
    drop(open);
}

/// A NIC port's interface must exist before anything changes (a tap port makes its own).
fn check_ifaces(ports: &[PortConfig]) -> Result<(), ChangeError> {
    for p in ports {
        if let PortKind::AfXdp { iface, .. } | PortKind::AfPacket { iface, .. } = &p.kind {
            pmd::nic::ifindex(iface).map_err(|e| ChangeError::Open {
                port: p.name.clone(),
                msg: e.to_string(),
            })?;
        }
    }
    Ok(())
}
