//! The egress step: what a frame must become before its output port takes it, run
//! per frame only for bursts that need it (ports of different MTUs, or frames that
//! carry offload requests; `pmd_loop` picks the step per burst). It pushes, pops or
//! rewrites the VLAN tag (moving the offload offsets with it), drops a frame longer
//! than the port takes (`drop_mtu`), and for a port that cannot take a frame's
//! offload carries it out in software (`pmd::offload`): the checksum completed, or
//! the TSO frame cut into segments of the sender's size (`tx_segments`). A port that
//! can take it gets the frame as it is: one copy, one header. Segments are cut into
//! the output queue as far as it has room; the rest of the frame, and the frames of
//! the same burst behind it, wait with the queue ([`Waiting`]) and move in as the
//! port takes what is queued, while the thread holds its rx back: a train of TSO
//! frames towards a slower port is not dropped for want of queue room.

use crate::plan::PollPlan;
use crate::pmd_loop::{count, enqueue_out, push, PmdContext, TxQueue};
use crate::vlan::{self, Egress};
use pmd::offload::gso::{Plan, SegCsum};
use pmd::offload::{csum, Caps, NetHdr, OffloadError, GSO_NONE};
use pmd::port::BURST;
use pmd::Mbuf;

/// Queues `m`, of VLAN `vlan`, for port `p` through the egress step. `VLAN`: whether
/// some port has a VLAN mode (the tag is then made as `p` wants it).
#[inline(never)]
pub(crate) fn send<const VLAN: bool>(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    p: usize,
    mut m: Mbuf,
    vlan: u16,
) {
    if VLAN {
        let e = plan.vlans[p].egress(vlan);
        if e == Egress::Drop {
            return drop(cx, plan, p, m, |s| &s.drop_vlan);
        }
        let before = m.len();
        if !vlan::retag(&mut m, e) {
            return drop(cx, plan, p, m, |s| &s.drop_oversize);
        }
        if m.len() != before {
            if let Some(h) = m.offload() {
                m.set_offload(shifted(h, m.len() as isize - before as isize));
            }
        }
    }
    let limit = plan.max_frames[p] as usize;
    let Some(h) = m.offload() else {
        if m.len() > limit {
            return drop(cx, plan, p, m, |s| &s.drop_mtu);
        }
        return queue(cx, plan, txq, p, m);
    };
    let caps = plan.port(p).map_or(Caps::NONE, |port| port.tx_offloads());
    if h.gso_type != GSO_NONE {
        // The headers are parsed whether the frame is cut here or passed on: what goes
        // on the port's wire (the segments) is checked against the port's limit by the
        // real header length, not the sender's hint, and a frame whose headers do not
        // match its request is dropped here, not handed to a guest or the kernel.
        let cut = match Plan::new(m.data(), &h, limit) {
            Ok(c) => c,
            Err(OffloadError::SegmentTooBig { .. }) => {
                return drop(cx, plan, p, m, |s| &s.drop_mtu)
            }
            Err(_) => return drop(cx, plan, p, m, |s| &s.drop_offload),
        };
        if caps.covers(h.needs()) {
            // The sender's hdr_len is a hint that may lie (longer than the frame: the
            // kernel refuses such a frame); the port gets the parsed length.
            m.set_offload(NetHdr {
                hdr_len: cut.header_len() as u16,
                ..h
            });
            txq[p].offload = true;
            return queue(cx, plan, txq, p, m);
        }
        return segment(cx, plan, txq, p, m, &cut, caps);
    }
    if m.len() > limit {
        return drop(cx, plan, p, m, |s| &s.drop_mtu);
    }
    if h.csum_start as usize + h.csum_offset as usize + 2 > m.len() {
        return drop(cx, plan, p, m, |s| &s.drop_offload);
    }
    if caps.covers(h.needs()) {
        // As for TSO: no hdr_len longer than what the checksum needs.
        m.set_offload(NetHdr {
            hdr_len: h.csum_start + h.csum_offset + 2,
            ..h
        });
        txq[p].offload = true;
        return queue(cx, plan, txq, p, m);
    }
    match csum::complete(m.data_mut(), h.csum_start, h.csum_offset) {
        Ok(()) => {
            m.clear_offload();
            queue(cx, plan, txq, p, m)
        }
        Err(_) => drop(cx, plan, p, m, |s| &s.drop_offload),
    }
}

/// Queues `m` for port `p` behind the frames waiting there, if any.
#[inline]
fn queue(cx: &mut PmdContext, plan: &PollPlan, txq: &mut [TxQueue], p: usize, m: Mbuf) {
    if txq[p].waiting.is_empty() {
        return enqueue_out(cx, plan, txq, p, m);
    }
    if let Err(Waiter::Frame(m)) = txq[p].waiting.push_back(Waiter::Frame(m)) {
        drop(cx, plan, p, m, |s| &s.drop_tx_full);
    }
}

/// A TSO frame being cut for a port's queue: its plan, how, and the next segment.
pub(crate) struct Cut {
    frame: Mbuf,
    plan: Plan,
    mode: SegCsum,
    next: usize,
}

/// What waits for room in a port's output queue.
pub(crate) enum Waiter {
    Cut(Cut),
    Frame(Mbuf),
}

impl Waiter {
    fn into_frame(self) -> Mbuf {
        match self {
            Waiter::Cut(c) => c.frame,
            Waiter::Frame(m) => m,
        }
    }
}

