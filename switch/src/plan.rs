//! What one PMD thread polls and where it may send: the port table and its rx queues
//! (a [`PollPlan`]), handed from the control plane to the PMD thread through a
//! [`Mailbox`] without a lock the PMD thread could wait on.
//!
//! The control plane builds a new plan and publishes it; the PMD thread looks at the
//! mailbox's generation at its quiescent point (between iterations, holding nothing
//! of the old plan but its `Arc`), takes the new plan, settles what it kept for ports
//! that left (queued frames freed, counters reset) and acknowledges the generation.
//! The control plane keeps every plan it published until the PMD thread has
//! acknowledged a newer one, so the PMD thread never drops the last reference: it
//! frees nothing and allocates nothing. Once every PMD thread acknowledged, no PMD
//! thread can touch a port that the new plans no longer hold, and the control plane
//! may close it — the same grace-period rule the vhost-user rings follow.

use crate::capture::Capture;
use crate::load::Window;
use crate::vlan::PortVlan;
use arc_swap::ArcSwap;
use pmd::rcu::RcuThread;
use pmd::Port;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most ports a switch holds at once (port numbers are `0..MAX_PORTS`).
pub const MAX_PORTS: usize = 1024;

/// The ports by port number; `None` for a free number.
pub type PortTable = Arc<[Option<Arc<dyn Port>>]>;

/// Processing cycles one rx queue has cost, written only by the PMD thread that
/// polls it (one at a time: a queue moves between threads in two steps, see
/// `Switch::rebalance`), read by the control plane to place queues by load.
#[derive(Default, Debug)]
pub struct RxqLoad {
    cycles: AtomicU64,
    /// The control plane's samples of `cycles`.
    pub window: Window,
}

impl RxqLoad {
    /// Adds `c` cycles (the owning PMD thread only: a plain load and store).
    #[inline(always)]
    pub fn add(&self, c: u64) {
        self.cycles
            .store(self.cycles.load(Relaxed).wrapping_add(c), Relaxed);
    }
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Relaxed)
    }
}

/// One rx queue in a PMD thread's poll list.
#[derive(Clone, Debug)]
pub struct Rxq {
    pub port: usize,
    pub queue: usize,
    pub load: Arc<RxqLoad>,
}

/// What a PMD thread polls and may send to, as of generation `gen`.
pub struct PollPlan {
    pub gen: u64,
    pub ports: PortTable,
    /// Each port's VLAN settings, by port number (as `ports`).
    pub vlans: Arc<[PortVlan]>,
    /// Whether any port is more than a plain trunk: otherwise frames pass untouched
    /// and the VLAN step is skipped.
    pub vlan_on: bool,
    /// Each port's longest frame (`pmd::port::max_frame` of its MTU), by port number.
    pub max_frames: Arc<[u32]>,
    /// Whether the ports' MTUs differ: only then can a frame a driver accepted at rx
    /// be too long for another port, and the MTU step runs per frame.
    pub mtu_on: bool,
    pub rxqs: Vec<Rxq>,
    /// Packet captures running (`ctl capture`).
    pub captures: Arc<[Arc<Capture>]>,
    /// Whether `captures` has any: tested once per rx burst and once per tx flush.
    pub capture_on: bool,
}

impl PollPlan {
    pub fn empty() -> PollPlan {
        PollPlan {
            gen: 0,
            ports: Arc::from(Vec::new()),
            vlans: Arc::from(Vec::new()),
            vlan_on: false,
            max_frames: Arc::from(Vec::new()),
            mtu_on: false,
            rxqs: Vec::new(),
            captures: Arc::from(Vec::new()),
            capture_on: false,
        }
    }
    /// The port with number `p`, if there is one.
    #[inline(always)]
    pub fn port(&self, p: usize) -> Option<&Arc<dyn Port>> {
        self.ports.get(p).and_then(Option::as_ref)
    }
}

/// The control plane's side of a PMD thread's plan, shared with that thread.
pub struct Mailbox {
    plan: ArcSwap<PollPlan>,
    /// Generation of `plan`, read by the PMD thread every few iterations.
    gen: AtomicU64,
    /// The last generation the PMD thread took up.
    acked: AtomicU64,
    /// The PMD thread has ended (it acknowledges nothing more).
    ended: AtomicBool,
}

