//! Dirty-page logging for live migration: the frontend's log area (`SET_LOG_BASE`),
//! and the per-ring cache through which a burst marks the guest pages it wrote.
//!
//! While QEMU migrates a guest it copies guest memory to the destination in rounds,
//! and copies again each page marked dirty since the last round. Pages this switch
//! writes (received frames, their virtio-net headers, the used ring) do not go
//! through QEMU, so the switch marks them itself in a bitmap QEMU shares with it:
//! one bit per 4 KiB guest-physical page, `log[page / 8] |= 1 << (page % 8)`, set
//! atomically because QEMU reads and clears the words at the same time.
//!
//! As DPDK's `vhost_log_cache_write` does, a ring collects the bits of a burst in a
//! small cache of log words and ORs them into the shared log once per burst, after
//! the data they stand for is written (a release fence first), so a page is never
//! marked before the write it stands for.
//!
//! The log area is guest-controlled input: its size bounds every write. A page
//! beyond it is not written and is counted in [`DirtyLog::outside`]; a frontend
//! that shrinks the file behind the log gets zero pages there (see `sigbus`), not a
//! crash.

use super::mem::{map_region, FastTable, Mapping, MemError, RegionDesc};
use crate::sigbus;
use std::fs::File;
use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// Guest bytes per log bit (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 4096;
const LOG_PAGE_SHIFT: u32 = LOG_PAGE.trailing_zeros();

/// The largest log area mapped: 1 GiB of bits covers 32 TiB of guest-physical space.
pub const MAX_LOG_SIZE: u64 = 1 << 30;

/// Why a `SET_LOG_BASE` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// Empty, larger than [`MAX_LOG_SIZE`], or its offset overflows.
    Size {
        size: u64,
        offset: u64,
    },
    /// The file cannot be mapped (kind, length, mmap).
    Map(MemError),
    Guard(sigbus::TableFull),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Size { size, offset } => write!(
                f,
                "dirty log of {size} bytes at offset {offset} (1..={MAX_LOG_SIZE} bytes allowed)"
            ),
            LogError::Map(e) => write!(f, "dirty log area: {e}"),
            LogError::Guard(e) => write!(f, "dirty log area: {e}"),
        }
    }
}

/// The frontend's dirty log, mapped.
pub struct DirtyLog {
    /// SIGBUS recovery for the mapping; dropped (unregistered) before it is unmapped.
    _guard: sigbus::Guard,
    _map: Mapping,
    base: *mut u8,
    size: u64,
    /// Log bits that fell outside the area (a log too small for the guest's memory).
    outside: AtomicU64,
}

// SAFETY: `base` points into the mapping this value owns; every access to it is an
// atomic byte operation bounded by `size`.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// Maps `size` bytes of `file` from `offset`, as `SET_LOG_BASE` gives them. The
    /// file must be a regular file on tmpfs or hugetlbfs (QEMU's is a memfd) at least
    /// `offset + size` long.
    pub fn map(file: &File, size: u64, offset: u64) -> Result<DirtyLog, LogError> {
        if size == 0 || size > MAX_LOG_SIZE || offset.checked_add(size).is_none() {
            return Err(LogError::Size { size, offset });
        }
        let desc = RegionDesc {
            guest_phys: 0,
            size,
            user_addr: 0,
            mmap_offset: offset,
        };
        let (map, base) = map_region(0, &desc, file).map_err(LogError::Map)?;
        let guard =
            sigbus::Guard::register(&[(map.base as usize, map.len)]).map_err(LogError::Guard)?;
        Ok(DirtyLog {
            _guard: guard,
            _map: map,
            base,
            size,
            outside: AtomicU64::new(0),
        })
    }

    /// Bytes of log (each covers 8 pages).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Page bits that were not set because they lie beyond the log.
    pub fn outside(&self) -> u64 {
        self.outside.load(Ordering::Relaxed)
    }

    /// ORs `bits` into log byte `i`, if the log has it.
    #[inline]
    fn or_byte(&self, i: u64, bits: u8) {
        if i >= self.size {
            self.outside
                .fetch_add(bits.count_ones() as u64, Ordering::Relaxed);
            return;
        }
        // SAFETY: i < size: the byte lies in the mapped log; QEMU reads and clears the
        // log concurrently, so it is only ever accessed atomically.
        let b = unsafe { AtomicU8::from_ptr(self.base.add(i as usize)) };
        b.fetch_or(bits, Ordering::Relaxed);
    }

    /// Marks `len` bytes at guest-physical `gpa` at once (control thread; rings use
    /// a [`RingLog`]).
    pub fn mark(&self, gpa: u64, len: u64) {
        for page in pages(gpa, len) {
            self.or_byte(page / 8, 1 << (page % 8));
        }
    }
}

