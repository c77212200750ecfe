//! The driver (guest) side of a split or packed virtqueue in shared memory: what a
//! guest would write, for tests and benchmarks that play a guest — including one that
//! breaks the rules on purpose. Not used by the switch itself.

use super::mem::RegionDesc;
use super::virtq::RingAddrs;
use std::fs::File;
use std::os::fd::FromRawFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

/// Shared memory standing in for a guest's RAM: a memfd mapped here, with a
/// guest-physical base and a frontend-virtual base of its own.
pub struct DriverMem {
    file: File,
    map: MmapRegion<()>,
    /// Bytes at the start of the file that are *not* part of the guest region
    /// (to check that nothing outside the region is touched).
    pub outside: u64,
    pub size: u64,
    pub gpa_base: u64,
    pub uva_base: u64,
}

impl DriverMem {
    /// `outside` bytes of file precede the `size`-byte region.
    pub fn new(outside: u64, size: u64, gpa_base: u64, uva_base: u64) -> DriverMem {
        let name = c"vswitch-driver-mem";
        // SAFETY: memfd_create with a valid C string; the returned fd is owned below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(outside + size).expect("size memfd");
        let map = MmapRegion::<()>::from_file(
            FileOffset::new(file.try_clone().unwrap(), 0),
            (outside + size) as usize,
        )
        .expect("map memfd");
        DriverMem {
            file,
            map,
            outside,
            size,
            gpa_base,
            uva_base,
        }
    }

    /// The region as a frontend describes it in SET_MEM_TABLE.
    pub fn region(&self) -> RegionDesc {
        RegionDesc {
            guest_phys: self.gpa_base,
            size: self.size,
            user_addr: self.uva_base,
            mmap_offset: self.outside,
        }
    }

    pub fn file(&self) -> File {
        self.file.try_clone().expect("dup memfd")
    }

    fn ptr(&self, file_off: u64, len: usize) -> *mut u8 {
        assert!(
            file_off + len as u64 <= self.outside + self.size,
            "driver access out of the file"
        );
        // SAFETY: checked just above to lie inside the mapping.
        unsafe { self.map.as_ptr().add(file_off as usize) }
    }

    /// Writes bytes at an offset into the region (negative offsets are not possible;
    /// use `write_outside` for the bytes before it).
    pub fn write(&self, off: u64, data: &[u8]) {
        let p = self.ptr(self.outside + off, data.len());
        // SAFETY: p has data.len() bytes inside the mapping; memory shared with the switch is
        // only ever accessed through raw pointers.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let p = self.ptr(self.outside + off, len);
        let mut v = vec![0u8; len];
        // SAFETY: as in write.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
        v
    }
    /// Fills the bytes of the file before the region.
    pub fn fill_outside(&self, byte: u8) {
        let p = self.ptr(0, self.outside as usize);
        // SAFETY: the first `outside` bytes of the mapping.
        unsafe { std::ptr::write_bytes(p, byte, self.outside as usize) }
    }
    pub fn read_outside(&self) -> Vec<u8> {
        let p = self.ptr(0, self.outside as usize);
        let mut v = vec![0u8; self.outside as usize];
        // SAFETY: as in fill_outside.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), v.len()) };
        v
    }
    pub fn write_u16(&self, off: u64, v: u16) {
        let p = self.ptr(self.outside + off, 2) as *mut u16;
        // SAFETY: 2 bytes inside the mapping; callers keep ring fields 2-aligned.
        unsafe { std::ptr::write_volatile(p, v) }
    }
    pub fn read_u16(&self, off: u64) -> u16 {
        let p = self.ptr(self.outside + off, 2) as *const u16;
        // SAFETY: as in write_u16.
        unsafe { std::ptr::read_volatile(p) }
    }
    pub fn read_u32(&self, off: u64) -> u32 {
        u32::from_le_bytes(self.read(off, 4).try_into().unwrap())
    }
}

/// A split ring laid out in a `DriverMem`: descriptor table at `base`, avail ring
/// after it, used ring on the next 4 KiB boundary.
pub struct DriverRing<'a> {
    pub mem: &'a DriverMem,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
}

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

