//! A guest's memory table (from SET_MEM_TABLE), mapped into this process.
//!
//! Each region is a shared mapping (vm-memory's `MmapRegion`) of a file descriptor
//! the frontend sent. Translation is checked: an address range is translated only
//! when it lies wholly inside one region, so nothing a guest names can reach
//! memory outside its own regions. The table is immutable once built; a new
//! SET_MEM_TABLE builds a new one, and the old one is unmapped when its last
//! `Arc` goes (after PMD threads passed a grace period, see `rcu`).

use std::fs::File;
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

/// Most regions a table may have (QEMU sends at most 8 without CONFIGURE_MEM_SLOTS).
pub const MAX_REGIONS: usize = 8;

/// One mapped region.
pub struct Region {
    pub guest_phys: u64,
    pub size: u64,
    pub user_addr: u64,
    host: *mut u8,
    _map: MmapRegion<()>,
}

/// A guest's memory table.
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the raw host pointers point into mappings owned by this table; the table
// itself is immutable after construction.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; shared access only reads the table.
unsafe impl Sync for GuestMemory {}

/// A region as described by the frontend.
#[derive(Clone, Copy, Debug)]
pub struct RegionDesc {
    pub guest_phys: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

impl GuestMemory {
    /// Maps the regions. Fails, mapping nothing, if any region is empty, overflows,
    /// overlaps another (in guest-physical or frontend-virtual space), or cannot be
    /// mapped from its file at its offset.
    pub fn map(descs: &[RegionDesc], files: Vec<File>) -> Result<GuestMemory, String> {
        if descs.is_empty() || descs.len() > MAX_REGIONS {
            return Err(format!(
                "memory table has {} regions (1..={MAX_REGIONS} allowed)",
                descs.len()
            ));
        }
        if files.len() != descs.len() {
            return Err(format!(
                "memory table has {} regions but {} file descriptors",
                descs.len(),
                files.len()
            ));
        }
        for (i, d) in descs.iter().enumerate() {
            if d.size == 0
                || d.guest_phys.checked_add(d.size).is_none()
                || d.user_addr.checked_add(d.size).is_none()
                || d.mmap_offset.checked_add(d.size).is_none()
                || d.size > isize::MAX as u64
            {
                return Err(format!("memory region {i} is empty or overflows: {d:?}"));
            }
            for (j, e) in descs.iter().enumerate().take(i) {
                let gp =
                    d.guest_phys < e.guest_phys + e.size && e.guest_phys < d.guest_phys + d.size;
                let ua = d.user_addr < e.user_addr + e.size && e.user_addr < d.user_addr + d.size;
                if gp || ua {
                    return Err(format!("memory regions {j} and {i} overlap"));
                }
            }
        }
        let mut regions = Vec::with_capacity(descs.len());
        for (d, f) in descs.iter().zip(files) {
            // Map from the start of the page that holds mmap_offset, as the offset of a
            // mapping must be page-aligned.
            let page = 4096u64;
            let start = d.mmap_offset & !(page - 1);
            let lead = d.mmap_offset - start;
            let len = (d.size + lead) as usize;
            // A mapping past the end of the file would fault (SIGBUS) on first access.
            // (A frontend that shrinks its file later can still do that; QEMU and DPDK
            // do not; memfd seals would be the full answer.)
            let flen = f
                .metadata()
                .map_err(|e| format!("memory region {d:?}: {e}"))?
                .len();
            if flen < d.mmap_offset + d.size {
                return Err(format!(
                    "memory region {d:?} ends past its file ({flen} bytes)"
                ));
            }
            let map = MmapRegion::<()>::from_file(FileOffset::new(f, start), len)
                .map_err(|e| format!("cannot map memory region {d:?}: {e}"))?;
            // SAFETY: lead < page <= len, so the pointer stays inside the mapping.
            let host = unsafe { map.as_ptr().add(lead as usize) };
            regions.push(Region {
                guest_phys: d.guest_phys,
                size: d.size,
                user_addr: d.user_addr,
                host,
                _map: map,
            });
        }
        Ok(GuestMemory { regions })
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
