//! Letting an idle PMD thread sleep: a wait of at most a given time that ends at once
//! when a port's file descriptor has frames (a tap device, an AF_PACKET or AF_XDP
//! socket, a vhost-user guest's kick eventfd once the ring asked for kicks), and the
//! thread's timer slack, which bounds how late such a wait ends.
//!
//! A busy-polling thread holds its core whether or not frames come; on a host whose
//! cores are shared (the guests' vCPUs, the stacks behind tap ports), an idle PMD
//! thread that sleeps gives that core back. A queue without a descriptor to wait on
//! is seen again when the wait times out, so the longest wait bounds the latency a
//! sleep adds to it.

use std::os::fd::RawFd;
use std::time::Duration;

/// Most descriptors one thread waits on: ports beyond these still get polled, after
/// each wait, but do not end one early.
pub const MAX_WAKE_FDS: usize = 256;

/// One PMD thread's wait set: the descriptors whose readiness ends a sleep.
/// Allocated once, with room for [`MAX_WAKE_FDS`]; [`WakeSet::set`] fills it without
/// allocating, so the PMD thread can take up a new poll plan's descriptors.
pub struct WakeSet {
    fds: Vec<libc::pollfd>,
}

/// What an rx queue offers a PMD thread about to sleep (`Port::arm_wake`).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Wake {
    /// Readable when the queue has frames: wait on it (then `Port::disarm_wake`).
    Fd(RawFd),
    /// Frames came while it was being armed: do not sleep (nothing is armed).
    Pending,
    /// Nothing to wait on: the queue is seen when the wait times out.
    Timeout,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Woken {
    /// A descriptor became readable.
    Ready,
    /// The time ran out (or a signal came).
    Timeout,
}

impl Default for WakeSet {
    fn default() -> WakeSet {
        WakeSet::new()
    }
}

impl WakeSet {
    pub fn new() -> WakeSet {
        WakeSet {
            fds: Vec::with_capacity(MAX_WAKE_FDS),
        }
    }

    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Adds a descriptor, unless the set is full (then returns false). The caller
    /// keeps it open while it may wait on this set.
    pub fn push(&mut self, fd: RawFd) -> bool {
        if self.fds.len() == MAX_WAKE_FDS {
            return false;
        }
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        true
    }

    /// Whether descriptor `i` (in `push` order) was readable when the last wait ended.
    pub fn ready(&self, i: usize) -> bool {
        self.fds
            .get(i)
            .is_some_and(|p| p.revents & libc::POLLIN != 0)
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Sleeps until a descriptor is readable or `max` has passed (`ppoll`: nanosecond
    /// timeouts, unlike `poll`). A wait that an error condition ended (POLLERR, which
    /// `ppoll` reports unasked, with no POLLIN), or an error of the call (none is
    /// expected: the set is valid and bounded), counts as a timeout.
    pub fn wait(&mut self, max: Duration) -> Woken {
        let ts = libc::timespec {
            tv_sec: max.as_secs() as libc::time_t,
            tv_nsec: max.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a live array of `len` pollfd structs the kernel may write
        // `revents` into; `ts` outlives the call; no signal mask is passed.
        let r = unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if r > 0 && (0..self.fds.len()).any(|i| self.ready(i)) {
            Woken::Ready
        } else {
            Woken::Timeout
        }
    }
}

/// Reads an eventfd's counter down to zero without ever blocking, whatever the fd's
/// flags (a frontend can clear O_NONBLOCK on the file it shares with us): a
/// `preadv2` with `RWF_NOWAIT`. Returns false if the kernel refuses that read (the
/// caller then stops waiting on this fd).
pub fn drain_eventfd(fd: RawFd) -> bool {
    let mut v = 0u64;
    let iov = libc::iovec {
        iov_base: &mut v as *mut u64 as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: one iovec over a local u64, borrowed for the call; offset -1 reads at the
    // current position (an eventfd has none).
    let r = unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    r == 8 || (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN))
}

/// Sets the calling thread's timer slack: how much later than asked the kernel may
/// end its timed waits (50 µs by default, far above the waits of a PMD thread).
pub fn set_timer_slack(ns: u64) -> std::io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread.
    let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    #[test]
    fn a_wait_times_out_without_ready_descriptors_and_ends_on_one() {
        let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut set = WakeSet::new();
        assert!(set.push(r.as_raw_fd()));
        let t = Instant::now();
        assert_eq!(set.wait(Duration::from_millis(20)), Woken::Timeout);
        assert!(t.elapsed() >= Duration::from_millis(20));
        w.write_all(b"x").unwrap();
        assert_eq!(set.wait(Duration::from_secs(10)), Woken::Ready);
        assert!(set.ready(0));
    }

    #[test]
    fn an_eventfd_drains_without_blocking_even_in_blocking_mode() {
        let f = crate::vhost::driver::eventfd(3, true);
        assert!(drain_eventfd(f.as_raw_fd()));
        assert_eq!(crate::vhost::driver::eventfd_take(&f), 0, "not drained");
        // Empty and blocking: must return at once.
        assert!(drain_eventfd(f.as_raw_fd()));
    }

    #[test]
    fn the_set_keeps_at_most_its_bound() {
        let mut set = WakeSet::new();
        let cap = set.fds.capacity();
        let pushed = (0..MAX_WAKE_FDS + 10).filter(|_| set.push(0)).count();
        assert_eq!(pushed, MAX_WAKE_FDS);
        assert_eq!(set.len(), MAX_WAKE_FDS);
        assert_eq!(set.fds.capacity(), cap, "filling the set allocated");
    }
}
