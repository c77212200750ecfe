//! Recovery from SIGBUS in guest memory.
//!
//! A frontend can shrink the file behind a guest memory region (`ftruncate`), punch
//! a hole in a hugetlbfs file when the hugepage pool is empty, or otherwise make a
//! page of its region impossible to fault in. The next access by a PMD thread then
//! raises SIGBUS, whose default action kills the process and every other guest's
//! networking with it.
//!
//! Guest mappings are registered here (a fixed table of slots, no allocation, so the
//! handler can read it). On SIGBUS at an address inside a registered range the
//! handler maps anonymous zero pages over that whole range (`MAP_FIXED | MAP_NORESERVE`,
//! a plain system call, which Linux allows in a signal handler; if the kernel refuses
//! that much, only the 2 MiB block around the fault), marks the slot poisoned and returns: the faulting
//! instruction runs again on the zero pages. The data path checks the poison flag
//! once per burst and stops the ring (`GuestError::MemoryGone`): frames read in that
//! burst are discarded, the port is marked broken and counted, and every other port
//! goes on. A SIGBUS anywhere else goes to the handler that was there before (Rust's
//! own, which resets to the default action): the process dies as it would have.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// Guest memory tables that can be registered at once (each port holds at most two:
/// the current one and one waiting out its grace period).
const SLOTS: usize = 1024;
/// Ranges in one slot (one per region of a memory table).
pub const RANGES: usize = 8;

struct Slot {
    used: AtomicBool,
    poisoned: AtomicBool,
    start: [AtomicUsize; RANGES],
    len: [AtomicUsize; RANGES],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    poisoned: AtomicBool::new(false),
    start: [const { AtomicUsize::new(0) }; RANGES],
    len: [const { AtomicUsize::new(0) }; RANGES],
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// The handler that was installed before ours (Rust's stack-overflow handler).
static mut PREVIOUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();

/// A registered set of guest mappings; unregistered on drop (after the mappings are
/// gone or about to go: the owner unmaps them after dropping this).
pub struct Guard {
    slot: usize,
}

/// Every slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

impl std::fmt::Display for TableFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "too many guest memory tables mapped at once ({SLOTS})")
    }
}

impl Guard {
    /// Registers up to [`RANGES`] mapped ranges (host address, length).
    pub fn register(ranges: &[(usize, usize)]) -> Result<Guard, TableFull> {
        assert!(ranges.len() <= RANGES, "at most {RANGES} ranges");
        install();
        for (i, s) in TABLE.iter().enumerate() {
            if s.used
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                s.poisoned.store(false, Ordering::SeqCst);
                // Start before length; the handler reads length first, so it never pairs
                // a new length with an old start.
                for (k, &(start, len)) in ranges.iter().enumerate() {
                    s.start[k].store(start, Ordering::SeqCst);
                    s.len[k].store(len, Ordering::SeqCst);
                }
                return Ok(Guard { slot: i });
            }
        }
        Err(TableFull)
    }

    /// Whether a SIGBUS hit one of these ranges (their contents are now zeros).
    #[inline(always)]
    pub fn poisoned(&self) -> bool {
        TABLE[self.slot].poisoned.load(Ordering::Relaxed)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &TABLE[self.slot];
        for k in 0..RANGES {
            s.len[k].store(0, Ordering::SeqCst);
            s.start[k].store(0, Ordering::SeqCst);
        }
        s.poisoned.store(false, Ordering::SeqCst);
        s.used.store(false, Ordering::Release);
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: zeroed sigactions are valid to fill in. The previous action is read
        // and stored in PREVIOUS before ours is installed, so the handler never reads
        // PREVIOUS while it is written. The handler only reads atomics, calls mmap and,
        // for foreign faults, the previous handler.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return;
            }
            PREVIOUS = Some(old);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// Maps anonymous zero pages over `[start, start+len)`; whether it worked.
///
/// # Safety
/// The range must be a guest mapping this process holds (registered).
unsafe fn zero_fill(start: usize, len: usize) -> bool {
    // SAFETY: as the caller promises; MAP_FIXED replaces only that range.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    p != libc::MAP_FAILED
}

/// The registered range holding `addr`, as (slot, start, len).
fn find(addr: usize) -> Option<(&'static Slot, usize, usize)> {
    for s in TABLE.iter() {
        if !s.used.load(Ordering::Acquire) {
            continue;
        }
        for k in 0..RANGES {
            let len = s.len[k].load(Ordering::SeqCst);
            let start = s.start[k].load(Ordering::SeqCst);
            if len != 0 && addr >= start && addr - start < len {
                return Some((s, start, len));
            }
        }
    }
    None
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; errno is
    // this thread's and restored before returning.
    let (code, addr, errno) = unsafe {
        (
            (*info).si_code,
            (*info).si_addr() as usize,
            *libc::__errno_location(),
        )
    };
    // Only a fault the kernel raised (si_code > 0) carries an address; a SIGBUS sent
    // with kill() must not zero anything.
    if code > 0 {
        if let Some((s, start, len)) = find(addr) {
            // The whole range, or if the kernel will not reserve that much, the 2 MiB
            // block around the fault (ranges are whole blocks of their files, so a
            // hugetlbfs range is 2 MiB aligned).
            let block = 2 << 20;
            let b0 = (addr & !(block - 1)).max(start);
            let b1 = ((addr & !(block - 1)) + block).min(start + len);
            // SAFETY: both ranges lie inside a registered guest mapping.
            if unsafe { zero_fill(start, len) || zero_fill(b0, b1 - b0) } {
                s.poisoned.store(true, Ordering::SeqCst);
                // SAFETY: restoring this thread's errno.
                unsafe { *libc::__errno_location() = errno };
                return;
            }
        }
    }
    // Not guest memory: what would have happened without us.
    // SAFETY: PREVIOUS was set before this handler was installed. Calling the previous
    // handler with the same arguments is what chaining means; SIG_DFL is restored so
    // that returning re-raises the fault with the default action.
    unsafe {
        let prev = std::ptr::addr_of!(PREVIOUS).read();
        match prev {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(old.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
            }
        }
    }
}
