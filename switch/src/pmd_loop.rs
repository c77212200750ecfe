//! The PMD loop: one thread per configured core, busy-polling its rx queues,
//! switching each burst through the forwarding table, and sending per output port.
//!
//! Per iteration (and, every 64 of them, a quiescent state and the publication of this
//! thread's traffic counters): retry output queues that are backed up, poll each
//! assigned rx queue for a burst of up to 32 frames (skipped while an output queue is
//! nearly full: backpressure keeps the frames in the sender's ring rather than dropping
//! them; a skipped queue is only settled, see `Port::settle`), learn, look up, and
//! queue each frame on its output port(s); then send every touched output queue once.
//!
//! A frame waits on an output queue until the guest has room, but a guest must keep
//! up a minimum rate to be waited for: the queue's stall clock starts when frames are
//! first left waiting and restarts only when the queue empties or the guest has taken
//! a whole queue's worth (`TXQ_CAP`, 256 frames) since it started. When the clock
//! passes `tx_stall`, the queue is dropped and counted (`drop_tx_full`) and the port is
//! marked congested: frames it has no room for are dropped at once and it no longer
//! holds back rx, until it takes a whole queue's worth again without a drop.
//!
//! Why a minimum rate and not "the queue must drain within `tx_stall`": a guest that
//! is slower than its senders but working (a TCG guest receiving pktgen) keeps its
//! queue from ever draining, because backpressure refills it as it takes frames; it
//! should be waited for, losslessly. Any progress, as before, is not enough: a guest
//! offering one buffer just inside every `tx_stall` held every other port to its rate
//! forever. With the rate, a guest that takes fewer than 256 frames per `tx_stall`
//! (2560/s at 100 ms) costs the others one `tx_stall` pause, and another only after it
//! has shown it keeps up again; one that takes more holds the senders to its rate (the
//! price of lossless: lower `tx_stall_ms` to trade it for drops).

use crate::capture::Taps;
use crate::fdb::{Fdb, Learned, PortNo};
use crate::frame::{self, FrameError};
use crate::latency::Recorder;
use crate::plan::{EndGuard, Mailbox, PollPlan, MAX_PORTS};
use crate::sleep::Sleeper;
use crate::stats::{cycles, PmdStats, BURST_BUCKETS};
use crate::steps::{Step, StepClock};
use crate::vlan::{self, Egress};
use pmd::port::{PortStats, Traffic, TxLane, BURST};
use pmd::rcu::RcuThread;
use pmd::{Mbuf, MempoolCache};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loop iterations between quiescent-state announcements (a power of two): a grace
/// period waits at most this many iterations, a few microseconds.
const QUIESCE_EVERY: u64 = 64;

/// Frames one output queue holds.
pub const TXQ_CAP: usize = 256;

/// A PMD thread's output queue for one port.
/// Frames live in `pkts[head..end]`: sending advances `head`, so a partial send
/// moves nothing; the array is compacted only when the tail has no room for a burst.
pub(crate) struct TxQueue {
    pkts: Box<[Option<Mbuf>]>,
    head: usize,
    end: usize,
    /// When the stall clock started (cycles; 0: not running): frames were left waiting,
    /// and since then the queue has not emptied nor the guest taken `TXQ_CAP` frames.
    stalled_since: u64,
    /// Frames the guest took since the stall clock started; when congested, since
    /// the last drop.
    taken: usize,
    /// The guest stalled past `tx_stall`: no backpressure for it until it takes a
    /// whole queue's worth without a drop.
    congested: bool,
    /// With latency histograms: for each frame in `pkts[head..stamped]`, when the
    /// poll that received it began (cycles); written per burst, only when on.
    stamps: Box<[u64]>,
    stamped: usize,
    /// With captures running: frames in `pkts[..cap_mark]` were captured.
    cap_mark: usize,
    /// Frames with offload metadata were queued since the queue last emptied: it is
    /// sent with `Port::tx_burst_offload`.
    pub(crate) offload: bool,
    /// Frames that did not fit yet (the rest of a TSO frame being cut, and those
    /// behind it), moved in as the queue drains (`egress::resume`); while any wait,
    /// the queue counts as backed up.
    pub(crate) waiting: crate::egress::Waiting,
}

