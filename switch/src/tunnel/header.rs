//! VXLAN over IPv4 on the wire (RFC 7348): the 50 bytes put in front of a frame
//! going into a tunnel, and the checks that take them off a frame coming out.
//!
//! Fixed offsets, no parser crate: this runs once per tunnelled frame. The unit tests
//! check both directions with `etherparse` and against a frame Linux's vxlan device
//! sent.

use pmd::Mbuf;
use std::fmt;
use std::net::Ipv4Addr;

/// Bytes VXLAN over IPv4 adds in front of the inner frame: Ethernet (14), IPv4 (20),
/// UDP (8), VXLAN (8). A 1500-byte underlay carries inner frames of 1450 bytes of IP.
pub const OVERHEAD: usize = ETH + IP + UDP + VXLAN;
/// IANA's VXLAN port. (Linux's vxlan device defaults to 8472 unless given
/// `dstport 4789`.)
pub const DEFAULT_PORT: u16 = 4789;

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
const VXLAN: usize = 8;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
const PROTO_UDP: u8 = 17;
/// The VXLAN header's "I" flag: the VNI is valid.
const FLAG_I: u8 = 0x08;
/// TTL of the outer header, as Linux's and OVS's default.
const TTL: u8 = 64;
/// IPv4 flags word with Don't Fragment: a VTEP must not fragment (RFC 7348 §4.3), and
/// with DF a router on the path does not either; frames too big for the underlay are
/// dropped before encapsulation instead (OVS sets DF by default too).
const DF: u16 = 0x4000;

/// Where an encapsulated frame goes: the outer header's variable fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    /// This switch's MAC on the underlay, and the next hop's.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// This endpoint's IP and the remote endpoint's.
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    pub vni: u32,
}

/// Why a frame could not be encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapError {
    /// The buffer has no room for 50 more bytes (a large buffer filled to its end).
    NoRoom,
    /// The inner frame is shorter than an Ethernet header.
    Runt,
}

impl fmt::Display for EncapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncapError::NoRoom => write!(f, "no room in the buffer for the outer headers"),
            EncapError::Runt => write!(f, "inner frame shorter than an Ethernet header"),
        }
    }
}

/// Puts the outer headers in front of `m`'s frame. The UDP source port is a hash of
/// the inner flow ([`source_port`]); the UDP checksum is 0, as RFC 7348 allows over
/// IPv4 and Linux accepts; the IPv4 header has DF, identification 0 and TTL 64.
#[inline]
pub fn encap(m: &mut Mbuf, o: &Outer) -> Result<(), EncapError> {
    let inner = m.len();
    if inner < ETH {
        return Err(EncapError::Runt);
    }
    let sport = source_port(m.data());
    if !m.prepend(OVERHEAD) {
        return Err(EncapError::NoRoom);
    }
    let h: &mut [u8; OVERHEAD] = (&mut m.data_mut()[..OVERHEAD])
        .try_into()
        .expect("prepended");
    write_outer(h, o, sport, inner);
    Ok(())
}

/// The outer headers for an inner frame of `inner` bytes.
#[inline]
pub fn write_outer(h: &mut [u8; OVERHEAD], o: &Outer, sport: u16, inner: usize) {
    h[0..6].copy_from_slice(&o.dst_mac);
    h[6..12].copy_from_slice(&o.src_mac);
    h[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut h[ETH..ETH + IP];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((IP + UDP + VXLAN + inner) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&DF.to_be_bytes());
    ip[8] = TTL;
    ip[9] = PROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&o.src_ip.octets());
    ip[16..20].copy_from_slice(&o.dst_ip.octets());
    let sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut h[ETH + IP..ETH + IP + UDP];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&o.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP + VXLAN + inner) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let vx = &mut h[ETH + IP + UDP..];
    vx.copy_from_slice(&[FLAG_I, 0, 0, 0, 0, 0, 0, 0]);
    vx[4..7].copy_from_slice(&o.vni.to_be_bytes()[1..]);
}

/// The UDP source port for an inner frame: a hash of its MACs and, for IPv4, its
/// addresses and (TCP, UDP, SCTP) ports, into 49152..=65535 as Linux's default
/// range. Frames of one flow take one path through an ECMP underlay, and flows spread
/// over the paths (RFC 7348 §5).
#[inline]
pub fn source_port(inner: &[u8]) -> u16 {
    let mut h = fnv(0xcbf2_9ce4_8422_2325, &inner[..12.min(inner.len())]);
    if inner.len() >= ETH + IP && u16::from_be_bytes([inner[12], inner[13]]) == ETHERTYPE_IPV4 {
        let ihl = (inner[14] & 0xf) as usize * 4;
        h = fnv(h, &inner[26..34]);
        let proto = inner[23];
        let first_fragment = u16::from_be_bytes([inner[20], inner[21]]) & 0x1fff == 0;
        if matches!(proto, 6 | 17 | 132) && first_fragment && inner.len() >= ETH + ihl + 4 {
            h = fnv(h, &inner[ETH + ihl..ETH + ihl + 4]);
        }
    }
    0xc000 | (h ^ (h >> 16) ^ (h >> 32)) as u16 & 0x3fff
}

