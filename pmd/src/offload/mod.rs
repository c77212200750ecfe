//! Checksum and segmentation offload: the virtio-net header's fields that travel
//! with a frame from the port that received it to the port that sends it
//! ([`NetHdr`]), what an output port can take ([`Caps`]), and the software fallback
//! for one that cannot: completing a partial checksum ([`csum`]) and cutting a TCP
//! segmentation offload (TSO) frame into segments of the sender's size ([`gso`]).
//!
//! Nothing here trusts the header: a sender (a guest, a tap device's user) controls
//! every field, so each use is checked against the frame first, and a frame whose
//! header does not fit it is an [`OffloadError`] (dropped and counted by the caller).

pub mod csum;
pub mod gso;

use std::fmt;
use virtio_bindings::virtio_net;

/// `flags`: the checksum from `csum_start` to the end is yet to be computed and
/// stored at `csum_start + csum_offset` (the field holds the pseudo-header's sum).
pub const NEEDS_CSUM: u8 = virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `gso_type` values.
pub const GSO_NONE: u8 = virtio_net::VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = virtio_net::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_TCPV6: u8 = virtio_net::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
/// Or'ed into `gso_type`: the segments carry ECN (the sender set CWR on the first).
pub const GSO_ECN: u8 = virtio_net::VIRTIO_NET_HDR_GSO_ECN as u8;

/// The offload fields of a virtio-net header (`struct virtio_net_hdr`, the first 10
/// bytes of every header version; little-endian, as virtio 1.x and Linux tap
/// devices with `TUNSETVNETLE` or on little-endian hosts write them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl NetHdr {
    /// Bytes of the header on the wire.
    pub const LEN: usize = 10;

    pub fn parse(b: &[u8; NetHdr::LEN]) -> NetHdr {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    pub fn to_bytes(self) -> [u8; NetHdr::LEN] {
        let mut b = [0u8; NetHdr::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Asks for nothing: no checksum to complete, no segmentation (a frame with such
    /// a header carries no metadata at all).
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.flags & NEEDS_CSUM == 0 && self.gso_type == GSO_NONE
    }

    /// What an output port must take to be handed the frame as it is.
    pub fn needs(&self) -> Caps {
        let mut c = Caps::NONE;
        if self.flags & NEEDS_CSUM != 0 {
            c = c.with(Caps::CSUM);
        }
        match self.gso_type & !GSO_ECN {
            GSO_TCPV4 => c = c.with(Caps::TSO4),
            GSO_TCPV6 => c = c.with(Caps::TSO6),
            _ => {}
        }
        if self.gso_type & GSO_ECN != 0 {
            c = c.with(Caps::ECN);
        }
        c
    }

    /// The header's checks that need no frame: a segmentation type this switch
    /// takes (TCP over IPv4 or IPv6, with or without ECN), a size, and a checksum to
    /// complete (the virtio spec requires NEEDS_CSUM with any GSO type).
    pub fn check(&self) -> Result<(), OffloadError> {
        match self.gso_type & !GSO_ECN {
            GSO_NONE if self.gso_type & GSO_ECN != 0 => {
                Err(OffloadError::UnsupportedGso(self.gso_type))
            }
            GSO_NONE => Ok(()),
            GSO_TCPV4 | GSO_TCPV6 => {
                if self.flags & NEEDS_CSUM == 0 {
                    Err(OffloadError::GsoWithoutCsum)
                } else if (self.gso_size as usize) < gso::MIN_MSS {
                    Err(OffloadError::GsoSizeTooSmall(self.gso_size))
                } else {
                    Ok(())
                }
            }
            _ => Err(OffloadError::UnsupportedGso(self.gso_type)),
        }
    }
}

/// Offloads an output port takes: a set of bits, as the port negotiated them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps(u8);

impl Caps {
    pub const NONE: Caps = Caps(0);
    /// Frames with a partial checksum (`NEEDS_CSUM`).
    pub const CSUM: Caps = Caps(1);
    pub const TSO4: Caps = Caps(2);
    pub const TSO6: Caps = Caps(4);
    /// TSO frames with ECN.
    pub const ECN: Caps = Caps(8);
    pub const ALL: Caps = Caps(15);

    pub const fn with(self, o: Caps) -> Caps {
        Caps(self.0 | o.0)
    }
    /// Whether every bit of `o` is in `self`.
    pub const fn covers(self, o: Caps) -> bool {
        self.0 & o.0 == o.0
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn from_bits(b: u8) -> Caps {
        Caps(b & Caps::ALL.0)
    }
}

/// Why a frame's offload request cannot be carried out. The frame is dropped and
/// counted; the sender controls every field, so none of these is the switch's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// The checksum's start or its field lies outside the frame.
    CsumOutOfFrame { start: u16, offset: u16, len: usize },
    /// A segmentation type without `NEEDS_CSUM`.
    GsoWithoutCsum,
    /// A segment size below TCP's minimum (a hostile sender's way to multiply work).
    GsoSizeTooSmall(u16),
    /// A `gso_type` this switch does not offer (UDP, or unknown bits).
    UnsupportedGso(u8),
    /// The headers are not Ethernet, optional VLAN tags, IPv4 or IPv6, and TCP at
    /// `csum_start`, as the segmentation type says.
    BadHeaders(&'static str),
    /// More segments than one frame may become.
    TooManySegments { segments: usize },
    /// A segment longer than the output port's frame limit.
    SegmentTooBig { need: usize, max: usize },
    /// The pool ran out of buffers part way.
    NoBuffer,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OffloadError::*;
        match self {
            CsumOutOfFrame { start, offset, len } => write!(
                f,
                "checksum start {start} + offset {offset} outside the {len}-byte frame"
            ),
            GsoWithoutCsum => write!(f, "segmentation asked for without NEEDS_CSUM"),
            GsoSizeTooSmall(s) => write!(f, "segment size {s} below {}", gso::MIN_MSS),
            UnsupportedGso(t) => write!(f, "segmentation type {t:#x} not offered"),
            BadHeaders(why) => write!(f, "headers do not match the offload: {why}"),
            TooManySegments { segments } => {
                write!(f, "{segments} segments, more than {}", gso::MAX_SEGMENTS)
            }
            SegmentTooBig { need, max } => write!(
                f,
                "a {need}-byte segment is longer than the output port takes ({max})"
            ),
            NoBuffer => write!(f, "no buffer for a segment"),
        }
    }
}

impl std::error::Error for OffloadError {}
