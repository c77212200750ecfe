//! The MAC learning table: (MAC, VLAN) → port, with aging and a capacity bound.
//!
//! It is shared by every PMD thread and read by the control plane without a lock:
//! a fixed open-addressing table of atomic slots (a key word and a value word),
//! probed linearly over a short window. Learning claims an empty slot with a CAS;
//! lookups are two loads and a re-check of the key. Nothing is allocated after
//! creation, so a guest sending a flood of source MACs can fill at most its share
//! of the table (`per_port_limit`) and never make the switch allocate.
//!
//! Slots are found by a hash keyed per table (random at each start), so a guest
//! cannot compute MACs that land in another station's probe window and make it
//! unlearnable. Two threads learning the same new MAC at once both claim a slot;
//! each then looks for the other, and only one entry is kept (see `learn`).
//!
//! (A `hashbrown` map, the first choice, cannot be shared between PMD threads and
//! the control plane without a lock or a copy per change; see README, Design.)

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

/// A 48-bit MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    #[inline]
    pub fn from_slice(b: &[u8]) -> Mac {
        Mac([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
    /// Group address (multicast or broadcast): the I/G bit.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    #[inline]
    fn as_u64(&self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Port numbers in the table.
pub type PortNo = u16;

const OCCUPIED: u64 = 1 << 62;
const BUSY: u64 = 1 << 61;
const TOMB: u64 = 1 << 60;
const PROBE: usize = 16;

#[derive(Default)]
struct Slot {
    key: AtomicU64,
    /// port in bits 0..16, last-seen second in bits 16..48.
    val: AtomicU64,
}

#[inline]
fn key_of(mac: Mac, vlan: u16) -> u64 {
    OCCUPIED | ((vlan as u64 & 0xfff) << 48) | mac.as_u64()
}

#[inline]
fn val_of(port: PortNo, now: u32) -> u64 {
    port as u64 | (now as u64) << 16
}

/// What `learn` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port.
    Known,
    /// New entry.
    New,
    /// Known on another port; moved.
    Moved,
    /// Not learned: the table, or the port's share of it, is full.
    Refused,
}

/// One entry, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mac: Mac,
    pub vlan: u16,
    pub port: PortNo,
    pub age_secs: u32,
}

pub struct Fdb {
    slots: Box<[Slot]>,
    mask: usize,
    capacity: usize,
    count: AtomicUsize,
    per_port: Box<[AtomicU32]>,
    /// Changed by the control plane as ports come and go (relaxed: a limit a moment old is fine).
    per_port_limit: AtomicU32,
    aging_secs: u32,
    /// The slot hash's key: `k0` is mixed into the MAC, `k1` (odd) multiplies it.
    k0: u64,
    k1: u64,
}

impl Fdb {
    /// A table of at most `capacity` entries for `ports` ports, each port holding at
    /// most `per_port_limit` of them; entries unseen for `aging_secs` are removed by `age`.
    pub fn new(capacity: usize, ports: usize, per_port_limit: usize, aging_secs: u32) -> Fdb {
        // std's RandomState is seeded from the OS once per process and differs per
        // instance: enough for a key a guest cannot learn, without a dependency.
        let rs = std::collections::hash_map::RandomState::new();
        let key = (rs.hash_one(0u64), rs.hash_one(1u64));
        Fdb::with_key(capacity, ports, per_port_limit, aging_secs, key)
    }

    /// `new` with a given hash key (tests that need the same layout every run).
    pub fn with_key(
        capacity: usize,
        ports: usize,
        per_port_limit: usize,
        aging_secs: u32,
        (k0, k1): (u64, u64),
    ) -> Fdb {
        let capacity = capacity.max(1);
        // A quarter full at most: with a random hash, windows of PROBE slots then
        // (practically) never fill before the table does. At half full, one table in
        // a few refused stations from about 60% of capacity.
        let nslots = (capacity * 4).next_power_of_two().max(PROBE);
        Fdb {
            slots: (0..nslots).map(|_| Slot::default()).collect(),
            mask: nslots - 1,
            capacity,
            count: AtomicUsize::new(0),
            per_port: (0..ports.max(1)).map(|_| AtomicU32::new(0)).collect(),
            per_port_limit: AtomicU32::new(per_port_limit.clamp(1, capacity) as u32),
            aging_secs,
            k0,
            k1: k1 | 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Sets the most entries one port may hold (1..=capacity), for entries learned from now on.
    pub fn set_per_port_limit(&self, n: usize) {
        self.per_port_limit
            .store(n.clamp(1, self.capacity) as u32, Relaxed);
    }
    pub fn per_port_limit(&self) -> usize {
        self.per_port_limit.load(Relaxed) as usize
    }
    pub fn len(&self) -> usize {
        self.count.load(Relaxed)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn aging_secs(&self) -> u32 {
        self.aging_secs
    }

    /// The first slot of `key`'s probe window. A folded multiply (the 128-bit product's
    /// halves xored, as in foldhash) of the key mixed with a random word, by a random
    /// odd word: without the key, which slot a MAC lands in cannot be predicted. Its
    /// output still carries the structure of sequential MACs for some keys (one table
    /// in twenty filled a window at under 15% of capacity), so it is spread by a
    /// Fibonacci multiply (bits 32 and up are the slot: at most 2^26 slots). Two
    /// multiplies, two xors, a shift and the mask the probe uses anyway.
    #[inline]
    fn home(&self, key: u64) -> usize {
        let x = (key ^ self.k0) as u128 * self.k1 as u128;
        let folded = (x >> 64) as u64 ^ x as u64;
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    /// Learns that `mac` on `vlan` is behind `port`, at time `now` (seconds).
    #[inline]
    pub fn learn(&self, mac: Mac, vlan: u16, port: PortNo, now: u32) -> Learned {
        let key = key_of(mac, vlan);
        let home = self.home(key);
        let mut free = None;
        for i in 0..PROBE {
            let s = &self.slots[(home + i) & self.mask];
            let k = s.key.load(Acquire);
            if k == key {
                return self.refresh(s, key, port, now);
            }
            if k == key | BUSY {
                return Learned::Known; // another thread is updating this very entry
            }
            if free.is_none() && (k == 0 || k == TOMB) {
                free = Some((home + i) & self.mask);
            }
            if k == 0 {
                break; // an empty slot ends the probe: the key is not further on
            }
        }
        let Some(at) = free else {
            return Learned::Refused;
        };
        if self.count.load(Relaxed) >= self.capacity || !self.port_has_room(port) {
            return Learned::Refused;
        }
        self.insert(key, home, at, port, now)
    }

    /// `key` was found in `s`: note the time, or move it to `port`.
    #[inline]
    fn refresh(&self, s: &Slot, key: u64, port: PortNo, now: u32) -> Learned {
        let v = s.val.load(Relaxed);
        if v as u16 != port {
            return self.move_entry(s, key, port, now);
        }
        if (v >> 16) as u32 != now {
            s.val.store(val_of(port, now), Relaxed);
        }
        Learned::Known
    }

    /// A station move: the entry in `s` goes to `port` if `port` has room in its share
    /// (the move is refused otherwise, and the entry stays where it was: a guest cannot
    /// exceed its share by claiming others' MACs).
    fn move_entry(&self, s: &Slot, key: u64, port: PortNo, now: u32) -> Learned {
        if !self.port_has_room(port) {
            return Learned::Refused; // checked before the lock: no RMW per refused frame
        }
        // Lock the slot so that a concurrent move or aging of the same entry cannot
        // count it twice.
        if s.key
            .compare_exchange(key, key | BUSY, Acquire, Relaxed)
            .is_err()
        {
            return Learned::Known; // someone else is changing it right now
        }
        let old_port = s.val.load(Relaxed) as u16;
        // Count while holding the slot, so moves of one entry count in order.
        if old_port != port {
            if !self.reserve_port(port) {
                s.key.store(key, Release);
                return Learned::Refused;
            }
            self.count_port(old_port, -1);
        }
        s.val.store(val_of(port, now), Relaxed);
        s.key.store(key, Release);
        Learned::Moved
    }

    /// Claims the free slot `at` (or, if another thread takes it first, the next free
    /// one in the window) for a new `key`.
    fn insert(&self, key: u64, home: usize, mut at: usize, port: PortNo, now: u32) -> Learned {
        loop {
            let s = &self.slots[at];
            let cur = s.key.load(Relaxed);
            // SeqCst: see `keep_claim`.
            if (cur == 0 || cur == TOMB)
                && s.key
                    .compare_exchange(cur, key | BUSY, SeqCst, Relaxed)
                    .is_ok()
            {
                if !self.keep_claim(key, home, at) {
                    // Never back to 0: another key may have probed past this slot.
                    s.key.store(TOMB, Release);
                    return Learned::Known;
                }
                s.val.store(val_of(port, now), Relaxed);
                s.key.store(key, Release);
                self.count.fetch_add(1, Relaxed);
                self.count_port(port, 1);
                return Learned::New;
            }
            let next = (1..PROBE).map(|d| (at + d) & self.mask).find(|&j| {
                let k = self.slots[j].key.load(Relaxed);
                k == 0 || k == TOMB
            });
            match next {
                Some(j) if (j.wrapping_sub(home) & self.mask) < PROBE => at = j,
                _ => return Learned::Refused,
            }
        }
    }

    /// After claiming slot `at` for `key` (as `key | BUSY`): whether to keep it. Another
    /// thread learning the same MAC at the same moment may have claimed another slot of
    /// the window. Claims and these loads are SeqCst, so of two claimers at least one
    /// sees the other. The rule: yield to a finished entry, and to a claim (or a locked
    /// entry) nearer home; wait for a claim farther from home to settle, then look
    /// again. The farther claimer yields if it saw us; if it did not, it finishes and
    /// we yield to it. Waits only go away from home, so they end. Learning a new MAC is
    /// rare: none of this is on the per-packet path.
    fn keep_claim(&self, key: u64, home: usize, at: usize) -> bool {
        let mine = at.wrapping_sub(home) & self.mask;
        'scan: loop {
            for i in (0..PROBE).filter(|&i| i != mine) {
                let s = &self.slots[(home + i) & self.mask];
                let k = s.key.load(SeqCst);
                if k == key || (k == key | BUSY && i < mine) {
                    return false;
                }
                if k == key | BUSY {
                    // Bounded: the holder may be the aging thread, preempted. Giving up
                    // the claim only leaves this MAC unlearned until its next frame.
                    let mut spins = 0u32;
                    while s.key.load(SeqCst) == key | BUSY {
                        spins += 1;
                        if spins > 4096 {
                            return false;
                        }
                        std::hint::spin_loop();
                    }
                    continue 'scan;
                }
            }
            return true;
        }
    }

    #[inline]
    fn port_has_room(&self, port: PortNo) -> bool {
        self.per_port
            .get(port as usize)
            .is_some_and(|c| c.load(Relaxed) < self.per_port_limit.load(Relaxed))
    }

    /// Counts one more entry for `port` if its share has room.
    fn reserve_port(&self, port: PortNo) -> bool {
        let limit = self.per_port_limit.load(Relaxed);
        self.per_port.get(port as usize).is_some_and(|c| {
            c.fetch_update(Relaxed, Relaxed, |v| (v < limit).then_some(v + 1))
                .is_ok()
        })
    }

    #[inline]
    fn count_port(&self, port: PortNo, d: i32) {
        if let Some(c) = self.per_port.get(port as usize) {
            if d > 0 {
                c.fetch_add(1, Relaxed);
            } else {
                let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
            }
        }
    }

    /// The port `mac` on `vlan` was learned on.
    #[inline]
    pub fn lookup(&self, mac: Mac, vlan: u16) -> Option<PortNo> {
        let key = key_of(mac, vlan);
        let home = self.home(key);
        for i in 0..PROBE {
            let s = &self.slots[(home + i) & self.mask];
            let k = s.key.load(Acquire);
            if k == key {
                let v = s.val.load(Acquire);
                // The slot may have been aged out and reused between the two loads:
                // only trust the value if the key is still ours.
                if s.key.load(Acquire) == key {
                    return Some(v as u16);
                }
                return None;
            }
            if k == 0 || k == key | BUSY {
                // Not there, or being changed right now: flood this frame.
                return None;
            }
        }
        None
    }

    fn remove_slot(&self, s: &Slot, k: u64) -> bool {
        if s.key
            .compare_exchange(k, k | BUSY, AcqRel, Relaxed)
            .is_err()
        {
            return false;
        }
        let port = s.val.load(Relaxed) as u16;
        s.key.store(TOMB, Release);
        let _ = self
            .count
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        self.count_port(port, -1);
        true
    }

    /// Removes the entry of `mac` on `vlan`, if there is one (a control plane's
    /// withdrawal); returns whether it did.
    /// An entry another thread is updating at that moment is waited for, briefly.
    pub fn forget(&self, mac: Mac, vlan: u16) -> bool {
        let key = key_of(mac, vlan);
        let home = self.home(key);
        for _ in 0..1000 {
            let mut busy = false;
            for i in 0..PROBE {
                let s = &self.slots[(home + i) & self.mask];
                let k = s.key.load(Acquire);
                if k == key && self.remove_slot(s, key) {
                    return true;
                }
                busy |= k == key | BUSY || k == key;
            }
            if !busy {
                return false;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Removes entries not seen for `aging_secs`; returns how many.
    pub fn age(&self, now: u32) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let k = s.key.load(Acquire);
            if k & OCCUPIED == 0 || k & BUSY != 0 {
                continue;
            }
            let seen = (s.val.load(Relaxed) >> 16) as u32;
            if now.saturating_sub(seen) >= self.aging_secs && self.remove_slot(s, k) {
                n += 1;
            }
        }
        n
    }

    /// Removes every entry; returns how many (one pass over the table).
    pub fn flush_all(&self) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let k = s.key.load(Acquire);
            if k & OCCUPIED != 0 && k & BUSY == 0 && self.remove_slot(s, k) {
                n += 1;
            }
        }
        n
    }

    /// Removes every entry of `port` (the port went away).
    pub fn flush_port(&self, port: PortNo) -> usize {
        let mut n = 0;
        for s in self.slots.iter() {
            let k = s.key.load(Acquire);
            if k & OCCUPIED != 0
                && k & BUSY == 0
                && s.val.load(Relaxed) as u16 == port
                && self.remove_slot(s, k)
            {
                n += 1;
            }
        }
        n
    }

    /// Entries learned on `port`.
    pub fn port_entries(&self, port: PortNo) -> u32 {
        self.per_port
            .get(port as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    /// All entries, sorted by VLAN and MAC.
    pub fn entries(&self, now: u32) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .slots
            .iter()
            .filter_map(|s| {
                let k = s.key.load(Acquire);
                if k & OCCUPIED == 0 || k & BUSY != 0 {
                    return None;
                }
                let val = s.val.load(Relaxed);
                let m = (k & 0xffff_ffff_ffff).to_be_bytes();
                Some(Entry {
                    mac: Mac([m[2], m[3], m[4], m[5], m[6], m[7]]),
                    vlan: ((k >> 48) & 0xfff) as u16,
                    port: val as u16,
                    age_secs: now.saturating_sub((val >> 16) as u32),
                })
            })
            .collect();
        v.sort_by_key(|e| (e.vlan, e.mac));
        v
    }
}

#[cfg(test)]
mod forget_tests {
    use super::*;

    #[test]
    fn a_forgotten_entry_is_gone_and_its_port_count_with_it() {
        let t = Fdb::new(64, 4, 64, 300);
        let m = Mac([2, 0, 0, 0, 0, 9]);
        assert_eq!(t.learn(m, 0, 1, 0), Learned::New);
        assert!(!t.forget(m, 5), "another VLAN");
        assert!(t.forget(m, 0));
        assert_eq!((t.lookup(m, 0), t.len(), t.port_entries(1)), (None, 0, 0));
        assert!(!t.forget(m, 0));
        assert_eq!(t.learn(m, 0, 2, 0), Learned::New);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        Mac([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn flush_all_empties_the_table_and_its_counts() {
        let t = Fdb::with_key(64, 4, 64, 300, (1, 3));
        for i in 0..20u8 {
            assert_eq!(
                t.learn(Mac([2, 0, 0, 0, 1, i]), 0, (i % 3) as u16, 0),
                Learned::New
            );
        }
        assert_eq!(t.flush_all(), 20);
        assert_eq!(t.len(), 0);
        assert!((0..3).all(|p| t.port_entries(p) == 0));
        assert_eq!(t.lookup(Mac([2, 0, 0, 0, 1, 5]), 0), None);
    }

    #[test]
    fn learns_and_looks_up() {
        let t = Fdb::new(64, 4, 64, 300);
        assert_eq!(t.lookup(mac(1), 0), None);
        assert_eq!(t.learn(mac(1), 0, 2, 0), Learned::New);
        assert_eq!(t.learn(mac(1), 0, 2, 1), Learned::Known);
        assert_eq!(t.lookup(mac(1), 0), Some(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn station_move_updates_port() {
        let t = Fdb::new(64, 4, 64, 300);
        t.learn(mac(1), 0, 1, 0);
        assert_eq!(t.learn(mac(1), 0, 3, 0), Learned::Moved);
        assert_eq!(t.lookup(mac(1), 0), Some(3));
        assert_eq!(t.port_entries(1), 0);
        assert_eq!(t.port_entries(3), 1);
    }

    #[test]
    fn vlans_are_separate() {
        let t = Fdb::new(64, 4, 64, 300);
        t.learn(mac(7), 10, 1, 0);
        t.learn(mac(7), 20, 2, 0);
        assert_eq!(t.lookup(mac(7), 10), Some(1));
        assert_eq!(t.lookup(mac(7), 20), Some(2));
        assert_eq!(t.lookup(mac(7), 0), None, "untagged is its own VLAN");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn aging_removes_only_stale_entries() {
        let t = Fdb::new(64, 4, 64, 10);
        t.learn(mac(1), 0, 1, 0);
        t.learn(mac(2), 0, 1, 5);
        assert_eq!(t.age(9), 0);
        assert_eq!(t.age(10), 1);
        assert_eq!(t.lookup(mac(1), 0), None);
        assert_eq!(t.lookup(mac(2), 0), Some(1));
        t.learn(mac(2), 0, 1, 12); // refreshed
        assert_eq!(t.age(20), 0);
        assert_eq!(t.age(22), 1);
        assert!(t.is_empty());
        assert_eq!(t.port_entries(1), 0);
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let t = Fdb::new(100, 2, 100, 300);
        let mut refused = 0;
        for i in 0..1000 {
            if t.learn(mac(i), 0, 0, 0) == Learned::Refused {
                refused += 1;
            }
        }
        assert_eq!(t.len(), 100);
        assert_eq!(refused, 900);
        // Entries learned before the table filled keep working.
        assert_eq!(t.lookup(mac(0), 0), Some(0));
    }

    #[test]
    fn a_port_flooding_macs_cannot_take_other_ports_share() {
        let t = Fdb::new(1000, 2, 500, 300);
        for i in 0..100_000 {
            t.learn(mac(i), 0, 0, 0);
        }
        assert_eq!(t.port_entries(0), 500);
        // Port 1 can still learn.
        for i in 0..400 {
            assert_eq!(t.learn(mac(1_000_000 + i), 0, 1, 0), Learned::New);
        }
        assert_eq!(t.lookup(mac(1_000_000), 0), Some(1));
    }

    #[test]
    fn tombstones_are_reused_and_lookups_pass_them() {
        let t = Fdb::new(8, 1, 8, 1);
        for round in 0..50u32 {
            for i in 0..8 {
                t.learn(mac(round * 8 + i), 0, 0, round * 2);
            }
            for i in 0..8 {
                assert_eq!(
                    t.lookup(mac(round * 8 + i), 0),
                    Some(0),
                    "round {round} mac {i}"
                );
            }
            t.age(round * 2 + 1);
            assert!(t.is_empty());
        }
    }

    #[test]
    fn concurrent_station_moves_keep_counts_sane() {
        let t = std::sync::Arc::new(Fdb::new(64, 4, 64, 300));
        t.learn(mac(1), 0, 0, 0);
        let hs: Vec<_> = (1..4u16)
            .map(|p| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        t.learn(mac(1), 0, if i % 2 == 0 { p } else { 0 }, 0);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let total: u32 = (0..4).map(|p| t.port_entries(p)).sum();
        assert_eq!(total, 1, "one entry must be counted once");
        assert_eq!(t.len(), 1);
    }

    /// The slot hash before it was keyed: an attacker who knows the code can
    /// compute MACs that share a victim's home slot.
    fn unkeyed_home(key: u64, mask: usize) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask
    }

    #[test]
    fn macs_crafted_against_the_unkeyed_hash_cannot_crowd_out_a_victim() {
        let t = Fdb::new(1024, 2, 1024, 300);
        let victim = mac(0xdead);
        let target = unkeyed_home(key_of(victim, 0), t.mask);
        let crafted: Vec<Mac> = (0..)
            .map(mac)
            .filter(|&m| m != victim && unkeyed_home(key_of(m, 0), t.mask) == target)
            .take(PROBE)
            .collect();
        for &m in &crafted {
            assert_eq!(t.learn(m, 0, 0, 0), Learned::New);
        }
        assert_eq!(t.learn(victim, 0, 1, 0), Learned::New);
        assert_eq!(t.lookup(victim, 0), Some(1));
        for &m in &crafted {
            assert_eq!(t.lookup(m, 0), Some(0));
        }
    }

    #[test]
    fn sequential_macs_fill_the_table_to_capacity() {
        // The hash is random per table: try a few tables.
        for _ in 0..20 {
            let t = Fdb::new(8192, 1, 8192, 300);
            for i in 0..8192 {
                assert_eq!(t.learn(mac(i), 0, 0, 0), Learned::New, "mac {i}");
            }
            assert_eq!(t.learn(mac(8192), 0, 0, 0), Learned::Refused);
        }
    }

    #[test]
    fn two_tables_hash_differently() {
        // The key is drawn per table: a collision set found against one start of the
        // switch says nothing about the next. (Probability of equal keys: ~2^-64.)
        let (a, b) = (Fdb::new(1024, 1, 1024, 1), Fdb::new(1024, 1, 1024, 1));
        assert!((0..64).any(|i| a.home(key_of(mac(i), 0)) != b.home(key_of(mac(i), 0))));
    }

    #[test]
    fn a_station_move_counts_against_the_new_ports_limit() {
        let t = Fdb::new(64, 4, 2, 300);
        t.learn(mac(1), 0, 1, 0);
        t.learn(mac(2), 0, 1, 0);
        assert_eq!(t.learn(mac(3), 0, 0, 0), Learned::New);
        // Port 1 holds its share: mac 3 cannot move onto it, and stays where it was.
        assert_eq!(t.learn(mac(3), 0, 1, 1), Learned::Refused);
        assert_eq!(t.lookup(mac(3), 0), Some(0));
        assert_eq!((t.port_entries(0), t.port_entries(1)), (1, 2));
        // Once port 1 has room, the move goes through.
        t.flush_port(1);
        assert_eq!(t.learn(mac(3), 0, 1, 2), Learned::Moved);
        assert_eq!((t.port_entries(0), t.port_entries(1)), (0, 1));
    }

    /// Threads learning the same new MACs at the same moment must create one entry
    /// each, counted once.
    #[test]
    fn concurrent_learners_of_one_new_mac_make_one_entry() {
        const THREADS: usize = 4;
        const ROUNDS: u32 = 3000;
        const MACS: u32 = 16;
        let t = std::sync::Arc::new(Fdb::new(65536, 1, 65536, 300));
        let start = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let (t, start) = (t.clone(), start.clone());
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        start.wait();
                        for i in 0..MACS {
                            t.learn(mac(round * MACS + i), 0, 0, 0);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let entries = t.entries(0);
        let mut seen = std::collections::HashMap::new();
        for e in &entries {
            *seen.entry((e.mac, e.vlan)).or_insert(0) += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(
            dups.is_empty(),
            "{} of {} MACs have more than one entry, e.g. {:?}",
            dups.len(),
            seen.len(),
            &dups[..dups.len().min(3)]
        );
        assert_eq!(seen.len(), (ROUNDS * MACS) as usize);
        assert_eq!(t.len(), entries.len());
        assert_eq!(t.port_entries(0) as usize, entries.len());
    }

    #[test]
    fn concurrent_learners_and_readers() {
        let t = std::sync::Arc::new(Fdb::new(4096, 4, 4096, 300));
        let hs: Vec<_> = (0..4u16)
            .map(|p| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..800u32 {
                        t.learn(mac(p as u32 * 10_000 + i), 0, p, 0);
                        // Every MAC this thread learned maps to this thread's port.
                        assert_eq!(t.lookup(mac(p as u32 * 10_000 + i / 2), 0), Some(p));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(t.len(), 3200);
        assert_eq!(t.entries(0).len(), 3200);
    }
}
