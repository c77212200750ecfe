//! Cycles per step of the PMD loop (rx poll, switching, tx to ports), for diagnosis.
//!
//! Counted only in builds with the `step-cycles` feature (`cargo build --release
//! --features step-cycles`), where each step costs one more cycle-counter read; in
//! other builds the clock is empty and every call compiles to nothing. `benches/pvp`
//! prints the split when the switch under test has it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The steps, in loop order.
#[derive(Clone, Copy)]
pub enum Step {
    /// Polling an rx queue (empty polls included) up to the frames in hand.
    Rx = 0,
    /// Parsing, learning, looking up and queueing the burst's frames.
    Switch = 1,
    /// Writing queued frames to their ports' rings (backlog included).
    Tx = 2,
}

pub const STEPS: usize = 3;
pub const NAMES: [&str; STEPS] = ["rx", "switch", "tx"];

/// A PMD thread's running sums (plain fields: only its thread touches them).
#[derive(Default)]
pub struct StepClock {
    #[cfg(feature = "step-cycles")]
    last: u64,
    #[cfg(feature = "step-cycles")]
    sums: [u64; STEPS],
}

impl StepClock {
    /// Starts timing the next step.
    #[inline(always)]
    pub fn start(&mut self) {
        #[cfg(feature = "step-cycles")]
        {
            self.last = crate::stats::cycles();
        }
    }

    /// Ends step `s` (charging it the cycles since the last call) and starts the next.
    #[inline(always)]
    pub fn mark(&mut self, s: Step) {
        #[cfg(feature = "step-cycles")]
        {
            let t = crate::stats::cycles();
            self.sums[s as usize] += t.wrapping_sub(self.last);
            self.last = t;
        }
        #[cfg(not(feature = "step-cycles"))]
        let _ = s;
    }

    fn sums(&self) -> [u64; STEPS] {
        #[cfg(feature = "step-cycles")]
        return self.sums;
        #[cfg(not(feature = "step-cycles"))]
        [0; STEPS]
    }
}

/// The sums as the control plane reads them (all zero without the feature).
#[derive(Default)]
pub struct StepCycles([AtomicU64; STEPS]);

impl StepCycles {
    /// Stores `c`'s sums (only the owning PMD thread calls this).
    pub fn publish(&self, c: &StepClock) {
        for (a, v) in self.0.iter().zip(c.sums()) {
            a.store(v, Relaxed);
        }
    }
    pub fn read(&self) -> [u64; STEPS] {
        self.0.each_ref().map(|a| a.load(Relaxed))
    }
}

/// `rx=R switch=S tx=T` cycles per packet, or `None` when nothing was counted.
pub fn describe(sums: &[u64; STEPS], packets: u64) -> Option<String> {
    if sums.iter().all(|&c| c == 0) || packets == 0 {
        return None;
    }
    let parts: Vec<String> = NAMES
        .iter()
        .zip(sums)
        .map(|(n, &c)| format!("{n}={:.1}", c as f64 / packets as f64))
        .collect();
    Some(parts.join(" "))
}
