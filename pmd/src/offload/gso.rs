//! TCP segmentation in software, for an output port that cannot take a TSO frame:
//! the frame is cut into segments of the sender's `gso_size` (never the output's
//! MTU: OVS dropped frames on the far side until it learned this), each with the
//! original headers, its own IPv4 length, id and header checksum (or IPv6 payload
//! length), sequence number, flags (CWR on the first only, FIN and PSH on the last
//! only) and TCP checksum, as Linux's `tcp_gso_segment` and OVS's `dp-packet-gso`
//! make them.
//!
//! [`Plan::new`] checks the frame once (headers parsed with `etherparse`); then
//! [`Plan::write`] builds any one segment into a buffer, so a caller can produce them a
//! burst at a time without holding more than the frame.

use super::csum;
use super::{NetHdr, OffloadError, GSO_ECN, GSO_TCPV4, GSO_TCPV6};
use crate::mempool::Mbuf;
use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6ExtensionsSlice,
    Ipv6HeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
};

/// The smallest segment size accepted: Linux's TCP_MIN_MSS. A hostile sender's
/// `gso_size` of 1 would otherwise turn one frame into 65000.
pub const MIN_MSS: usize = 88;
/// Most segments one frame may become (a 64 KiB frame at the minimum size).
pub const MAX_SEGMENTS: usize = u16::MAX as usize / MIN_MSS + 1;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// How each segment's TCP checksum is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegCsum {
    /// Computed in full (the output port takes no checksum offload).
    Full,
    /// The pseudo-header's sum only, for an output that completes it (the segment then
    /// carries `NEEDS_CSUM` from [`Plan::segment_hdr`]).
    Partial,
}

/// A checked TSO frame's layout and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Offsets of the IP and TCP headers, and of the payload.
    l3: usize,
    l4: usize,
    hdr_len: usize,
    v6: bool,
    mss: usize,
    len: usize,
    count: usize,
}

impl Plan {
    /// Checks `frame` against its header `h` (a TCPv4 or TCPv6 segmentation request)
    /// and plans segments of `h.gso_size` bytes of payload, each at most `max_frame`
    /// bytes long.
    pub fn new(frame: &[u8], h: &NetHdr, max_frame: usize) -> Result<Plan, OffloadError> {
        h.check()?;
        let want_v6 = match h.gso_type & !GSO_ECN {
            GSO_TCPV4 => false,
            GSO_TCPV6 => true,
            t => return Err(OffloadError::UnsupportedGso(t)),
        };
        let (l3, v6, l4) = locate(frame)?;
        if v6 != want_v6 {
            return Err(OffloadError::BadHeaders(
                "IP version is not the segmentation type's",
            ));
        }
        if l4 != h.csum_start as usize || h.csum_offset != 16 {
            return Err(OffloadError::BadHeaders(
                "checksum start is not the TCP header",
            ));
        }
        let tcp = TcpHeaderSlice::from_slice(&frame[l4..])
            .map_err(|_| OffloadError::BadHeaders("TCP header cut short"))?;
        let hdr_len = l4 + tcp.slice().len();
        let mss = h.gso_size as usize;
        let payload = frame.len() - hdr_len;
        let count = payload.div_ceil(mss).max(1);
        if count > MAX_SEGMENTS {
            return Err(OffloadError::TooManySegments { segments: count });
        }
        let longest = hdr_len + payload.min(mss);
        if longest > max_frame {
            return Err(OffloadError::SegmentTooBig {
                need: longest,
                max: max_frame,
            });
        }
        Ok(Plan {
            l3,
            l4,
            hdr_len,
            v6,
            mss,
            len: frame.len(),
            count,
        })
    }

    /// Bytes of the Ethernet, IP and TCP headers, as parsed (not the sender's hint).
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Segments the frame becomes.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The length of segment `k`.
    pub fn segment_len(&self, k: usize) -> usize {
        let start = self.hdr_len + k * self.mss;
        self.hdr_len + (self.len - start).min(self.mss)
    }

    /// The offload header a segment carries when its checksum is left partial.
    pub fn segment_hdr(&self) -> NetHdr {
        NetHdr {
            flags: super::NEEDS_CSUM,
            csum_start: self.l4 as u16,
            csum_offset: 16,
            hdr_len: self.hdr_len as u16,
            ..NetHdr::default()
        }
    }