impl TxQueue {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.head
    }
    /// Frames the queue can still take (after a compaction, which `push` makes).
    pub(crate) fn room(&self) -> usize {
        TXQ_CAP - self.len()
    }
    /// Empties the queue's bookkeeping (its frames are gone).
    #[inline(always)]
    fn reset(&mut self) {
        self.head = 0;
        self.end = 0;
        self.stamped = 0;
        self.cap_mark = 0;
        self.offload = false;
    }
    /// Makes room at the tail for a burst if the queue itself has it.
    #[inline]
    fn compact(&mut self) {
        if self.head > 0 && self.end > TXQ_CAP - BURST {
            let n = self.len();
            self.pkts[..self.end].rotate_left(self.head);
            self.stamps[..self.end].rotate_left(self.head);
            self.stamped = self.stamped.saturating_sub(self.head);
            self.cap_mark = self.cap_mark.saturating_sub(self.head);
            self.head = 0;
            self.end = n;
        }
    }
    fn new() -> TxQueue {
        TxQueue {
            pkts: (0..TXQ_CAP).map(|_| None).collect(),
            head: 0,
            end: 0,
            stalled_since: 0,
            taken: 0,
            congested: false,
            stamps: vec![0; TXQ_CAP].into_boxed_slice(),
            stamped: 0,
            cap_mark: 0,
            offload: false,
            waiting: crate::egress::Waiting::new(),
        }
    }
}

pub struct PmdContext {
    pub index: usize,
    /// This thread's right to transmit (sole when it is the only PMD thread: no tx lock).
    pub lane: TxLane,
    pub core: Option<usize>,
    /// Where the control plane leaves this thread's next plan.
    pub mailbox: Arc<Mailbox>,
    pub fdb: Arc<Fdb>,
    pub cache: MempoolCache,
    pub stats: Arc<PmdStats>,
    pub rcu: Arc<RcuThread>,
    pub stop: Arc<AtomicBool>,
    /// Start of the switch's clock (seconds for the forwarding table).
    pub epoch: Instant,
    pub tx_stall: Duration,
    /// Longest wait of this thread when idle (zero: it busy-polls).
    pub sleep_max: Duration,
    pub tsc_hz: u64,
    /// This thread's traffic per port number (`MAX_PORTS` of them), published to
    /// `stats` every few iterations.
    pub traffic: Vec<Traffic>,
    /// Where this thread records latency (`None`: histograms are off).
    pub latency: Option<Recorder>,
}

/// Runs the loop until `stop` is set, starting with `plan` (the plan the mailbox was
/// made with). The plan is kept apart from `cx` and lent to each step: the compiler
/// then keeps the port table at hand for a whole burst.
pub fn run(mut cx: PmdContext, mut plan: Arc<PollPlan>) {
    if let Some(core) = cx.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(core, "could not pin PMD thread to core");
        }
    }
    // However this thread ends (a panic included), the control plane stops waiting
    // for it: its mailbox is ended and it leaves the grace periods.
    let _end = EndGuard {
        mailbox: cx.mailbox.clone(),
        rcu: cx.rcu.clone(),
    };
    // The first load from an arc-swap cell sets up this thread's slot (an allocation):
    // done here, not on the first plan change.
    drop(cx.mailbox.take());
    tracing::info!(pmd = cx.index, core = ?cx.core, "PMD thread polling");
    let mut st = LoopState::new(&cx);
    st.serviced.follow(&plan);
    if st.sleeper.enabled() {
        if let Err(e) = pmd::idle::set_timer_slack(1) {
            tracing::warn!(pmd = cx.index, "could not set the timer slack: {e}");
        }
    }
    while !cx.stop.load(Relaxed) {
        if st.iters & (QUIESCE_EVERY - 1) == 0 {
            st.housekeeping(&mut cx, &mut plan);
        }
        if st.iters & 1023 == 0 {
            st.now_secs = cx.epoch.elapsed().as_secs() as u32;
            st.clock.probe();
        }
        let did = st.flush_backlog(&mut cx, &plan) + st.receive(&mut cx, &plan);
        st.account(&mut cx, did);
        if did == 0 && st.sleeper.idle(st.last) && st.queues_empty(&plan) && st.sleeper.rest(&plan)
        {
            st.slept(&mut cx, &mut plan);
        }
    }
    // Give back every frame still queued.
    for (p, t) in st.txq[..plan.ports.len()].iter_mut().enumerate() {
        drop_queue(&mut cx, &plan, t, p, |s| &s.drop_tx_down);
    }
    publish(&cx, &plan);
    cx.rcu.offline();
    tracing::info!(pmd = cx.index, "PMD thread stopped");
}

