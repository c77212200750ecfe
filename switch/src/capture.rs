//! Packet capture taps: the data path's side of `vswitch ctl capture`.
//!
//! A [`Capture`] is one running capture on one port: which directions, how many
//! bytes of each frame, which VLAN. The PMD threads find the captures in their poll
//! plan; while a plan has none, a burst pays one test of `PollPlan::capture_on` at rx
//! and one at each tx flush. While it has some, each PMD thread copies the frames of
//! the captured port into a byte ring of its own for that capture (`rtrb`: single
//! producer, single consumer, wait-free, so the PMD thread never waits for the
//! writer, however the writer is scheduled), as records of a 16-byte header and the
//! bytes kept. The writer (the control plane's, in `src/capture.rs`) drains every
//! PMD thread's ring of the capture and writes the frames out. When a ring has no room
//! the frame is not captured and the capture counts a drop; the switch's own traffic
//! never waits for a capture, and the PMD thread allocates nothing.
//!
//! Where frames are seen: rx frames as the port delivered them, before the switch
//! step (tags as on the wire); tx frames as the switch hands them to the port's tx
//! burst, after the VLAN step, once each (a frame then dropped because the port
//! stayed full is in the capture, and in the port's `drop_tx_full`).

use crate::vlan::PortVlan;
use pmd::Mbuf;
use rtrb::{Consumer, Producer, RingBuffer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Bytes of each PMD thread's ring for one capture: about 2000 full-size frames, or
/// 50000 of 64 bytes, between the PMD thread and the writer.
pub const RING_BYTES: usize = 4 << 20;
/// Captures running at once, at most.
pub const MAX_CAPTURES: usize = 16;
/// What a capture keeps at most of one frame: an mbuf's data room. Longer frames
/// (jumbo frames, in large buffers) are cut to it, their length on the wire kept in
/// the record, as a snap length cuts them.
pub const MAX_FRAME: usize = pmd::mempool::DATA_ROOM;
/// A record's header: cycle count (8 bytes), length on the wire (4), bytes kept (4,
/// the top bit set for tx), little-endian.
pub const HEADER: usize = 16;
const TX_BIT: u32 = 1 << 31;

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

/// One captured frame, as the writer reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Cycle counter when the frame was seen.
    pub cycles: u64,
    pub direction: Direction,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// The bytes kept.
    pub data: &'a [u8],
}

/// A running capture on one port.
pub struct Capture {
    pub id: u64,
    /// Port number (the PMD threads' index).
    pub port: usize,
    pub port_name: String,
    pub spec: CaptureSpec,
    /// Each PMD thread's end of its ring, taken by that thread when the capture first
    /// enters its plan (the only time this lock is taken after the capture is made).
    producers: Mutex<Vec<Option<Producer<u8>>>>,
    /// The writer's ends, one per PMD thread.
    consumers: Mutex<Vec<Consumer<u8>>>,
    /// Per PMD thread: frames that found no room in its ring (plain stores by it).
    dropped: Box<[AtomicU64]>,
    /// Frames written out.
    pub written: AtomicU64,
    /// The capture left the PMD threads' plans (its port left, it was stopped, or the
    /// switch stops): nothing more is added to its rings.
    pub ended: AtomicBool,
}

impl Capture {
    /// A capture of port number `port`, with a ring for each of `pmds` PMD threads.
    pub fn new(id: u64, port: usize, port_name: &str, spec: CaptureSpec, pmds: usize) -> Capture {
        let (producers, consumers) = (0..pmds)
            .map(|_| {
                let (p, c) = RingBuffer::new(RING_BYTES);
                (Some(p), c)
            })
            .unzip();
        Capture {
            id,
            port,
            port_name: port_name.to_string(),
            spec,
            producers: Mutex::new(producers),
            consumers: Mutex::new(consumers),
            dropped: (0..pmds).map(|_| AtomicU64::new(0)).collect(),
            written: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// Frames not captured for want of room.
    pub fn dropped(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Relaxed)).sum()
    }

    /// The writer's ends of the rings (once: later calls get none).
    pub fn take_readers(&self) -> Vec<Reader> {
        std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|ring| Reader {
                ring,
                buf: Vec::new(),
            })
            .collect()
    }
}

/// The writer's end of one PMD thread's ring.
pub struct Reader {
    ring: Consumer<u8>,
    /// The last frame read.
    buf: Vec<u8>,
}

