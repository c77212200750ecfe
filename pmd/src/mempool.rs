//! Packet buffers ("mbufs") and the pool they are carved from.
//!
//! A [`Mempool`] is one [`HugeMem`] area cut into fixed-size buffers, each with
//! [`HEADROOM`] bytes in front of the packet data. Free buffers are indexes on a
//! lock-free shared ring; each PMD thread keeps a [`MempoolCache`], a plain stack
//! in front of it that is refilled and drained in bursts, so the hot path touches
//! the shared ring once per [`CACHE_BURST`] buffers and takes no lock.
//!
//! Beside the small buffers the pool may hold a second area of large ones
//! ([`LARGE_SLOT`] bytes each, for jumbo frames and, later, TCP segmentation
//! offload): linear buffers, not chains of small ones, so every consumer of a frame
//! still sees one `&[u8]`. A large buffer carries [`LARGE`] in its index; it is taken
//! with [`MempoolCache::alloc_large`] and freed like any other, through a cold branch
//! of the same ownership check. A frame that fits a small buffer is always in one
//! (the drivers copy down), so an AF_XDP port, whose UMEM is the small area, is never
//! handed a large buffer.

use crate::hugepage::{HugeMem, HugepageError, HugepagePolicy};
use crate::offload::NetHdr;
use crossbeam::queue::ArrayQueue;
use std::ptr::NonNull;
use std::sync::Arc;

/// Bytes reserved in front of the packet data (room to prepend headers).
pub const HEADROOM: usize = 128;
/// Bytes of packet data one mbuf holds.
pub const DATA_ROOM: usize = 2048;
/// Size of one buffer slot: headroom + data, a multiple of the cache line.
pub const BUF_SIZE: usize = HEADROOM + DATA_ROOM;
/// Size of one large buffer slot, a multiple of the page size. Only its first 65535
/// bytes are used: an [`Mbuf`]'s data offset and length are `u16`s.
pub const LARGE_SLOT: usize = 68 * 1024;
/// Bytes of packet data one large buffer holds after the headroom: 65407, more than
/// the longest TSO frame Linux builds (its 64 KiB GSO limit includes the headers).
pub const LARGE_DATA_ROOM: usize = u16::MAX as usize - HEADROOM;
/// The index bit that marks a large buffer. Pools hold at most 2^22 buffers, so the
/// bit is free.
pub const LARGE: u32 = 1 << 31;
/// The index bit that marks a frame carrying offload metadata: a virtio-net header
/// ([`NetHdr`]) in the first [`META`] bytes of its slot, which data never occupies.
pub const OL: u32 = 1 << 30;
/// Bytes at the start of every slot kept for offload metadata.
pub const META: usize = 16;
/// Buffers moved between a cache and the shared ring at once.
pub const CACHE_BURST: usize = 64;
/// Most buffers a per-thread cache holds before it drains.
pub const CACHE_MAX: usize = 4 * CACHE_BURST;

/// Whether `len` bytes at offset `off` of a page-aligned region lie on more than one
/// page of `page` bytes.
#[inline]
pub fn crosses_page(off: u64, len: u64, page: u64) -> bool {
    len > 0 && off / page != (off + len - 1) / page
}

/// A pool of packet buffers.
pub struct Mempool {
    mem: HugeMem,
    count: u32,
    free: ArrayQueue<u32>,
    large: Option<LargeArea>,
}

/// The pool's large buffers: their own memory and free ring, taken and given back
/// directly (at most tens of thousands a second, so no per-thread cache).
struct LargeArea {
    mem: HugeMem,
    count: u32,
    free: ArrayQueue<u32>,
}

/// One packet buffer, owned by whoever holds this handle. It is not `Clone`:
/// a buffer has exactly one owner until it is given back with
/// [`MempoolCache::free`] or [`Mempool::free`].
#[derive(Debug)]
#[must_use = "an mbuf must be transmitted or freed back to its pool"]
pub struct Mbuf {
    buf: NonNull<u8>,
    idx: u32,
    data_off: u16,
    len: u16,
}