/// What a PMD thread keeps from one iteration to the next.
struct LoopState {
    /// An output queue per port number: every number has its queue from the start,
    /// so a port added later costs this thread no allocation.
    txq: Vec<TxQueue>,
    burst: [Option<Mbuf>; BURST],
    /// `tx_stall` in cycles.
    stall_cycles: u64,
    /// The switch's clock in seconds, for the forwarding table (updated now and then).
    now_secs: u32,
    /// The cycle count when the current iteration began.
    last: u64,
    busy: u64,
    idle: u64,
    packets: u64,
    iters: u64,
    /// Iterations that held rx back.
    bp: u64,
    /// The captures this thread copies frames into.
    taps: Taps,
    /// Burst-size histograms: frames per rx poll, frames per tx burst.
    rx_sizes: [u64; BURST_BUCKETS],
    tx_sizes: [u64; BURST_BUCKETS],
    /// Cycles per step (counted in `step-cycles` builds only).
    clock: StepClock,
    /// When this thread sleeps while idle.
    sleeper: Sleeper,
    sleep_cycles: u64,
    /// The ports this thread calls `Port::service` on.
    serviced: Box<Serviced>,
}

impl LoopState {
    fn new(cx: &PmdContext) -> LoopState {
        LoopState {
            txq: (0..MAX_PORTS).map(|_| TxQueue::new()).collect(),
            burst: Default::default(),
            stall_cycles: (cx.tx_stall.as_secs_f64() * cx.tsc_hz as f64) as u64,
            now_secs: 0,
            last: cycles(),
            busy: 0,
            idle: 0,
            packets: 0,
            iters: 0,
            bp: 0,
            taps: Taps::new(cx.index),
            rx_sizes: [0; BURST_BUCKETS],
            tx_sizes: [0; BURST_BUCKETS],
            clock: StepClock::default(),
            sleeper: Sleeper::new(cx.sleep_max, cx.tsc_hz),
            sleep_cycles: 0,
            serviced: Box::new(Serviced::new()),
        }
    }

    /// Every `QUIESCE_EVERY` iterations and after each sleep: a quiescent point, a new
    /// plan taken up if there is one, counters published.
    fn housekeeping(&mut self, cx: &mut PmdContext, plan: &mut Arc<PollPlan>) {
        cx.rcu.quiescent();
        if cx.mailbox.changed(plan.gen) {
            reload(cx, &mut self.txq, &mut self.taps, plan);
            self.serviced.follow(plan);
        }
        if let Some(r) = &mut cx.latency {
            r.swap(plan.gen);
        }
        if self.serviced.n != 0 {
            service(cx, plan, &self.serviced);
        }
        publish(cx, plan);
        cx.stats.rx_bursts.publish(&self.rx_sizes);
        cx.stats.tx_bursts.publish(&self.tx_sizes);
        cx.stats.steps.publish(&self.clock);
    }

    /// Whether no output queue holds frames (a thread with frames waiting for a ring's
    /// room keeps polling).
    fn queues_empty(&self, plan: &PollPlan) -> bool {
        self.txq[..plan.ports.len()].iter().all(|t| t.len() == 0)
    }

    /// After a sleep: its time counts as idle (not in the next iteration, which may
    /// move frames), and the thread takes up what changed while it slept.
    #[cold]
    fn slept(&mut self, cx: &mut PmdContext, plan: &mut Arc<PollPlan>) {
        let now = cycles();
        self.idle += now - self.last;
        self.sleep_cycles += now - self.last;
        self.last = now;
        // The forwarding table's clock, which idle iterations (far fewer now) would
        // otherwise leave behind.
        self.now_secs = cx.epoch.elapsed().as_secs() as u32;
        cx.stats.idle_cycles.store(self.idle, Relaxed);
        cx.stats.sleeps.store(self.sleeper.sleeps, Relaxed);
        cx.stats.sleep_wakes.store(self.sleeper.wakes, Relaxed);
        cx.stats.sleep_cycles.store(self.sleep_cycles, Relaxed);
        self.housekeeping(cx, plan);
    }