/// Why a PMD thread did not take up a plan.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The thread did not acknowledge within the time given (it is stuck).
    NotAcknowledged { waited: Duration },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::NotAcknowledged { waited } => {
                write!(
                    f,
                    "a PMD thread did not take up its poll list in {waited:?}"
                )
            }
        }
    }
}

impl Mailbox {
    pub fn new(plan: Arc<PollPlan>) -> Mailbox {
        Mailbox {
            gen: AtomicU64::new(plan.gen),
            acked: AtomicU64::new(plan.gen),
            plan: ArcSwap::new(plan),
            ended: AtomicBool::new(false),
        }
    }

    /// PMD thread: whether a plan newer than `gen` waits.
    #[inline(always)]
    pub fn changed(&self, gen: u64) -> bool {
        // Acquire pairs with `publish`'s release: a new generation seen, its plan is
        // the one `take` loads (an older one would be acknowledged as what it is, and
        // taken again).
        self.gen.load(Acquire) != gen
    }

    /// PMD thread: the newest plan.
    pub fn take(&self) -> Arc<PollPlan> {
        self.plan.load_full()
    }

    /// PMD thread: it now runs (only) plan `gen`.
    pub fn ack(&self, gen: u64) {
        self.acked.store(gen, std::sync::atomic::Ordering::Release);
    }

    /// PMD thread: it stopped for good.
    pub fn end(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Control plane: makes `plan` the newest; returns the one it replaces, which the
    /// caller keeps until [`Mailbox::wait`] for the new generation returned.
    pub fn publish(&self, plan: Arc<PollPlan>) -> Arc<PollPlan> {
        let gen = plan.gen;
        let old = self.plan.swap(plan);
        self.gen.store(gen, std::sync::atomic::Ordering::Release);
        old
    }

    /// Control plane: waits until the PMD thread runs generation `gen` or later, or
    /// has ended; gives up after `limit`.
    pub fn wait(&self, gen: u64, limit: Duration) -> Result<(), PlanError> {
        let start = Instant::now();
        loop {
            if self.acked.load(Acquire) >= gen || self.ended.load(Acquire) {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited > limit {
                return Err(PlanError::NotAcknowledged { waited });
            }
            if waited > Duration::from_millis(1) {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Ends a PMD thread's mailbox and takes it out of the grace periods when the thread
/// leaves its loop, by return or panic, so the control plane never waits for a thread
/// that is gone.
pub struct EndGuard {
    pub mailbox: Arc<Mailbox>,
    pub rcu: Arc<RcuThread>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.rcu.offline();
        self.mailbox.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_taken_up_and_acknowledged() {
        let mb = Arc::new(Mailbox::new(Arc::new(PollPlan::empty())));
        let stop = Arc::new(AtomicBool::new(false));
        let (m2, s2) = (mb.clone(), stop.clone());
        let pmd = std::thread::spawn(move || {
            let _end = EndGuard {
                mailbox: m2.clone(),
                rcu: pmd::rcu::Rcu::new().register(),
            };
            let mut cur = m2.take();
            m2.ack(cur.gen);
            while !s2.load(Relaxed) {
                if m2.changed(cur.gen) {
                    cur = m2.take();
                    m2.ack(cur.gen);
                }
                std::hint::spin_loop();
            }
            cur.gen
        });
        for gen in 1..=100 {
            let old = mb.publish(Arc::new(PollPlan {
                gen,
                ..PollPlan::empty()
            }));
            mb.wait(gen, Duration::from_secs(5)).unwrap();
            // The thread has moved on: this is the last reference to the old plan.
            assert_eq!(Arc::strong_count(&old), 1, "generation {gen}");
        }
        stop.store(true, Relaxed);
        assert_eq!(pmd.join().unwrap(), 100);
        // An ended thread does not hold the control plane up.
        mb.publish(Arc::new(PollPlan {
            gen: 101,
            ..PollPlan::empty()
        }));
        mb.wait(101, Duration::from_millis(10)).unwrap();
    }

    #[test]
    fn a_stuck_thread_is_reported_not_waited_for_forever() {
        let mb = Mailbox::new(Arc::new(PollPlan::empty()));
        mb.publish(Arc::new(PollPlan {
            gen: 1,
            ..PollPlan::empty()
        }));
        assert!(matches!(
            mb.wait(1, Duration::from_millis(20)),
            Err(PlanError::NotAcknowledged { .. })
        ));
    }
}
