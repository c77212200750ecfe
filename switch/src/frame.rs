//! Frame parsing for the switch step: the Ethernet header fields the table needs
//! (destination and source MAC, and the VLAN from an 802.1Q tag), read from the
//! frame's bytes; nothing else of the frame is looked at.

use crate::fdb::Mac;

/// Shortest frame the switch handles: destination, source and EtherType.
pub const MIN_LEN: usize = 14;
/// The 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;

/// What the switch step reads of a frame: its Ethernet header, of which the MACs are
/// read where they are used (the table may be consulted in between; reading both up
/// front would keep them live across it), and the VLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2<'a> {
    hdr: &'a [u8; MIN_LEN],
    /// The VLAN id (12 bits) of an 802.1Q tag; 0 when untagged, or when the tag is cut
    /// off (fewer than 18 bytes).
    pub vlan: u16,
    /// Whether the frame has a (whole) 802.1Q tag.
    pub tagged: bool,
}

impl L2<'_> {
    #[inline(always)]
    pub fn dst(&self) -> Mac {
        Mac::from_slice(&self.hdr[0..6])
    }
    #[inline(always)]
    pub fn src(&self) -> Mac {
        Mac::from_slice(&self.hdr[6..12])
    }
    /// The destination's six bytes as they are in the frame.
    #[inline(always)]
    pub fn dst_bytes(&self) -> &[u8] {
        &self.hdr[0..6]
    }
    /// The source's six bytes as they are in the frame.
    #[inline(always)]
    pub fn src_bytes(&self) -> &[u8] {
        &self.hdr[6..12]
    }
}

/// Why a frame is not switched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than an Ethernet header (`MIN_LEN` bytes); counted as `drop_runt`.
    Runt,
}

/// Reads the header of `frame`.
#[inline(always)]
pub fn parse(frame: &[u8]) -> Result<L2<'_>, FrameError> {
    let Some((hdr, _)) = frame.split_first_chunk::<MIN_LEN>() else {
        return Err(FrameError::Runt);
    };
    let tagged = hdr[12] == 0x81 && hdr[13] == 0x00 && frame.len() >= 18;
    let vlan = if tagged {
        u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff
    } else {
        0
    };
    Ok(L2 { hdr, vlan, tagged })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, ethertype: [u8; 2], tci: [u8; 2]) -> Vec<u8> {
        let mut f = vec![0u8; len];
        let hdr = [
            2,
            0,
            0,
            0,
            0,
            2, // dst
            2,
            0,
            0,
            0,
            0,
            1, // src
            ethertype[0],
            ethertype[1],
            tci[0],
            tci[1],
            8,
            0,
        ];
        let n = len.min(hdr.len());
        f[..n].copy_from_slice(&hdr[..n]);
        f
    }

    #[test]
    fn runts_are_refused() {
        for len in 0..MIN_LEN {
            assert_eq!(parse(&vec![0xff; len]), Err(FrameError::Runt), "len {len}");
        }
    }

    #[test]
    fn untagged_frame() {
        let f = frame(60, [8, 0], [0, 0]);
        let l2 = parse(&f).unwrap();
        assert_eq!(l2.dst(), Mac([2, 0, 0, 0, 0, 2]));
        assert_eq!(l2.src(), Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(l2.vlan, 0);
        // The bare header is enough.
        assert_eq!(parse(&frame(14, [8, 0], [0, 0])).unwrap().vlan, 0);
    }

    #[test]
    fn tagged_frame_gives_its_vlan_without_priority_bits() {
        assert_eq!(parse(&frame(64, [0x81, 0], [0, 42])).unwrap().vlan, 42);
        // PCP and DEI bits are not part of the VLAN id.
        assert_eq!(
            parse(&frame(64, [0x81, 0], [0xff, 0xff])).unwrap().vlan,
            0xfff
        );
        assert_eq!(parse(&frame(18, [0x81, 0], [0x30, 7])).unwrap().vlan, 7);
    }

    #[test]
    fn cut_off_tag_reads_as_untagged() {
        for len in 14..18 {
            let f = frame(len, [0x81, 0], [0, 42]);
            let l2 = parse(&f).unwrap();
            assert_eq!(l2.vlan, 0, "len {len}");
            assert_eq!(l2.src(), Mac([2, 0, 0, 0, 0, 1]));
        }
    }

    #[test]
    fn other_tpids_are_untagged() {
        // 802.1ad (QinQ outer tag) and a near miss are not 802.1Q.
        assert_eq!(parse(&frame(64, [0x88, 0xa8], [0, 42])).unwrap().vlan, 0);
        assert_eq!(parse(&frame(64, [0x81, 1], [0, 42])).unwrap().vlan, 0);
    }
}