    /// Step 1: output queues still backed up from earlier bursts. Returns frames sent.
    #[inline(always)]
    fn flush_backlog(&mut self, cx: &mut PmdContext, plan: &PollPlan) -> usize {
        let mut did = 0;
        self.clock.start();
        for (p, t) in self.txq[..plan.ports.len()].iter_mut().enumerate() {
            if t.len() > 0 {
                // Frames queued before this thread stamped them: from this iteration.
                let oldest = if t.stamped > t.head {
                    t.stamps[t.head]
                } else {
                    self.last
                };
                let sent = flush(cx, plan, t, &mut self.taps, p, self.last, self.stall_cycles);
                if let Some(r) = &mut cx.latency {
                    time_sent(r, p, oldest, sent);
                }
                self.tx_sizes[sent.min(BURST_BUCKETS - 1)] += 1;
                did += sent;
            }
        }
        self.clock.mark(Step::Tx);
        did
    }

    /// Step 2: receive and switch, queue by queue; before each burst, stop if an output
    /// queue has no room for one (a burst adds at most one frame per input frame to a
    /// queue). Each busy queue is charged the cycles since the previous stamp (the
    /// empty polls before it included): one cycle-counter read per busy queue.
    /// Returns frames received.
    #[inline(always)]
    fn receive(&mut self, cx: &mut PmdContext, plan: &PollPlan) -> usize {
        let nports = plan.ports.len();
        let mut did = 0;
        let mut stamp = self.last;
        for (i, rxq) in plan.rxqs.iter().enumerate() {
            if backed_up(&self.txq[..nports]) {
                self.bp += 1;
                settle(plan, i);
                break;
            }
            let port = rxq.port;
            let Some(rx) = plan.port(port) else {
                continue;
            };
            let offload_before = cx.traffic[port].rx_offload;
            let n = rx.rx_burst(
                rxq.queue,
                &mut cx.cache,
                &mut self.burst,
                &mut cx.traffic[port],
            );
            self.rx_sizes[n.min(BURST_BUCKETS - 1)] += 1;
            if n == 0 {
                continue;
            }
            self.clock.mark(Step::Rx);
            if plan.capture_on {
                self.taps.rx(&plan.vlans, port, &self.burst[..n], stamp);
            }
            self.packets += n as u64;
            did += n;
            let (txq, frames) = (&mut self.txq, &mut self.burst[..n]);
            let now = self.now_secs;
            // The egress step, per frame, only for bursts that need it.
            let egress = plan.mtu_on || cx.traffic[port].rx_offload != offload_before;
            match (plan.vlan_on, egress) {
                (false, false) => switch_burst::<false, false>(cx, plan, txq, port, frames, now),
                (true, false) => switch_burst::<true, false>(cx, plan, txq, port, frames, now),
                (false, true) => switch_burst::<false, true>(cx, plan, txq, port, frames, now),
                (true, true) => switch_burst::<true, true>(cx, plan, txq, port, frames, now),
            }
            self.clock.mark(Step::Switch);
            for (p, t) in self.txq[..nports].iter_mut().enumerate() {
                if t.len() > 0 {
                    // Frames not stamped yet came with this burst (see `stamp_rest`).
                    let oldest = if t.stamped > t.head {
                        t.stamps[t.head]
                    } else {
                        stamp
                    };
                    let sent = flush(cx, plan, t, &mut self.taps, p, self.last, self.stall_cycles);
                    if let Some(r) = &mut cx.latency {
                        time_sent(r, p, oldest, sent);
                        stamp_rest(t, stamp);
                    }
                    self.tx_sizes[sent.min(BURST_BUCKETS - 1)] += 1;
                }
            }
            self.clock.mark(Step::Tx);
            let t = cycles();
            rxq.load.add(t.wrapping_sub(stamp));
            stamp = t;
        }
        self.clock.mark(Step::Rx); // the empty polls after the last busy one
        did
    }

