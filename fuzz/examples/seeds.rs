//! Writes the seed inputs of the fuzz targets into `fuzz/corpus/<target>/seed-*`:
//! valid rings (so the fuzzer starts from the paths a real guest takes), the example
//! configurations, and a few frames.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (from the repository root).

use std::fs;
use std::path::{Path, PathBuf};
use vswitch_fuzz::protocol::{self, req, FdKind, Msg};
use vswitch_fuzz::virtq::{
    encode, F_CALL, F_EVENT_IDX, F_HDR10, F_INDIRECT, F_MRG_RXBUF, F_OFFLOAD, F_TWO_REGIONS, GPA,
    REGION,
};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_IND: u16 = 4;

/// Guest memory being laid out for a seed: a ring of `size` entries with its
/// descriptor table at `desc`, avail ring at `avail` and used ring at `used`.
struct Image {
    mem: Vec<u8>,
    size: u16,
    desc: u16,
    avail: u16,
    avail_idx: u16,
}

/// The layout of rings up to 32 entries.
const DESC: u16 = 0;
const AVAIL: u16 = 512;
const USED: u16 = 1024;
const BUF: u64 = 2048;

impl Image {
    fn new(size: u16, len: usize) -> Image {
        Image::at(size, len, DESC, AVAIL)
    }
    fn at(size: u16, len: usize, desc: u16, avail: u16) -> Image {
        Image {
            mem: vec![0; len],
            size,
            desc,
            avail,
            avail_idx: 0,
        }
    }
    fn put(&mut self, off: u64, b: &[u8]) {
        let off = off as usize;
        if self.mem.len() < off + b.len() {
            self.mem.resize(off + b.len(), 0);
        }
        self.mem[off..off + b.len()].copy_from_slice(b);
    }
    fn desc_at(&mut self, off: u64, addr_off: u64, len: u32, flags: u16, next: u16) {
        let mut b = Vec::new();
        b.extend_from_slice(&(GPA + addr_off).to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        self.put(off, &b);
    }
    fn desc(&mut self, i: u16, addr_off: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(self.desc as u64 + 16 * i as u64, addr_off, len, flags, next);
    }
    fn push(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.put(self.avail as u64 + 4 + 2 * slot as u64, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = self.avail_idx;
        self.put(self.avail as u64 + 2, &idx.to_le_bytes());
    }
    /// A 12-byte zero header and a frame of `n` bytes at `off`; returns the length.
    fn frame(&mut self, off: u64, n: usize, tag: u8) -> u32 {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0]);
        f.resize(12 + n, tag);
        self.put(off, &f);
        f.len() as u32
    }
}

fn seed(dir: &Path, target: &str, name: &str, data: &[u8]) {
    // Guest memory past the input is zero: trailing zeros need not be stored.
    let data = if target.starts_with("virtq") {
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &data[..end]
    } else {
        data
    };
    let d = dir.join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(format!("seed-{name}")), data).unwrap();
}

fn log2(n: u16) -> u8 {
    n.trailing_zeros() as u8
}

