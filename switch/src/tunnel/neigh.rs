//! The underlay's neighbours: ARP frames (read and written) and the cache of next-hop
//! MACs a tunnel needs to send, as OVS's `tnl-neigh-cache`.
//!
//! The cache is a small fixed table of atomic slots, shared by the PMD threads that
//! send into tunnels (they read it, and claim a slot for a next hop they need) and
//! the one that receives on the underlay (it learns from ARP). Nothing is locked or
//! allocated after creation. A next hop is learned only once a tunnel needed it, so
//! ARP from elsewhere on the underlay cannot fill the table. A missing or expired
//! entry makes the sender ask (an ARP request, at most one per `retry` per next hop)
//! and drop the frame, counted, as OVS does; an entry is good for `max_age` after it
//! was last heard from, and in its last half each lookup also asks again (rate
//! limited), so that a live neighbour is refreshed before it expires.

use super::header::ETHERTYPE_ARP;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// Length of an ARP frame for IPv4 over Ethernet, without padding.
pub const ARP_LEN: usize = 42;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// An ARP packet for IPv4 over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: ArpOp,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// Reads an ARP frame (Ethernet, IPv4, request or reply); `None` for anything else.
pub fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < ARP_LEN || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_ARP {
        return None;
    }
    let a = &f[14..];
    if a[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let op = match u16::from_be_bytes([a[6], a[7]]) {
        OP_REQUEST => ArpOp::Request,
        OP_REPLY => ArpOp::Reply,
        _ => return None,
    };
    let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
    Some(Arp {
        op,
        sender_mac: a[8..14].try_into().unwrap(),
        sender_ip: ip(14),
        target_mac: a[18..24].try_into().unwrap(),
        target_ip: ip(24),
    })
}

/// Writes `a` as an Ethernet frame into `out` (at least [`ARP_LEN`] bytes): to
/// broadcast for a request, to the target for a reply. Returns its length.
pub fn write_arp(a: &Arp, out: &mut [u8]) -> usize {
    let f = &mut out[..ARP_LEN];
    match a.op {
        ArpOp::Request => f[0..6].copy_from_slice(&[0xff; 6]),
        ArpOp::Reply => f[0..6].copy_from_slice(&a.target_mac),
    }
    f[6..12].copy_from_slice(&a.sender_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    let op = match a.op {
        ArpOp::Request => OP_REQUEST,
        ArpOp::Reply => OP_REPLY,
    };
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&a.sender_mac);
    f[28..32].copy_from_slice(&a.sender_ip.octets());
    f[32..38].copy_from_slice(&a.target_mac);
    f[38..42].copy_from_slice(&a.target_ip.octets());
    ARP_LEN
}

/// What the cache says of a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its MAC; `ask`: also send an ARP request now (the entry is getting old).
    Resolved { mac: [u8; 6], ask: bool },
    /// Not known (or expired); `ask`: send an ARP request now (else one went out
    /// less than `retry` ago).
    Unresolved { ask: bool },
    /// Not known, and the table has no free slot for it.
    Full,
}

/// One next hop: its address (0: free slot), its MAC with [`VALID`], when it was last
/// heard from and when it was last asked for (nanoseconds of the caller's clock).
#[derive(Default)]
struct Slot {
    ip: AtomicU32,
    mac: AtomicU64,
    heard: AtomicU64,
    asked: AtomicU64,
}

const VALID: u64 = 1 << 63;

/// The next-hop cache of one underlay.
pub struct NeighCache {
    slots: Box<[Slot]>,
    max_age: u64,
    retry: u64,
}

impl NeighCache {
    /// A cache of `cap` next hops; times in nanoseconds.
    pub fn new(cap: usize, max_age: u64, retry: u64) -> NeighCache {
        NeighCache {
            slots: (0..cap).map(|_| Slot::default()).collect(),
            max_age,
            retry,
        }
    }