impl Reader {
    /// The next frame, if a whole one is there.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let mut h = [0u8; HEADER];
        {
            let c = self.ring.read_chunk(HEADER).ok()?;
            let (a, b) = c.as_slices();
            h[..a.len()].copy_from_slice(a);
            h[a.len()..].copy_from_slice(b);
            // Not committed: read again below with the data.
        }
        let cycles = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        let orig_len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let kept = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        let len = (kept & !TX_BIT) as usize;
        // A record is committed whole: its data is there with its header.
        let c = self.ring.read_chunk(HEADER + len).ok()?;
        let (a, b) = c.as_slices();
        self.buf.clear();
        self.buf.extend(a.iter().chain(b).skip(HEADER));
        c.commit_all();
        Some(Frame {
            cycles,
            direction: if kept & TX_BIT != 0 {
                Direction::Tx
            } else {
                Direction::Rx
            },
            orig_len,
            data: &self.buf,
        })
    }
}

/// A PMD thread's hold on one capture: its end of its ring.
struct Tap {
    capture: Arc<Capture>,
    ring: Producer<u8>,
    dropped: u64,
}

impl Tap {
    /// Copies `frames` seen in `dir` at `cycles`, those of the VLAN asked for
    /// (`vlan`: the port's VLAN settings).
    fn copy<'a>(
        &mut self,
        frames: impl Iterator<Item = &'a Mbuf>,
        dir: Direction,
        cycles: u64,
        vlan: &PortVlan,
        pmd: usize,
    ) {
        let spec = &self.capture.spec;
        let keep = (spec.snaplen as usize).min(MAX_FRAME);
        let before = self.dropped;
        for m in frames {
            let data = m.data();
            if let Some(want) = spec.vlan {
                if vlan.ingress(crate::vlan::tag_of(data)) != Some(want) {
                    continue;
                }
            }
            let n = data.len().min(keep);
            let Ok(mut chunk) = self.ring.write_chunk(HEADER + n) else {
                self.dropped += 1;
                continue;
            };
            let mut h = [0u8; HEADER];
            h[..8].copy_from_slice(&cycles.to_le_bytes());
            h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
            let tx = if dir == Direction::Tx { TX_BIT } else { 0 };
            h[12..16].copy_from_slice(&(n as u32 | tx).to_le_bytes());
            let (a, b) = chunk.as_mut_slices();
            put(a, b, 0, &h);
            put(a, b, HEADER, &data[..n]);
            chunk.commit_all();
        }
        if self.dropped != before {
            self.capture.dropped[pmd].store(self.dropped, Relaxed);
        }
    }
}

/// Writes `src` at offset `at` of the region made of `a` then `b`.
fn put(a: &mut [u8], b: &mut [u8], at: usize, src: &[u8]) {
    let in_a = a.len().saturating_sub(at).min(src.len());
    if in_a > 0 {
        a[at..at + in_a].copy_from_slice(&src[..in_a]);
    }
    let rest = &src[in_a..];
    if !rest.is_empty() {
        let off = (at + in_a) - a.len();
        b[off..off + rest.len()].copy_from_slice(rest);
    }
}

/// A PMD thread's taps, kept in step with the captures of its plan.
pub struct Taps {
    list: Vec<Tap>,
    /// This PMD thread's index (its ring in each capture).
    pmd: usize,
}

impl Taps {
    pub fn new(pmd: usize) -> Taps {
        Taps {
            list: Vec::with_capacity(MAX_CAPTURES),
            pmd,
        }
    }

    /// At a plan change: drops the taps of captures that left, takes this thread's
    /// ring of captures that came (no allocation: room for [`MAX_CAPTURES`] is kept;
    /// the control plane and the writer hold every capture longer than this thread).
    /// Returns whether the set of captures changed.
    pub fn follow(&mut self, captures: &[Arc<Capture>]) -> bool {
        let before = self.list.len();
        self.list
            .retain(|t| captures.iter().any(|c| Arc::ptr_eq(c, &t.capture)));
        let mut changed = self.list.len() != before;
        for c in captures {
            if self.list.len() == self.list.capacity()
                || self.list.iter().any(|t| Arc::ptr_eq(&t.capture, c))
            {
                continue;
            }
            let ring = c
                .producers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(self.pmd)
                .and_then(Option::take);
            if let Some(ring) = ring {
                self.list.push(Tap {
                    capture: c.clone(),
                    ring,
                    dropped: 0,
                });
                changed = true;
            }
        }
        changed
    }

    /// Rx frames of port `p`, received by the poll that began at `cycles`.
    #[cold]
    #[inline(never)]
    pub fn rx(&mut self, vlans: &[PortVlan], p: usize, frames: &[Option<Mbuf>], cycles: u64) {
        self.copy(vlans, p, frames, Direction::Rx, || cycles);
    }

    /// Tx frames of port `p`, about to be handed to its tx burst.
    #[cold]
    #[inline(never)]
    pub fn tx(&mut self, vlans: &[PortVlan], p: usize, frames: &[Option<Mbuf>]) {
        self.copy(vlans, p, frames, Direction::Tx, pmd::tsc::cycles);
    }