    /// Builds segment `k` (`k < count()`) of `frame` (the frame the plan was made
    /// for) into `out`, which must hold `segment_len(k)` bytes.
    pub fn write(&self, frame: &[u8], k: usize, out: &mut Mbuf, sum: SegCsum) {
        debug_assert_eq!(frame.len(), self.len);
        let (h, l3, l4) = (self.hdr_len, self.l3, self.l4);
        let start = h + k * self.mss;
        let n = self.segment_len(k);
        let seg = out.set_len(n);
        assert_eq!(seg.len(), n, "the buffer holds the segment");
        seg[..h].copy_from_slice(&frame[..h]);
        seg[h..].copy_from_slice(&frame[start..start + (n - h)]);
        if self.v6 {
            seg[l3 + 4..l3 + 6].copy_from_slice(&((n - l3 - 40) as u16).to_be_bytes());
        } else {
            let ihl = (seg[l3] & 0xf) as usize * 4;
            seg[l3 + 2..l3 + 4].copy_from_slice(&((n - l3) as u16).to_be_bytes());
            let id = u16::from_be_bytes([seg[l3 + 4], seg[l3 + 5]]).wrapping_add(k as u16);
            seg[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            csum::ipv4_header(&mut seg[l3..l3 + ihl]);
        }
        let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().expect("4 bytes"))
            .wrapping_add((k * self.mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        if k + 1 < self.count {
            seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if k > 0 {
            seg[l4 + 13] &= !TCP_CWR;
        }
        let (src, dst) = if self.v6 {
            (l3 + 8..l3 + 24, l3 + 24..l3 + 40)
        } else {
            (l3 + 12..l3 + 16, l3 + 16..l3 + 20)
        };
        let ph = csum::pseudo(&seg[src], &seg[dst], 6, n - l4);
        seg[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let c = match sum {
            SegCsum::Full => csum::finish(csum::add(ph, &seg[l4..])),
            SegCsum::Partial => csum::fold(ph),
        };
        seg[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    }
}

/// Finds the IP header (after the Ethernet header and up to two VLAN tags) and the
/// transport header (after IPv4 options or IPv6 extension headers): `(l3, v6, l4)`.
/// The transport must be TCP and the packet not a fragment.
fn locate(frame: &[u8]) -> Result<(usize, bool, usize), OffloadError> {
    let bad = OffloadError::BadHeaders;
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| bad("runt"))?;
    let mut ty = eth.ether_type();
    let mut off = eth.slice().len();
    for _ in 0..2 {
        if ty != EtherType::VLAN_TAGGED_FRAME && ty != EtherType::PROVIDER_BRIDGING {
            break;
        }
        let v = SingleVlanHeaderSlice::from_slice(&frame[off..]).map_err(|_| bad("VLAN tag"))?;
        ty = v.ether_type();
        off += v.slice().len();
    }
    let l3 = off;
    match ty {
        EtherType::IPV4 => {
            let ip = Ipv4HeaderSlice::from_slice(&frame[l3..]).map_err(|_| bad("IPv4 header"))?;
            if ip.protocol() != IpNumber::TCP {
                return Err(bad("not TCP"));
            }
            if ip.more_fragments() || ip.fragments_offset().value() != 0 {
                return Err(bad("an IPv4 fragment"));
            }
            Ok((l3, false, l3 + ip.slice().len()))
        }
        EtherType::IPV6 => {
            let ip = Ipv6HeaderSlice::from_slice(&frame[l3..]).map_err(|_| bad("IPv6 header"))?;
            let rest = &frame[l3 + ip.slice().len()..];
            let (exts, next, _) = Ipv6ExtensionsSlice::from_slice(ip.next_header(), rest)
                .map_err(|_| bad("IPv6 extension headers"))?;
            if next != IpNumber::TCP {
                return Err(bad("not TCP"));
            }
            if exts.is_fragmenting_payload() {
                return Err(bad("an IPv6 fragment"));
            }
            Ok((l3, true, l3 + ip.slice().len() + exts.slice().len()))
        }
        _ => Err(bad("not IP")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hugepage::HugepagePolicy;
    use crate::mempool::{Mempool, MempoolCache};
    use crate::offload::NEEDS_CSUM;
    use etherparse::{
        Ethernet2Header, Ipv4Header, Ipv6FlowLabel, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader,
        TcpHeader, VlanId, VlanPcp,
    };

    /// What a test frame is made of.
    struct Spec {
        v6: bool,
        vlan: bool,
        payload: usize,
        mss: u16,
        cwr: bool,
    }

    /// A TSO frame as a Linux sender hands it over: full-length IP header, TCP with
    /// options and PSH|FIN, the checksum field holding the pseudo-header's sum; IPv4
    /// with 8 bytes of options, IPv6 with a destination-options header. Returns the
    /// frame and its offload header.
    fn tso_frame(s: &Spec) -> (Vec<u8>, NetHdr) {
        let data: Vec<u8> = (0..s.payload).map(|i| (i * 31 % 251) as u8).collect();
        let mut tcp = TcpHeader::new(40000, 5201, 0xfffff000, 512);
        tcp.acknowledgment_number = 77;
        tcp.ack = true;
        tcp.psh = true;
        tcp.fin = true;
        tcp.cwr = s.cwr;
        tcp.set_options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .unwrap();
        let mut f = Vec::new();
        let ty = if s.v6 {
            EtherType::IPV6
        } else {
            EtherType::IPV4
        };
        let eth = Ethernet2Header {
            source: [2, 0, 0, 0, 0, 1],
            destination: [2, 0, 0, 0, 0, 2],
            ether_type: if s.vlan {
                EtherType::VLAN_TAGGED_FRAME
            } else {
                ty
            },
        };
        eth.write(&mut f).unwrap();
        if s.vlan {
            SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(10).unwrap(),
                ether_type: ty,
            }
            .write(&mut f)
            .unwrap();
        }
        let tcp_len = tcp.header_len() + s.payload;
        if s.v6 {
            let ext = Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0]).unwrap();
            Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: (ext.header_len() + tcp_len) as u16,
                next_header: IpNumber::IPV6_DESTINATION_OPTIONS,
                hop_limit: 64,
                source: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                destination: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            }
            .write(&mut f)
            .unwrap();
            ext.write(&mut f).unwrap();
        } else {
            let mut ip =
                Ipv4Header::new(0, 64, IpNumber::TCP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
            ip.options = [1u8, 1, 1, 1, 1, 1, 1, 0].into();
            ip.total_len = (ip.header_len() + tcp_len) as u16;
            ip.identification = 0xfffe;
            ip.dont_fragment = true;
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut f).unwrap();
        }
        let l4 = f.len();
        tcp.write(&mut f).unwrap();
        f.extend_from_slice(&data);
        // The pseudo-header's sum in the checksum field, as Linux leaves it.
        let (src, dst) = if s.v6 {
            let l3 = l4 - 48;
            (f[l3 + 8..l3 + 24].to_vec(), f[l3 + 24..l3 + 40].to_vec())
        } else {
            let l3 = l4 - 28;
            (f[l3 + 12..l3 + 16].to_vec(), f[l3 + 16..l3 + 20].to_vec())
        };
        let ph = csum::fold(csum::pseudo(&src, &dst, 6, tcp_len));
        f[l4 + 16..l4 + 18].copy_from_slice(&ph.to_be_bytes());
        let h = NetHdr {
            flags: NEEDS_CSUM,
            gso_type: if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 } | if s.cwr { GSO_ECN } else { 0 },
            hdr_len: (l4 + tcp.header_len()) as u16,
            gso_size: s.mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        (f, h)
    }

    /// Cuts `frame` and checks every segment with etherparse: lengths, IPv4 id and
    /// header checksum, sequence numbers, flags, TCP checksum, and that the payloads
    /// put together are the original's.
    fn check_segments(s: &Spec, mode: SegCsum) -> usize {
        let (frame, h) = tso_frame(s);
        let pool = Mempool::with_large(256, 4, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(pool);
        let plan = Plan::new(&frame, &h, 9018).unwrap();
        let (hdr_len, l4) = (h.hdr_len as usize, h.csum_start as usize);
        let l3 = if s.vlan { 18 } else { 14 };
        let mut joined = Vec::new();
        let n = plan.count();
        assert_eq!(n, s.payload.div_ceil(s.mss as usize).max(1));
        for k in 0..n {
            let mut m = cache.alloc_for(plan.segment_len(k)).unwrap();
            plan.write(&frame, k, &mut m, mode);
            let mut seg = m.data().to_vec();
            cache.free(m);
            if mode == SegCsum::Partial {
                csum::complete(&mut seg, l4 as u16, 16).unwrap();
            }
            let payload = &seg[hdr_len..];
            assert!(payload.len() <= s.mss as usize && !payload.is_empty() || s.payload == 0);
            let tcp = TcpHeaderSlice::from_slice(&seg[l4..]).unwrap();
            let want = if s.v6 {
                let ip = Ipv6HeaderSlice::from_slice(&seg[l3..]).unwrap();
                assert_eq!(ip.payload_length() as usize, seg.len() - l3 - 40);
                tcp.to_header()
                    .calc_checksum_ipv6(&ip.to_header(), payload)
                    .unwrap()
            } else {
                let ip = Ipv4HeaderSlice::from_slice(&seg[l3..]).unwrap();
                assert_eq!(ip.total_len() as usize, seg.len() - l3);
                assert_eq!(ip.identification(), 0xfffeu16.wrapping_add(k as u16));
                assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
                assert_eq!(ip.slice().len(), 28, "options kept");
                tcp.to_header()
                    .calc_checksum_ipv4(&ip.to_header(), payload)
                    .unwrap()
            };
            assert_eq!(tcp.checksum(), want, "segment {k} TCP checksum");
            assert_eq!(
                tcp.sequence_number(),
                0xfffff000u32.wrapping_add((k * s.mss as usize) as u32)
            );
            let last = k + 1 == n;
            assert_eq!((tcp.psh(), tcp.fin()), (last, last), "segment {k} flags");
            assert_eq!(tcp.cwr(), s.cwr && k == 0, "CWR on the first only");
            assert_eq!(tcp.options().len(), 12, "options kept");
            joined.extend_from_slice(payload);
        }
        assert_eq!(joined, frame[hdr_len..], "payloads put together");
        n
    }

    #[test]
    fn ipv4_with_options_and_a_vlan_tag_is_cut_by_the_senders_size() {
        for payload in [1448 * 3, 1448 * 3 + 100, 700, 65_000] {
            let s = Spec {
                v6: false,
                vlan: true,
                payload,
                mss: 1448,
                cwr: false,
            };
            check_segments(&s, SegCsum::Full);
        }
        let s = Spec {
            v6: false,
            vlan: false,
            payload: 20_000,
            mss: 8900,
            cwr: true,
        };
        assert_eq!(check_segments(&s, SegCsum::Full), 3);
    }

    #[test]
    fn ipv6_with_an_extension_header_is_cut_and_checksummed() {
        let s = Spec {
            v6: true,
            vlan: false,
            payload: 64_000,
            mss: 1428,
            cwr: true,
        };
        assert_eq!(check_segments(&s, SegCsum::Full), 45);
        let s = Spec {
            v6: true,
            vlan: true,
            payload: 3000,
            mss: 1000,
            cwr: false,
        };
        check_segments(&s, SegCsum::Full);
    }

    #[test]
    fn partial_checksums_complete_to_the_full_ones() {
        for v6 in [false, true] {
            let s = Spec {
                v6,
                vlan: false,
                payload: 10_000,
                mss: 1448,
                cwr: false,
            };
            check_segments(&s, SegCsum::Partial);
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let s = Spec {
            v6: false,
            vlan: false,
            payload: 5000,
            mss: 1448,
            cwr: false,
        };
        let (f, h) = tso_frame(&s);
        let err = |h: NetHdr, max| Plan::new(&f, &h, max).unwrap_err();
        for mss in [0, 1, 87] {
            let e = err(NetHdr { gso_size: mss, ..h }, 9018);
            assert_eq!(e, OffloadError::GsoSizeTooSmall(mss));
        }
        assert_eq!(
            err(NetHdr { flags: 0, ..h }, 9018),
            OffloadError::GsoWithoutCsum
        );
        assert_eq!(
            err(NetHdr { gso_type: 3, ..h }, 9018),
            OffloadError::UnsupportedGso(3)
        );
        assert!(matches!(
            err(
                NetHdr {
                    gso_type: GSO_TCPV6,
                    ..h
                },
                9018
            ),
            OffloadError::BadHeaders(_)
        ));
        assert!(matches!(
            err(
                NetHdr {
                    csum_start: h.csum_start + 2,
                    ..h
                },
                9018
            ),
            OffloadError::BadHeaders(_)
        ));
        assert_eq!(
            err(h, 1400),
            OffloadError::SegmentTooBig {
                need: h.hdr_len as usize + 1448,
                max: 1400
            }
        );
        let cut = &f[..40];
        assert!(matches!(
            Plan::new(cut, &h, 9018),
            Err(OffloadError::BadHeaders(_))
        ));
    }
}