    fn find(&self, ip: u32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.ip.load(Acquire) == ip)
    }

    /// The MAC of next hop `ip` at time `now`, claiming a slot for it if it has none.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr, now: u64) -> Lookup {
        let key = u32::from(ip);
        let slot = match self.find(key) {
            Some(s) => s,
            None => match self.claim(key) {
                Some(s) => s,
                None => return Lookup::Full,
            },
        };
        let mac = slot.mac.load(Acquire);
        let age = now.saturating_sub(slot.heard.load(Relaxed));
        if mac & VALID != 0 && age < self.max_age {
            let ask = age >= self.max_age / 2 && self.due(slot, now);
            let b = mac.to_be_bytes();
            return Lookup::Resolved {
                mac: [b[2], b[3], b[4], b[5], b[6], b[7]],
                ask,
            };
        }
        Lookup::Unresolved {
            ask: self.due(slot, now),
        }
    }

    /// Whether a request for the slot's next hop is due; if so, the caller sends it.
    fn due(&self, s: &Slot, now: u64) -> bool {
        let last = s.asked.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < self.retry {
            return false;
        }
        s.asked
            .compare_exchange(last, now.max(1), Relaxed, Relaxed)
            .is_ok()
    }

    #[cold]
    fn claim(&self, ip: u32) -> Option<&Slot> {
        for s in self.slots.iter() {
            match s.ip.compare_exchange(0, ip, AcqRel, Acquire) {
                Ok(_) => return Some(s),
                Err(cur) if cur == ip => return Some(s),
                Err(_) => {}
            }
        }
        None
    }

    /// `mac` is at `ip`, heard at `now`: kept if `ip` is a next hop a tunnel needs.
    /// Returns whether it was.
    pub fn learn(&self, ip: Ipv4Addr, mac: [u8; 6], now: u64) -> bool {
        let Some(s) = self.find(u32::from(ip)) else {
            return false;
        };
        let v = u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]);
        s.heard.store(now, Relaxed);
        s.mac.store(v | VALID, Release);
        true
    }

    /// Forgets every MAC (the next hops stay, unresolved); returns how many were known.
    pub fn flush(&self) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            if s.mac.swap(0, AcqRel) & VALID != 0 {
                n += 1;
            }
            s.asked.store(0, Relaxed);
        }
        n
    }

    /// The next hops and their MACs (none while unresolved), for `ctl show`.
    pub fn entries(&self, now: u64) -> Vec<(Ipv4Addr, Option<[u8; 6]>)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let ip = s.ip.load(Acquire);
                if ip == 0 {
                    return None;
                }
                let m = s.mac.load(Acquire);
                let fresh = now.saturating_sub(s.heard.load(Relaxed)) < self.max_age;
                let b = m.to_be_bytes();
                let mac = (m & VALID != 0 && fresh).then(|| [b[2], b[3], b[4], b[5], b[6], b[7]]);
                Some((Ipv4Addr::from(ip), mac))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::header::tests::{hex, KERNEL};
    use crate::tunnel::header::OVERHEAD;

    const S: u64 = 1_000_000_000;
    const GW: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0x0a, 2];

    #[test]
    fn arp_frames_read_back_as_written() {
        let req = Arp {
            op: ArpOp::Request,
            sender_mac: [2, 0, 0, 0, 0x0a, 1],
            sender_ip: Ipv4Addr::new(10, 99, 0, 1),
            target_mac: [0; 6],
            target_ip: GW,
        };
        let mut b = [0u8; 60];
        assert_eq!(write_arp(&req, &mut b), ARP_LEN);
        assert_eq!(&b[0..6], &[0xff; 6]);
        assert_eq!(parse_arp(&b), Some(req));
        // Byte for byte what Linux sends: the ARP request inside the captured frame.
        let k = hex(KERNEL)[OVERHEAD..].to_vec();
        let linux = Arp {
            op: ArpOp::Request,
            sender_mac: [2, 0, 0, 0, 1, 2],
            sender_ip: Ipv4Addr::new(192, 168, 42, 2),
            target_mac: [0; 6],
            target_ip: Ipv4Addr::new(192, 168, 42, 1),
        };
        assert_eq!(parse_arp(&k), Some(linux));
        let mut mine = [0u8; ARP_LEN];
        write_arp(&linux, &mut mine);
        assert_eq!(&mine[..], &k[..]);
        let rep = Arp {
            op: ArpOp::Reply,
            ..req
        };
        write_arp(&rep, &mut b);
        assert_eq!(&b[0..6], &[0; 6]);
        assert_eq!(parse_arp(&b), Some(rep));
        b[21] = 3; // RARP request: not ours
        assert_eq!(parse_arp(&b), None);
        assert_eq!(parse_arp(&b[..41]), None);
    }

    #[test]
    fn a_next_hop_is_asked_for_once_per_retry_then_learned_then_refreshed() {
        let c = NeighCache::new(4, 60 * S, S);
        assert_eq!(c.lookup(GW, 10 * S), Lookup::Unresolved { ask: true });
        assert_eq!(c.lookup(GW, 10 * S + 1), Lookup::Unresolved { ask: false });
        assert_eq!(c.lookup(GW, 11 * S), Lookup::Unresolved { ask: true });
        // ARP from a host no tunnel needs is not kept.
        assert!(!c.learn(Ipv4Addr::new(10, 99, 0, 7), MAC, 11 * S));
        assert!(c.learn(GW, MAC, 11 * S));
        let fresh = Lookup::Resolved {
            mac: MAC,
            ask: false,
        };
        assert_eq!(c.lookup(GW, 12 * S), fresh);
        // In the entry's second half: still used, asked for again once per retry.
        let old = Lookup::Resolved {
            mac: MAC,
            ask: true,
        };
        assert_eq!(c.lookup(GW, 42 * S), old);
        assert_eq!(
            c.lookup(GW, 42 * S + 1),
            Lookup::Resolved {
                mac: MAC,
                ask: false
            }
        );
        // Unheard for max_age: unresolved again.
        assert_eq!(c.lookup(GW, 72 * S), Lookup::Unresolved { ask: true });
        assert!(c.learn(GW, MAC, 73 * S));
        assert_eq!(c.lookup(GW, 74 * S), fresh);
        assert_eq!(c.entries(74 * S), vec![(GW, Some(MAC))]);
        // A flush forgets the MAC and lets the next lookup ask at once.
        assert_eq!(c.flush(), 1);
        assert_eq!(c.lookup(GW, 74 * S), Lookup::Unresolved { ask: true });
        assert_eq!(c.entries(74 * S), vec![(GW, None)]);
    }

    #[test]
    fn a_full_cache_says_so_and_keeps_its_entries() {
        let c = NeighCache::new(2, 60 * S, S);
        for i in 1..=2 {
            assert!(matches!(
                c.lookup(Ipv4Addr::new(10, 0, 0, i), S),
                Lookup::Unresolved { .. }
            ));
        }
        assert_eq!(c.lookup(Ipv4Addr::new(10, 0, 0, 3), S), Lookup::Full);
        assert!(c.learn(Ipv4Addr::new(10, 0, 0, 2), MAC, S));
        assert!(matches!(
            c.lookup(Ipv4Addr::new(10, 0, 0, 2), S),
            Lookup::Resolved { .. }
        ));
    }
}
