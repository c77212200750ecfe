//! Hugepage-backed memory: one anonymous mapping made of 2 MiB pages, or of
//! ordinary pages when the host has none reserved and the policy allows it.

use std::fmt;
use std::ptr::NonNull;

/// What to do about hugepages (config key `mempool.hugepages`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugepagePolicy {
    /// Use hugepages; fall back to ordinary pages with one warning.
    Auto,
    /// Use hugepages or fail.
    Required,
    /// Use ordinary pages.
    Off,
}

pub const HUGEPAGE_SIZE: usize = 2 << 20;
/// Ordinary pages, when there are no hugepages (x86_64).
pub const SMALL_PAGE_SIZE: usize = 4096;

/// A zero-filled, page-locked-in-place memory area that is unmapped on drop.
pub struct HugeMem {
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
}

// SAFETY: HugeMem is a plain owned mapping; it hands out raw pointers only.
unsafe impl Send for HugeMem {}
// SAFETY: as above, shared references give no access to the memory by themselves.
unsafe impl Sync for HugeMem {}

#[derive(Debug)]
pub struct HugepageError {
    pub wanted: usize,
    pub errno: std::io::Error,
}

impl fmt::Display for HugepageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pages = self.wanted.div_ceil(HUGEPAGE_SIZE);
        write!(
            f,
            "cannot map {} bytes of 2 MiB hugepages ({}); reserve them with \
             `echo {} > /proc/sys/vm/nr_hugepages` (or more; see HugePages_Free in /proc/meminfo), \
             or set `hugepages = \"auto\"` in [mempool] to fall back to ordinary pages",
            self.wanted,
            self.errno,
            pages.max(64)
        )
    }
}

impl std::error::Error for HugepageError {}

impl HugeMem {
    /// Maps `len` bytes (rounded up to 2 MiB) according to `policy`.
    pub fn new(len: usize, policy: HugepagePolicy) -> Result<HugeMem, HugepageError> {
        let len = len.max(1).div_ceil(HUGEPAGE_SIZE) * HUGEPAGE_SIZE;
        if policy != HugepagePolicy::Off {
            match map(len, true) {
                Ok(ptr) => return Ok(HugeMem { ptr, len, huge: true }),
                Err(errno) if policy == HugepagePolicy::Required => {
                    return Err(HugepageError { wanted: len, errno })
                }
                Err(errno) => tracing::warn!(
                    "no hugepages for the mbuf pool ({errno}); falling back to ordinary 4 KiB pages, \
                     which costs TLB misses. Reserve {} hugepages with `echo N > /proc/sys/vm/nr_hugepages`",
                    len / HUGEPAGE_SIZE
                ),
            }
        }
        let ptr = map(len, false).map_err(|errno| HugepageError { wanted: len, errno })?;
        Ok(HugeMem {
            ptr,
            len,
            huge: false,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether the memory is made of hugepages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }
    /// The size of the pages the memory is made of (and aligned to).
    pub fn page_size(&self) -> usize {
        if self.huge {
            HUGEPAGE_SIZE
        } else {
            SMALL_PAGE_SIZE
        }
    }
}

fn map(len: usize, huge: bool) -> Result<NonNull<u8>, std::io::Error> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    if huge {
        flags |= libc::MAP_HUGETLB; // default hugepage size, 2 MiB on x86_64
    }
    // SAFETY: anonymous mapping with no address hint; the kernel picks a fresh range
    // that aliases nothing in this process.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(p as *mut u8).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))
}

impl Drop for HugeMem {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_maps_ordinary_pages() {
        let m = HugeMem::new(4096, HugepagePolicy::Off).unwrap();
        assert!(!m.is_huge());
        assert_eq!(m.len(), HUGEPAGE_SIZE);
    }

    #[test]
    fn auto_always_succeeds_and_reports_kind() {
        let free: usize = std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("HugePages_Free:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let m = HugeMem::new(HUGEPAGE_SIZE, HugepagePolicy::Auto).unwrap();
        // With none free we must have fallen back; with plenty free (more than concurrent
        // tests could take) we must have got one.
        if free == 0 {
            assert!(!m.is_huge());
        } else if free > 64 {
            assert!(m.is_huge(), "{free} hugepages free but none mapped");
        }
    }
}
