//! Rate-limited logging of what guests and frontends do wrong: a guest that breaks
//! its rings or sends bad requests in a loop must not flood the log.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines allowed per window.
pub const BURST: u64 = 20;
/// The window, in seconds.
pub const WINDOW_SECS: u64 = 10;

/// Allows [`BURST`] lines per [`WINDOW_SECS`]; counts the rest.
#[derive(Default)]
pub struct RateLimit {
    window: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be logged now (`n` lines were suppressed since the last
    /// one logged: say so in it), `None` if this one is suppressed.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            / WINDOW_SECS;
        if self.window.swap(now, Relaxed) != now {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < BURST {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_counts() {
        let r = RateLimit::new();
        for _ in 0..BURST {
            assert_eq!(r.allow(), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(r.allow(), None);
        }
        // A new window says how many were suppressed.
        r.window.store(0, Relaxed);
        assert_eq!(r.allow(), Some(5));
    }
}
