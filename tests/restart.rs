//! Restarting the switch under running guests, as a service manager does on an
//! upgrade (SIGTERM, then a new process) or after a crash (SIGKILL: no clean shutdown,
//! a stale control socket). The switch's ports are in client mode: each QEMU owns and
//! listens on its socket (`server=on,wait=off`), so the guests outlive the switch and
//! the new one connects to them again. Guest A pings guest B every 100 ms the whole
//! time; for each restart the test prints how long the replies stopped and what it
//! was made of, and checks that the stream resumes without either guest restarting.

mod common;
use common::guest::{images, num, Guest, GuestSpec, SocketRole};
use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAC_A: &str = "52:54:00:00:00:0a";
const MAC_B: &str = "52:54:00:00:00:0b";
/// Guest A's ping interval.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long replies may take to resume after the new switch starts: generous, the
/// guests are TCG on a shared two-core machine. The figures printed are the result.
const RESUME_BOUND: Duration = Duration::from_secs(30);
/// Consecutive replies that count as the stream running again.
const STEADY: usize = 20;

/// How the running switch goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `systemctl stop`/`restart`: a clean shutdown first.
    Term,
    /// A crash: the process dies where it stands.
    Kill,
}

/// The replies guest A prints (`VSW-REPLY seq=N`), each with the moment a thread
/// watching its console saw it.
struct Replies {
    seen: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replies {
    fn watch(guest: &Guest) -> Replies {
        let console = guest.console();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut read = 0;
            while !st.load(Ordering::Relaxed) {
                let text = console.lock().unwrap()[read..].to_string();
                let now = Instant::now();
                read += text.len();
                for l in text.lines().filter(|l| l.starts_with("VSW-REPLY seq=")) {
                    s.lock().unwrap().push((num(l, "seq="), now));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Replies {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<(u64, Instant)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `STEADY` replies with consecutive sequence numbers have been seen
    /// at or after `since`; returns every reply so far.
    fn wait_steady(&self, since: Instant, what: &str, a: &Guest) -> Vec<(u64, Instant)> {
        loop {
            let all = self.snapshot();
            let after: Vec<u64> = all
                .iter()
                .filter(|(_, t)| *t >= since)
                .map(|(s, _)| *s)
                .collect();
            if after.len() >= STEADY
                && after[after.len() - STEADY..]
                    .windows(2)
                    .all(|w| w[1] == w[0] + 1)
            {
                return all;
            }
            assert!(
                since.elapsed() < RESUME_BOUND,
                "{what}: no steady ping replies within {RESUME_BOUND:?} ({} since); guest A:\n{}",
                after.len(),
                a.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One restart of the switch.
struct Restart {
    how: Stop,
    /// How long no switch runs between the old one's exit and the new start (an
    /// upgrade replacing the binary; zero for a service manager's restart).
    away: Duration,
}

/// What one restart cost the ping stream.
#[derive(Debug)]
struct Pause {
    /// From the signal to the old process's exit.
    stopped: Duration,
    /// From the signal to the new process starting.
    down: Duration,
    /// From the new process starting to both ports `up=true` in `ctl show`.
    ports_up: Duration,
    /// From the new process starting to the first reply seen.
    first_reply: Duration,
    /// Between the last reply seen before the new start and the first one after.
    silent: Duration,
    /// Pings without a reply between the last one answered before the signal and the
    /// stream running again, and the longest run of them.
    lost: u64,
    longest_lost: u64,
    /// Replies to pings sent while no switch ran, delivered once one did (frames the
    /// guest had queued, waiting for its ARP entry).
    late: usize,
}

impl Pause {
    fn report(&self, r: &Restart) -> String {
        format!(
            "restart after {:?} (away {} s): exited {:.2} s after the signal, new switch started \
             {:.2} s after it; ports up {:.2} s and first reply {:.2} s after the new start; \
             replies stopped for {:.2} s; {} pings lost, longest run {} x {} ms = {:.1} s; \
             {} late replies",
            r.how,
            r.away.as_secs(),
            self.stopped.as_secs_f64(),
            self.down.as_secs_f64(),
            self.ports_up.as_secs_f64(),
            self.first_reply.as_secs_f64(),
            self.silent.as_secs_f64(),
            self.lost,
            self.longest_lost,
            INTERVAL.as_millis(),
            self.longest_lost as f64 * INTERVAL.as_secs_f64(),
            self.late
        )
    }
}

/// Waits until process `pid` has exited (a zombie not yet reaped, or gone).
fn wait_exited(pid: u32) {
    let t0 = Instant::now();
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name in parentheses.
            Ok(st)
                if !st
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z')) => {}
            _ => return,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "switch {pid} did not exit"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stops `sw` as `r` says, starts a new switch on the same config, and measures the
/// gap in guest A's ping replies.
fn restart(
    sw: Switch,
    r: &Restart,
    cfg: &Path,
    ctl: &Path,
    replies: &Replies,
    a: &Guest,
) -> (Switch, Pause) {
    let before = replies.snapshot();
    let last_answered = before.last().expect("replies before the restart").0;
    let t_signal = Instant::now();
    let stopped = match r.how {
        Stop::Term => {
            let pid = sw.pid();
            let st = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            wait_exited(pid);
            let stopped = t_signal.elapsed();
            let log = sw.stop(); // reaps it, checks its exit status and log
            assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
            stopped
        }
        Stop::Kill => {
            sw.kill9();
            t_signal.elapsed()
        }
    };
    std::thread::sleep(r.away);
    let t_start = Instant::now();
    let sw = Switch::start(cfg, ctl.to_path_buf());
    wait_both_up(&sw);
    let ports_up = t_start.elapsed();
    let all = replies.wait_steady(t_start, &format!("after {:?}", r.how), a);
    let last_before = all.iter().rev().find(|(_, t)| *t < t_start).unwrap();
    let first_after = all.iter().find(|(_, t)| *t >= t_start).unwrap();
    // Sequence numbers from the last answered before the signal to the newest.
    let mut got: Vec<u64> = all
        .iter()
        .map(|(s, _)| *s)
        .filter(|&s| s >= last_answered)
        .collect();
    got.sort_unstable();
    got.dedup();
    let (mut lost, mut longest_lost) = (0, 0);
    for w in got.windows(2) {
        let gap = w[1] - w[0] - 1;
        lost += gap;
        longest_lost = longest_lost.max(gap);
    }
    // Replies to pings the guest sent before the new switch started (by the sequence
    // number: one per INTERVAL after the last answered) that came back after it: the
    // guest held them while it could not resolve its peer, and sent them at once.
    let last_answered_at = before.last().unwrap().1;
    let sent_before_start = last_answered
        + (t_start - last_answered_at).as_millis() as u64 / INTERVAL.as_millis() as u64;
    let late = all
        .iter()
        .filter(|(s, t)| *t >= t_start && *s > last_answered && *s < sent_before_start)
        .count();
    let pause = Pause {
        stopped,
        down: t_start - t_signal,
        ports_up,
        first_reply: first_after.1 - t_start,
        silent: first_after.1 - last_before.1,
        lost,
        longest_lost,
        late,
    };
    assert!(
        pause.first_reply < RESUME_BOUND,
        "replies resumed only after {:?}",
        pause.first_reply
    );
    (sw, pause)
}

/// The guest's latest `VSW-CARRIER c down=N up=N`: the link state and the kernel's
/// counts of link losses and returns since boot.
fn carrier(g: &Guest) -> (u64, u64, u64) {
    let out = g.output();
    let l = out
        .lines()
        .rfind(|l| l.starts_with("VSW-CARRIER"))
        .unwrap_or_else(|| panic!("no VSW-CARRIER line:\n{out}"));
    (num(l, "VSW-CARRIER "), num(l, "down="), num(l, "up="))
}

/// Waits until the guest's link is up having been lost at least `losses` times since
/// boot; returns that count.
fn wait_link_back(g: &Guest, name: &str, losses: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let (up, down, _) = carrier(g);
        if up == 1 && down >= losses {
            return down;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "guest {name}: link not lost {losses} times and back; console:\n{}",
            g.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn guests_keep_their_traffic_across_switch_restart_and_crash() {
    restarts(Rings::Split);
}

/// Packed rings resume where the ring says: QEMU sends the new switch the ring base
/// of the last GET_VRING_BASE, stale after a restart or crash.
#[test]
fn guests_on_packed_rings_keep_their_traffic_across_switch_restart_and_crash() {
    restarts(Rings::Packed);
}

/// The guests' virtqueue layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rings {
    Split,
    Packed,
}

fn restarts(rings: Rings) {
    let img = images();
    let dir = Scratch::new(if rings == Rings::Packed {
        "restart-packed"
    } else {
        "restart"
    });
    let ports: Vec<PortSpec> = ["vm1", "vm2"]
        .into_iter()
        .map(|name| PortSpec {
            name,
            mode: "client",
            queues: 1,
        })
        .collect();
    let cfg = write_config(&dir, &ports, "tx_stall_ms = 1000");
    let ctl = dir.path("ctl.sock");
    let count = 3000; // 300 s of pings at most; the test ends well before
    let mut a = Guest::launch(&GuestSpec {
        name: "guest-a",
        sock: dir.path("vm1.sock"),
        mac: MAC_A,
        append: &format!(
            "vsw.ip=10.0.0.1/24 vsw.role=pingstream vsw.peer=10.0.0.2 vsw.interval={} vsw.count={count} vsw.wait=240 vsw.secs=600",
            INTERVAL.as_secs_f64()
        ),
        images: &img,
        socket: SocketRole::QemuListens,
        mem_path: None,
        user: None,
        host_mtu: None,
        no_offloads: false,
        packed: rings == Rings::Packed,
        qemu_args: &[],
    });
    let mut b = Guest::launch(&GuestSpec {
        name: "guest-b",
        sock: dir.path("vm2.sock"),
        mac: MAC_B,
        append: "vsw.ip=10.0.0.2/24 vsw.role=idle vsw.secs=600",
        images: &img,
        socket: SocketRole::QemuListens,
        mem_path: None,
        user: None,
        host_mtu: None,
        no_offloads: false,
        packed: rings == Rings::Packed,
        qemu_args: &[],
    });
    // QEMU creates its listening socket at once, then waits for a backend.
    let t0 = Instant::now();
    while !(dir.path("vm1.sock").exists() && dir.path("vm2.sock").exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "QEMU made no sockets:\n{}\n{}",
            a.output(),
            b.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sw = Switch::start(&cfg, ctl.clone());
    wait_both_up(&sw);
    let layout = format!(
        "layout={} ",
        if rings == Rings::Packed {
            "packed"
        } else {
            "split"
        }
    );
    let show = sw.ctl("show");
    assert_eq!(show.matches(&layout).count(), 2, "show:\n{show}");
    let replies = Replies::watch(&a);
    a.wait_line("VSW-STREAM-START", Duration::from_secs(300));
    replies.wait_steady(Instant::now(), "first switch", &a);
    let a_boot = wait_link_back(&a, "A", 0);
    let b_boot = wait_link_back(&b, "B", 0);

    // A service manager's restart, a crash and its restart, and an upgrade (the switch
    // away for 3 s). What the guests see: a link loss each time (QEMU takes the link
    // down when its backend goes, and up when one has set the rings up again).
    let mut sw = sw;
    let restarts = [
        Restart {
            how: Stop::Term,
            away: Duration::ZERO,
        },
        Restart {
            how: Stop::Kill,
            away: Duration::ZERO,
        },
        Restart {
            how: Stop::Term,
            away: Duration::from_secs(3),
        },
    ];
    for (i, r) in restarts.iter().enumerate() {
        let (next, pause) = restart(sw, r, &cfg, &ctl, &replies, &a);
        sw = next;
        eprintln!("{}", pause.report(r));
        wait_link_back(&a, "A", a_boot + i as u64 + 1);
    }
    let n = restarts.len() as u64;
    let a_losses = wait_link_back(&a, "A", a_boot + n) - a_boot;
    let b_losses = wait_link_back(&b, "B", b_boot + n) - b_boot;
    eprintln!(
        "link losses over the {n} restarts (the kernel's carrier_down_count): guest A \
         {a_losses}, guest B {b_losses}; each link came back without the guest doing anything"
    );

    // Both guests are the ones booted at first: QEMU still running, one boot each.
    for (g, name) in [(&mut a, "A"), (&mut b, "B")] {
        assert!(g.is_running(), "guest {name}'s QEMU exited");
        assert_eq!(
            g.output().matches("VSW-BOOTED").count(),
            1,
            "guest {name} booted again"
        );
    }
    let show = sw.ctl("show");
    assert_eq!(show.matches("connections=1 ").count(), 2, "show:\n{show}");
    assert_eq!(show.matches(&layout).count(), 2, "show:\n{show}");
    let stats = sw.port_stats("vm1");
    assert_eq!(stats["guest_errors"], 0, "guest errors: {stats:?}");
    let log = sw.stop();
    assert!(log.contains("free_mbufs=8192"), "mbufs leaked:\n{log}");
    drop(replies);
}