    /// Ends an iteration: its cycles count as busy if it moved a frame, and the
    /// thread's counters are published (plain stores).
    #[inline(always)]
    fn account(&mut self, cx: &mut PmdContext, did: usize) {
        let now = cycles();
        self.clock.end_iteration(did > 0);
        if did > 0 {
            if let Some(r) = &mut cx.latency {
                r.set.iteration(now - self.last);
            }
            self.busy += now - self.last;
            self.sleeper.busy(now);
        } else {
            self.idle += now - self.last;
        }
        self.last = now;
        self.iters += 1;
        let s = &cx.stats;
        s.busy_cycles.store(self.busy, Relaxed);
        s.idle_cycles.store(self.idle, Relaxed);
        s.packets.store(self.packets, Relaxed);
        s.iterations.store(self.iters, Relaxed);
        s.backpressure.store(self.bp, Relaxed);
    }
}

/// The port numbers of the plan's ports that want [`Port::service`] calls
/// (underlays, tunnels), found when the thread takes up a plan. Kept by the thread,
/// not in the plan, which stays as small as it was.
struct Serviced {
    ports: [u16; MAX_PORTS],
    n: usize,
}

impl Serviced {
    fn new() -> Serviced {
        Serviced {
            ports: [0; MAX_PORTS],
            n: 0,
        }
    }
    #[cold]
    fn follow(&mut self, plan: &PollPlan) {
        self.n = 0;
        for (i, p) in plan.ports.iter().enumerate() {
            if p.as_ref().is_some_and(|p| p.wants_service()) {
                self.ports[self.n] = i as u16;
                self.n += 1;
            }
        }
    }
}

/// The ports' own work (`Port::service`: underlays' ARP, tunnels' aging).
#[inline(never)]
fn service(cx: &mut PmdContext, plan: &PollPlan, s: &Serviced) {
    for &p in &s.ports[..s.n] {
        let p = p as usize;
        if let Some(port) = plan.port(p) {
            port.service(&cx.lane, &mut cx.cache, &mut cx.traffic[p]);
        }
    }
}

/// Takes up the plan waiting in the mailbox. A port number whose port left (or now
/// names another port) has its queued frames freed (counted as `drop_tx_down` of the
/// port that left) and this thread's counters for it reset; then the old plan is
/// dropped and only then the new plan's generation acknowledged: the control plane
/// keeps the old plan until that acknowledgement, so the reference dropped here is
/// never the last one, and nothing is freed on this thread.
fn reload(cx: &mut PmdContext, txq: &mut [TxQueue], taps: &mut Taps, plan: &mut Arc<PollPlan>) {
    let new = cx.mailbox.take();
    if taps.follow(&new.captures) {
        // A new capture starts with the frames queued now, whatever earlier captures
        // took of them.
        for t in txq.iter_mut() {
            t.cap_mark = t.head;
        }
    }
    let old: &PollPlan = plan;
    let n = old.ports.len().max(new.ports.len());
    for (p, t) in txq[..n].iter_mut().enumerate() {
        let same = match (old.port(p), new.port(p)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            continue;
        }
        if old.port(p).is_some() {
            drop_queue(cx, old, t, p, |s| &s.drop_tx_down);
        }
        t.congested = false;
        if let Some(r) = &mut cx.latency {
            r.set.forget(p);
        }
        cx.traffic[p] = Traffic::default();
        cx.stats.traffic[p].publish(&cx.traffic[p]);
    }
    let gen = new.gen;
    *plan = new;
    cx.mailbox.ack(gen);
}

/// Publishes this thread's per-port traffic for the control plane.
fn publish(cx: &PmdContext, plan: &PollPlan) {
    let n = plan.ports.len();
    for (t, out) in cx.traffic[..n].iter().zip(cx.stats.traffic.iter()) {
        out.publish(t);
    }
}

/// While backpressure keeps rx queues `from..` from being polled, lets their ports
/// finish what earlier bursts left owed (interrupts to the guest).
fn settle(plan: &PollPlan, from: usize) {
    for rxq in &plan.rxqs[from..] {
        if let Some(p) = plan.port(rxq.port) {
            p.settle(rxq.queue);
        }
    }
}

/// What the previous frame of the same burst found: a burst usually carries few
/// flows, so a frame from the same station to the same destination skips the table.
/// It lives for one burst, so it is never older than the table by more than that.
#[derive(Default)]
struct Memo {
    /// Source (MAC, VLAN, valid bit) learned without refusal by this burst.
    src: u64,
    /// Destination (MAC, VLAN, valid bit) and the table's answer for it.
    dst: u64,
    out: Option<PortNo>,
}