fn dequeue_seeds(dir: &Path) {
    let t = "virtq_dequeue";
    // Eight one-descriptor frames; two bursts, the guest then offers more.
    let mut im = Image::new(32, 4096);
    for i in 0..8u16 {
        let off = BUF + 128 * i as u64;
        let len = im.frame(off, 60, i as u8);
        im.desc(i, off, len, 0, 0);
        im.push(i);
    }
    let ops = [0x04, 0x1f, 0x80 | 0x03, 0x1f];
    seed(
        dir,
        t,
        "simple",
        &encode(0, log2(32), 0, DESC, AVAIL, USED, &ops, &im.mem),
    );
    let f = F_EVENT_IDX | F_MRG_RXBUF | F_INDIRECT | F_CALL;
    seed(
        dir,
        t,
        "simple-features",
        &encode(f, log2(32), 0, DESC, AVAIL, USED, &ops, &im.mem),
    );
    seed(
        dir,
        t,
        "simple-offloads",
        &encode(f | F_OFFLOAD, log2(32), 0, DESC, AVAIL, USED, &ops, &im.mem),
    );

    // Header and frame split over a chain; a chain through an indirect table.
    let mut im = Image::new(16, 4096);
    im.frame(BUF, 100, 7);
    im.desc(0, BUF, 12, F_NEXT, 1);
    im.desc(1, BUF + 12, 50, F_NEXT, 2);
    im.desc(2, BUF + 62, 64, 0, 0);
    im.push(0);
    let table = 3072u64;
    im.frame(BUF + 512, 200, 9);
    im.desc_at(table, BUF + 512, 12, F_NEXT, 1);
    im.desc_at(table + 16, BUF + 524, 200, 0, 0);
    im.desc(3, table, 32, F_IND, 0);
    im.push(3);
    let f = F_INDIRECT | F_MRG_RXBUF;
    seed(
        dir,
        t,
        "chains",
        &encode(f, log2(16), 0, DESC, AVAIL, USED, &[0x1f, 0x1f], &im.mem),
    );

    // Two regions: one frame in the second, one crossing from the first into it.
    let mut im = Image::new(8, 4096);
    let off = REGION + 256;
    let len = im.frame(off, 64, 1);
    im.desc(0, off, len, 0, 0);
    im.push(0);
    let off = REGION - 40;
    let len = im.frame(off, 64, 2);
    im.desc(1, off, len, 0, 0);
    im.push(1);
    let f = F_TWO_REGIONS | F_EVENT_IDX | F_CALL;
    seed(
        dir,
        t,
        "two-regions",
        &encode(f, log2(8), 0, DESC, AVAIL, USED, &[0x01, 0x01], &im.mem),
    );

    // More frames than the pool has mbufs for, held across bursts (bit 6 clear).
    let (desc, avail, used) = (0u16, 4096u16, 6144u16);
    let mut im = Image::at(256, 12288, desc, avail);
    for i in 0..200u16 {
        let off = 8448 + 16 * i as u64;
        im.put(off, &[0u8; 16]);
        im.desc(i, off, 16, 0, 0);
        im.push(i);
    }
    seed(
        dir,
        t,
        "pool-dry",
        &encode(0, log2(256), 0, desc, avail, used, &[0x1f; 8], &im.mem),
    );
}

fn enqueue_seeds(dir: &Path) {
    let t = "virtq_enqueue";
    // Six writable 2 KiB buffers.
    let mut im = Image::new(32, 2048);
    for i in 0..6u16 {
        im.desc(i, BUF + 2048 * i as u64, 2048, F_WRITE, 0);
        im.push(i);
    }
    let ops = [0x03, 0x20 | 0x01, 0x80 | 0x02];
    seed(
        dir,
        t,
        "simple",
        &encode(0, log2(32), 0, DESC, AVAIL, USED, &ops, &im.mem),
    );
    seed(
        dir,
        t,
        "simple-hdr10",
        &encode(
            F_HDR10 | F_CALL,
            log2(32),
            0,
            DESC,
            AVAIL,
            USED,
            &ops,
            &im.mem,
        ),
    );

    // Mergeable buffers: 256-byte buffers, frames spread over several.
    let mut im = Image::new(32, 2048);
    for i in 0..24u16 {
        im.desc(i, BUF + 256 * i as u64, 256, F_WRITE, 0);
        im.push(i);
    }
    let f = F_MRG_RXBUF | F_EVENT_IDX | F_CALL;
    let ops = [0x03, 0x40 | 0x03, 0x20, 0x80 | 0x07];
    seed(
        dir,
        t,
        "mergeable",
        &encode(f, log2(32), 0, DESC, AVAIL, USED, &ops, &im.mem),
    );

    // A chain of writable descriptors and an indirect one.
    let mut im = Image::new(16, 4096);
    im.desc(0, BUF, 12, F_WRITE | F_NEXT, 1);
    im.desc(1, BUF + 64, 1600, F_WRITE, 0);
    im.push(0);
    let table = 3072u64;
    im.desc_at(table, BUF + 2048, 100, F_WRITE | F_NEXT, 1);
    im.desc_at(table + 16, BUF + 4096, 2000, F_WRITE, 0);
    im.desc(2, table, 32, F_IND, 0);
    im.push(2);
    let f = F_INDIRECT;
    seed(
        dir,
        t,
        "chains",
        &encode(f, log2(16), 0, DESC, AVAIL, USED, &[0x41, 0x01], &im.mem),
    );

    // Two regions, a buffer across their boundary.
    let mut im = Image::new(8, 2048);
    im.desc(0, REGION - 100, 2048, F_WRITE, 0);
    im.push(0);
    im.desc(1, REGION + 100, 2048, F_WRITE, 0);
    im.push(1);
    let f = F_TWO_REGIONS | F_MRG_RXBUF;
    seed(
        dir,
        t,
        "two-regions",
        &encode(f, log2(8), 0, DESC, AVAIL, USED, &[0x21, 0x01], &im.mem),
    );
}

