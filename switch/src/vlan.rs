//! VLAN port modes, as OVS defines them: which VLAN a received frame belongs to,
//! which VLANs a port sends, and with or without an 802.1Q tag.
//!
//! - `trunk` (the default): a frame is in the VLAN of its tag, VLAN 0 when untagged;
//!   the port carries the VLANs in `trunks` (all when none are listed) and sends each
//!   tagged, VLAN 0 untagged.
//! - `access`: a frame is in the port's `tag` VLAN; one that arrives tagged (other than
//!   priority-tagged, VLAN 0) is dropped. The port sends only its VLAN, untagged.
//! - `native-tagged`: as trunk, but an untagged frame is in the native VLAN (`tag`),
//!   which the port always carries, and sends tagged.
//! - `native-untagged`: as native-tagged, but the native VLAN is sent untagged.
//!
//! A native port never carries VLAN 0, even when it trunks every VLAN (`trunks` left
//! empty), as in OVS: its untagged frames are the native VLAN's, so VLAN 0's frames
//! (untagged on a trunk) would otherwise leave it untagged and land in the native VLAN.
//!
//! VLAN 0 (untagged or priority-tagged frames of trunks) leaves a trunk as it came, as
//! every frame does in a switch of plain trunks.
//!
//! A frame dropped because of its VLAN is counted as `drop_vlan` of the port it came
//! in on (ingress) or would have gone out of (a unicast frame to a port that does not
//! carry its VLAN). A flood simply skips ports that do not carry the VLAN.
//! Tags are pushed, popped or rewritten at egress, per output port, in the mbuf's
//! headroom; a switch whose ports are all plain trunks does none of this.

use crate::frame::TPID_8021Q;
use pmd::Mbuf;

/// How a port treats VLANs (OVS's `vlan_mode`, spelt as in the configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanMode {
    /// Frames carry their VLAN's tag, in and out; untagged frames are VLAN 0.
    #[default]
    Trunk,
    /// Untagged frames, all in VLAN `tag`: tagged on the way in, untagged out.
    Access,
    /// A trunk whose untagged frames are in VLAN `tag`; `tag`'s frames leave tagged.
    NativeTagged,
    /// A trunk whose untagged frames are in VLAN `tag`; `tag`'s frames leave untagged.
    NativeUntagged,
}

impl std::fmt::Display for VlanMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VlanMode::Trunk => "trunk",
            VlanMode::Access => "access",
            VlanMode::NativeTagged => "native-tagged",
            VlanMode::NativeUntagged => "native-untagged",
        })
    }
}

/// A set of VLAN ids (0..=4095).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl VlanSet {
    pub fn all() -> VlanSet {
        VlanSet([u64::MAX; 64])
    }
    pub fn of(ids: &[u16]) -> VlanSet {
        let mut s = VlanSet([0; 64]);
        for &v in ids {
            let v = (v & 0x0fff) as usize;
            s.0[v / 64] |= 1 << (v % 64);
        }
        s
    }
    /// The set without VLAN `v`.
    pub fn without(mut self, v: u16) -> VlanSet {
        let v = (v & 0x0fff) as usize;
        self.0[v / 64] &= !(1 << (v % 64));
        self
    }
    #[inline(always)]
    pub fn contains(&self, v: u16) -> bool {
        let v = (v & 0x0fff) as usize;
        self.0[v / 64] & (1 << (v % 64)) != 0
    }
}

/// A port's VLAN settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortVlan {
    mode: VlanMode,
    /// The access or native VLAN (unused for trunk).
    tag: u16,
    /// VLANs a trunk or native port carries (besides its native VLAN).
    trunks: VlanSet,
}

impl Default for PortVlan {
    fn default() -> PortVlan {
        PortVlan::trunk(&[])
    }
}

/// How a frame of some VLAN leaves a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// The port does not carry the VLAN.
    Drop,
    Untagged,
    Tagged(u16),
    /// As it came: VLAN 0 out of a trunk, untagged or priority-tagged (what a switch of
    /// plain trunks, which runs no VLAN step, does to every frame).
    AsIs,
}

