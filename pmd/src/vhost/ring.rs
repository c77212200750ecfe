//! A virtqueue of either layout, as a port's slot holds it: the split ring
//! ([`LiveRing`]) or the packed ring ([`PackedRing`]), chosen by the frontend's
//! `VIRTIO_F_RING_PACKED`. The data path matches on it once per burst.

use super::packed::PackedRing;
use super::virtq::{GuestError, LiveRing, RxCounts};
use crate::mempool::{Mbuf, MempoolCache};

/// Where a ring resumes: SET_VRING_BASE's value (a split ring's next avail index; a
/// packed ring's next avail index and wrap counter in bits 0-15, QEMU adding the used
/// ones in bits 16-31), and who knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingBase {
    /// As the frontend sent it: after this switch restarted, QEMU's is stale for a
    /// packed ring (see `PackedRing::new`).
    Frontend(u32),
    /// Where this switch's own ring stopped (taken down to be changed or stopped):
    /// exact.
    Stopped(u32),
}

impl Default for RingBase {
    fn default() -> RingBase {
        RingBase::Frontend(0)
    }
}

impl RingBase {
    pub fn value(self) -> u32 {
        match self {
            RingBase::Frontend(v) | RingBase::Stopped(v) => v,
        }
    }
}

pub enum Ring {
    Split(LiveRing),
    Packed(PackedRing),
}

impl Ring {
    #[inline]
    pub fn dequeue(
        &mut self,
        cache: &mut MempoolCache,
        out: &mut [Option<Mbuf>],
        drops: &mut RxCounts,
        bytes: &mut u64,
    ) -> usize {
        match self {
            Ring::Split(r) => r.dequeue(cache, out, drops, bytes),
            Ring::Packed(r) => r.dequeue(cache, out, drops, bytes),
        }
    }

    #[inline]
    pub fn enqueue(
        &mut self,
        pkts: &mut [Option<Mbuf>],
        cache: &mut MempoolCache,
        bytes: &mut u64,
        too_big: &mut u64,
    ) -> usize {
        match self {
            Ring::Split(r) => r.enqueue(pkts, cache, bytes, too_big),
            Ring::Packed(r) => r.enqueue(pkts, cache, bytes, too_big),
        }
    }

    #[inline]
    pub fn enqueue_offload(
        &mut self,
        pkts: &mut [Option<Mbuf>],
        cache: &mut MempoolCache,
        bytes: &mut u64,
        too_big: &mut u64,
    ) -> usize {
        match self {
            Ring::Split(r) => r.enqueue_offload(pkts, cache, bytes, too_big),
            Ring::Packed(r) => r.enqueue_offload(pkts, cache, bytes, too_big),
        }
    }

    pub fn error(&self) -> Option<GuestError> {
        match self {
            Ring::Split(r) => r.error(),
            Ring::Packed(r) => r.error(),
        }
    }

    /// Interrupts the guest for used entries a split ring published earlier (a packed
    /// ring decides at the end of each burst: nothing is owed).
    pub fn settle(&mut self) {
        if let Ring::Split(r) = self {
            r.settle();
        }
    }

    pub fn arm_kick(&mut self) -> crate::idle::Wake {
        match self {
            Ring::Split(r) => r.arm_kick(),
            Ring::Packed(r) => r.arm_kick(),
        }
    }

    pub fn disarm_kick(&mut self, kicked: bool) {
        match self {
            Ring::Split(r) => r.disarm_kick(kicked),
            Ring::Packed(r) => r.disarm_kick(kicked),
        }
    }

    /// Where the ring stopped, as GET_VRING_BASE returns it (packed: see
    /// `PackedRing::base`).
    pub fn base(&self) -> u32 {
        match self {
            Ring::Split(r) => r.last_avail() as u32,
            Ring::Packed(r) => r.base(),
        }
    }

    pub fn logging(&self) -> bool {
        match self {
            Ring::Split(r) => r.logging(),
            Ring::Packed(r) => r.logging(),
        }
    }
}