// SAFETY: an Mbuf is the only handle to its buffer (the pool hands each index out once),
// so moving it to another thread moves exclusive access with it.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: buf points at a slot (BUF_SIZE bytes, or LARGE_SLOT for a large
        // buffer) owned exclusively by this handle; data_off + len <= slot_size() is
        // kept by every setter.
        unsafe {
            std::slice::from_raw_parts(
                self.buf.as_ptr().add(self.data_off as usize),
                self.len as usize,
            )
        }
    }
    /// The packet bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and &mut self makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buf.as_ptr().add(self.data_off as usize),
                self.len as usize,
            )
        }
    }
    /// Sets the packet length (from the start of data) and returns the data, writable.
    /// Lengths past the buffer's data room are clamped to it.
    #[inline]
    pub fn set_len(&mut self, len: usize) -> &mut [u8] {
        // One compare, as the `min` it replaces; large buffers take the cold branch.
        self.len = if self.data_off as usize + len <= BUF_SIZE {
            len as u16
        } else {
            self.clamp_len(len)
        };
        self.data_mut()
    }
    #[cold]
    fn clamp_len(&self, len: usize) -> u16 {
        len.min(self.capacity()) as u16
    }
    /// Whether this is a large buffer ([`LARGE_SLOT`] bytes).
    #[inline]
    pub fn is_large(&self) -> bool {
        self.idx & LARGE != 0
    }
    /// The bytes of this buffer's slot that may hold data, headroom included: the
    /// whole small slot, or the first 65535 bytes of a large one (so that data offset
    /// plus length always fits a `u16`).
    #[inline]
    fn slot_size(&self) -> usize {
        if self.is_large() {
            u16::MAX as usize
        } else {
            BUF_SIZE
        }
    }
    /// Grows the data by `n` bytes at the front (new bytes unspecified): into the
    /// headroom, or, when there is not enough, by moving the data back. `false`, and
    /// nothing changed, if the buffer has no room for `n` more bytes.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> bool {
        let (off, len) = (self.data_off as usize, self.len as usize);
        if off >= n + META {
            self.data_off -= n as u16;
        } else if META + len + n <= self.slot_size() {
            // Move the data back and start it right after the metadata bytes.
            let to = META + n;
            let whole = self.set_whole((off + len).max(to + len));
            whole.copy_within(off..off + len, to);
            self.data_off = META as u16;
        } else {
            return false;
        }
        self.len += n as u16;
        true
    }
    /// Removes `n` bytes (at most the length) from the front of the data.
    #[inline]
    pub fn trim_front(&mut self, n: usize) {
        let n = n.min(self.len as usize) as u16;
        self.data_off += n;
        self.len -= n;
    }
    /// The first `len` bytes of the whole buffer, headroom included, writable.
    fn set_whole(&mut self, len: usize) -> &mut [u8] {
        let slot = self.slot_size();
        debug_assert!(len <= slot);
        // SAFETY: buf points at a slot of at least slot_size() bytes owned exclusively
        // by this handle, and the length is clamped to slot_size().
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), len.min(slot)) }
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes that can be stored from the start of data.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slot_size() - self.data_off as usize
    }
    /// Raw pointer to the start of data, for copies into and out of guest memory.
    #[inline]
    pub fn data_ptr(&mut self) -> *mut u8 {
        // SAFETY: data_off <= slot_size(), inside the buffer.
        unsafe { self.buf.as_ptr().add(self.data_off as usize) }
    }
    /// The buffer's index in its pool (stable identity, used by tests); small and
    /// large buffers are numbered apart.
    pub fn index(&self) -> u32 {
        self.idx & !(LARGE | OL)
    }
    /// Whether the frame carries offload metadata.
    #[inline]
    pub fn has_offload(&self) -> bool {
        self.idx & OL != 0
    }
    /// The frame's offload metadata, if it has any.
    #[inline]
    pub fn offload(&self) -> Option<NetHdr> {
        if !self.has_offload() {
            return None;
        }
        // SAFETY: the slot's first META bytes belong to this handle and are never data
        // (prepend stops at META); they were written by set_offload.
        let b = unsafe { &*(self.buf.as_ptr() as *const [u8; NetHdr::LEN]) };
        Some(NetHdr::parse(b))
    }
    /// Attaches offload metadata (none when `h` asks for nothing).
    #[inline]
    pub fn set_offload(&mut self, h: NetHdr) {
        if h.is_plain() {
            self.idx &= !OL;
            return;
        }
        // SAFETY: as in `offload`; &mut self makes the write exclusive.
        unsafe { (self.buf.as_ptr() as *mut [u8; NetHdr::LEN]).write(h.to_bytes()) };
        self.idx |= OL;
    }
    /// Drops the frame's offload metadata (the offload was carried out).
    #[inline]
    pub fn clear_offload(&mut self) {
        self.idx &= !OL;
    }
}