impl PortVlan {
    /// A trunk carrying `trunks` (all VLANs when empty).
    pub fn trunk(trunks: &[u16]) -> PortVlan {
        PortVlan {
            mode: VlanMode::Trunk,
            tag: 0,
            trunks: if trunks.is_empty() {
                VlanSet::all()
            } else {
                VlanSet::of(trunks)
            },
        }
    }
    /// An access port of VLAN `tag`.
    pub fn access(tag: u16) -> PortVlan {
        PortVlan {
            mode: VlanMode::Access,
            tag,
            trunks: VlanSet::of(&[]),
        }
    }
    /// A native-tagged or native-untagged port with native VLAN `tag`, carrying
    /// `trunks` too (all VLANs when empty), never VLAN 0 (see the module doc).
    pub fn native(mode: VlanMode, tag: u16, trunks: &[u16]) -> PortVlan {
        let p = PortVlan::trunk(trunks);
        PortVlan {
            tag,
            trunks: p.trunks.without(0),
            ..p
        }
        .with_mode(mode)
    }
    fn with_mode(mut self, mode: VlanMode) -> PortVlan {
        self.mode = mode;
        self
    }

    /// Whether this is a trunk of every VLAN: frames pass as they are.
    pub fn is_plain(&self) -> bool {
        self.mode == VlanMode::Trunk && self.trunks == VlanSet::all()
    }

    /// The VLAN a frame received on this port is in (`tag`: its 802.1Q VLAN id, if
    /// it has a tag); `None`: the port drops it.
    #[inline]
    pub fn ingress(&self, tag: Option<u16>) -> Option<u16> {
        match (self.mode, tag) {
            (VlanMode::Trunk, t) => {
                let v = t.unwrap_or(0);
                self.trunks.contains(v).then_some(v)
            }
            (_, None | Some(0)) => Some(self.tag),
            (VlanMode::Access, Some(_)) => None,
            (VlanMode::NativeTagged | VlanMode::NativeUntagged, Some(v)) => {
                (v == self.tag || self.trunks.contains(v)).then_some(v)
            }
        }
    }

    /// How a frame in VLAN `v` leaves this port.
    #[inline]
    pub fn egress(&self, v: u16) -> Egress {
        let tagged = |v: u16| {
            if v == 0 {
                Egress::AsIs
            } else {
                Egress::Tagged(v)
            }
        };
        match self.mode {
            VlanMode::Trunk if self.trunks.contains(v) => tagged(v),
            VlanMode::Access if v == self.tag => Egress::Untagged,
            VlanMode::NativeUntagged if v == self.tag => Egress::Untagged,
            VlanMode::NativeTagged if v == self.tag => tagged(v),
            VlanMode::NativeTagged | VlanMode::NativeUntagged if self.trunks.contains(v) => {
                tagged(v)
            }
            _ => Egress::Drop,
        }
    }
}