/// The pages `len` bytes at `gpa` touch.
#[inline]
fn pages(gpa: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    if len == 0 {
        #[allow(clippy::reversed_empty_ranges)]
        return 1..=0;
    }
    let last = gpa.saturating_add(len - 1);
    (gpa >> LOG_PAGE_SHIFT)..=(last >> LOG_PAGE_SHIFT)
}

/// Log words a ring collects before it writes them out.
const CACHE_WORDS: usize = 32;

/// One ring's view of the log while logging is on: the area, where its used ring
/// is, and the bits of the current burst.
pub struct RingLog {
    area: Arc<DirtyLog>,
    /// Guest-physical range of the used ring (from `SET_VRING_ADDR`'s `log_guest_addr`).
    used_gpa: u64,
    used_len: u64,
    /// Host to guest-physical translation for the buffers the ring writes.
    table: FastTable,
    n: usize,
    word: [u64; CACHE_WORDS],
    bits: [u64; CACHE_WORDS],
}

impl RingLog {
    pub fn new(area: Arc<DirtyLog>, table: FastTable, used_gpa: u64, used_len: u64) -> RingLog {
        RingLog {
            area,
            used_gpa,
            used_len,
            table,
            n: 0,
            word: [0; CACHE_WORDS],
            bits: [0; CACHE_WORDS],
        }
    }

    /// Notes that `len` bytes at host address `p` (inside guest memory) were written.
    #[inline]
    pub fn wrote(&mut self, p: *const u8, len: usize) {
        match self.table.host_to_gpa(p) {
            Some(gpa) => self.mark(gpa, len as u64),
            None => debug_assert!(false, "a written buffer outside guest memory"),
        }
    }

    /// Notes that the used ring was written.
    #[inline]
    pub fn wrote_used(&mut self) {
        self.mark(self.used_gpa, self.used_len);
    }

    /// Marks the pages of `len` bytes at `gpa`, a log word (64 pages) at a time.
    fn mark(&mut self, gpa: u64, len: u64) {
        let p = pages(gpa, len);
        let (first, last) = (*p.start(), *p.end());
        if first > last {
            return;
        }
        for w in first / 64..=last / 64 {
            let lo = if w == first / 64 { first % 64 } else { 0 };
            let hi = if w == last / 64 { last % 64 } else { 63 };
            let b = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            match self.word[..self.n].iter().position(|&x| x == w) {
                Some(k) => self.bits[k] |= b,
                None => {
                    if self.n == CACHE_WORDS {
                        self.flush();
                    }
                    self.word[self.n] = w;
                    self.bits[self.n] = b;
                    self.n += 1;
                }
            }
        }
    }

    /// Writes the collected bits to the log, after every write they stand for.
    pub fn flush(&mut self) {
        if self.n == 0 {
            return;
        }
        // The guest memory writes must be visible before QEMU can see their pages
        // marked (it copies a marked page and clears its bit).
        fence(Ordering::Release);
        for k in 0..self.n {
            let bits = self.bits[k];
            for byte in 0..8u64 {
                let v = (bits >> (8 * byte)) as u8;
                if v != 0 {
                    self.area.or_byte(self.word[k] * 8 + byte, v);
                }
            }
        }
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::driver::DriverMem;

    fn log_file(bytes: u64) -> File {
        DriverMem::new(0, bytes, 0, 0).file()
    }

    fn read_log(f: &File, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0; len];
        f.read_exact_at(&mut b, 0).unwrap();
        b
    }

