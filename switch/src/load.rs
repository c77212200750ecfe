//! Measured load over a sliding window: cumulative cycle counters sampled once a
//! second by the control plane, so a queue's or a thread's load is the cycles it
//! spent over the last [`WINDOW`] samples.

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
    /// How much the counter grew over the samples held (0 with fewer than two).
    pub fn delta(&self) -> u64 {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.filled < 2 {
            return 0;
        }
        let newest = s.v[(s.next + WINDOW - 1) % WINDOW];
        let oldest = s.v[(s.next + WINDOW - s.filled) % WINDOW];
        newest.wrapping_sub(oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_covers_the_last_window() {
        let w = Window::default();
        assert_eq!(w.delta(), 0);
        w.sample(100);
        assert_eq!(w.delta(), 0);
        w.sample(150);
        assert_eq!(w.delta(), 50);
        for i in 0..30u64 {
            w.sample(150 + 10 * (i + 1));
        }
        assert_eq!(w.delta(), 10 * (WINDOW as u64 - 1));
    }
}
