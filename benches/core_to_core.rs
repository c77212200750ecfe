//! Core-to-core latency: two threads, pinned to two cores, pass one cache line back
//! and forth; prints the round-trip time in nanoseconds (the median of `REPEATS`
//! measurements of `TRIPS` round trips each).
//!
//! On a virtual machine the host decides where the vCPUs run: two vCPUs on cores that
//! share a cache pass a line in well under 100 ns, on cores that do not (another core
//! complex or die) in several times that, and the host can move them at any moment.
//! Every PMD loop's cost per packet rides on this (the generator's ring and buffer
//! lines cross between the cores), so `benches/pvp` runs this before and after each
//! round to say which placement the round ran on.
//!
//! Usage: core_to_core [CORE_A CORE_B [TRIPS [REPEATS [SECONDS]]]]   (default 0 1
//! 100000 3): with SECONDS, one measurement every 0.4 s for that long, each printed
//! with its time (`t=12.3 ns=71`), to see the placement change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[repr(align(64))]
struct Line(AtomicU64);

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("core_to_core: cannot pin to core {core}");
        std::process::exit(1);
    }
}

/// Nanoseconds per round trip over `trips` of them.
fn measure(a: usize, b: usize, trips: u64) -> f64 {
    let line = Arc::new(Line(AtomicU64::new(0)));
    let other = line.clone();
    let pong = std::thread::spawn(move || {
        pin(b);
        for i in 0..trips {
            while other.0.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            other.0.store(2 * i + 2, Ordering::Release);
        }
    });
    pin(a);
    // Wait until the other thread is pinned and polling.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let t0 = Instant::now();
    for i in 0..trips {
        line.0.store(2 * i + 1, Ordering::Release);
        while line.0.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / trips as f64;
    pong.join().expect("pong thread");
    ns
}

fn main() {
    let arg = |i: usize, d: u64| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (a, b) = (arg(1, 0) as usize, arg(2, 1) as usize);
    let (trips, repeats) = (arg(3, 100_000).max(1), arg(4, 3).max(1));
    let median = || {
        let mut v: Vec<f64> = (0..repeats).map(|_| measure(a, b, trips)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    match arg(5, 0) {
        0 => println!("{:.0}", median()),
        secs => {
            let t0 = Instant::now();
            while t0.elapsed().as_secs() < secs {
                println!("t={:.1} ns={:.0}", t0.elapsed().as_secs_f64(), median());
                std::thread::sleep(std::time::Duration::from_millis(400));
            }
        }
    }
}
