//! When an idle PMD thread sleeps, and for how long (`switch.pmd_sleep_max_us`, as
//! OVS's `other_config:pmd-sleep-max`): once it has moved nothing for [`SPIN`] (and
//! holds no frame for a full ring), the thread asks each of its rx queues to wake it (`Port::arm_wake`:
//! tap, AF_PACKET and AF_XDP sockets are readable when frames come; a vhost-user ring
//! asks its guest for kicks) and waits on those descriptors (see [`pmd::idle`]).
//! When every queue can wake it, it waits up to the maximum at once; otherwise the
//! others are seen when the wait times out, which starts at 1 µs and doubles while
//! the thread stays idle, up to the maximum. A busy thread never sleeps, so its rate
//! is the busy-polling one. While it sleeps, a new plan and a grace period wait for it
//! (at most the maximum).

use crate::plan::PollPlan;
use pmd::idle::{Wake, WakeSet, Woken, MAX_WAKE_FDS};
use std::time::Duration;

/// How long a thread polls with nothing to do before it sleeps: a short gap between
/// bursts (a TCP sender's next segment, a guest's next packet) is polled through, not
/// slept through, and costs the guest no kick.
pub const SPIN: Duration = Duration::from_micros(50);
/// The first wait.
const FIRST_NS: u64 = 1_000;
/// The largest `pmd_sleep_max_us` accepted (OVS's limit too).
pub const MAX_SLEEP_US: u64 = 10_000;

/// One PMD thread's sleeping state. `max` zero: the thread never sleeps.
pub struct Sleeper {
    max_ns: u64,
    /// `SPIN` in cycles.
    spin: u64,
    /// The cycle count when the thread last moved frames (or woke).
    idle_since: u64,
    /// The thread has been idle past `spin` since then.
    resting: bool,
    /// The next wait when some queue cannot wake the thread.
    next_ns: u64,
    wake: WakeSet,
    /// The poll-list index of each queue in `wake`, in the same order.
    armed: Vec<usize>,
    /// Waits so far, and those a port ended.
    pub sleeps: u64,
    pub wakes: u64,
}

impl Sleeper {
    pub fn new(max: Duration, tsc_hz: u64) -> Sleeper {
        Sleeper {
            max_ns: max.as_nanos().min(u64::MAX as u128) as u64,
            spin: (SPIN.as_secs_f64() * tsc_hz as f64) as u64,
            idle_since: 0,
            resting: false,
            next_ns: FIRST_NS,
            wake: WakeSet::new(),
            armed: Vec::with_capacity(MAX_WAKE_FDS),
            sleeps: 0,
            wakes: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_ns > 0
    }

    /// An iteration that ended at cycle `now` moved frames.
    #[inline(always)]
    pub fn busy(&mut self, now: u64) {
        self.idle_since = now;
    }

    /// An iteration that ended at cycle `now` moved nothing: whether the thread has
    /// been idle long enough to sleep (then the caller calls `rest` unless frames wait
    /// in its output queues: a guest's new receive buffers come without a kick).
    #[inline]
    pub fn idle(&mut self, now: u64) -> bool {
        if self.max_ns == 0 || now.wrapping_sub(self.idle_since) < self.spin {
            self.resting = false;
            return false;
        }
        if !self.resting {
            self.resting = true;
            self.next_ns = FIRST_NS.min(self.max_ns);
        }
        true
    }

    /// Sleeps, unless a queue has frames by now. Returns whether it slept.
    #[cold]
    pub fn rest(&mut self, plan: &PollPlan) -> bool {
        let Some(all) = self.arm(plan) else {
            return false;
        };
        let wait = if all { self.max_ns } else { self.next_ns };
        let woken = self.wake.wait(Duration::from_nanos(wait));
        self.disarm(plan);
        self.sleeps += 1;
        self.wakes += (woken == Woken::Ready) as u64;
        self.next_ns = match woken {
            // A port has frames: the gap is over, start short again.
            Woken::Ready => FIRST_NS.min(self.max_ns),
            Woken::Timeout => (self.next_ns * 2).min(self.max_ns),
        };
        true
    }

    /// Asks every queue to wake the thread. `None`: one has frames already (nothing
    /// stays armed); else whether every queue can wake it.
    fn arm(&mut self, plan: &PollPlan) -> Option<bool> {
        self.wake.clear();
        self.armed.clear();
        let mut all = true;
        for (i, q) in plan.rxqs.iter().enumerate() {
            let Some(port) = plan.port(q.port) else {
                continue;
            };
            if self.armed.len() == MAX_WAKE_FDS {
                all = false;
                break;
            }
            match port.arm_wake(q.queue) {
                Wake::Fd(fd) => {
                    self.wake.push(fd);
                    self.armed.push(i);
                }
                Wake::Timeout => all = false,
                Wake::Pending => {
                    self.disarm(plan);
                    return None;
                }
            }
        }
        Some(all)
    }

    fn disarm(&mut self, plan: &PollPlan) {
        for (k, &i) in self.armed.iter().enumerate() {
            let q = &plan.rxqs[i];
            if let Some(port) = plan.port(q.port) {
                port.disarm_wake(q.queue, self.wake.ready(k));
            }
        }
        self.armed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000; // one cycle a nanosecond

    #[test]
    fn a_thread_without_a_maximum_never_sleeps() {
        let mut s = Sleeper::new(Duration::ZERO, HZ);
        for t in 0..1000 {
            assert!(!s.idle(t * 1_000_000));
        }
        assert_eq!(s.sleeps, 0);
    }

    #[test]
    fn sleeps_start_after_the_spin_and_grow_to_the_maximum() {
        let plan = PollPlan::empty();
        let mut s = Sleeper::new(Duration::from_micros(100), HZ);
        let spin = SPIN.as_nanos() as u64;
        s.busy(1_000);
        assert!(!s.idle(1_000 + spin - 1));
        // The next wait doubles up to the maximum while the thread stays idle.
        assert!(s.idle(1_000 + spin) && s.rest(&plan));
        assert_eq!(s.next_ns, 2_000);
        for k in 0..20 {
            assert!(s.idle(1_000 + spin + k));
            s.rest(&plan);
        }
        assert_eq!(s.next_ns, 100_000);
        s.busy(10_000_000);
        assert!(!s.idle(10_000_001), "a busy iteration restarts the spin");
        assert!(s.idle(10_000_000 + spin));
        assert_eq!(s.next_ns, FIRST_NS, "a new idle spell starts short");
    }
}