impl<'a> DriverRing<'a> {
    pub fn new(mem: &'a DriverMem, base: u64, size: u16) -> DriverRing<'a> {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64).div_ceil(4096) * 4096;
        DriverRing {
            mem,
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
        }
    }
    /// Ring addresses as the frontend sends them (its virtual addresses).
    pub fn addrs(&self) -> RingAddrs {
        let u = self.mem.uva_base;
        RingAddrs {
            desc: u + self.desc,
            avail: u + self.avail,
            used: u + self.used,
        }
    }
    /// Guest-physical address of an offset in the region.
    pub fn gpa(&self, off: u64) -> u64 {
        self.mem.gpa_base + off
    }
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(self.desc + 16 * i as u64, addr, len, flags, next)
    }
    /// Writes a descriptor anywhere (for indirect tables).
    pub fn write_desc_at(&self, off: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(off, &b);
    }
    /// Offers the chain at `head` and publishes the new avail index.
    pub fn push(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.mem.write_u16(self.avail + 4 + 2 * slot as u64, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem.write_u16(self.avail + 2, self.avail_idx);
    }
    /// Sets the avail index to anything (a malicious guest).
    pub fn set_avail_idx(&mut self, v: u16) {
        self.avail_idx = v;
        self.mem.write_u16(self.avail + 2, v);
    }
    pub fn set_avail_flags(&self, v: u16) {
        self.mem.write_u16(self.avail, v);
    }
    /// used_event (EVENT_IDX): interrupt me when used idx passes this.
    pub fn set_used_event(&self, v: u16) {
        self.mem.write_u16(self.avail + 4 + 2 * self.size as u64, v);
    }
    /// Whether a guest that moved the avail index from `old` to `new` kicks now, as
    /// Linux's `virtqueue_kick_prepare` decides: with EVENT_IDX by the device's
    /// avail_event (`vring_need_event`), else by VRING_USED_F_NO_NOTIFY.
    pub fn would_kick(&self, event_idx: bool, old: u16, new: u16) -> bool {
        if event_idx {
            let ev = self.mem.read_u16(self.used + 4 + 8 * self.size as u64);
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.used_flags() & 1 == 0
        }
    }
    pub fn used_idx(&self) -> u16 {
        self.mem.read_u16(self.used + 2)
    }
    pub fn used_flags(&self) -> u16 {
        self.mem.read_u16(self.used)
    }
    /// (id, len) of used element `i` (mod ring size).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let off = self.used + 4 + 8 * (i % self.size) as u64;
        (self.mem.read_u32(off), self.mem.read_u32(off + 4))
    }
}

/// Packed-ring flag bits (virtio 1.1): available and used, in the lap of a wrap
/// counter.
pub const F_AVAIL: u16 = 1 << 7;
pub const F_USED: u16 = 1 << 15;

/// A packed ring laid out in a `DriverMem`: descriptors at `base`, the driver's event
/// area after them, the device's 4 bytes further.
pub struct PackedDriver<'a> {
    pub mem: &'a DriverMem,
    pub size: u16,
    pub desc: u64,
    /// Next descriptor to make available, and the lap's wrap counter.
    pub next: u16,
    pub wrap: bool,
    /// Next descriptor to look for a used one at, and its lap.
    pub used_next: u16,
    pub used_wrap: bool,
    /// Descriptors each buffer id's chain took, for walking used descriptors.
    counts: std::collections::HashMap<u16, u16>,
}

