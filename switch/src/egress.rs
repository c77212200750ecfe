//! The egress step: what a frame must become before its output port takes it, run
//! per frame only for bursts that need it (ports of different MTUs, or frames that
//! carry offload requests; `pmd_loop` picks the step per burst). It pushes, pops or
//! rewrites the VLAN tag (moving the offload offsets with it), drops a frame longer
//! than the port takes (`drop_mtu`), and for a port that cannot take a frame's
//! offload carries it out in software (`pmd::offload`): the checksum completed, or
//! the TSO frame cut into segments of the sender's size (`tx_segments`). A port that
//! can take it gets the frame as it is: one copy, one header.

use crate::plan::PollPlan;
use crate::pmd_loop::{count, enqueue_out, PmdContext, TxQueue};
use crate::vlan::{self, Egress};
use pmd::offload::gso::{Plan, SegCsum};
use pmd::offload::{csum, Caps, NetHdr, OffloadError, GSO_NONE};
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
        return enqueue_out(cx, plan, txq, p, m);
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
            txq[p].offload = true;
            return enqueue_out(cx, plan, txq, p, m);
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
        txq[p].offload = true;
        return enqueue_out(cx, plan, txq, p, m);
    }
    match csum::complete(m.data_mut(), h.csum_start, h.csum_offset) {
        Ok(()) => {
            m.clear_offload();
            enqueue_out(cx, plan, txq, p, m)
        }
        Err(_) => drop(cx, plan, p, m, |s| &s.drop_offload),
    }
}

/// Cuts TSO frame `m` (planned as `cut`) into segments for port `p`, which takes
/// `caps`: with checksum offload the segments' checksums are left partial for it,
/// else computed. A frame whose segments the port's queue has no room for is dropped
/// whole (`drop_tx_full`; its sender retransmits); only a pool running dry part way
/// cuts a train short (`drop_no_mbuf`).
fn segment(
    cx: &mut PmdContext,
    plan: &PollPlan,
    txq: &mut [TxQueue],
    p: usize,
    m: Mbuf,
    cut: &Plan,
    caps: Caps,
) {
    if txq[p].room() < cut.count() {
        return drop(cx, plan, p, m, |s| &s.drop_tx_full);
    }
    let mode = if caps.covers(Caps::CSUM) {
        SegCsum::Partial
    } else {
        SegCsum::Full
    };
    for k in 0..cut.count() {
        let Some(mut s) = cx.cache.alloc_for(cut.segment_len(k)) else {
            count(plan, p, |s| &s.drop_no_mbuf);
            break;
        };
        cut.write(m.data(), k, &mut s, mode);
        if mode == SegCsum::Partial {
            s.set_offload(cut.segment_hdr());
            txq[p].offload = true;
        }
        cx.traffic[p].tx_segments += 1;
        enqueue_out(cx, plan, txq, p, s);
    }
    cx.cache.free(m);
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