    #[test]
    fn marks_one_bit_per_page_and_counts_what_lies_outside() {
        let f = log_file(4096);
        let log = Arc::new(DirtyLog::map(&f, 16, 0).unwrap()); // 128 pages
        let mem = DriverMem::new(0, 1 << 20, 0, 0x7000_0000);
        let gm = crate::vhost::mem::GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap();
        let mut r = RingLog::new(log.clone(), gm.fast_table(), 0x3000, 6 + 8 * 256);
        let host = gm.gpa_to_host(0x9ff0, 0x20).unwrap();
        r.wrote(host, 0x20); // pages 9 and 10
        r.wrote_used(); // pages 3 (0x3000..0x3806)
        assert_eq!(read_log(&f, 16), vec![0; 16], "nothing before the flush");
        r.flush();
        let l = read_log(&f, 16);
        assert_eq!(l[0], 1 << 3);
        assert_eq!(l[1], (1 << 1) | (1 << 2));
        assert!(l[2..].iter().all(|&b| b == 0));
        // A guest larger than its log: page 128 and on are not written, but counted.
        log.mark(127 * LOG_PAGE, 2 * LOG_PAGE);
        assert_eq!(read_log(&f, 17)[15], 0x80);
        assert_eq!(read_log(&f, 17)[16], 0, "nothing past the log's size");
        assert_eq!(log.outside(), 1);
    }

    #[test]
    fn more_words_than_the_cache_holds_are_all_written() {
        let f = log_file(4096);
        let log = Arc::new(DirtyLog::map(&f, 4096, 0).unwrap());
        let mem = DriverMem::new(0, 1 << 20, 0, 0x7000_0000);
        let gm = crate::vhost::mem::GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap();
        let mut r = RingLog::new(log, gm.fast_table(), 0, 0);
        // Every 64th page: one word each, 40 words.
        for k in 0..40u64 {
            r.mark(k * 64 * LOG_PAGE, 1);
        }
        r.flush();
        let l = read_log(&f, 4096);
        for k in 0..40 {
            assert_eq!(l[k * 8], 1, "word {k}");
        }
        assert_eq!(l.iter().map(|b| b.count_ones()).sum::<u32>(), 40);
    }

    #[test]
    fn a_range_marks_whole_words_at_a_time() {
        let f = log_file(4096);
        let log = Arc::new(DirtyLog::map(&f, 4096, 0).unwrap());
        let mem = DriverMem::new(0, 1 << 20, 0, 0x7000_0000);
        let gm = crate::vhost::mem::GuestMemory::map(&[mem.region()], vec![mem.file()]).unwrap();
        let mut r = RingLog::new(log, gm.fast_table(), 0, 0);
        // Pages 60..=135: the end of word 0, all of word 1, the start of word 2.
        r.mark(60 * LOG_PAGE + 5, 76 * LOG_PAGE - 5);
        r.mark(0, 0); // nothing
        r.flush();
        let l = read_log(&f, 32);
        let set: Vec<u64> = (0..32 * 8)
            .filter(|&p| l[p as usize / 8] & (1 << (p % 8)) != 0)
            .collect();
        assert_eq!(set, (60..=135).collect::<Vec<u64>>());
    }

    #[test]
    fn refuses_hostile_areas() {
        let f = log_file(4096);
        assert!(matches!(
            DirtyLog::map(&f, 0, 0),
            Err(LogError::Size { .. })
        ));
        assert!(matches!(
            DirtyLog::map(&f, 8, u64::MAX - 4),
            Err(LogError::Size { .. })
        ));
        // Longer than its file.
        let e = DirtyLog::map(&f, 8192, 0).err().unwrap();
        assert!(matches!(e, LogError::Map(MemError::PastEnd { .. })), "{e}");
        // Not a memory file.
        let dev_null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let e = DirtyLog::map(&dev_null, 8, 0).err().unwrap();
        assert!(matches!(e, LogError::Map(MemError::FileKind { .. })), "{e}");
    }
}