/// A MAC and VLAN as one word, with bit 63 set so that 0 means "none".
#[inline(always)]
fn word(mac: &[u8], vlan: u16) -> u64 {
    1 << 63
        | (vlan as u64) << 48
        | u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// Switches a burst received on `in_port`. `VLAN`: whether some port has a VLAN mode
/// (`PollPlan::vlan_on`); `EGRESS`: whether frames go through the egress step
/// (`egress`: the ports' MTUs differ, or the burst carries offload requests). Both
/// are decided once per burst, so that a switch of plain trunks of one MTU carries no
/// VLAN, length or offload test per frame.
#[inline]
fn switch_burst<const VLAN: bool, const EGRESS: bool>(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    in_port: usize,
    burst: &mut [Option<Mbuf>],
    now: u32,
) {
    let mut memo = Memo::default();
    for slot in burst.iter_mut() {
        let m = slot.take().expect("rx_burst filled it");
        switch_one::<VLAN, EGRESS>(cx, plan, txq, in_port, m, now, &mut memo);
    }
}

#[inline(always)]
fn switch_one<const VLAN: bool, const EGRESS: bool>(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    in_port: usize,
    m: Mbuf,
    now: u32,
    memo: &mut Memo,
) {
    let l2 = match frame::parse(m.data()) {
        Ok(l2) => l2,
        Err(FrameError::Runt) => {
            count(plan, in_port, |s| &s.drop_runt);
            cx.cache.free(m);
            return;
        }
    };
    let vlan = if VLAN {
        match plan.vlans[in_port].ingress(l2.tagged.then_some(l2.vlan)) {
            Some(v) => v,
            None => {
                count(plan, in_port, |s| &s.drop_vlan);
                cx.cache.free(m);
                return;
            }
        }
    } else {
        l2.vlan
    };
    let src_w = word(l2.src_bytes(), vlan);
    if src_w != memo.src {
        let src = l2.src();
        if !src.is_multicast() {
            match cx.fdb.learn(src, vlan, in_port as PortNo, now) {
                Learned::Refused => count(plan, in_port, |s| &s.learn_refused),
                Learned::Known => memo.src = src_w,
                Learned::New | Learned::Moved => {
                    memo.src = src_w;
                    if memo.dst == src_w {
                        memo.dst = 0; // the answer for it just changed
                    }
                }
            }
        }
    }
    let dst_w = word(l2.dst_bytes(), vlan);
    let out = if dst_w == memo.dst {
        memo.out
    } else {
        let dst = l2.dst();
        let out = if dst.is_multicast() {
            None
        } else {
            cx.fdb.lookup(dst, vlan)
        };
        memo.dst = dst_w;
        memo.out = out;
        out
    };
    match out.map(usize::from) {
        Some(p) if p == in_port => {
            count(plan, in_port, |s| &s.drop_hairpin);
            cx.cache.free(m);
        }
        // A number without a port: it left and its entries are being flushed.
        Some(p) => match plan.port(p) {
            Some(op) if !op.is_up() => {
                PortStats::add(&op.stats().drop_tx_down, 1);
                cx.cache.free(m);
            }
            Some(_) => send_to::<VLAN, EGRESS>(cx, plan, txq, p, m, vlan),
            None => flood::<VLAN, EGRESS>(cx, plan, txq, in_port, m, vlan),
        },
        None => flood::<VLAN, EGRESS>(cx, plan, txq, in_port, m, vlan),
    }
}

/// Counts one event of port `p` (a drop: off the fast path).
#[cold]
#[inline(never)]
pub(crate) fn count(plan: &PollPlan, p: usize, ctr: fn(&PortStats) -> &AtomicU64) {
    if let Some(port) = plan.port(p) {
        PortStats::add(ctr(port.stats()), 1);
    }
}

/// Queues a frame of VLAN `vlan` for port `p`, tagged as the port's VLAN mode says;
/// with `EGRESS`, through the egress step (MTU, offloads).
#[inline(always)]
fn send_to<const VLAN: bool, const EGRESS: bool>(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    p: usize,
    m: Mbuf,
    vlan: u16,
) {
    if EGRESS {
        crate::egress::send::<VLAN>(cx, plan, txq, p, m, vlan);
    } else if VLAN {
        send_vlan(cx, plan, txq, p, m, vlan);
    } else {
        enqueue_out(cx, plan, txq, p, m);
    }
}

/// `send_to` when some port has a VLAN mode: the tag pushed, popped or rewritten;
/// dropped and counted if the port does not carry the VLAN (`drop_vlan`), a tag
/// does not fit (`drop_oversize`), or the pushed tag makes the frame longer than the
/// port takes (`drop_mtu`: an untagged frame of MTU + 18 bytes is accepted at ingress,
/// as a tagged one would be).
#[inline(never)]
fn send_vlan(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    p: usize,
    mut m: Mbuf,
    vlan: u16,
) {
    let e = plan.vlans[p].egress(vlan);
    if e == Egress::Drop {
        count(plan, p, |s| &s.drop_vlan);
        cx.cache.free(m);
    } else if !vlan::retag(&mut m, e) {
        count(plan, p, |s| &s.drop_oversize);
        cx.cache.free(m);
    } else if m.len() > plan.max_frames[p] as usize {
        count(plan, p, |s| &s.drop_mtu);
        cx.cache.free(m);
    } else {
        enqueue_out(cx, plan, txq, p, m);
    }
}

/// Whether an output queue that still applies backpressure has less than a burst of room.
#[inline]
fn backed_up(txq: &[TxQueue]) -> bool {
    txq.iter()
        .any(|t| !t.congested && (t.end > TXQ_CAP - BURST || !t.waiting.is_empty()))
}

/// Queues a frame for a port; returns it if the queue is full (only possible for
/// a congested port, which does not hold rx back). Always inlined, as `enqueue_out`:
/// the compiler's choice has flipped with unrelated changes, and a call per frame
/// costs about 30 instructions per packet.
#[inline(always)]
pub(crate) fn push(t: &mut TxQueue, m: Mbuf) -> Result<(), Mbuf> {
    if t.end == TXQ_CAP {
        t.compact();
        if t.end == TXQ_CAP {
            return Err(m);
        }
    }
    t.pkts[t.end] = Some(m);
    t.end += 1;
    Ok(())
}

/// `push`, counting and freeing a frame that does not fit. Always inlined: a call
/// per frame costs more than the push itself.
#[inline(always)]
pub(crate) fn enqueue_out(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    p: usize,
    m: Mbuf,
) {
    if let Err(m) = push(&mut txq[p], m) {
        count(plan, p, |s| &s.drop_tx_full);
        cx.cache.free(m);
    }
}

/// Sends a copy to every other port that is up and carries VLAN `vlan`; the last
/// one gets the original.
fn flood<const VLAN: bool, const EGRESS: bool>(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    in_port: usize,
    m: Mbuf,
    vlan: u16,
) {
    let n = plan.ports.len();
    let mut last_target = None;
    for p in 0..n {
        if p == in_port
            || !plan.port(p).is_some_and(|port| port.is_up())
            || (VLAN && plan.vlans[p].egress(vlan) == Egress::Drop)
        {
            continue;
        }
        if let Some(prev) = last_target.replace(p) {
            if EGRESS && !m.has_offload() && m.len() > plan.max_frames[prev] as usize {
                // Too long for that port: counted, without a copy made only to drop.
                count(plan, prev, |s| &s.drop_mtu);
                continue;
            }
            match cx.cache.copy_of(&m) {
                Some(c) => {
                    cx.traffic[prev].tx_flood += 1;
                    send_to::<VLAN, EGRESS>(cx, plan, txq, prev, c, vlan);
                }
                None => {
                    count(plan, prev, |s| &s.drop_no_mbuf);
                }
            }
        }
    }
    match last_target {
        Some(p) => {
            cx.traffic[p].tx_flood += 1;
            send_to::<VLAN, EGRESS>(cx, plan, txq, p, m, vlan);
        }
        None => cx.cache.free(m), // nowhere to go (every other port is down): not a drop of a port
    }
}

/// Sends what port `p`'s queue holds; returns frames sent. Runs the stall clock
/// (see the module doc): drops the queue of a guest that is too slow, and drops at
/// once what a congested one has no room for.
#[inline]
#[allow(clippy::too_many_arguments)]
fn flush(
    cx: &mut PmdContext,
    plan: &PollPlan,
    t: &mut TxQueue,
    taps: &mut Taps,
    p: usize,
    now: u64,
    stall_cycles: u64,
) -> usize {
    let Some(port) = plan.port(p) else {
        drop_queue(cx, plan, t, p, |s| &s.drop_tx_down);
        return 0;
    };
    if !port.is_up() {
        drop_queue(cx, plan, t, p, |s| &s.drop_tx_down);
        return 0;
    }
    if plan.capture_on {
        let from = t.cap_mark.max(t.head);
        taps.tx(&plan.vlans, p, &t.pkts[from..t.end]);
        t.cap_mark = t.end;
    }
    let pkts = &mut t.pkts[t.head..t.end];
    let sent = if t.offload {
        port.tx_burst_offload(&cx.lane, &mut cx.cache, pkts, &mut cx.traffic[p])
    } else {
        port.tx_burst(&cx.lane, &mut cx.cache, pkts, &mut cx.traffic[p])
    };
    if sent > 0 {
        t.head += sent;
        t.taken += sent;
        if t.head == t.end {
            t.reset();
        } else {
            t.compact();
        }
    }
    // A congested queue is dropped below, waiting frames and all: none are cut for it.
    if !t.waiting.is_empty() && !t.congested {
        crate::egress::resume(cx, plan, t, p);
    }
    if t.congested {
        if t.len() > 0 {
            // No waiting for a guest that stalled before: what it has no room for goes.
            drop_queue(cx, plan, t, p, |s| &s.drop_tx_full);
        } else if t.taken >= TXQ_CAP {
            // A whole queue's worth taken without a drop: back to lossless waiting.
            t.congested = false;
            t.taken = 0;
        }
        return sent;
    }
    if t.len() == 0 {
        t.stalled_since = 0;
        t.taken = 0;
    } else if t.stalled_since == 0 || t.taken >= TXQ_CAP {
        // Frames left waiting for the first time, or the guest keeps up the minimum
        // rate: the clock (re)starts.
        t.stalled_since = now.max(1);
        t.taken = 0;
    } else if now.saturating_sub(t.stalled_since) > stall_cycles {
        tracing::debug!(
            port = port.name(),
            frames = t.len(),
            taken = t.taken,
            "output stalled past tx_stall; dropping"
        );
        drop_queue(cx, plan, t, p, |s| &s.drop_tx_full);
        t.congested = true;
    }
    sent
}

/// Frees every frame on the queue, counting them in `ctr`.
fn drop_queue(
    cx: &mut PmdContext,
    plan: &PollPlan,
    t: &mut TxQueue,
    p: usize,
    ctr: fn(&PortStats) -> &AtomicU64,
) {
    for s in t.pkts[t.head..t.end].iter_mut() {
        if let Some(m) = s.take() {
            cx.cache.free(m);
        }
    }
    let waited = t.waiting.free_all(&mut cx.cache);
    if let Some(port) = plan.port(p) {
        PortStats::add(ctr(port.stats()), (t.len() + waited) as u64);
    }
    t.reset();
    t.stalled_since = 0;
    t.taken = 0;
}

/// With latency histograms, after the flush that followed a burst received by the
/// poll that began at `stamp`: stamps the frames left waiting that have no stamp
/// (they came with that burst: every frame left over from an earlier burst was
/// stamped then). Frames sent at once, the usual case, are never stamped.
#[inline]
fn stamp_rest(t: &mut TxQueue, stamp: u64) {
    if t.end > t.stamped.max(t.head) {
        let from = t.stamped.max(t.head);
        t.stamps[from..t.end].fill(stamp);
        t.stamped = t.end;
    }
}

/// With latency histograms, after a flush of port `p` that sent `sent` frames, the
/// oldest of them received by the poll that began at `oldest`: records their time
/// in the switch (one cycle-counter read per burst).
#[inline]
fn time_sent(r: &mut Recorder, p: usize, oldest: u64, sent: usize) {
    if sent > 0 {
        r.set.frames(p, cycles().wrapping_sub(oldest), sent);
    }
}
