//! The service: builds the mempool, ports and switch from a config, serves the
//! control socket, and shuts everything down cleanly on SIGINT/SIGTERM.

use crate::control;
use pmd::nic::af_packet::{AfPacketPort, PacketConfig};
use pmd::nic::af_xdp::{AfXdpPort, XdpConfig};
use pmd::nic::tap::{TapConfig, TapPort};
use pmd::rcu::Rcu;
use pmd::vhost::{VhostConfig, VhostUserPort};
use pmd::{Mempool, Port};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switch::{Switch, SwitchConfig};
use vswitch::config::{Config, PortConfig, PortKind};

pub fn run(cfg: Config) -> ExitCode {
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, term.clone()) {
            eprintln!("error: cannot install signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    let pool = match Mempool::new(cfg.mbufs, cfg.hugepages) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: {}: key 'mempool.hugepages' = \"required\": {e}",
                cfg.file.display()
            );
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        mbufs = cfg.mbufs,
        hugepages = pool.is_huge(),
        "mbuf pool ready"
    );
    let ctl = match control::bind(&cfg.control_socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: {}: key 'switch.control_socket' = {:?}: {e}",
                cfg.file.display(),
                cfg.control_socket
            );
            return ExitCode::from(2);
        }
    };
    let rcu = Rcu::new();
    let (ports, vports) = match open_ports(&cfg, &pool, &rcu) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let scfg = SwitchConfig {
        pmd_cores: cfg.pmd_cores.clone(),
        fdb_capacity: cfg.fdb_capacity,
        fdb_per_port: cfg.max_per_port,
        aging_secs: cfg.aging_secs,
        tx_stall: Duration::from_millis(cfg.tx_stall_ms),
    };
    let mut sw = Switch::start(&scfg, ports.clone(), pool.clone(), rcu.clone());
    tracing::info!(control = %cfg.control_socket.display(), "vswitch running");
    serve_until(&term, &ctl, &|cmd| answer(&sw, &pool, cmd));
    tracing::info!("shutting down");
    // Control threads first: they take the rings down (guests see the link drop),
    // which needs the PMD threads still passing quiescent states.
    for p in vports.iter() {
        p.shutdown();
    }
    sw.stop();
    drop(sw);
    // NIC ports give the mbufs the kernel held back to the pool when they close.
    drop(ports);
    drop(vports);
    drop(ctl);
    let _ = std::fs::remove_file(&cfg.control_socket);
    tracing::info!(
        free_mbufs = pool.available(),
        total = pool.capacity(),
        "stopped"
    );
    ExitCode::SUCCESS
}

/// Serves the control socket on its own thread until `term` is set; returns once that
/// thread has finished (at most `control::CONN_DEADLINE` after `term`).
fn serve_until(
    term: &AtomicBool,
    ctl: &std::os::unix::net::UnixListener,
    answer: &(dyn Fn(&str) -> String + Sync),
) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("control".into())
            .spawn_scoped(s, || control::serve(ctl, &stop, answer))
            .expect("spawn control thread");
        while !term.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// The reply to a control command (`control` has checked it is one of its commands).
fn answer(sw: &Switch, pool: &Mempool, cmd: &str) -> String {
    match cmd {
        "show" => format!(
            "{}mempool: free={} total={}\n",
            sw.show(),
            pool.available(),
            pool.capacity()
        ),
        "stats" => sw.stats(),
        "fdb" => sw.fdb_dump(),
        "fdb-flush" => {
            let n: usize = (0..sw.ports().len())
                .map(|p| sw.fdb().flush_port(p as u16))
                .sum();
            format!("flushed {n} entries\n")
        }
        _ => unreachable!("control checks commands"),
    }
}

/// Every port, and the vhost-user ones again (the service shuts those down first).
type OpenPorts = (Vec<Arc<dyn Port>>, Vec<Arc<VhostUserPort>>);

/// Opens every configured port; on an error, says which and returns exit code 2 with
/// everything opened so far closed again.
fn open_ports(cfg: &Config, pool: &Arc<Mempool>, rcu: &Arc<Rcu>) -> Result<OpenPorts, ExitCode> {
    let mut vports: Vec<Arc<VhostUserPort>> = Vec::new();
    let mut ports: Vec<Arc<dyn Port>> = Vec::new();
    for p in &cfg.ports {
        match open_port(p, pool, rcu, &mut vports) {
            Ok(port) => ports.push(port),
            Err(e) => {
                eprintln!("error: {}: port {:?}: {e}", cfg.file.display(), p.name);
                // Dropping the ports opened so far closes their sockets and detaches
                // their XDP programs: nothing stays attached.
                drop(ports);
                drop(vports);
                let _ = std::fs::remove_file(&cfg.control_socket);
                return Err(ExitCode::from(2));
            }
        }
        tracing::info!(port = %p.name, kind = ?p.kind, queues = p.queues, "port open");
    }
    Ok((ports, vports))
}

/// Opens one port; a vhost-user port is also added to `vports`.
fn open_port(
    p: &PortConfig,
    pool: &Arc<Mempool>,
    rcu: &Arc<Rcu>,
    vports: &mut Vec<Arc<VhostUserPort>>,
) -> Result<Arc<dyn Port>, String> {
    match &p.kind {
        PortKind::VhostUser {
            path,
            mode,
            max_memory,
            ..
        } => {
            let vc = VhostConfig {
                name: p.name.clone(),
                path: path.clone(),
                mode: *mode,
                queues: p.queues,
                max_memory: *max_memory,
            };
            VhostUserPort::open(vc, rcu.clone()).map(|port| {
                let port = Arc::new(port);
                vports.push(port.clone());
                port as Arc<dyn Port>
            })
        }
        PortKind::AfXdp {
            iface,
            xdp_mode,
            zero_copy,
        } => AfXdpPort::open(
            XdpConfig {
                name: p.name.clone(),
                iface: iface.clone(),
                queues: p.queues,
                xdp_mode: *xdp_mode,
                zero_copy: *zero_copy,
            },
            pool.clone(),
        )
        .map(|port| Arc::new(port) as Arc<dyn Port>)
        .map_err(|e| e.to_string()),
        PortKind::AfPacket { iface } => AfPacketPort::open(PacketConfig {
            name: p.name.clone(),
            iface: iface.clone(),
        })
        .map(|port| Arc::new(port) as Arc<dyn Port>)
        .map_err(|e| e.to_string()),
        PortKind::Tap { iface } => TapPort::open(TapConfig {
            name: p.name.clone(),
            iface: iface.clone(),
        })
        .map(|port| Arc::new(port) as Arc<dyn Port>)
        .map_err(|e| e.to_string()),
    }
}
