//! Guest interrupts that cannot block the switch.
//!
//! A guest's call eventfd is the frontend's: it shares the open file description, so
//! it can clear O_NONBLOCK on it and load the counter to `u64::MAX - 1`, and the next
//! `write` then blocks forever. A PMD thread, or a control thread inside a grace
//! period, that wrote to it directly would stop every port it serves.
//!
//! So nothing but a port's own notifier thread ever writes to a guest's call fd. A
//! ring that wants to interrupt its guest sets the vring's pending flag and, if it
//! was not already set, writes 1 to the notifier's own wake eventfd (created here,
//! non-blocking, never shared: it cannot be made to block). The notifier thread
//! delivers pending interrupts with a non-blocking write (it sets O_NONBLOCK itself
//! before each write); a full counter drops the interrupt and counts it
//! (`irq_dropped`). If the frontend races to clear O_NONBLOCK and the write blocks
//! anyway, the port's control thread, which polls [`Notifier::watchdog`] every few
//! hundred milliseconds, interrupts the write with a signal (no `SA_RESTART`): it
//! fails with EINTR and is counted. The worst a guest can do is lose its own
//! interrupts.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a write to a guest's call fd may block before the watchdog interrupts it.
pub const WRITE_DEADLINE: Duration = Duration::from_millis(100);

/// A file descriptor the frontend sent for kick or call that is not an eventfd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotEventfd(pub String);

impl std::fmt::Display for NotEventfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "file descriptor is not an eventfd (it is {})", self.0)
    }
}

/// Accepts only an eventfd (the vhost-user spec's kick and call): anything else (a
/// pipe, a socket, a FUSE file) could block a write or read in ways an eventfd
/// cannot once O_NONBLOCK is set.
pub fn check_eventfd(f: &File) -> Result<(), NotEventfd> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| NotEventfd(format!("unreadable: {e}")))?;
    let s = link.to_string_lossy();
    if s == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(NotEventfd(s.into_owned()))
    }
}

/// One port's interrupt delivery: pending flags (set by PMD threads), the guest's
/// call fds (set by the control thread), and counters.
pub struct Notifier {
    name: String,
    pending: Box<[AtomicBool]>,
    /// Guest call fds by vring. Only the control thread and the notifier thread take
    /// this lock; PMD threads never do.
    calls: Mutex<Vec<Option<Arc<File>>>>,
    /// Our own wake eventfd: non-blocking and never shared, so a write cannot block.
    wake: File,
    stop: AtomicBool,
    /// When the notifier thread entered a write to a guest fd (ms since `epoch`, +1), 0 if not.
    writing_since: AtomicU64,
    epoch: Instant,
    /// The notifier thread's pthread, for the watchdog's signal (0 before it runs).
    pthread: AtomicU64,
    /// Interrupts written to the guest.
    pub sent: AtomicU64,
    /// Interrupts dropped: the guest's fd was full or its write was interrupted.
    pub dropped: AtomicU64,
}

/// How one ring raises its guest's interrupt.
#[derive(Clone)]
pub struct Irq {
    n: Arc<Notifier>,
    vring: usize,
}

impl Irq {
    pub fn new(n: Arc<Notifier>, vring: usize) -> Irq {
        assert!(vring < n.pending.len(), "vring {vring} out of range");
        Irq { n, vring }
    }

    /// Asks for an interrupt; never blocks. Coalesces with one already pending. A load
    /// and a store, not a locked swap: one PMD thread at a time raises a given ring,
    /// and a flag the notifier clears between the two is delivered by it anyway (it
    /// clears before it writes).
    #[inline]
    pub fn raise(&self) {
        let p = &self.n.pending[self.vring];
        if !p.load(Ordering::Acquire) {
            p.store(true, Ordering::SeqCst);
            self.n.wake();
        }
    }
}