fn config_seeds(dir: &Path, root: &Path) {
    for e in fs::read_dir(root.join("configs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = fs::read_to_string(&p).unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            seed(dir, "config", &name, text.as_bytes());
            // The same with sockets in a directory that exists, so that the whole
            // file is validated.
            let moved = text.replace("/tmp/vswitch/", "/tmp/");
            seed(dir, "config", &format!("{name}-tmp"), moved.as_bytes());
        }
    }
}

/// A packed descriptor at slot `i` of a ring at offset 0: buffer at guest offset
/// `addr_off`, made available in the first lap (AVAIL set, USED clear).
fn packed_desc(im: &mut Image, i: u16, addr_off: u64, len: u32, id: u16, flags: u16) {
    let mut b = Vec::new();
    b.extend_from_slice(&(GPA + addr_off).to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(flags | 1 << 7).to_le_bytes());
    im.put(16 * i as u64, &b);
}

fn packed_seeds(dir: &Path) {
    // Rings of 16 at offset 0; driver event area after them (256), device event at 260.
    let (desc, drv, dev) = (0u16, 256u16, 260u16);
    let base = 0x8000;
    let f = F_EVENT_IDX | F_MRG_RXBUF | F_INDIRECT | F_CALL;
    // Transmit: single descriptors, a two-descriptor chain, an indirect table.
    let mut im = Image::new(16, 4096);
    for i in 0..6u16 {
        let off = BUF + 128 * i as u64;
        let len = im.frame(off, 60, i as u8);
        packed_desc(&mut im, i, off, len, 20 + i, 0);
    }
    im.frame(BUF + 1024, 100, 7);
    packed_desc(&mut im, 6, BUF + 1024, 12, 30, F_NEXT);
    packed_desc(&mut im, 7, BUF + 1036, 100, 30, 0);
    let table = 3072u64;
    im.frame(BUF + 1536, 200, 9);
    for (k, (off, len)) in [(BUF + 1536, 12u32), (BUF + 1548, 200)].iter().enumerate() {
        let mut b = Vec::new();
        b.extend_from_slice(&(GPA + off).to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&[0u8; 4]);
        im.put(table + 16 * k as u64, &b);
    }
    packed_desc(&mut im, 8, table, 32, 31, F_IND);
    let ops = [0x04, 0x1f, 0x1f];
    for (name, flags) in [("simple", 0), ("features", f), ("offloads", f | F_OFFLOAD)] {
        let data = encode(flags, log2(16), base, desc, drv, dev, &ops, &im.mem);
        seed(dir, "packed_dequeue", name, &data);
    }
    // Receive: writable 2 KiB buffers, and small ones a frame merges across.
    let mut im = Image::new(16, 4096);
    for i in 0..4u16 {
        packed_desc(&mut im, i, BUF + 2048 * i as u64, 2048, i, F_WRITE);
    }
    for i in 4..12u16 {
        packed_desc(&mut im, i, BUF + 8192 + 64 * i as u64, 64, i, F_WRITE);
    }
    let ops = [0x03, 0x20 | 0x01, 0x02];
    for (name, flags) in [("simple", 0), ("features", f), ("offloads", f | F_OFFLOAD)] {
        let data = encode(flags, log2(16), base, desc, drv, dev, &ops, &im.mem);
        seed(dir, "packed_enqueue", name, &data);
    }
}

fn frame_seeds(dir: &Path) {
    let mut untagged = vec![60u8];
    untagged.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0]);
    untagged.resize(61, 0);
    let mut tagged = vec![64u8];
    tagged.extend_from_slice(&[0xff; 6]);
    tagged.extend_from_slice(&[2, 0, 0, 0, 0, 3, 0x81, 0, 0x20, 42, 8, 0]);
    tagged.resize(65, 0);
    let runt = [10u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let cut_tag = [
        16u8, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0, 0x0f, 0xff,
    ];
    seed(dir, "frame", "untagged", &untagged);
    seed(dir, "frame", "tagged", &tagged);
    seed(dir, "frame", "runt", &runt);
    seed(dir, "frame", "cut-tag", &cut_tag);
    let all: Vec<u8> = [&untagged[..], &tagged, &runt, &cut_tag, &untagged].concat();
    seed(dir, "frame", "sequence", &all);
}

/// vhost-user message bodies.
fn u64_body(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}
fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = [index.to_le_bytes(), 0u32.to_le_bytes()].concat();
    for v in [desc, used, avail, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}