/// Most frames that wait for one queue: a burst's, and the frame being cut. Rx is
/// held back while any wait, so no more come.
const WAIT_CAP: usize = BURST + 1;

/// The frames waiting for room in one output queue, oldest first (a ring of
/// `WAIT_CAP`, allocated with the queue).
pub(crate) struct Waiting {
    slots: Box<[Option<Waiter>]>,
    head: usize,
    len: usize,
}

impl Waiting {
    pub(crate) fn new() -> Waiting {
        Waiting {
            slots: (0..WAIT_CAP).map(|_| None).collect(),
            head: 0,
            len: 0,
        }
    }
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Adds `w` last; gives it back when full.
    fn push_back(&mut self, w: Waiter) -> Result<(), Waiter> {
        if self.len == WAIT_CAP {
            return Err(w);
        }
        self.slots[(self.head + self.len) % WAIT_CAP] = Some(w);
        self.len += 1;
        Ok(())
    }
    /// Puts back the first one (taken by `pop_front`).
    fn push_front(&mut self, w: Waiter) {
        debug_assert!(self.len < WAIT_CAP);
        self.head = (self.head + WAIT_CAP - 1) % WAIT_CAP;
        self.slots[self.head] = Some(w);
        self.len += 1;
    }
    fn pop_front(&mut self) -> Option<Waiter> {
        if self.len == 0 {
            return None;
        }
        let w = self.slots[self.head].take();
        self.head = (self.head + 1) % WAIT_CAP;
        self.len -= 1;
        w
    }
    /// Frees every waiting frame; returns how many there were.
    pub(crate) fn free_all(&mut self, cache: &mut pmd::MempoolCache) -> usize {
        let n = self.len;
        while let Some(w) = self.pop_front() {
            cache.free(w.into_frame());
        }
        n
    }
}

/// Cuts TSO frame `m` (planned as `cut`) into segments for port `p`, which takes
/// `caps`: with checksum offload the segments' checksums are left partial for it,
/// else computed. What the queue has no room for waits (`resume`).
fn segment(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    p: usize,
    m: Mbuf,
    cut: &Plan,
    caps: Caps,
) {
    let mode = if caps.covers(Caps::CSUM) {
        SegCsum::Partial
    } else {
        SegCsum::Full
    };
    let w = Waiter::Cut(Cut {
        frame: m,
        plan: *cut,
        mode,
        next: 0,
    });
    let was_empty = txq[p].waiting.is_empty();
    if let Err(w) = txq[p].waiting.push_back(w) {
        return drop(cx, plan, p, w.into_frame(), |s| &s.drop_tx_full);
    }
    if was_empty {
        resume(cx, plan, &mut txq[p], p);
    }
}

/// Moves waiting frames into queue `t` of port `p` while it has room, cutting TSO
/// frames into segments on the way (a frame is freed once its last segment is
/// queued). Only a pool running dry part way cuts a train short (`drop_no_mbuf`).
pub(crate) fn resume(cx: &mut PmdContext, plan: &PollPlan, t: &mut TxQueue, p: usize) {
    while t.room() > 0 {
        let Some(w) = t.waiting.pop_front() else {
            return;
        };
        let mut c = match w {
            Waiter::Frame(m) => {
                // The queue may have emptied (and forgotten its offload frames) since.
                t.offload |= m.has_offload();
                put(cx, plan, t, p, m);
                continue;
            }
            Waiter::Cut(c) => c,
        };
        while c.next < c.plan.count() && t.room() > 0 {
            let Some(mut s) = cx.cache.alloc_for(c.plan.segment_len(c.next)) else {
                count(plan, p, |s| &s.drop_no_mbuf);
                c.next = c.plan.count();
                break;
            };
            c.plan.write(c.frame.data(), c.next, &mut s, c.mode);
            if c.mode == SegCsum::Partial {
                s.set_offload(c.plan.segment_hdr());
                t.offload = true;
            }
            cx.traffic[p].tx_segments += 1;
            c.next += 1;
            put(cx, plan, t, p, s);
        }
        if c.next < c.plan.count() {
            t.waiting.push_front(Waiter::Cut(c));
            return;
        }
        cx.cache.free(c.frame);
    }
}

/// `push`, when the caller saw room.
fn put(cx: &mut PmdContext, plan: &PollPlan, t: &mut TxQueue, p: usize, m: Mbuf) {
    if let Err(m) = push(t, m) {
        count(plan, p, |s| &s.drop_tx_full);
        cx.cache.free(m);
    }
}

/// `h` for a frame whose headers moved by `delta` bytes (a VLAN tag pushed or popped).
fn shifted(h: NetHdr, delta: isize) -> NetHdr {
    let mv = |v: u16| (v as isize + delta).max(0) as u16;
    NetHdr {
        csum_start: mv(h.csum_start),
        hdr_len: if h.hdr_len == 0 { 0 } else { mv(h.hdr_len) },
        ..h
    }
}

/// Frees `m`, counting it in port `p`'s counter `ctr`.
fn drop(
    cx: &mut PmdContext,
    plan: &PollPlan,
    p: usize,
    m: Mbuf,
    ctr: fn(&pmd::port::PortStats) -> &std::sync::atomic::AtomicU64,
) {
    count(plan, p, ctr);
    cx.cache.free(m);
}