impl Mempool {
    /// Creates a pool of `count` buffers and no large ones.
    pub fn new(count: u32, policy: HugepagePolicy) -> Result<Arc<Mempool>, HugepageError> {
        Mempool::with_large(count, 0, policy)
    }

    /// Creates a pool of `count` buffers and `large` large ones.
    pub fn with_large(
        count: u32,
        large: u32,
        policy: HugepagePolicy,
    ) -> Result<Arc<Mempool>, HugepageError> {
        let count = count.max(1);
        let mem = HugeMem::new(count as usize * BUF_SIZE, policy)?;
        let large = match large {
            0 => None,
            n => Some(LargeArea {
                mem: HugeMem::new(n as usize * LARGE_SLOT, policy)?,
                count: n,
                free: free_ring(n),
            }),
        };
        Ok(Arc::new(Mempool {
            mem,
            count,
            free: free_ring(count),
            large,
        }))
    }

    /// Total large buffers in the pool.
    pub fn large_capacity(&self) -> u32 {
        self.large.as_ref().map_or(0, |l| l.count)
    }
    /// Large buffers free now.
    pub fn large_available(&self) -> usize {
        self.large.as_ref().map_or(0, |l| l.free.len())
    }

    /// Takes one large buffer; `None` when there are none free (or none at all).
    pub fn alloc_large(&self) -> Option<Mbuf> {
        let l = self.large.as_ref()?;
        let i = l.free.pop()?;
        // SAFETY: i < l.count (only such indexes are on the ring), so the slot lies
        // inside the large area's mapping.
        let p = unsafe { l.mem.as_ptr().add(i as usize * LARGE_SLOT) };
        Some(Mbuf {
            buf: NonNull::new(p).expect("mapping is non-null"),
            idx: i | LARGE,
            data_off: HEADROOM as u16,
            len: 0,
        })
    }

    /// Total buffers in the pool.
    pub fn capacity(&self) -> u32 {
        self.count
    }
    /// Buffers on the shared ring now (those in per-thread caches are not counted).
    pub fn available(&self) -> usize {
        self.free.len()
    }
    /// Whether the pool's memory is made of hugepages.
    pub fn is_huge(&self) -> bool {
        self.mem.is_huge()
    }
    /// The size of the pages the pool's memory is made of (and aligned to).
    pub fn page_size(&self) -> usize {
        self.mem.page_size()
    }
    /// Whether buffer `idx`'s slot (all `BUF_SIZE` bytes) crosses a page boundary.
    pub fn slot_crosses_page(&self, idx: u32) -> bool {
        crosses_page(
            idx as u64 * BUF_SIZE as u64,
            BUF_SIZE as u64,
            self.page_size() as u64,
        )
    }

    #[inline]
    fn mbuf(&self, idx: u32) -> Mbuf {
        debug_assert!(idx < self.count);
        // SAFETY: idx < count, so the slot lies inside the mapping.
        let p = unsafe { self.mem.as_ptr().add(idx as usize * BUF_SIZE) };
        Mbuf {
            buf: NonNull::new(p).expect("mapping is non-null"),
            idx,
            data_off: HEADROOM as u16,
            len: 0,
        }
    }

