//! A guest's memory table (from SET_MEM_TABLE), mapped into this process.
//!
//! Each region is a shared mapping of a file descriptor the frontend sent, in whole
//! blocks of its file (2 MiB on hugetlbfs), only from regular files on tmpfs or
//! hugetlbfs (memfd, /dev/shm, /dev/hugepages), and at most a configured total per
//! port. The mappings are registered with [`crate::sigbus`], so a file that shrinks
//! under them poisons the table instead of killing the process. Translation is checked: an address range is translated only
//! when it lies wholly inside one region, so nothing a guest names can reach
//! memory outside its own regions. The table is immutable once built; a new
//! SET_MEM_TABLE builds a new one, and the old one is unmapped when its last
//! `Arc` goes (after PMD threads passed a grace period, see `rcu`).

use crate::sigbus;
use std::fs::File;
use std::os::fd::AsRawFd;

/// Most regions a table may have (QEMU sends at most 8 without CONFIGURE_MEM_SLOTS).
pub const MAX_REGIONS: usize = 8;
const _: () = assert!(MAX_REGIONS <= sigbus::RANGES);

/// Guest memory one port may map unless configured otherwise: a frontend cannot make
/// the switch map a sparse 64 TiB file and exhaust its address space.
pub const DEFAULT_MAX_GUEST_MEMORY: u64 = 1 << 40;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Why a memory table was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemError {
    RegionCount(usize),
    FdCount {
        regions: usize,
        fds: usize,
    },
    /// Empty, or its addresses or offset overflow.
    BadRegion {
        index: usize,
        desc: RegionDesc,
    },
    Overlap {
        a: usize,
        b: usize,
    },
    /// More guest memory than the port allows.
    TooLarge {
        total: u64,
        limit: u64,
    },
    /// Not a regular file on tmpfs or hugetlbfs (memfd, /dev/shm, /dev/hugepages).
    FileKind {
        index: usize,
        what: String,
    },
    PastEnd {
        index: usize,
        desc: RegionDesc,
        file_len: u64,
    },
    Map {
        index: usize,
        desc: RegionDesc,
        errno: i32,
    },
    Guard(sigbus::TableFull),
}

impl std::fmt::Display for MemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemError::RegionCount(n) => {
                write!(f, "memory table has {n} regions (1..={MAX_REGIONS} allowed)")
            }
            MemError::FdCount { regions, fds } => write!(
                f,
                "memory table has {regions} regions but {fds} file descriptors"
            ),
            MemError::BadRegion { index, desc } => {
                write!(f, "memory region {index} is empty or overflows: {desc:?}")
            }
            MemError::Overlap { a, b } => write!(f, "memory regions {a} and {b} overlap"),
            MemError::TooLarge { total, limit } => write!(
                f,
                "memory table maps {total} bytes, more than this port's limit of {limit}"
            ),
            MemError::FileKind { index, what } => write!(
                f,
                "memory region {index}: {what}; only regular files on tmpfs or hugetlbfs (memfd, /dev/shm, /dev/hugepages) are mapped"
            ),
            MemError::PastEnd {
                index,
                desc,
                file_len,
            } => write!(
                f,
                "memory region {index} {desc:?} ends past its file ({file_len} bytes)"
            ),
            MemError::Map { index, desc, errno } => write!(
                f,
                "cannot map memory region {index} {desc:?}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            MemError::Guard(e) => write!(f, "{e}"),
        }
    }
}

