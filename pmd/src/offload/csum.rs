//! The Internet checksum (RFC 1071) as the offload fallback needs it: sums over
//! frames, folding, completing a partial checksum as a NIC would, and the IPv4 header
//! and TCP pseudo-header sums that segmentation writes.
//!
//! The sum runs over 8 bytes at a time into a 64-bit accumulator (two 32-bit halves
//! per step, so a 64 KiB frame cannot overflow it) and folds once at the end.

use super::OffloadError;

/// Adds `data`, read as big-endian 16-bit words (an odd last byte padded with zero),
/// to the running sum `acc`. `data` must start at an even offset of what is summed.
#[inline]
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u16::from_be_bytes([p[0], p[1]]) as u64;
    }
    if let [b] = pairs.remainder() {
        acc += (*b as u64) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits with end-around carries (not inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store for a running sum: inverted, with 0 sent as 0xffff (the
/// same in ones' complement; UDP reads 0 as "no checksum", as Linux's
/// `skb_checksum_help` avoids it too).
#[inline]
pub fn finish(acc: u64) -> u16 {
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// Completes a partial checksum (`NEEDS_CSUM`): sums the frame from `start` to its
/// end, the field at `start + offset` included (it holds the pseudo-header's sum),
/// and stores the result in that field. Works for TCP and UDP over IPv4 and IPv6
/// with any options, without parsing: what a NIC's checksum offload does.
pub fn complete(frame: &mut [u8], start: u16, offset: u16) -> Result<(), OffloadError> {
    let (s, at) = (start as usize, start as usize + offset as usize);
    if at + 2 > frame.len() || s % 2 != 0 {
        return Err(OffloadError::CsumOutOfFrame {
            start,
            offset,
            len: frame.len(),
        });
    }
    let c = finish(add(0, &frame[s..]));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Writes the checksum of the IPv4 header `hdr` (all of it, options included) into
/// its checksum field.
pub fn ipv4_header(hdr: &mut [u8]) {
    hdr[10..12].copy_from_slice(&[0, 0]);
    let c = !fold(add(0, hdr));
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The running sum of a TCP or UDP pseudo-header: the addresses, the protocol and
/// the transport length (`src` and `dst` are 4 or 16 bytes).
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let acc = add(add(0, src), dst);
    acc + proto as u64 + (len as u64 >> 16) + (len as u64 & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's example: the sum of 0001 f203 f4f5 f6f7 is ddf2.
    #[test]
    fn the_rfc_1071_example() {
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &d)), 0xddf2);
        // The same words summed two at a time, and with an odd tail.
        assert_eq!(fold(add(add(0, &d[..4]), &d[4..])), 0xddf2);
        assert_eq!(fold(add(0, &[0xab])), 0xab00);
    }

    #[test]
    fn a_completed_checksum_sums_to_zero_and_stays_in_the_frame() {
        let mut f: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        f[20..22].copy_from_slice(&[0x12, 0x34]); // a "pseudo-header sum"
        complete(&mut f, 4, 16).unwrap();
        // A receiver adds the pseudo-header's sum itself: with it, all ones.
        assert_eq!(fold(add(0x1234, &f[4..])), 0xffff, "verifies");
        assert!(complete(&mut f, 990, 16).is_err(), "field past the end");
        assert!(complete(&mut f, 999, 0).is_err(), "field across the end");
        assert!(complete(&mut f, 5, 16).is_err(), "odd start");
    }
}
