//! Packet capture taps: the data path's side of `vswitch ctl capture`.
//!
//! A [`Capture`] is one running capture on one port: which directions, how many
//! bytes of each frame, which VLAN. The PMD threads find the captures in their poll
//! plan; while a plan has none, a burst pays one test of `PollPlan::capture_on` at rx
//! and one at each tx flush. While it has some, the frames of the captured port are
//! copied into the capture's slots: a fixed set of buffers that travel between two
//! bounded lock-free queues (free and filled), so the PMD thread neither allocates
//! nor waits. The writer (the control plane's, in `src/capture.rs`) takes filled
//! slots, writes them out and gives them back. When no slot is free the frame is not
//! captured and the capture counts a drop; the switch's own traffic never waits for
//! a capture.
//!
//! Where frames are seen: rx frames as the port delivered them, before the switch
//! step (tags as on the wire); tx frames as the switch hands them to the port's tx
//! burst, after the VLAN step, once each (a frame then dropped because the port
//! stayed full is in the capture, and in the port's `drop_tx_full`).

use crate::vlan::PortVlan;
use crossbeam::queue::ArrayQueue;
use pmd::Mbuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Frames a capture holds between the PMD threads and its writer.
pub const SLOTS: usize = 4096;
/// Captures running at once, at most (each holds [`SLOTS`] buffers).
pub const MAX_CAPTURES: usize = 16;
/// The largest frame a port delivers: what a capture keeps at most of one.
pub const MAX_FRAME: usize = pmd::mempool::DATA_ROOM;

/// Which frames of the port a capture sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Rx,
    Tx,
    Both,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "rx" | "in" => Some(Direction::Rx),
            "tx" | "out" => Some(Direction::Tx),
            "both" | "inout" => Some(Direction::Both),
            _ => None,
        }
    }
    fn rx(self) -> bool {
        self != Direction::Tx
    }
    fn tx(self) -> bool {
        self != Direction::Rx
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
            Direction::Both => "both",
        })
    }
}

/// What to capture (the port is named apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    pub direction: Direction,
    /// Bytes kept of each frame (frames are at most [`MAX_FRAME`]).
    pub snaplen: u32,
    /// Only frames of this VLAN, as the port sees them: the tag on the wire, or the
    /// port's access or native VLAN for an untagged frame (VLAN 0 on a trunk).
    pub vlan: Option<u16>,
}

/// One captured frame.
pub struct Slot {
    /// Cycle counter when the frame was seen.
    pub cycles: u64,
    pub direction: Direction,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Bytes kept (`data[..len]`).
    pub len: u32,
    pub data: Box<[u8]>,
}

/// A running capture on one port.
pub struct Capture {
    pub id: u64,
    /// Port number (the PMD threads' index).
    pub port: usize,
    pub port_name: String,
    pub spec: CaptureSpec,
    free: ArrayQueue<Box<Slot>>,
    filled: ArrayQueue<Box<Slot>>,
    /// Frames that matched while no slot was free.
    pub dropped: AtomicU64,
    /// Frames taken by the writer.
    pub written: AtomicU64,
    /// The capture left the PMD threads' plans (its port left, or it was stopped):
    /// nothing more will be filled.
    pub ended: AtomicBool,
}

impl Capture {
    /// A capture of port number `port` with [`SLOTS`] empty slots.
    pub fn new(id: u64, port: usize, port_name: &str, spec: CaptureSpec) -> Capture {
        let keep = (spec.snaplen as usize).min(MAX_FRAME);
        let free = ArrayQueue::new(SLOTS);
        for _ in 0..SLOTS {
            let _ = free.push(Box::new(Slot {
                cycles: 0,
                direction: Direction::Rx,
                orig_len: 0,
                len: 0,
                data: vec![0u8; keep].into_boxed_slice(),
            }));
        }
        Capture {
            id,
            port,
            port_name: port_name.to_string(),
            spec,
            free,
            filled: ArrayQueue::new(SLOTS),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// PMD thread: copies `frames` seen in `dir` at `cycles`, those of the VLAN asked
    /// for (`vlan`: the port's VLAN settings).
    fn copy<'a>(
        &self,
        frames: impl Iterator<Item = &'a Mbuf>,
        dir: Direction,
        cycles: u64,
        vlan: &PortVlan,
    ) {
        let mut dropped = 0;
        for m in frames {
            let data = m.data();
            if let Some(want) = self.spec.vlan {
                if vlan.ingress(crate::vlan::tag_of(data)) != Some(want) {
                    continue;
                }
            }
            let Some(mut slot) = self.free.pop() else {
                dropped += 1;
                continue;
            };
            let n = data.len().min(slot.data.len());
            slot.data[..n].copy_from_slice(&data[..n]);
            slot.len = n as u32;
            slot.orig_len = data.len() as u32;
            slot.cycles = cycles;
            slot.direction = dir;
            // Cannot fail: the slots are as many as either queue holds.
            let _ = self.filled.push(slot);
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Relaxed);
        }
    }

