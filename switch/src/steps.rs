//! Cycles per step of the PMD loop (rx poll, switching, tx to ports), and the speed
//! of the PMD's core while it ran them, for diagnosis.
//!
//! Counted only in builds with the `step-cycles` feature (`cargo build --release
//! --features step-cycles`), where each step costs one more cycle-counter read and
//! every 1024th iteration times a chain of 1000 dependent additions
//! ([`pmd::tsc::add_chain`], about 1000 cycles); in other builds the clock is empty and
//! every call compiles to nothing. `benches/pvp` and `benches/nic` print both when the
//! switch under test has them. The chain is bound by the core's clock alone: it shows
//! a host running the vCPU slower, not a neighbour sharing its caches or execution
//! units, nor slower memory. The probe's cycles count in the thread's busy or idle
//! cycles (outside the steps), and the clock reads the counter three more times per
//! iteration, idle ones too: a build for finding where cycles go, not for measuring
//! speed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The steps, in loop order.
#[derive(Clone, Copy)]
pub enum Step {
    /// Polling an rx queue (empty polls included) up to the frames in hand, with what
    /// the loop does before a poll (the backpressure check and its settle, the
    /// queue's load accounting).
    Rx = 0,
    /// Capture taps on receive, then parsing, learning, looking up and queueing the
    /// burst's frames.
    Switch = 1,
    /// Writing queued frames to their ports' rings (backlog included).
    Tx = 2,
}

pub const STEPS: usize = 3;
pub const NAMES: [&str; STEPS] = ["rx", "switch", "tx"];

/// Additions per speed probe.
#[cfg(feature = "step-cycles")]
const PROBE_ADDS: u64 = 1000;

/// A PMD thread's running sums (plain fields: only its thread touches them).
#[derive(Default)]
pub struct StepClock {
    #[cfg(feature = "step-cycles")]
    last: u64,
    #[cfg(feature = "step-cycles")]
    sums: [u64; STEPS],
    /// This iteration's, added to `sums` if it turns out busy (as the loop's busy cycles).
    #[cfg(feature = "step-cycles")]
    cur: [u64; STEPS],
    /// Ticks the speed probes took, and their additions.
    #[cfg(feature = "step-cycles")]
    probe: [u64; 2],
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
            self.cur[s as usize] += t.wrapping_sub(self.last);
            self.last = t;
        }
        #[cfg(not(feature = "step-cycles"))]
        let _ = s;
    }

    /// Ends an iteration: its steps count if it moved frames (idle polls do not, as
    /// they do not count in the thread's busy cycles).
    #[inline(always)]
    pub fn end_iteration(&mut self, busy: bool) {
        #[cfg(feature = "step-cycles")]
        {
            if busy {
                for (s, c) in self.sums.iter_mut().zip(self.cur) {
                    *s += c;
                }
            }
            self.cur = [0; STEPS];
        }
        #[cfg(not(feature = "step-cycles"))]
        let _ = busy;
    }

    /// Times one chain of additions (call it now and then, off the steps).
    #[inline]
    pub fn probe(&mut self) {
        #[cfg(feature = "step-cycles")]
        {
            self.probe[0] += pmd::tsc::add_chain(PROBE_ADDS);
            self.probe[1] += PROBE_ADDS;
        }
    }

    /// rx, switch, tx, probe ticks, probe additions.
    #[cfg(feature = "step-cycles")]
    fn numbers(&self) -> [u64; NUMBERS] {
        [
            self.sums[0],
            self.sums[1],
            self.sums[2],
            self.probe[0],
            self.probe[1],
        ]
    }
}

/// The numbers a [`StepCycles`] holds: the steps', then the probe's ticks and additions.
pub const NUMBERS: usize = STEPS + 2;

/// The sums as the control plane reads them (all zero without the feature).
#[derive(Default)]
pub struct StepCycles([AtomicU64; NUMBERS]);

/// What [`StepCycles::read`] gives.
pub struct StepReading {
    /// Cycles spent in each step.
    pub steps: [u64; STEPS],
    /// Ticks the speed probes took.
    pub probe_ticks: u64,
    /// Additions the speed probes made.
    pub probe_adds: u64,
}

impl StepCycles {
    /// Stores `c`'s sums (only the owning PMD thread calls this).
    /// Without the feature there is nothing to store: the numbers stay zero.
    #[inline(always)]
    pub fn publish(&self, c: &StepClock) {
        #[cfg(feature = "step-cycles")]
        for (a, v) in self.0.iter().zip(c.numbers()) {
            a.store(v, Relaxed);
        }
        #[cfg(not(feature = "step-cycles"))]
        let _ = c;
    }
    /// rx, switch, tx, then the speed probes' ticks and additions (`ctl --json`).
    pub fn raw(&self) -> [u64; NUMBERS] {
        self.0.each_ref().map(|a| a.load(Relaxed))
    }
    pub fn read(&self) -> StepReading {
        let v = self.raw();
        StepReading {
            steps: [v[0], v[1], v[2]],
            probe_ticks: v[3],
            probe_adds: v[4],
        }
    }
}

/// `rx=R switch=S tx=T` cycles per packet and `core_speed=K` ticks per addition, or
/// `None` when nothing was counted.
pub fn describe(r: &StepReading, packets: u64) -> Option<String> {
    if r.steps.iter().all(|&c| c == 0) || packets == 0 || r.probe_adds == 0 {
        return None;
    }
    let mut parts: Vec<String> = NAMES
        .iter()
        .zip(r.steps)
        .map(|(n, c)| format!("{n}={:.1}", c as f64 / packets as f64))
        .collect();
    parts.push(format!(
        "core_speed={:.2} ticks/add",
        r.probe_ticks as f64 / r.probe_adds as f64
    ));
    Some(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_per_packet_and_speed() {
        let r = StepReading {
            steps: [6400, 2560, 10240],
            probe_ticks: 720,
            probe_adds: 1000,
        };
        assert_eq!(
            describe(&r, 100).as_deref(),
            Some("rx=64.0 switch=25.6 tx=102.4 core_speed=0.72 ticks/add")
        );
        // Nothing counted (a build without the feature), or no packets: no line.
        let none = StepReading {
            steps: [0; STEPS],
            probe_ticks: 0,
            probe_adds: 0,
        };
        assert_eq!(describe(&none, 100), None);
        assert_eq!(describe(&r, 0), None);
    }

    #[cfg(feature = "step-cycles")]
    #[test]
    fn only_busy_iterations_count() {
        let mut c = StepClock::default();
        c.start();
        c.mark(Step::Rx);
        c.end_iteration(false);
        assert_eq!(c.numbers()[..STEPS], [0; STEPS]);
        c.start();
        std::hint::black_box(pmd::tsc::add_chain(1000));
        c.mark(Step::Tx);
        c.end_iteration(true);
        let n = c.numbers();
        assert_eq!(n[0], 0);
        assert!(n[2] > 0, "the busy iteration's tx step counted: {n:?}");
    }
}
