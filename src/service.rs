//! The service: builds the mempool, ports and switch from a config, serves the
//! control socket, and shuts everything down cleanly on SIGINT/SIGTERM.

use crate::capture;
use crate::control;
use crate::metrics;
use crate::ports::Ports;
use pmd::rcu::Rcu;
use pmd::Mempool;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switch::{Switch, SwitchConfig};
use vswitch::config::Config;

pub fn run(cfg: Config) -> ExitCode {
    let (term, hup) = match signals() {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("error: cannot install signal handler: {e}");
            return ExitCode::from(1);
        }
    };
    let pool = match Mempool::with_large(cfg.mbufs, cfg.large_mbufs, cfg.hugepages) {
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
        large_mbufs = cfg.large_mbufs,
        hugepages = pool.is_huge(),
        "mbuf pool ready"
    );
    // Sockets are owner-only from their creation until given their configured mode.
    pmd::sockperm::restrict_umask();
    let ctl = match control::bind(&cfg.control_socket, &cfg.socket_perms) {
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
    let endpoint = match cfg.metrics_listen.map(metrics::Endpoint::bind).transpose() {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "error: {}: key 'metrics.listen' = \"{}\": {e}",
                cfg.file.display(),
                cfg.metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            let _ = std::fs::remove_file(&cfg.control_socket);
            return ExitCode::from(2);
        }
    };
    let rcu = Rcu::new();
    let mut sw = Switch::start(&switch_config(&cfg), pool.clone(), rcu.clone());
    let (file, ctl_path) = (cfg.file.clone(), cfg.control_socket.clone());
    let ports = match Ports::start(&sw, cfg, pool.clone(), rcu) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            sw.stop();
            let _ = std::fs::remove_file(&ctl_path);
            return ExitCode::from(2);
        }
    };
    tracing::info!(control = %ctl_path.display(), "vswitch running");
    let metrics = endpoint.map(|ep| ep.start(sw.snapshot_source(), pool.clone()));
    let captures = capture::Writers::default();
    let capture_source = sw.captures();
    serve_until(
        &term,
        &hup,
        &ctl,
        &control::Handlers {
            answer: &|line| answer(&sw, &ports, &pool, line),
            stream: &|line, conn| {
                let args: Vec<&str> = line.split_whitespace().skip(1).collect();
                captures.serve(&capture_source, &args, conn)
            },
        },
        &|| match ports.reload(&sw) {
            Ok(r) => tracing::info!("SIGHUP: {}", r.trim_end()),
            Err(e) => tracing::error!("SIGHUP: reload refused: {e}"),
        },
    );
    // Its thread ends within 200 ms, and with it its hold on the switch's ports.
    drop(metrics);
    // Capture writers end within their write wait; their captures leave the plans.
    captures.stop();
    drop(capture_source);
    tracing::info!("shutting down");
    // Vhost-user ports first: taking their rings down (guests see the link drop)
    // needs the PMD threads still passing quiescent states.
    ports.shut_down();
    sw.stop();
    // NIC ports give the mbufs the kernel held back to the pool when they close.
    drop(ports);
    drop(sw);
    drop(ctl);
    let _ = std::fs::remove_file(&ctl_path);
    tracing::info!(
        free_mbufs = pool.available(),
        total = pool.capacity(),
        free_large_mbufs = pool.large_available(),
        large_total = pool.large_capacity(),
        "stopped"
    );
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM set the first flag (stop), SIGHUP the second (reload).
fn signals() -> std::io::Result<(Arc<AtomicBool>, Arc<AtomicBool>)> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGINT, &term),
        (signal_hook::consts::SIGTERM, &term),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok((term, hup))
}

/// What the switch crate needs of the configuration.
fn switch_config(cfg: &Config) -> SwitchConfig {
    SwitchConfig {
        pmd_cores: cfg.pmd_cores.clone(),
        fdb_capacity: cfg.fdb_capacity,
        fdb_per_port: cfg.max_per_port,
        aging_secs: cfg.aging_secs,
        tx_stall: Duration::from_millis(cfg.tx_stall_ms),
        pmd_sleep_max: Duration::from_micros(cfg.pmd_sleep_max_us),
        auto_rebalance: cfg.pmd_auto_lb.map(|a| switch::AutoRebalance {
            every: Duration::from_secs(a.interval_secs),
            busy_pct: a.load_threshold,
        }),
        latency: cfg.latency_histograms,
    }
}

/// Serves the control socket on its own thread until `term` is set, running `reload`
/// whenever `hup` is; returns once that thread has finished (at most
/// `control::CONN_DEADLINE` after `term`).
fn serve_until(
    term: &AtomicBool,
    hup: &AtomicBool,
    ctl: &std::os::unix::net::UnixListener,
    handlers: &control::Handlers,
    reload: &dyn Fn(),
) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("control".into())
            .spawn_scoped(s, || control::serve(ctl, &stop, handlers))
            .expect("spawn control thread");
        while !term.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if hup.swap(false, Ordering::Relaxed) {
                reload();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// `ctl --json show` and `stats`: the switch's snapshot and the mbuf pool.
#[derive(serde::Serialize)]
struct ShowJson {
    #[serde(flatten)]
    snapshot: switch::snapshot::Snapshot,
    mempool: MempoolJson,
}

#[derive(serde::Serialize)]
struct MempoolJson {
    free: usize,
    total: u32,
    large_free: usize,
    large_total: u32,
}

/// A value as one line of JSON.
fn json<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(s) => s + "\n",
        Err(e) => format!("error: json: {e}\n"),
    }
}

/// The reply to a control request (`control` has checked its command is one of its
/// commands). A refused change replies with `error: ...` (`ctl` exits 2).
fn answer(sw: &Switch, ports: &Ports, pool: &Mempool, line: &str) -> String {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let change = |r: Result<String, crate::ports::ChangeError>| match r {
        Ok(s) => s,
        Err(e) => format!("error: {cmd}: {e}\n"),
    };
    match (cmd, args.as_slice()) {
        ("show", []) => format!(
            "{}mempool: free={} total={} large_free={} large_total={}\n",
            sw.show(),
            pool.available(),
            pool.capacity(),
            pool.large_available(),
            pool.large_capacity()
        ),
        ("stats", []) => sw.stats(),
        ("fdb", []) => sw.fdb_dump(),
        ("show" | "stats", ["--json"]) => json(&ShowJson {
            snapshot: sw.snapshot(),
            mempool: MempoolJson {
                free: pool.available(),
                total: pool.capacity(),
                large_free: pool.large_available(),
                large_total: pool.large_capacity(),
            },
        }),
        ("fdb", ["--json"]) => json(&sw.fdb_entries()),
        ("fdb-flush", []) => format!("flushed {} entries\n", sw.fdb_flush()),
        ("add-port", [name, kv @ ..]) => change(ports.add(sw, name, kv)),
        ("del-port", [name]) => change(ports.del(sw, name)),
        ("reload", []) => change(ports.reload(sw)),
        ("rebalance", []) => sw.rebalance(),
        _ => format!("error: {cmd}: {}\n", control::usage(cmd)),
    }
}