impl<'a> PackedDriver<'a> {
    pub fn new(mem: &'a DriverMem, base: u64, size: u16) -> PackedDriver<'a> {
        PackedDriver {
            mem,
            size,
            desc: base,
            next: 0,
            wrap: true,
            used_next: 0,
            used_wrap: true,
            counts: Default::default(),
        }
    }
    /// Ring addresses as the frontend sends them: descriptors, driver event area (in
    /// `avail`), device event area (in `used`).
    pub fn addrs(&self) -> RingAddrs {
        let u = self.mem.uva_base + self.desc;
        let ev = 16 * self.size as u64;
        RingAddrs {
            desc: u,
            avail: u + ev,
            used: u + ev + 4,
        }
    }
    pub fn gpa(&self, off: u64) -> u64 {
        self.mem.gpa_base + off
    }
    fn write_desc(&self, i: u16, addr: u64, len: u32, id: u16, flags: u16) {
        let o = self.desc + 16 * i as u64;
        let mut b = [0u8; 14];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&id.to_le_bytes());
        self.mem.write(o, &b);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem.write_u16(o + 14, flags);
    }
    /// Makes `bufs` (region offset, length, flags such as `F_WRITE`) available as one
    /// chain with buffer id `id`, head last as a driver does.
    pub fn post(&mut self, id: u16, bufs: &[(u64, u32, u16)]) {
        let mut slots = Vec::new();
        for (k, &(off, len, fl)) in bufs.iter().enumerate() {
            let next = if k + 1 < bufs.len() { F_NEXT } else { 0 };
            let wrap_flags = if self.wrap { F_AVAIL } else { F_USED };
            slots.push((self.next, self.gpa(off), len, fl | next | wrap_flags));
            self.next += 1;
            if self.next == self.size {
                self.next = 0;
                self.wrap = !self.wrap;
            }
        }
        for &(i, addr, len, f) in slots.iter().rev() {
            self.write_desc(i, addr, len, id, f);
        }
        self.counts.insert(id, bufs.len() as u16);
    }
    /// Makes an indirect table at region offset `table` with `bufs` available as one
    /// chain (one descriptor in the ring).
    pub fn post_indirect(&mut self, id: u16, table: u64, bufs: &[(u64, u32, u16)]) {
        for (k, &(off, len, fl)) in bufs.iter().enumerate() {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&self.gpa(off).to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[14..16].copy_from_slice(&fl.to_le_bytes());
            self.mem.write(table + 16 * k as u64, &b);
        }
        self.post(id, &[(table, 16 * bufs.len() as u32, F_INDIRECT)]);
    }
    /// The next used descriptor, if the device wrote one: (id, len).
    pub fn take_used(&mut self) -> Option<(u16, u32)> {
        let o = self.desc + 16 * self.used_next as u64;
        let f = self.mem.read_u16(o + 14);
        let want = if self.used_wrap { F_AVAIL | F_USED } else { 0 };
        if f & (F_AVAIL | F_USED) != want {
            return None;
        }
        let (len, id) = (self.mem.read_u32(o + 8), self.mem.read_u16(o + 12));
        let n = self
            .counts
            .remove(&id)
            .expect("a used id the driver posted");
        let k = self.used_next + n;
        if k >= self.size {
            self.used_wrap = !self.used_wrap;
        }
        self.used_next = k % self.size;
        Some((id, len))
    }
    /// Writes the driver event area: offset and wrap counter, flags (0 enable, 1
    /// disable, 2 at a descriptor).
    pub fn set_driver_event(&self, off_wrap: u16, flags: u16) {
        let o = self.desc + 16 * self.size as u64;
        self.mem.write_u16(o, off_wrap);
        self.mem.write_u16(o + 2, flags);
    }
    /// The device event area's flags (0: kick me, 1: do not).
    pub fn device_event_flags(&self) -> u16 {
        self.mem.read_u16(self.desc + 16 * self.size as u64 + 6)
    }
}

/// A new eventfd holding `count`, as a frontend sends for kick and call. `blocking`
/// leaves O_NONBLOCK clear, as a hostile frontend would (a write then blocks once the
/// counter is full).
pub fn eventfd(count: u64, blocking: bool) -> File {
    let flags = libc::EFD_CLOEXEC | if blocking { 0 } else { libc::EFD_NONBLOCK };
    // SAFETY: eventfd(2) with valid flags; the returned fd is owned below.
    let fd = unsafe { libc::eventfd(0, flags) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    if count != 0 {
        use std::io::Write;
        (&f).write_all(&count.to_ne_bytes()).expect("load eventfd");
    }
    f
}

/// Reads (and so clears) an eventfd's counter; 0 when it was not signalled.
pub fn eventfd_take(f: &File) -> u64 {
    use std::os::fd::AsRawFd;
    let mut v = 0u64;
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    if unsafe { libc::poll(&mut p, 1, 0) } != 1 {
        return 0;
    }
    // SAFETY: reads 8 bytes into a local u64 from a descriptor we own.
    let n = unsafe { libc::read(f.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
    if n == 8 {
        v
    } else {
        0
    }
}