    /// Takes one buffer from the shared ring (slow path; PMD threads use a cache).
    pub fn alloc(&self) -> Option<Mbuf> {
        self.free.pop().map(|i| self.mbuf(i))
    }

    /// Gives one buffer back to the shared ring.
    pub fn free(&self, m: Mbuf) {
        if !self.owns_small(&m) {
            return self.free_other(m.buf, m.idx);
        }
        // The ring holds every index at most once, so it cannot be full here.
        let _ = self.free.push(m.idx & !OL);
    }

    /// The pool's memory as one page-aligned region, `(base, len)`: what an AF_XDP
    /// socket registers as its UMEM so that the kernel writes frames straight into mbufs.
    /// Buffer `i` starts at offset `i * BUF_SIZE`.
    pub(crate) fn region(&self) -> (*mut u8, usize) {
        (self.mem.as_ptr(), self.mem.len())
    }

    /// Hands a buffer to a device: returns the offset of its packet data from the
    /// region's base and its length. The caller must give the offset back to
    /// [`Mempool::reclaim`] exactly once, when the device is done with it.
    /// Only small buffers are lent: a large one here is a bug of the caller (panic).
    #[inline]
    pub(crate) fn lend(&self, m: Mbuf) -> (u64, u32) {
        if !self.owns_small(&m) {
            foreign(&m);
        }
        (
            (m.idx & !OL) as u64 * BUF_SIZE as u64 + m.data_off as u64,
            m.len as u32,
        )
    }

    /// Takes back a buffer a device returns: `off` is an offset into the region (any
    /// byte of the buffer's slot; the packet data starts there) and `len` the data length
    /// (clamped to the slot). `None` if `off` is outside the pool.
    ///
    /// # Safety
    /// The caller must own the buffer at `off`: it was lent with [`Mempool::lend`] and
    /// is reclaimed once. Otherwise two handles to one buffer would exist.
    #[inline]
    pub(crate) unsafe fn reclaim(&self, off: u64, len: u32) -> Option<Mbuf> {
        let idx = off / BUF_SIZE as u64;
        if idx >= self.count as u64 {
            return None;
        }
        let mut m = self.mbuf(idx as u32);
        m.data_off = (off % BUF_SIZE as u64) as u16;
        m.len = len.min((BUF_SIZE - m.data_off as usize) as u32) as u16;
        Some(m)
    }

    /// Whether `m` is one of this pool's small buffers. One compare: pools never
    /// overlap and an Mbuf is only ever made by its pool (`mbuf`, `reclaim`) pointing
    /// at its own slot, so a buffer inside this pool's memory is this pool's.
    #[inline(always)]
    fn owns_small(&self, m: &Mbuf) -> bool {
        let off = (m.buf.as_ptr() as usize).wrapping_sub(self.mem.as_ptr() as usize);
        off < self.count as usize * BUF_SIZE
    }

    /// Frees what is not a small buffer of this pool (an Mbuf's `buf` and `idx`, passed
    /// apart so that the hot caller keeps the handle in registers): one of its large
    /// buffers, or (a bug) another pool's buffer, which would get two owners: panic.
    #[cold]
    #[inline(never)]
    fn free_other(&self, buf: NonNull<u8>, idx: u32) {
        if let Some(l) = &self.large {
            let off = (buf.as_ptr() as usize).wrapping_sub(l.mem.as_ptr() as usize);
            if idx & LARGE != 0 && off < l.count as usize * LARGE_SLOT {
                let _ = l.free.push(idx & !(LARGE | OL));
                return;
            }
        }
        foreign_idx(idx)
    }
}

fn free_ring(count: u32) -> ArrayQueue<u32> {
    let free = ArrayQueue::new(count as usize);
    for i in 0..count {
        free.push(i).expect("ring sized to count");
    }
    free
}

#[cold]
#[inline(never)]
fn foreign(m: &Mbuf) -> ! {
    foreign_idx(m.idx)
}