    /// Copies `frames` of port `p` seen in `dir` into every capture of that port and
    /// direction; `now` is read once, and only if one wants them.
    fn copy(
        &mut self,
        vlans: &[PortVlan],
        p: usize,
        frames: &[Option<Mbuf>],
        dir: Direction,
        now: impl Fn() -> u64,
    ) {
        let mut at = None;
        for t in &mut self.list {
            let spec = &t.capture.spec;
            let wants = if dir == Direction::Rx {
                spec.direction.rx()
            } else {
                spec.direction.tx()
            };
            if t.capture.port == p && wants {
                let cycles = *at.get_or_insert_with(&now);
                t.copy(frames.iter().flatten(), dir, cycles, &vlans[p], self.pmd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmd::hugepage::HugepagePolicy;
    use pmd::{Mempool, MempoolCache};

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

    fn capture(spec: CaptureSpec) -> (Taps, Arc<Capture>) {
        let c = Arc::new(Capture::new(1, 0, "p", spec, 1));
        let mut taps = Taps::new(0);
        assert!(taps.follow(std::slice::from_ref(&c)));
        assert!(!taps.follow(std::slice::from_ref(&c)), "taken once");
        (taps, c)
    }

    #[test]
    fn copies_what_matches_and_counts_what_finds_no_room() {
        let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool);
        let (mut taps, c) = capture(CaptureSpec {
            direction: Direction::Rx,
            snaplen: 20,
            vlan: Some(10),
        });
        let mut readers = c.take_readers();
        let vlans = vec![PortVlan::trunk(&[])];
        let burst: Vec<Option<Mbuf>> = vec![
            frame(&mut cache, Some(10), 100),
            frame(&mut cache, Some(20), 100),
            frame(&mut cache, None, 60),
        ];
        taps.rx(&vlans, 0, &burst, 7);
        taps.tx(&vlans, 0, &burst); // an rx capture takes no tx frames
        taps.rx(&vlans, 1, &burst, 7); // nor another port's
        let f = readers[0].next_frame().unwrap();
        assert_eq!((f.data.len(), f.orig_len, f.cycles), (20, 100, 7));
        assert_eq!(&f.data[12..16], &[0x81, 0, 0, 10], "the tag is kept");
        assert!(readers[0].next_frame().is_none());
        // More frames than the ring holds: the rest are counted, not waited for;
        // records that wrap around the ring's end read back whole.
        let many: Vec<Option<Mbuf>> = (0..32).map(|_| frame(&mut cache, Some(10), 64)).collect();
        let fit = RING_BYTES / (HEADER + 20);
        let rounds = fit / 32 + 2;
        for _ in 0..rounds {
            taps.rx(&vlans, 0, &many, 8);
        }
        assert_eq!(c.dropped(), (rounds * 32 - fit) as u64);
        let mut n = 0;
        while let Some(f) = readers[0].next_frame() {
            assert_eq!((f.data.len(), f.orig_len), (20, 64));
            n += 1;
        }
        assert_eq!(n, fit);
        for _ in 0..rounds {
            taps.rx(&vlans, 0, &many, 9);
            while readers[0].next_frame().is_some() {}
        }
        for m in burst.into_iter().chain(many).flatten() {
            cache.free(m);
        }
        // Leaving the plan gives the ring up.
        assert!(taps.follow(&[]));
    }

    #[test]
    fn access_port_frames_are_in_its_vlan() {
        let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool);
        let (mut taps, c) = capture(CaptureSpec {
            direction: Direction::Both,
            snaplen: 65535,
            vlan: Some(5),
        });
        let mut readers = c.take_readers();
        let burst = vec![frame(&mut cache, None, 60)];
        taps.tx(&[PortVlan::access(5)], 0, &burst);
        let f = readers[0].next_frame().unwrap();
        assert_eq!((f.data.len(), f.direction), (60, Direction::Tx));
        taps.tx(&[PortVlan::access(6)], 0, &burst);
        assert!(readers[0].next_frame().is_none());
        cache.free(burst.into_iter().flatten().next().unwrap());
    }

    #[test]
    fn records_split_at_the_ring_end_are_put_whole() {
        let (mut a, mut b) = ([0u8; 5], [0u8; 5]);
        put(&mut a, &mut b, 3, &[1, 2, 3, 4]);
        assert_eq!((a, b), ([0, 0, 0, 1, 2], [3, 4, 0, 0, 0]));
        put(&mut a, &mut b, 6, &[9]);
        assert_eq!(b, [3, 9, 0, 0, 0]);
    }
}