fn new_eventfd() -> File {
    // SAFETY: eventfd(2) with valid flags; the returned fd is owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// The signal that interrupts a blocked write: a handler that does nothing, installed
/// without SA_RESTART so the write returns EINTR.
fn interrupt_signal() -> libc::c_int {
    static INSTALL: Once = Once::new();
    let sig = libc::SIGRTMIN() + 2;
    INSTALL.call_once(|| {
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
        // async-signal-safe function that does nothing; flags exclude SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    });
    sig
}

impl Notifier {
    /// A notifier for `vrings` rings, without a thread (see [`NotifierThread`]); tests
    /// call [`Notifier::deliver`] themselves.
    pub fn new(name: &str, vrings: usize) -> Arc<Notifier> {
        interrupt_signal();
        Arc::new(Notifier {
            name: name.to_string(),
            pending: (0..vrings).map(|_| AtomicBool::new(false)).collect(),
            calls: Mutex::new(vec![None; vrings]),
            wake: new_eventfd(),
            stop: AtomicBool::new(false),
            writing_since: AtomicU64::new(0),
            epoch: Instant::now(),
            pthread: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<File>>>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or clears) vring `i`'s call fd; later interrupts go there.
    pub fn set_call(&self, i: usize, f: Option<Arc<File>>) {
        if let Some(c) = self.calls().get_mut(i) {
            *c = f;
        }
    }

    /// Forgets every call fd (the frontend went away), after delivering what was pending.
    pub fn clear_calls(&self) {
        self.wait_delivered(0..self.pending.len());
        for i in 0..self.pending.len() {
            self.set_call(i, None);
        }
    }

    /// Whether vring `i` has a call fd.
    pub fn has_call(&self, i: usize) -> bool {
        self.calls().get(i).is_some_and(|c| c.is_some())
    }

    fn wake(&self) {
        // Our own non-blocking eventfd: a full counter (never in practice) only means a
        // wake-up is already due.
        let _ = (&self.wake).write(&1u64.to_ne_bytes());
    }

    /// Delivers every pending interrupt, each with one non-blocking write.
    pub fn deliver(&self) {
        for i in 0..self.pending.len() {
            if !self.pending[i].load(Ordering::Acquire) {
                continue;
            }
            // The fd is taken under the lock before the flag is cleared: once `drain`
            // sees the flag clear, a `set_call` can no longer take this interrupt's fd.
            let call = {
                let calls = self.calls();
                if !self.pending[i].swap(false, Ordering::AcqRel) {
                    continue;
                }
                calls.get(i).cloned().flatten()
            };
            if let Some(f) = call {
                self.write_call(i, &f);
            }
        }
    }

    /// Waits (at most `WRITE_DEADLINE` twice over) until vring `i` has no interrupt
    /// pending, so that it goes to the call fd it was raised for before that changes.
    pub fn drain(&self, i: usize) {
        self.wait_delivered(i..i + 1);
    }

    fn wait_delivered(&self, rings: std::ops::Range<usize>) {
        let t0 = Instant::now();
        let pending = || {
            self.pending[rings.clone()]
                .iter()
                .any(|p| p.load(Ordering::Acquire))
        };
        while pending() && t0.elapsed() < 2 * WRITE_DEADLINE {
            if self.pthread.load(Ordering::SeqCst) == 0 {
                self.deliver(); // no thread (Session, tests): deliver here
            }
            self.watchdog();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn write_call(&self, i: usize, f: &File) {
        let fd = f.as_raw_fd();
        // SAFETY: fcntl on a descriptor `f` keeps open; no pointers.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        let since = self.epoch.elapsed().as_millis() as u64 + 1;
        self.writing_since.store(since, Ordering::SeqCst);
        let one = 1u64;
        // SAFETY: writes 8 bytes from a local to a descriptor `f` keeps open.
        let n = unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
        self.writing_since.store(0, Ordering::SeqCst);
        if n == 8 {
            self.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            let e = std::io::Error::last_os_error();
            let d = self.dropped.fetch_add(1, Ordering::Relaxed);
            if d.is_power_of_two() || d == 0 {
                tracing::warn!(port = %self.name, vring = i, dropped = d + 1,
                    "guest interrupt dropped: its call eventfd is full or blocked ({e})");
            }
        }
    }

    /// Called by the port's control thread every few hundred milliseconds: interrupts
    /// a write to a guest's fd that has blocked longer than [`WRITE_DEADLINE`].
    pub(crate) fn watchdog(&self) {
        let since = self.writing_since.load(Ordering::SeqCst);
        if since == 0 {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let t = self.pthread.load(Ordering::SeqCst);
        if now.saturating_sub(since) > WRITE_DEADLINE.as_millis() as u64 && t != 0 {
            // SAFETY: t is the notifier thread's pthread_t, not yet joined: NotifierThread
            // clears `pthread` before it joins, and the watchdog runs only on the port's
            // control thread (joined before NotifierThread is dropped) or in that drop.
            unsafe { libc::pthread_kill(t as libc::pthread_t, interrupt_signal()) };
        }
    }
}

/// The thread that delivers a port's interrupts. Dropping it stops and joins it.
pub struct NotifierThread {
    n: Arc<Notifier>,
    thread: Option<JoinHandle<()>>,
}

impl NotifierThread {
    pub fn spawn(n: Arc<Notifier>) -> std::io::Result<NotifierThread> {
        let n2 = n.clone();
        let thread = std::thread::Builder::new()
            .name(format!("irq-{}", n.name))
            .spawn(move || run(&n2))?;
        n.pthread
            .store(thread.as_pthread_t() as u64, Ordering::SeqCst);
        Ok(NotifierThread {
            n,
            thread: Some(thread),
        })
    }
}

fn run(n: &Notifier) {
    let mut p = libc::pollfd {
        fd: n.wake.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !n.stop.load(Ordering::SeqCst) {
        // SAFETY: one valid pollfd; bounded timeout so `stop` is seen.
        unsafe { libc::poll(&mut p, 1, 200) };
        // Clear the wake counter (non-blocking: it may already be 0).
        let _ = std::io::Read::read(&mut &n.wake, &mut [0u8; 8]);
        n.deliver();
    }
}

impl Drop for NotifierThread {
    fn drop(&mut self) {
        self.n.stop.store(true, Ordering::SeqCst);
        self.n.wake();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                self.n.watchdog();
                std::thread::sleep(Duration::from_millis(10));
            }
            self.n.pthread.store(0, Ordering::SeqCst);
            let _ = t.join();
        }
    }
}