/// A shared mapping of a whole number of the file's blocks (`st_blksize`: 2 MiB on
/// hugetlbfs), so that unmapping it cannot fail; unmapped on drop, and a failure to
/// unmap is logged, not ignored.
pub(super) struct Mapping {
    pub(super) base: *mut u8,
    pub(super) len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len is a mapping this process made and nothing else refers to
        // it any more (its GuestMemory is being dropped after a grace period).
        if unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) } != 0 {
            tracing::error!(
                addr = ?self.base,
                len = self.len,
                "munmap of guest memory failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// One mapped region.
pub struct Region {
    pub guest_phys: u64,
    pub size: u64,
    pub user_addr: u64,
    host: *mut u8,
    map: Mapping,
}

/// A guest's memory table.
pub struct GuestMemory {
    /// SIGBUS recovery for the mappings. Declared first so that it is dropped (the
    /// ranges unregistered) before the mappings are unmapped.
    guard: sigbus::Guard,
    regions: Vec<Region>,
}

// SAFETY: the raw host pointers point into mappings owned by this table; the table
// itself is immutable after construction.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; shared access only reads the table.
unsafe impl Sync for GuestMemory {}

/// A region as described by the frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDesc {
    pub guest_phys: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

/// Checks the region descriptions among themselves: count, overflow, overlap, total.
fn check_descs(descs: &[RegionDesc], nfiles: usize, limit: u64) -> Result<(), MemError> {
    if descs.is_empty() || descs.len() > MAX_REGIONS {
        return Err(MemError::RegionCount(descs.len()));
    }
    if nfiles != descs.len() {
        return Err(MemError::FdCount {
            regions: descs.len(),
            fds: nfiles,
        });
    }
    let mut total = 0u64;
    for (i, d) in descs.iter().enumerate() {
        if d.size == 0
            || d.guest_phys.checked_add(d.size).is_none()
            || d.user_addr.checked_add(d.size).is_none()
            || d.mmap_offset.checked_add(d.size).is_none()
            || d.size > isize::MAX as u64 / 2
        {
            return Err(MemError::BadRegion { index: i, desc: *d });
        }
        for (j, e) in descs.iter().enumerate().take(i) {
            let gp = d.guest_phys < e.guest_phys + e.size && e.guest_phys < d.guest_phys + d.size;
            let ua = d.user_addr < e.user_addr + e.size && e.user_addr < d.user_addr + d.size;
            if gp || ua {
                return Err(MemError::Overlap { a: j, b: i });
            }
        }
        total = total.saturating_add(d.size);
    }
    if total > limit {
        return Err(MemError::TooLarge { total, limit });
    }
    Ok(())
}

/// The file's block size, if it is a regular file on tmpfs or hugetlbfs: files
/// elsewhere (a disk, FUSE) could make a PMD thread wait in a page fault.
fn file_block(index: usize, f: &File) -> Result<(u64, u64), MemError> {
    let kind = |what: String| MemError::FileKind { index, what };
    // SAFETY: fstat/fstatfs fill the zeroed structs from a descriptor `f` keeps open.
    let (st, sf) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let mut sf: libc::statfs = std::mem::zeroed();
        if libc::fstat(f.as_raw_fd(), &mut st) != 0 || libc::fstatfs(f.as_raw_fd(), &mut sf) != 0 {
            return Err(kind(format!("fstat: {}", std::io::Error::last_os_error())));
        }
        (st, sf)
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(kind(format!("not a regular file (mode {:o})", st.st_mode)));
    }
    let fs = sf.f_type;
    if fs != TMPFS_MAGIC && fs != HUGETLBFS_MAGIC {
        return Err(kind(format!("on a filesystem of type {fs:#x}")));
    }
    let blk = (st.st_blksize as u64).max(4096);
    if !blk.is_power_of_two() {
        return Err(kind(format!("block size {blk} is not a power of two")));
    }
    Ok((blk, st.st_size as u64))
}

/// Maps region `index` in whole blocks of its file; returns the mapping and the host
/// address of the region's first byte.
pub(super) fn map_region(
    index: usize,
    d: &RegionDesc,
    f: &File,
) -> Result<(Mapping, *mut u8), MemError> {
    let (blk, flen) = file_block(index, f)?;
    if flen < d.mmap_offset + d.size {
        return Err(MemError::PastEnd {
            index,
            desc: *d,
            file_len: flen,
        });
    }
    // From the start of the block that holds mmap_offset, to the end of the block
    // that holds the region's last byte: munmap of a hugetlbfs mapping fails unless
    // its length is whole huge pages, and the mapping would stay.
    let start = d.mmap_offset & !(blk - 1);
    let lead = d.mmap_offset - start;
    let len = (lead + d.size).div_ceil(blk) * blk;
    // SAFETY: a new shared mapping of a file we hold; no address hint, so it replaces
    // nothing. Accesses are bounded to the region by the translation functions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            f.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(MemError::Map {
            index,
            desc: *d,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        });
    }
    let map = Mapping {
        base: p as *mut u8,
        len: len as usize,
    };
    // SAFETY: lead < blk <= len, so the pointer stays inside the mapping.
    let host = unsafe { map.base.add(lead as usize) };
    Ok((map, host))
}

impl GuestMemory {
    /// [`GuestMemory::map_limited`] with [`DEFAULT_MAX_GUEST_MEMORY`].
    pub fn map(descs: &[RegionDesc], files: Vec<File>) -> Result<GuestMemory, MemError> {
        Self::map_limited(descs, files, DEFAULT_MAX_GUEST_MEMORY)
    }

    /// Maps the regions. Fails, mapping nothing, if any region is empty, overflows,
    /// overlaps another (in guest-physical or frontend-virtual space), the regions add
    /// up to more than `limit` bytes, or a region's file is not a regular file on
    /// tmpfs or hugetlbfs or is shorter than the region.
    pub fn map_limited(
        descs: &[RegionDesc],
        files: Vec<File>,
        limit: u64,
    ) -> Result<GuestMemory, MemError> {
        check_descs(descs, files.len(), limit)?;
        let mut regions = Vec::with_capacity(descs.len());
        for (i, (d, f)) in descs.iter().zip(&files).enumerate() {
            let (map, host) = map_region(i, d, f)?;
            regions.push(Region {
                guest_phys: d.guest_phys,
                size: d.size,
                user_addr: d.user_addr,
                host,
                map,
            });
        }
        let ranges: Vec<(usize, usize)> = regions
            .iter()
            .map(|r| (r.map.base as usize, r.map.len))
            .collect();
        let guard = sigbus::Guard::register(&ranges).map_err(MemError::Guard)?;
        Ok(GuestMemory { guard, regions })
    }