#[cold]
#[inline(never)]
fn foreign_idx(idx: u32) -> ! {
    panic!("mbuf {idx:#x} freed to a pool it does not come from")
}

/// A per-thread cache of free buffers in front of a [`Mempool`].
pub struct MempoolCache {
    pool: Arc<Mempool>,
    stack: Vec<u32>,
}

impl MempoolCache {
    pub fn new(pool: Arc<Mempool>) -> MempoolCache {
        MempoolCache {
            pool,
            stack: Vec::with_capacity(CACHE_MAX + CACHE_BURST),
        }
    }

    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// One buffer, or `None` when the whole pool is empty.
    #[inline]
    pub fn alloc(&mut self) -> Option<Mbuf> {
        if self.stack.is_empty() {
            self.refill();
        }
        let i = self.stack.pop()?;
        Some(self.pool.mbuf(i))
    }

    /// Gives a buffer back.
    #[inline]
    pub fn free(&mut self, m: Mbuf) {
        // In release builds too: a foreign mbuf pushed here would become a buffer of
        // this pool with two owners. A few compares per frame, against silent corruption.
        // Large buffers go back through the same (cold) branch.
        if !self.pool.owns_small(&m) {
            return self.pool.free_other(m.buf, m.idx);
        }
        self.stack.push(m.idx & !OL);
        if self.stack.len() >= CACHE_MAX + CACHE_BURST {
            self.drain(CACHE_BURST);
        }
    }

    /// One large buffer, or `None` when none is free.
    #[inline]
    pub fn alloc_large(&mut self) -> Option<Mbuf> {
        self.pool.alloc_large()
    }

    /// A buffer for a frame of `len` bytes: small when it fits one, else large.
    #[inline]
    pub fn alloc_for(&mut self, len: usize) -> Option<Mbuf> {
        if len <= DATA_ROOM {
            self.alloc()
        } else {
            self.alloc_large()
        }
    }

    /// The frame in the smallest buffer that holds it: a large buffer whose frame fits
    /// a small one is copied down (AF_XDP ports are never lent a large buffer, and small
    /// buffers are plenty). `None`, the frame freed, when no small buffer is left.
    pub fn fit(&mut self, m: Mbuf) -> Option<Mbuf> {
        if !m.is_large() || m.len() > DATA_ROOM {
            return Some(m);
        }
        let c = self.copy_of(&m);
        self.free(m);
        c
    }

    /// A copy of `m`'s frame, and its offload metadata, in a new buffer of the size
    /// it needs.
    #[inline]
    pub fn copy_of(&mut self, m: &Mbuf) -> Option<Mbuf> {
        let mut c = self.alloc_for(m.len())?;
        c.set_len(m.len()).copy_from_slice(m.data());
        if let Some(h) = m.offload() {
            c.set_offload(h);
        }
        Some(c)
    }

    fn refill(&mut self) {
        for _ in 0..CACHE_BURST {
            match self.pool.free.pop() {
                Some(i) => self.stack.push(i),
                None => break,
            }
        }
    }

    fn drain(&mut self, n: usize) {
        for _ in 0..n.min(self.stack.len()) {
            let i = self.stack.pop().expect("len checked");
            let _ = self.pool.free.push(i);
        }
    }
}