    /// Writer: the next captured frame, if any.
    pub fn take(&self) -> Option<Box<Slot>> {
        let s = self.filled.pop()?;
        self.written.fetch_add(1, Relaxed);
        Some(s)
    }

    /// Writer: gives a slot back for reuse.
    pub fn give_back(&self, s: Box<Slot>) {
        let _ = self.free.push(s);
    }
}

/// PMD thread: rx frames of port `p`, received by the poll that began at `cycles`.
#[cold]
#[inline(never)]
pub fn rx(
    captures: &[std::sync::Arc<Capture>],
    vlans: &[PortVlan],
    p: usize,
    frames: &[Option<Mbuf>],
    cycles: u64,
) {
    for c in captures {
        if c.port == p && c.spec.direction.rx() {
            c.copy(frames.iter().flatten(), Direction::Rx, cycles, &vlans[p]);
        }
    }
}

/// PMD thread: tx frames of port `p`, about to be handed to its tx burst.
#[cold]
#[inline(never)]
pub fn tx(
    captures: &[std::sync::Arc<Capture>],
    vlans: &[PortVlan],
    p: usize,
    frames: &[Option<Mbuf>],
) {
    let mut now = 0;
    for c in captures {
        if c.port == p && c.spec.direction.tx() {
            if now == 0 {
                now = pmd::tsc::cycles();
            }
            c.copy(frames.iter().flatten(), Direction::Tx, now, &vlans[p]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmd::hugepage::HugepagePolicy;
    use pmd::{Mempool, MempoolCache};
    use std::sync::Arc;

    fn frame(cache: &mut MempoolCache, tag: Option<u16>, len: usize) -> Option<Mbuf> {
        let mut m = cache.alloc().unwrap();
        let d = m.set_len(len);
        d.fill(0);
        d[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        d[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        match tag {
            Some(v) => {
                d[12..14].copy_from_slice(&[0x81, 0]);
                d[14..16].copy_from_slice(&v.to_be_bytes());
                d[16..18].copy_from_slice(&[0x08, 0]);
            }
            None => d[12..14].copy_from_slice(&[0x08, 0]),
        }
        Some(m)
    }

    #[test]
    fn copies_what_matches_and_counts_what_finds_no_slot() {
        let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool);
        let spec = CaptureSpec {
            direction: Direction::Rx,
            snaplen: 20,
            vlan: Some(10),
        };
        let caps = vec![Arc::new(Capture::new(1, 0, "p", spec))];
        let vlans = vec![PortVlan::trunk(&[])];
        let burst: Vec<Option<Mbuf>> = vec![
            frame(&mut cache, Some(10), 100),
            frame(&mut cache, Some(20), 100),
            frame(&mut cache, None, 60),
        ];
        rx(&caps, &vlans, 0, &burst, 7);
        tx(&caps, &vlans, 0, &burst); // an rx capture takes no tx frames
        rx(&caps, &vlans, 1, &burst, 7); // nor another port's
        let s = caps[0].take().unwrap();
        assert_eq!((s.len, s.orig_len, s.cycles), (20, 100, 7));
        assert_eq!(&s.data[12..16], &[0x81, 0, 0, 10], "the tag is kept");
        assert!(caps[0].take().is_none());
        caps[0].give_back(s);
        // More frames than slots: the rest are counted, not waited for.
        let many: Vec<Option<Mbuf>> = (0..32).map(|_| frame(&mut cache, Some(10), 64)).collect();
        for _ in 0..(SLOTS / 32 + 2) {
            rx(&caps, &vlans, 0, &many, 8);
        }
        assert_eq!(caps[0].dropped.load(Relaxed), 64);
        let mut n = 0;
        while let Some(s) = caps[0].take() {
            caps[0].give_back(s);
            n += 1;
        }
        assert_eq!(n, SLOTS);
        for m in burst.into_iter().chain(many).flatten() {
            cache.free(m);
        }
    }

    #[test]
    fn access_port_frames_are_in_its_vlan() {
        let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool);
        let spec = CaptureSpec {
            direction: Direction::Both,
            snaplen: 65535,
            vlan: Some(5),
        };
        let caps = vec![Arc::new(Capture::new(1, 0, "p", spec))];
        let burst = vec![frame(&mut cache, None, 60)];
        tx(&caps, &[PortVlan::access(5)], 0, &burst);
        let s = caps[0].take().unwrap();
        assert_eq!((s.len, s.direction), (60, Direction::Tx));
        tx(&caps, &[PortVlan::access(6)], 0, &burst);
        assert!(caps[0].take().is_none());
        cache.free(burst.into_iter().flatten().next().unwrap());
    }
}
