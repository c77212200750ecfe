//! The switch step's frame parsing (`switch::frame::parse`), then the table step it
//! feeds. The input is a sequence of frames, each a length byte and that many bytes
//! (the last one takes what is left), received on port `length % 4`.
//!
//! Checked: a frame shorter than the Ethernet header is a runt and nothing else is;
//! the MACs are the frame's first and second six bytes; the VLAN is below 4096 and
//! agrees with a plain reading of the 802.1Q tag; a unicast source learned on a port
//! is then found on that port.

use switch::fdb::{Fdb, Learned, Mac};
use switch::frame::{parse, FrameError, MIN_LEN, TPID_8021Q};

/// The VLAN as the standard says it, written as plainly as possible.
fn reference_vlan(f: &[u8]) -> u16 {
    if f.len() >= 18 && f[12..14] == TPID_8021Q.to_be_bytes() {
        (((f[14] & 0x0f) as u16) << 8) | f[15] as u16
    } else {
        0
    }
}

/// Checks one frame; returns its (source, VLAN) when the switch would learn it.
pub fn check(f: &[u8]) -> Option<(Mac, u16)> {
    match parse(f) {
        Err(FrameError::Runt) => {
            assert!(f.len() < MIN_LEN, "a {}-byte frame called a runt", f.len());
            None
        }
        Ok(l2) => {
            assert!(f.len() >= MIN_LEN, "a {}-byte runt parsed", f.len());
            assert!(l2.vlan < 4096);
            assert_eq!(l2.vlan, reference_vlan(f));
            assert_eq!(l2.dst().0[..], f[0..6]);
            assert_eq!(l2.src().0[..], f[6..12]);
            assert_eq!(l2.dst_bytes(), &f[0..6]);
            assert_eq!(l2.src_bytes(), &f[6..12]);
            let src = l2.src();
            (!src.is_multicast()).then_some((src, l2.vlan))
        }
    }
}

/// Runs one input; panics on a broken property.
pub fn run(data: &[u8]) {
    let fdb = Fdb::new(16, 4, 8, 300);
    let mut rest = data;
    let mut now = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let len = len as usize;
        let (f, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let port = (len % 4) as u16;
        now += 1;
        if let Some((src, vlan)) = check(f) {
            match fdb.learn(src, vlan, port, now) {
                Learned::Refused => {}
                _ => assert_eq!(fdb.lookup(src, vlan), Some(port)),
            }
        }
    }
}