/// The VLAN id of `frame`'s 802.1Q tag, if it has one.
#[inline]
pub fn tag_of(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 18 && u16::from_be_bytes([frame[12], frame[13]]) == TPID_8021Q)
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// Makes `m` leave as `e` says: pushes, pops or rewrites its 802.1Q tag. `false` if
/// a tag had to be pushed and the buffer has no room for it (`e` must not be `Drop`).
#[inline]
pub fn retag(m: &mut Mbuf, e: Egress) -> bool {
    match (tag_of(m.data()), e) {
        (Some(_), Egress::Untagged) => {
            m.data_mut().copy_within(0..12, 4);
            m.trim_front(4);
            true
        }
        (Some(cur), Egress::Tagged(v)) => {
            if cur != v {
                let d = m.data_mut();
                let tci = u16::from_be_bytes([d[14], d[15]]) & 0xf000 | v;
                d[14..16].copy_from_slice(&tci.to_be_bytes());
            }
            true
        }
        (None, Egress::Tagged(v)) => {
            if !m.prepend(4) {
                return false;
            }
            let d = m.data_mut();
            d.copy_within(4..16, 0);
            d[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
            d[14..16].copy_from_slice(&v.to_be_bytes());
            true
        }
        (None, Egress::Untagged) | (_, Egress::Drop | Egress::AsIs) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmd::hugepage::HugepagePolicy;
    use pmd::Mempool;

    #[test]
    fn modes_decide_membership_as_ovs_does() {
        let t = PortVlan::trunk(&[10, 20]);
        assert_eq!(t.ingress(Some(10)), Some(10));
        assert_eq!(t.ingress(Some(30)), None);
        assert_eq!(t.ingress(None), None, "VLAN 0 is not in the trunks");
        assert_eq!(PortVlan::trunk(&[]).ingress(None), Some(0));
        assert_eq!(t.egress(20), Egress::Tagged(20));
        assert_eq!(t.egress(30), Egress::Drop);

        let a = PortVlan::access(10);
        assert_eq!(a.ingress(None), Some(10));
        assert_eq!(a.ingress(Some(0)), Some(10), "priority-tagged");
        assert_eq!(a.ingress(Some(10)), None, "tagged frames are dropped");
        assert_eq!(a.egress(10), Egress::Untagged);
        assert_eq!(a.egress(20), Egress::Drop);

        let nt = PortVlan::native(VlanMode::NativeTagged, 20, &[10]);
        assert_eq!(nt.ingress(None), Some(20));
        assert_eq!(nt.ingress(Some(10)), Some(10));
        assert_eq!(nt.ingress(Some(20)), Some(20));
        assert_eq!(nt.ingress(Some(30)), None);
        assert_eq!(nt.egress(20), Egress::Tagged(20));
        assert_eq!(nt.egress(10), Egress::Tagged(10));
        assert_eq!(nt.egress(30), Egress::Drop);

        let nu = PortVlan::native(VlanMode::NativeUntagged, 20, &[10]);
        assert_eq!(nu.egress(20), Egress::Untagged);
        assert_eq!(nu.egress(10), Egress::Tagged(10));
        assert!(PortVlan::default().is_plain() && !nu.is_plain());
    }

    #[test]
    fn native_ports_never_carry_vlan_0() {
        for mode in [VlanMode::NativeTagged, VlanMode::NativeUntagged] {
            // Every VLAN (no `trunks`): all but VLAN 0.
            let all = PortVlan::native(mode, 20, &[]);
            assert_eq!(all.egress(0), Egress::Drop, "{mode:?}: VLAN 0 out");
            assert_eq!(all.egress(30), Egress::Tagged(30));
            assert_eq!(all.egress(4095), Egress::Tagged(4095));
            assert_eq!(all.ingress(None), Some(20), "untagged in: the native VLAN");
            assert_eq!(all.ingress(Some(0)), Some(20), "priority-tagged in");
            assert_eq!(all.ingress(Some(30)), Some(30));
            // A list with 0 in it (the configuration refuses one) does not carry it either.
            let listed = PortVlan::native(mode, 20, &[0, 10]);
            assert_eq!(listed.egress(0), Egress::Drop, "{mode:?}: VLAN 0 listed");
            assert_eq!(listed.egress(10), Egress::Tagged(10));
        }
        // A trunk of every VLAN still carries VLAN 0, untagged.
        assert_eq!(PortVlan::trunk(&[]).egress(0), Egress::AsIs);
        assert_eq!(PortVlan::trunk(&[0, 10]).egress(0), Egress::AsIs);
    }

    #[test]
    fn tags_are_pushed_popped_and_rewritten() {
        let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let mut m = pool.alloc().unwrap();
        let plain: Vec<u8> = (0..60u8).collect();
        m.set_len(60).copy_from_slice(&plain);
        assert!(retag(&mut m, Egress::Tagged(10)));
        assert_eq!(m.len(), 64);
        assert_eq!(tag_of(m.data()), Some(10));
        assert_eq!(&m.data()[..12], &plain[..12]);
        assert_eq!(&m.data()[16..], &plain[12..]);
        // Rewrite keeps the priority bits.
        m.data_mut()[14] |= 0xa0;
        assert!(retag(&mut m, Egress::Tagged(20)));
        assert_eq!(tag_of(m.data()), Some(20));
        assert_eq!(m.data()[14] & 0xf0, 0xa0);
        assert!(retag(&mut m, Egress::Untagged));
        assert_eq!(m.data(), &plain[..]);
        pool.free(m);
    }
}
