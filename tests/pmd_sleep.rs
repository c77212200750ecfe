//! Idle PMD threads that sleep (`switch.pmd_sleep_max_us`). With nothing to do, the
//! thread spends most of its time asleep (its core is the host's again); frames end a
//! sleep at once — a tap device's, and a vhost-user guest's kick, which the ring asks
//! for only while the thread sleeps — so the wait's maximum (10 ms here) is not added
//! to each frame. Each test counts the sleeps that a port ended (`sleep_wakes`): a
//! sleep that only timed out says nothing woke the thread.

mod common;
use common::guest::{images, num, Guest};
use common::netns::{sh, NsDevice};
use common::*;
use std::time::Duration;

const SLEEP: &str = "pmd_sleep_max_us = 10000";

/// The PMD thread's sleeping counters, from `ctl --json stats`.
#[derive(Debug, Clone, Copy)]
struct Sleeps {
    sleeps: u64,
    wakes: u64,
    /// Cycles asleep, and all cycles (busy and idle) so far.
    asleep: u64,
    cycles: u64,
}

fn sleeps(sw: &Switch) -> Sleeps {
    let v: serde_json::Value =
        serde_json::from_str(&sw.ctl_ok(&["--json", "stats"])).expect("stats JSON");
    let p = &v["pmds"][0];
    let n = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("no {k} in {p}"));
    Sleeps {
        sleeps: n("sleeps"),
        wakes: n("sleep_wakes"),
        asleep: n("sleep_cycles"),
        cycles: n("busy_cycles") + n("idle_cycles"),
    }
}

/// While nothing moves for two seconds the thread sleeps at least half the time.
fn check_idle_sleep(sw: &Switch) {
    let a = sleeps(sw);
    std::thread::sleep(Duration::from_secs(2));
    let b = sleeps(sw);
    let share = (b.asleep - a.asleep) as f64 / (b.cycles - a.cycles).max(1) as f64;
    eprintln!(
        "idle 2 s: {} sleeps, {:.0}% of the thread's time asleep",
        b.sleeps - a.sleeps,
        share * 100.0
    );
    assert!(b.sleeps > a.sleeps, "the idle PMD thread did not sleep");
    assert!(
        share > 0.5,
        "the idle PMD thread slept {:.0}% of the time",
        share * 100.0
    );
}

#[test]
fn an_idle_pmd_sleeps_and_tap_frames_wake_it() {
    let dir = Scratch::new("sleep-tap");
    let id = std::process::id() % 100_000;
    let (ta, tb) = (format!("vs{id}sa"), format!("vs{id}sb"));
    let tap = |name: &str, iface: &str| {
        format!("[[port]]\nname = \"{name}\"\ndriver = \"tap\"\niface = \"{iface}\"\n")
    };
    let cfg = write_config_ports(&dir, &(tap("ta", &ta) + &tap("tb", &tb)));
    // write_config_ports has no place for [switch] keys: add ours to its section.
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[switch]\n",
        &format!("[switch]\n{SLEEP}\n"),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let a = NsDevice::adopt("sa", &ta, "10.0.12.1/24");
    let b = NsDevice::adopt("sb", &tb, "10.0.12.2/24");
    check_idle_sleep(&sw);

    // Ten pings 0.2 s apart: the thread is asleep when each request comes.
    let before = sleeps(&sw);
    let o = sh(
        "ip",
        &[
            "netns", "exec", &a.ns, "ping", "-c", "10", "-i", "0.2", "-W", "2", &b.ip,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let after = sleeps(&sw);
    eprintln!(
        "{}; {} sleeps, {} ended by a frame",
        out.lines().last().unwrap_or(""),
        after.sleeps - before.sleeps,
        after.wakes - before.wakes
    );
    assert!(
        out.contains("10 received"),
        "pings through a sleeping PMD thread: {out}"
    );
    assert!(
        after.wakes - before.wakes >= 10,
        "tap frames did not end the thread's sleeps: {before:?} -> {after:?}"
    );
    drop((a, b));
    sw.stop();
}

#[test]
fn guest_kicks_wake_a_sleeping_pmd() {
    let img = images();
    let dir = Scratch::new("sleep-qemu");
    let cfg = write_config(&dir, &server_ports(&["vm1", "vm2"]), SLEEP);
    let sw = Switch::start(&cfg, dir.path("ctl.sock"));
    let a = Guest::boot(
        "guest-a",
        dir.path("vm1.sock"),
        "52:54:00:00:0c:0a",
        "vsw.ip=10.0.13.1/24 vsw.role=ping vsw.peer=10.0.13.2 vsw.count=10 vsw.wait=240",
        &img,
    );
    let b = Guest::boot(
        "guest-b",
        dir.path("vm2.sock"),
        "52:54:00:00:0c:0b",
        "vsw.ip=10.0.13.2/24 vsw.role=sink vsw.secs=60",
        &img,
    );
    a.wait_line("VSW-PEER-UP", Duration::from_secs(300));
    let before = sleeps(&sw);
    let ping = a.wait_line("VSW-PING", Duration::from_secs(120));
    let after = sleeps(&sw);
    eprintln!(
        "{ping}; {} sleeps, {} ended by a kick",
        after.sleeps - before.sleeps,
        after.wakes - before.wakes
    );
    assert_eq!(num(&ping, "received="), 10, "pings between the guests");
    // Only the guests' kick eventfds can end a sleep here. Pings are a second apart,
    // and a TCG guest takes far longer than the thread's spin to answer: each request
    // (A's kick) and each reply (B's kick) comes while the thread sleeps, 20 in all,
    // fewer only if the first ping went before the count began.
    assert!(
        after.wakes - before.wakes >= 16,
        "guest kicks did not end the thread's sleeps: {before:?} -> {after:?}"
    );
    check_idle_sleep(&sw);
    a.wait_exit(Duration::from_secs(60));
    drop(b);
    sw.stop();
}