    /// Whether a page of this memory could not be faulted in (its file shrank): the
    /// mappings now hold zeros and nothing read from them since can be trusted.
    #[inline(always)]
    pub fn is_poisoned(&self) -> bool {
        self.guard.poisoned()
    }

    /// Bytes mapped (whole blocks of the files), for `ctl show` and tests.
    pub fn mapped_bytes(&self) -> usize {
        self.regions.iter().map(|r| r.map.len).sum()
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Host address of `len` bytes at guest-physical `gpa`, if they lie in one region.
    #[inline]
    pub fn gpa_to_host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        self.regions
            .iter()
            .find_map(|r| translate(gpa, len, r.guest_phys, r.size, r.host))
    }

    /// Host address of `len` bytes at the frontend's virtual address `uva` (ring addresses
    /// in SET_VRING_ADDR are frontend virtual addresses).
    pub fn uva_to_host(&self, uva: u64, len: u64) -> Option<*mut u8> {
        self.regions
            .iter()
            .find_map(|r| translate(uva, len, r.user_addr, r.size, r.host))
    }

    /// A flat copy of the table for the hot path's cached lookups.
    pub fn fast_table(&self) -> FastTable {
        let mut t = FastTable {
            n: self.regions.len(),
            start: [0; MAX_REGIONS],
            end: [0; MAX_REGIONS],
            host: [0; MAX_REGIONS],
        };
        for (i, r) in self.regions.iter().enumerate() {
            t.start[i] = r.guest_phys;
            t.end[i] = r.guest_phys + r.size;
            t.host[i] = r.host as usize;
        }
        t
    }
}

#[inline]
fn translate(addr: u64, len: u64, base: u64, size: u64, host: *mut u8) -> Option<*mut u8> {
    let off = addr.checked_sub(base)?;
    let end = off.checked_add(len)?;
    if end > size {
        return None;
    }
    // SAFETY: off + len <= size, inside the region's mapping.
    Some(unsafe { host.add(off as usize) })
}

/// Guest-physical to host translation with the regions in arrays and the last
/// region hit remembered, so that consecutive descriptors in the same region cost
/// two compares. Valid only while the `GuestMemory` it came from is alive (the
/// ring state that holds it also holds the `Arc<GuestMemory>`).
#[derive(Clone, Copy)]
pub struct FastTable {
    n: usize,
    start: [u64; MAX_REGIONS],
    end: [u64; MAX_REGIONS],
    host: [usize; MAX_REGIONS],
}

impl FastTable {
    pub const fn empty() -> FastTable {
        FastTable {
            n: 0,
            start: [0; MAX_REGIONS],
            end: [0; MAX_REGIONS],
            host: [0; MAX_REGIONS],
        }
    }

    /// Host address of `len` bytes at `gpa` if wholly inside one region; `hint` is the
    /// region tried first and is updated on a hit elsewhere.
    #[inline(always)]
    pub fn translate(&self, gpa: u64, len: u32, hint: &mut usize) -> Option<*mut u8> {
        let end = gpa.checked_add(len as u64)?;
        let h = *hint;
        if h < self.n && gpa >= self.start[h] && end <= self.end[h] {
            return Some((self.host[h] + (gpa - self.start[h]) as usize) as *mut u8);
        }
        self.search(gpa, end, hint)
    }

    /// The guest-physical address of host address `p`, if it lies in a region (dirty
    /// logging: the data path keeps host pointers, the log counts guest pages).
    #[inline]
    pub fn host_to_gpa(&self, p: *const u8) -> Option<u64> {
        let p = p as usize;
        (0..self.n).find_map(|i| {
            let off = p.checked_sub(self.host[i])? as u64;
            (off < self.end[i] - self.start[i]).then(|| self.start[i] + off)
        })
    }

    /// The other regions, out of line: the data path's loops then keep only the hinted
    /// region's bounds live, not the whole table.
    #[cold]
    #[inline(never)]
    fn search(&self, gpa: u64, end: u64, hint: &mut usize) -> Option<*mut u8> {
        for i in 0..self.n {
            if gpa >= self.start[i] && end <= self.end[i] {
                *hint = i;
                return Some((self.host[i] + (gpa - self.start[i]) as usize) as *mut u8);
            }
        }
        None
    }
}