/// SET_MEM_TABLE of (guest_phys, size, user_addr, mmap_offset) regions.
fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut b = [(regions.len() as u32).to_le_bytes(), 0u32.to_le_bytes()].concat();
    for &(g, s, u, o) in regions {
        for v in [g, s, u, o] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

const MEM_GPA: u64 = 0x1_0000_0000;
const MEM_UVA: u64 = 0x7f00_0000_0000;
/// Guest memory of the seeds: 64 KiB, rings of 256 entries at 0 and 0x4000 (and, with
/// two queue pairs, 0x8000 and 0xc000).
const MEM_PAGES: u8 = 16;
const VERSION_1: u64 = 1 << 32;
const MRG_RXBUF: u64 = 1 << 15;
const EVENT_IDX: u64 = 1 << 29;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const PROTO_MQ: u64 = 1;
const PROTO_REPLY_ACK: u64 = 1 << 3;
const PROTO_LOG_SHMFD: u64 = 1 << 1;
const PROTO_RARP: u64 = 1 << 2;
const LOG_ALL: u64 = 1 << 26;

fn ring_msgs(index: u32, call_first: bool) -> Vec<Msg> {
    let base = MEM_UVA + 0x4000 * index as u64;
    let call = Msg::new(
        req::SET_VRING_CALL,
        &u64_body(index as u64),
        &[FdKind::Eventfd],
    );
    let mut v = Vec::new();
    if call_first {
        v.push(call.clone());
    }
    v.push(Msg::new(req::SET_VRING_NUM, &state(index, 256), &[]));
    v.push(Msg::new(req::SET_VRING_BASE, &state(index, 0), &[]));
    v.push(Msg::new(
        req::SET_VRING_ADDR,
        &vring_addr(index, base, base + 8192, base + 4096),
        &[],
    ));
    if !call_first {
        v.push(call);
    }
    v.push(Msg::new(
        req::SET_VRING_KICK,
        &u64_body(index as u64),
        &[FdKind::Eventfd],
    ));
    v
}

fn protocol_seeds(dir: &Path) {
    let t = "vhost_protocol";
    let table = Msg::new(
        req::SET_MEM_TABLE,
        &mem_table(&[(MEM_GPA, 64 << 10, MEM_UVA, 0)]),
        &[FdKind::Memfd { pages: MEM_PAGES }],
    );
    // As tests/common/frontend.rs sets up a valid device.
    let mut m = vec![
        Msg::new(req::SET_OWNER, &[], &[]),
        Msg::new(req::SET_FEATURES, &u64_body(VERSION_1 | MRG_RXBUF), &[]),
        table.clone(),
    ];
    m.extend(ring_msgs(0, false));
    m.extend(ring_msgs(1, false));
    seed(dir, t, "device", &protocol::encode(false, &m));

    // QEMU 10's order: features and protocol features asked first, rings enabled
    // before SET_FEATURES; then taken down (GET_VRING_BASE) and the owner reset.
    let mut m = vec![
        Msg::new(req::GET_FEATURES, &[], &[]),
        Msg::new(req::GET_PROTOCOL_FEATURES, &[], &[]),
        Msg::new(
            req::SET_PROTOCOL_FEATURES,
            &u64_body(PROTO_MQ | PROTO_REPLY_ACK),
            &[],
        ),
        Msg::new(req::GET_QUEUE_NUM, &[], &[]),
        Msg::new(req::SET_OWNER, &[], &[]),
        Msg::new(req::SET_VRING_ENABLE, &state(0, 1), &[]),
        Msg::new(req::SET_VRING_ENABLE, &state(1, 1), &[]),
        Msg::new(
            req::SET_FEATURES,
            &u64_body(VERSION_1 | MRG_RXBUF | EVENT_IDX | PROTOCOL_FEATURES),
            &[],
        ),
        table.clone(),
    ];
    m.extend(ring_msgs(0, false));
    m.extend(ring_msgs(1, false));
    m.push(Msg::new(req::GET_VRING_BASE, &state(0, 0), &[]));
    m.push(Msg::new(req::GET_VRING_BASE, &state(1, 0), &[]));
    m.push(Msg::new(req::RESET_OWNER, &[], &[]));
    seed(dir, t, "qemu", &protocol::encode(false, &m));

    // A live migration as QEMU drives it on the source: the log area, logging on
    // (features, then each ring's address with VHOST_VRING_F_LOG), the rings stopped;
    // and the destination's announcement.
    let mut m = vec![
        Msg::new(req::SET_OWNER, &[], &[]),
        Msg::new(
            req::SET_PROTOCOL_FEATURES,
            &u64_body(PROTO_LOG_SHMFD | PROTO_RARP),
            &[],
        ),
        Msg::new(
            req::SET_FEATURES,
            &u64_body(VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES),
            &[],
        ),
        table.clone(),
    ];
    m.extend(ring_msgs(0, false));
    m.extend(ring_msgs(1, false));
    m.push(Msg::new(req::SET_VRING_ENABLE, &state(0, 1), &[]));
    m.push(Msg::new(req::SET_VRING_ENABLE, &state(1, 1), &[]));
    m.push(Msg::new(
        req::SET_LOG_BASE,
        &[u64_body(4096), u64_body(0)].concat(),
        &[FdKind::Memfd { pages: 1 }],
    ));
    m.push(Msg::new(
        req::SET_FEATURES,
        &u64_body(VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES | LOG_ALL),
        &[],
    ));
    for i in 0..2u32 {
        let base = MEM_UVA + 0x4000 * i as u64;
        let mut a = vring_addr(i, base, base + 8192, base + 4096);
        a[4..8].copy_from_slice(&1u32.to_le_bytes()); // VHOST_VRING_F_LOG
        a[32..40].copy_from_slice(&(MEM_GPA + 0x4000 * i as u64 + 8192).to_le_bytes());
        m.push(Msg::new(req::SET_VRING_ADDR, &a, &[]));
    }
    m.push(Msg::new(req::GET_VRING_BASE, &state(0, 0), &[]));
    m.push(Msg::new(req::GET_VRING_BASE, &state(1, 0), &[]));
    m.push(Msg::new(req::SEND_RARP, &u64_body(0x0a00_0000_5452), &[]));
    seed(dir, t, "migration", &protocol::encode(false, &m));

    // DPDK virtio-user's order: calls before features and memory, replies asked for
    // (REPLY_ACK), two queue pairs, a second memory table under running rings.
    let mut m = vec![
        Msg::new(req::GET_FEATURES, &[], &[]),
        Msg::new(req::SET_OWNER, &[], &[]),
        Msg::new(req::GET_PROTOCOL_FEATURES, &[], &[]),
        Msg::new(
            req::SET_PROTOCOL_FEATURES,
            &u64_body(PROTO_MQ | PROTO_REPLY_ACK),
            &[],
        ),
        Msg::new(req::GET_QUEUE_NUM, &[], &[]),
    ];
    for i in 0..4u32 {
        m.push(Msg::new(
            req::SET_VRING_CALL,
            &u64_body(i as u64),
            &[FdKind::Eventfd],
        ));
    }
    m.push(Msg::new(
        req::SET_FEATURES,
        &u64_body(VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES),
        &[],
    ));
    let mut t2 = table.clone();
    t2.flags = 9; // NEED_REPLY
    m.push(t2);
    for i in 0..4 {
        m.extend(ring_msgs(i, true));
    }
    // With PROTOCOL_FEATURES a ring runs once enabled.
    for i in 0..4 {
        m.push(Msg::new(req::SET_VRING_ENABLE, &state(i, 1), &[]));
    }
    m.push(Msg {
        flags: 9,
        ..Msg::new(
            req::SET_MEM_TABLE,
            &mem_table(&[
                (MEM_GPA, 64 << 10, MEM_UVA, 0),
                (MEM_GPA + (1 << 20), 8192, MEM_UVA + (1 << 20), 4096),
            ]),
            &[
                FdKind::Memfd { pages: MEM_PAGES },
                FdKind::Memfd { pages: 3 },
            ],
        )
    });
    m.push(Msg::new(req::SET_VRING_ENABLE, &state(2, 0), &[]));
    seed(dir, t, "dpdk-mq", &protocol::encode(true, &m));

    // Descriptors that are not what they should be (each ends its connection).
    let owner = Msg::new(req::SET_OWNER, &[], &[]);
    let bad = [
        (
            "call-pipe",
            Msg::new(req::SET_VRING_CALL, &u64_body(0), &[FdKind::PipeWrite]),
        ),
        (
            "kick-devnull",
            Msg::new(req::SET_VRING_KICK, &u64_body(1), &[FdKind::DevNull]),
        ),
        (
            "region-past-file",
            Msg::new(
                req::SET_MEM_TABLE,
                &mem_table(&[(MEM_GPA, 64 << 10, MEM_UVA, 0)]),
                &[FdKind::Memfd { pages: 4 }],
            ),
        ),
    ];
    for (name, msg) in bad {
        seed(
            dir,
            t,
            name,
            &protocol::encode(false, &[owner.clone(), msg]),
        );
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("fuzz").join("corpus");
    dequeue_seeds(&dir);
    enqueue_seeds(&dir);
    packed_seeds(&dir);
    config_seeds(&dir, &root);
    frame_seeds(&dir);
    protocol_seeds(&dir);
    println!("seeds written to {}", dir.display());
}
