//! Grace periods between the control plane and PMD threads.
//!
//! PMD threads never take a lock the control plane holds. Instead, each PMD thread
//! announces a quiescent state between loop iterations (it holds no reference into
//! any ring or guest mapping at that point), every few iterations: the announcement
//! is a full barrier, which would otherwise wait for the iteration's stores to
//! guest rings on every pass. To change a live ring or unmap guest
//! memory, the control plane first hides it (an atomic flag the PMD reads before use),
//! then calls [`Rcu::synchronize`], which returns once every online PMD thread has
//! passed a quiescent state: from then on no PMD thread can be inside the old state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Registry of PMD threads' quiescent-state counters.
#[derive(Default)]
pub struct Rcu {
    threads: Mutex<Vec<Arc<RcuThread>>>,
}

/// One PMD thread's counter. The PMD thread owns it; the control plane only reads.
#[derive(Default)]
pub struct RcuThread {
    counter: AtomicU64,
    online: AtomicBool,
}

impl RcuThread {
    /// Called by the PMD thread between loop iterations.
    #[inline]
    pub fn quiescent(&self) {
        // SeqCst store: ordered before this thread's following SeqCst loads of the
        // "ring is live" flags, so a flag cleared before `synchronize` saw this
        // store is seen cleared.
        self.counter.store(
            self.counter
                .load(std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(1),
            SeqCst,
        );
    }
    /// Called by the PMD thread when it stops polling for good.
    pub fn offline(&self) {
        self.online.store(false, SeqCst);
    }
}

impl Rcu {
    pub fn new() -> Arc<Rcu> {
        Arc::new(Rcu::default())
    }

    /// Registers a PMD thread (online from now on).
    pub fn register(&self) -> Arc<RcuThread> {
        let t = Arc::new(RcuThread {
            counter: AtomicU64::new(0),
            online: AtomicBool::new(true),
        });
        self.threads.lock().unwrap().push(t.clone());
        t
    }

    /// Waits until every online PMD thread has passed a quiescent state.
    /// Called by the control plane only (the lock here is never taken by a PMD loop).
    pub fn synchronize(&self) {
        let threads = self.threads.lock().unwrap().clone();
        let snap: Vec<u64> = threads.iter().map(|t| t.counter.load(SeqCst)).collect();
        let start = Instant::now();
        for (t, s) in threads.iter().zip(snap) {
            while t.online.load(SeqCst) && t.counter.load(SeqCst) == s {
                if start.elapsed() > Duration::from_millis(1) {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn synchronize_waits_for_reader_to_leave() {
        let rcu = Rcu::new();
        let live = Arc::new(AtomicBool::new(true));
        let inside = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let t = rcu.register();
        let (l2, i2, s2) = (live.clone(), inside.clone(), stop.clone());
        let h = std::thread::spawn(move || {
            while !s2.load(SeqCst) {
                t.quiescent();
                if l2.load(SeqCst) {
                    i2.fetch_add(1, SeqCst);
                    std::thread::yield_now();
                    i2.fetch_sub(1, SeqCst);
                }
            }
            t.offline();
        });
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..200 {
            live.store(false, SeqCst);
            rcu.synchronize();
            assert_eq!(
                inside.load(SeqCst),
                0,
                "reader still inside after grace period"
            );
            live.store(true, SeqCst);
        }
        stop.store(true, SeqCst);
        h.join().unwrap();
        rcu.synchronize(); // offline thread does not block
    }
}