impl Drop for MempoolCache {
    fn drop(&mut self) {
        let n = self.stack.len();
        self.drain(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn prepend_uses_headroom_then_moves_the_data() {
        let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let mut m = pool.alloc().unwrap();
        m.set_len(4).copy_from_slice(&[1, 2, 3, 4]);
        assert!(m.prepend(HEADROOM));
        assert_eq!(m.len(), HEADROOM + 4);
        assert_eq!(&m.data()[HEADROOM..], &[1, 2, 3, 4]);
        m.trim_front(HEADROOM - 2);
        assert_eq!(m.data(), &[0, 0, 1, 2, 3, 4][..]);
        m.trim_front(2);
        // No headroom left beyond 126 bytes: 130 more need the data moved.
        assert!(m.prepend(HEADROOM + 2));
        assert_eq!(&m.data()[HEADROOM + 2..], &[1, 2, 3, 4]);
        assert!(!m.prepend(BUF_SIZE), "more than the buffer holds");
        assert_eq!(&m.data()[HEADROOM + 2..], &[1, 2, 3, 4]);
        pool.free(m);
    }

    #[test]
    fn offload_metadata_travels_with_the_frame_and_not_with_the_buffer() {
        let pool = Mempool::with_large(1024, 1, HugepagePolicy::Off).unwrap();
        let mut c = MempoolCache::new(pool.clone());
        let h = NetHdr {
            flags: crate::offload::NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..NetHdr::default()
        };
        for large in [false, true] {
            let mut m = if large { c.alloc_large() } else { c.alloc() }.unwrap();
            let idx = m.index();
            m.set_len(100).fill(9);
            m.set_offload(h);
            assert_eq!(m.offload(), Some(h));
            assert_eq!(m.index(), idx, "the flag is not part of the identity");
            // Data moved back to make room for 200 bytes stops short of the metadata.
            assert!(m.prepend(200));
            assert_eq!(m.offload(), Some(h));
            assert!(m.data()[200..].iter().all(|&b| b == 9));
            m.set_offload(NetHdr::default());
            assert_eq!(m.offload(), None, "a plain header is no metadata");
            m.set_offload(h);
            c.free(m);
            let again = if large { c.alloc_large() } else { c.alloc() }.unwrap();
            assert_eq!(again.index(), idx, "the same buffer back");
            assert!(!again.has_offload(), "freed without its metadata");
            c.free(again);
        }
    }

    #[test]
    fn alloc_all_then_free_all() {
        let pool = Mempool::new(300, HugepagePolicy::Off).unwrap();
        let mut c = MempoolCache::new(pool.clone());
        let mut got = Vec::new();
        while let Some(m) = c.alloc() {
            got.push(m);
        }
        assert_eq!(got.len(), 300);
        let ids: HashSet<u32> = got.iter().map(|m| m.index()).collect();
        assert_eq!(ids.len(), 300, "a buffer was handed out twice");
        for m in got {
            c.free(m);
        }
        drop(c);
        assert_eq!(pool.available(), 300);
    }

    #[test]
    fn data_is_per_buffer() {
        let pool = Mempool::new(4, HugepagePolicy::Off).unwrap();
        let mut a = pool.alloc().unwrap();
        let mut b = pool.alloc().unwrap();
        a.set_len(100).fill(0xaa);
        b.set_len(DATA_ROOM + HEADROOM + 10).fill(0xbb);
        assert_eq!(b.len(), DATA_ROOM, "length clamps to the data room");
        assert!(a.data().iter().all(|&x| x == 0xaa));
        pool.free(a);
        pool.free(b);
    }

    #[test]
    fn concurrent_alloc_free_loses_nothing() {
        const N: u32 = 2048;
        let pool = Mempool::new(N, HugepagePolicy::Auto).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut c = MempoolCache::new(pool);
                    let mut held: Vec<Mbuf> = Vec::new();
                    let mut seen = 0u64;
                    for round in 0..2000u32 {
                        let want = ((round * 7 + t * 13) % 200) as usize;
                        while held.len() < want {
                            match c.alloc() {
                                Some(mut m) => {
                                    // Stamp the buffer: if another thread holds it too, the
                                    // stamp is overwritten and the check below fails.
                                    let stamp = (t << 24 | round) as u64;
                                    m.set_len(8).copy_from_slice(&stamp.to_le_bytes());
                                    held.push(m);
                                }
                                None => break,
                            }
                        }
                        for m in held.iter() {
                            let v = u64::from_le_bytes(m.data()[..8].try_into().unwrap());
                            assert_eq!(
                                v >> 24,
                                t as u64,
                                "buffer {} shared between threads",
                                m.index()
                            );
                            seen += 1;
                        }
                        let keep = held.len() / 3;
                        for m in held.drain(keep..) {
                            c.free(m);
                        }
                    }
                    for m in held {
                        c.free(m);
                    }
                    seen
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap() > 0);
        }
        assert_eq!(pool.available(), N as usize, "buffers lost");
        let mut ids = HashSet::new();
        while let Some(m) = pool.alloc() {
            assert!(
                ids.insert(m.index()),
                "index {} twice on the free ring",
                m.index()
            );
            let _ = m; // not freed: the loop empties the ring
        }
        assert_eq!(ids.len(), N as usize);
    }

