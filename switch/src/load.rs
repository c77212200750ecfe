//! Measured load over a sliding window: cumulative cycle counters sampled once a
//! second by the control plane, so a queue's or a thread's load is the cycles it
//! spent per sampling period, averaged over the last [`WINDOW`] samples (fewer for a
//! queue that has not been there that long: a rate, so that old and new queues
//! compare).

use std::sync::Mutex;

/// Samples kept: the window is `WINDOW - 1` sampling periods (about 10 s at 1 s).
pub const WINDOW: usize = 11;

/// The last [`WINDOW`] readings of one cumulative counter (control plane only).
#[derive(Debug, Default)]
pub struct Window(Mutex<Samples>);

#[derive(Debug, Default)]
struct Samples {
    v: [u64; WINDOW],
    next: usize,
    filled: usize,
}

impl Window {
    /// Records the counter's current value.
    pub fn sample(&self, now: u64) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = s.next;
        s.v[i] = now;
        s.next = (i + 1) % WINDOW;
        s.filled = (s.filled + 1).min(WINDOW);
    }
    /// How much the counter grew per sampling period, over the samples held (0 with
    /// fewer than two).
    pub fn rate(&self) -> u64 {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.filled < 2 {
            return 0;
        }
        let newest = s.v[(s.next + WINDOW - 1) % WINDOW];
        let oldest = s.v[(s.next + WINDOW - s.filled) % WINDOW];
        newest.wrapping_sub(oldest) / (s.filled as u64 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_per_period_over_the_last_window() {
        let w = Window::default();
        assert_eq!(w.rate(), 0);
        w.sample(100);
        assert_eq!(w.rate(), 0);
        w.sample(150);
        assert_eq!(w.rate(), 50);
        w.sample(170);
        assert_eq!(w.rate(), 35, "two periods: 70 in all");
        for i in 0..30u64 {
            w.sample(1000 + 10 * i);
        }
        assert_eq!(w.rate(), 10, "only the last window counts");
    }
}
