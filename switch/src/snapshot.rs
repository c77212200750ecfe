//! A structured picture of a running switch (ports with their counters and state, PMD
//! threads with their cycles and rx queues, the MAC table's fill), read from the same
//! published per-PMD values as `ctl stats`: for `ctl --json` and the metrics endpoint.

pub use crate::latency::LatencySummary;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub ports: Vec<PortSnapshot>,
    pub pmds: Vec<PmdSnapshot>,
    pub fdb: FdbSnapshot,
    /// The cycle counter's rate, cycles per second.
    pub tsc_hz: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortSnapshot {
    /// The port number (its index in the forwarding table).
    pub number: usize,
    pub name: String,
    pub driver: &'static str,
    pub up: bool,
    /// Traffic summed over PMD threads, then drops and errors, as `ctl stats` names them.
    pub counters: BTreeMap<&'static str, u64>,
    /// The driver's state as numbers (see `Port::gauges`).
    pub gauges: BTreeMap<&'static str, u64>,
    /// The `ctl show` line.
    pub describe: String,
    /// Time frames sent to the port spent in the switch (with latency histograms on,
    /// once the port has sent some).
    pub latency: Option<LatencySummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PmdSnapshot {
    pub core: usize,
    pub packets: u64,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub iterations: u64,
    pub backpressure: u64,
    /// Waits of the idle thread, those a port ended, and the cycles they took (part of
    /// `idle_cycles`).
    pub sleeps: u64,
    pub sleep_wakes: u64,
    pub sleep_cycles: u64,
    /// Busy iteration time (with latency histograms on).
    pub iteration: Option<LatencySummary>,
    /// How many rx polls moved 0, 1, ... 31, 32 frames (see `stats::BurstSizes`).
    pub rx_bursts: Vec<u64>,
    /// How many tx bursts to a port moved 0, 1, ... 31, 32 or more frames.
    pub tx_bursts: Vec<u64>,
    /// Cycles spent in each loop step, rx, switch and tx, then the ticks the core
    /// speed probes took and their additions (all zero unless built with the
    /// `step-cycles` feature; see `steps`).
    pub step_cycles: [u64; crate::steps::NUMBERS],
    pub rxqs: Vec<RxqSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RxqSnapshot {
    pub port: String,
    pub queue: usize,
    /// Processing cycles per second over the load window.
    pub cycles_per_sec: u64,
    /// Share of the thread's cycles over the load window, percent.
    pub share_pct: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FdbSnapshot {
    pub entries: usize,
    pub capacity: usize,
    pub aging_secs: u32,
}

/// One forwarding table entry (`ctl --json fdb`).
#[derive(Clone, Debug, Serialize)]
pub struct FdbEntrySnapshot {
    pub port: String,
    pub vlan: u16,
    pub mac: String,
    pub age_secs: u32,
}