    #[test]
    fn large_buffers_hold_the_longest_frame_and_go_back_to_their_own_ring() {
        let pool = Mempool::with_large(1024, 2, HugepagePolicy::Off).unwrap();
        let mut c = MempoolCache::new(pool.clone());
        let mut a = c.alloc_large().unwrap();
        let b = c.alloc_large().unwrap();
        assert!(a.is_large() && b.is_large());
        assert!(c.alloc_large().is_none(), "two large buffers only");
        assert_eq!(a.capacity(), LARGE_DATA_ROOM);
        a.set_len(100_000).fill(0x5a);
        assert_eq!(a.len(), LARGE_DATA_ROOM, "offset and length fit a u16");
        a.set_len(9018);
        assert!(a.prepend(4), "headroom");
        assert_eq!(a.len(), 9022);
        assert!(a.data()[4..].iter().all(|&x| x == 0x5a));
        // Freed through a cache (the cold branch), they come back to the large ring, and
        // the cache's small stack does not grow.
        c.free(a);
        pool.free(b);
        assert_eq!(pool.large_available(), 2);
        assert!(c.alloc_large().is_some_and(|m| {
            pool.free(m);
            true
        }));
        drop(c);
        assert_eq!(pool.available(), 1024);
    }

    #[test]
    fn fit_copies_a_short_frame_down_and_keeps_a_long_one() {
        let pool = Mempool::with_large(1024, 4, HugepagePolicy::Off).unwrap();
        let mut c = MempoolCache::new(pool.clone());
        let mut short = c.alloc_large().unwrap();
        short.set_len(DATA_ROOM).fill(7);
        let short = c.fit(short).unwrap();
        assert!(!short.is_large());
        assert_eq!(short.data(), &[7u8; DATA_ROOM][..]);
        let mut long = c.alloc_large().unwrap();
        long.set_len(DATA_ROOM + 1).fill(8);
        let long = c.fit(long).unwrap();
        assert!(long.is_large());
        let copy = c.copy_of(&long).unwrap();
        assert!(copy.is_large() && copy.data() == long.data());
        let small_copy = c.copy_of(&short).unwrap();
        assert!(!small_copy.is_large());
        for m in [short, long, copy, small_copy] {
            c.free(m);
        }
        drop(c);
        assert_eq!((pool.available(), pool.large_available()), (1024, 4));
    }

    #[test]
    fn without_large_buffers_a_long_frame_gets_none() {
        let pool = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let mut c = MempoolCache::new(pool.clone());
        assert_eq!(pool.large_capacity(), 0);
        assert!(c.alloc_for(DATA_ROOM + 1).is_none());
        let m = c.alloc_for(DATA_ROOM).unwrap();
        assert!(!m.is_large());
        c.free(m);
    }

    #[test]
    #[should_panic(expected = "freed to a pool it does not come from")]
    fn another_pools_large_buffer_is_refused() {
        let a = Mempool::with_large(1024, 1, HugepagePolicy::Off).unwrap();
        let b = Mempool::with_large(1024, 1, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(a);
        cache.free(b.alloc_large().unwrap());
    }

    #[test]
    #[should_panic(expected = "freed to a pool it does not come from")]
    fn a_foreign_mbuf_is_refused_by_a_cache_in_release_builds_too() {
        let a = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let b = Mempool::new(1024, HugepagePolicy::Off).unwrap();
        let mut cache = MempoolCache::new(a);
        let m = b.alloc().unwrap();
        cache.free(m);
    }
}