#[inline]
fn fnv(mut h: u64, b: &[u8]) -> u64 {
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The Internet checksum of an IPv4 header (its checksum field counted as it is).
#[inline]
pub fn ipv4_checksum(ip: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for w in ip.chunks_exact(2) {
        s += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// What a frame on an underlay port is, for the endpoint with address `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// A VXLAN frame to this endpoint: the inner frame starts at `inner`.
    Tunnel {
        vni: u32,
        dst_port: u16,
        src_ip: Ipv4Addr,
        /// Where the inner frame starts and ends (bytes past the IP packet, padding,
        /// are not the inner frame's).
        inner: usize,
        end: usize,
    },
    /// ARP (for anyone: the neighbour cache learns from it, and requests for `local`
    /// are answered).
    Arp,
    /// Addressed to this endpoint's IP but not a valid VXLAN frame: dropped, counted.
    Bad(BadOuter),
    /// Anything else: the NIC port's own traffic.
    Other,
}

/// Why a frame to this endpoint's IP was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadOuter {
    /// An IPv4 fragment: a VTEP does not reassemble (RFC 7348 §4.3).
    Fragment,
    /// Lengths that disagree with the frame, a bad IP checksum, IP options cut short,
    /// a source address no endpoint can have (0.0.0.0, multicast, broadcast).
    Malformed,
    /// A VXLAN header without the I flag, or an inner frame shorter than Ethernet.
    NotVxlan,
}

/// Sorts one underlay frame. `ports` are the UDP ports tunnels listen on: UDP to
/// another port of `local` is [`Underlay::Other`] (the NIC port's traffic).
#[inline]
pub fn classify(f: &[u8], local: Ipv4Addr, ports: &[u16]) -> Underlay {
    if f.len() < ETH {
        return Underlay::Other;
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        ETHERTYPE_ARP => return Underlay::Arp,
        ETHERTYPE_IPV4 => {}
        _ => return Underlay::Other,
    }
    if f.len() < ETH + IP || f[ETH] >> 4 != 4 || f[ETH + 9] != PROTO_UDP {
        return Underlay::Other;
    }
    if f[ETH + 16..ETH + 20] != local.octets() {
        return Underlay::Other;
    }
    let ihl = (f[ETH] & 0xf) as usize * 4;
    let l4 = ETH + ihl;
    if ihl < IP || f.len() < l4 + UDP {
        return Underlay::Bad(BadOuter::Malformed);
    }
    let dst_port = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
    if !ports.contains(&dst_port) {
        return Underlay::Other;
    }
    tunnel(f, ihl, dst_port).unwrap_or_else(Underlay::Bad)
}

/// The checks of a UDP frame to a tunnel port of this endpoint.
#[inline]
fn tunnel(f: &[u8], ihl: usize, dst_port: u16) -> Result<Underlay, BadOuter> {
    let ip = &f[ETH..ETH + ihl];
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(BadOuter::Fragment);
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total < ihl + UDP + VXLAN + ETH || ETH + total > f.len() || ipv4_checksum(ip) != 0 {
        return Err(BadOuter::Malformed);
    }
    let udp = &f[ETH + ihl..];
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if udp_len != total - ihl {
        return Err(BadOuter::Malformed);
    }
    let vx = &udp[UDP..UDP + VXLAN];
    if vx[0] & FLAG_I == 0 {
        return Err(BadOuter::NotVxlan);
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    if src_ip.is_unspecified() || src_ip.is_multicast() || src_ip.is_broadcast() {
        return Err(BadOuter::Malformed);
    }
    Ok(Underlay::Tunnel {
        vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        dst_port,
        src_ip,
        inner: ETH + ihl + UDP + VXLAN,
        end: ETH + total,
    })
}

/// The length an encapsulated frame would have on the wire: the Ethernet frame
/// length the underlay's MTU must allow (its IP part: `inner + OVERHEAD - 14`).
#[inline]
pub const fn outer_ip_len(inner: usize) -> usize {
    inner + OVERHEAD - ETH
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use pmd::hugepage::HugepagePolicy;
    use pmd::{Mempool, MempoolCache};

    /// A frame Linux 6.x's vxlan device sent (`ip link add vx0 type vxlan id 42
    /// dstport 4789 local 10.99.0.2 remote 10.99.0.1`), captured on its veth: an ARP
    /// request from 02:00:00:00:01:02 (192.168.42.2) for 192.168.42.1, inside.
    pub(in crate::tunnel) const KERNEL: &str = "aabbccddee01 020000000a02 0800 \
        4500 004e a71a 0000 4011 bebc 0a630002 0a630001 \
        91b6 12b5 003a 1514 0800000000002a00 \
        ffffffffffff 020000000102 0806 0001 0800 0604 0001 020000000102 c0a82a02 000000000000 c0a82a01";

    pub(in crate::tunnel) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn local() -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, 1)
    }

    #[test]
    fn a_frame_from_linux_decapsulates() {
        let f = hex(KERNEL);
        let Underlay::Tunnel {
            vni,
            dst_port,
            src_ip,
            inner,
            end,
        } = classify(&f, local(), &[4789])
        else {
            panic!("{:?}", classify(&f, local(), &[4789]));
        };
        assert_eq!(
            (vni, dst_port, src_ip),
            (42, 4789, Ipv4Addr::new(10, 99, 0, 2))
        );
        assert_eq!(&f[inner..inner + 6], &[0xff; 6]);
        assert_eq!((f.len() - inner, end), (42, f.len()));
        // Another UDP port, another address, ARP: not ours.
        assert_eq!(classify(&f, local(), &[8472]), Underlay::Other);
        assert_eq!(
            classify(&f, Ipv4Addr::new(10, 99, 0, 9), &[4789]),
            Underlay::Other
        );
        assert_eq!(classify(&f[inner..], local(), &[4789]), Underlay::Arp);
    }

    #[test]
    fn broken_outer_headers_are_told_apart() {
        let good = hex(KERNEL);
        let with = |at: usize, v: u8| {
            let mut f = good.clone();
            f[at] = v;
            classify(&f, local(), &[4789])
        };
        // More-fragments set (the checksum is not reached).
        assert_eq!(with(20, 0x20), Underlay::Bad(BadOuter::Fragment));
        // Total length past the frame; a checksum off by one.
        assert_eq!(with(17, 0xff), Underlay::Bad(BadOuter::Malformed));
        assert_eq!(with(25, 0x3a), Underlay::Bad(BadOuter::Malformed));
        // No I flag.
        assert_eq!(with(42, 0), Underlay::Bad(BadOuter::NotVxlan));
        // From 0.0.0.0 (the checksum fixed up: only the source is wrong).
        let mut f = good.clone();
        f[26..30].fill(0);
        f[24..26].fill(0);
        let sum = ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            classify(&f, local(), &[4789]),
            Underlay::Bad(BadOuter::Malformed)
        );
        // Cut inside the UDP header; cut inside the inner frame.
        assert_eq!(
            classify(&good[..40], local(), &[4789]),
            Underlay::Bad(BadOuter::Malformed)
        );
        assert_eq!(
            classify(&good[..70], local(), &[4789]),
            Underlay::Bad(BadOuter::Malformed)
        );
    }

    #[test]
    fn encapsulation_gives_what_linux_sends_but_for_the_fields_chosen_otherwise() {
        let k = hex(KERNEL);
        let pool = Mempool::new(64, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool);
        let mut m = cache.alloc().unwrap();
        m.set_len(k.len() - OVERHEAD)
            .copy_from_slice(&k[OVERHEAD..]);
        let o = Outer {
            src_mac: k[6..12].try_into().unwrap(),
            dst_mac: k[0..6].try_into().unwrap(),
            src_ip: Ipv4Addr::new(10, 99, 0, 2),
            dst_ip: Ipv4Addr::new(10, 99, 0, 1),
            dst_port: 4789,
            vni: 42,
        };
        encap(&mut m, &o).unwrap();
        let f = m.data().to_vec();
        assert_eq!(f.len(), k.len());
        // Differ by design: IP identification and flags (0 and DF, Linux counts and
        // leaves DF clear), so the IP checksum; the UDP source port (another hash)
        // and checksum (0: Linux computes one).
        let same = |r: std::ops::Range<usize>| assert_eq!(f[r.clone()], k[r.clone()], "{r:?}");
        same(0..18);
        same(22..24);
        same(26..34);
        same(36..40);
        same(42..f.len());
        assert_eq!(&f[18..22], &[0, 0, 0x40, 0]);
        assert_eq!(&f[40..42], &[0, 0]);
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
        assert_eq!(f[34] & 0xc0, 0xc0, "source port in 49152..");
        // An independent parser reads the same.
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert!(ip.header().dont_fragment());
        assert_eq!(ip.header().destination_addr(), o.dst_ip);
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!(
            (u.destination_port(), u.length() as usize),
            (4789, f.len() - 34)
        );
        // And it comes off again.
        let Underlay::Tunnel { vni, inner, .. } = classify(&f, o.dst_ip, &[4789]) else {
            panic!()
        };
        assert_eq!((vni, &f[inner..]), (42, &k[OVERHEAD..]));
        cache.free(m);
    }

    #[test]
    fn flows_spread_over_source_ports_and_a_flow_keeps_its_own() {
        let mut frame = hex(KERNEL)[OVERHEAD..].to_vec();
        // An IPv4 UDP inner frame: vary the source port.
        frame.resize(60, 0);
        frame[14..].fill(0);
        frame[12..14].copy_from_slice(&[8, 0]);
        frame[14] = 0x45;
        frame[23] = 17;
        let mut seen = std::collections::HashSet::new();
        for p in 0..256u16 {
            frame[34..36].copy_from_slice(&p.to_be_bytes());
            let s = source_port(&frame);
            assert!(s >= 49152);
            assert_eq!(s, source_port(&frame));
            seen.insert(s);
        }
        assert!(
            seen.len() > 200,
            "{} distinct ports of 256 flows",
            seen.len()
        );
    }
}
