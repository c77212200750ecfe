//! Core speed: how many cycle-counter ticks a chain of dependent one-cycle additions
//! takes per addition on each of two cores, both loaded at once (as a PVP run loads
//! them). A core at the counter's rate takes 1.0; in turbo less.
//!
//! On a virtual machine the host decides how much of a physical core a vCPU gets: on
//! this project's test hosts a loaded vCPU runs at about 0.72 ticks per addition most
//! of the time, with spells of a fraction of a second to several seconds at about
//! 1.2-1.4 (under 60% of the speed), each vCPU on its own. The chain is bound by the
//! core's clock alone: a neighbour sharing the core's caches barely shows in it. Use it to see whether a host does that; a PMD built with
//! `--features step-cycles` runs the same chain inside its loop (switch/src/steps.rs),
//! which tells the speed of the core a measured round ran at.
//!
//! Usage: core_speed [CORE_A CORE_B [MILLIS [SECONDS]]]   (default 0 1 300): the median
//! over MILLIS of samples of about 1.5 ms, per core (`0.72 1.31`); with SECONDS, one line every
//! MILLIS for that long, each with its time, to watch the speed change.

use std::time::Instant;

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("core_speed: cannot pin to core {core}");
        std::process::exit(1);
    }
}

/// Median ticks per addition over `millis` of samples of about 1.5 ms, on `core`.
fn speed(core: usize, millis: u64) -> f64 {
    pin(core);
    const ADDS: u64 = 4_000_000;
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while samples.is_empty() || t0.elapsed().as_millis() < millis as u128 {
        samples.push(pmd::tsc::add_chain(ADDS) as f64 / ADDS as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Both cores at once.
fn both(a: usize, b: usize, millis: u64) -> (f64, f64) {
    let other = std::thread::spawn(move || speed(b, millis));
    let sa = speed(a, millis);
    (sa, other.join().expect("probe thread"))
}

fn main() {
    let arg = |i: usize, d: u64| {
        std::env::args()
            .nth(i)
            .map(|s| s.parse().expect("numeric argument"))
            .unwrap_or(d)
    };
    let (a, b, millis, secs) = (
        arg(1, 0) as usize,
        arg(2, 1) as usize,
        arg(3, 300),
        arg(4, 0),
    );
    if secs == 0 {
        let (sa, sb) = both(a, b, millis);
        println!("{sa:.2} {sb:.2}");
        return;
    }
    let t0 = Instant::now();
    while t0.elapsed().as_secs() < secs {
        let (sa, sb) = both(a, b, millis);
        println!("t={:.1} {sa:.2} {sb:.2}", t0.elapsed().as_secs_f64());
    }
}
