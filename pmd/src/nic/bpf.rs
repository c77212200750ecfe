//! The XDP program that steers an interface's frames into AF_XDP sockets, assembled
//! here as five eBPF instructions and loaded with the `bpf(2)` system call.
//!
//! The program is `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`:
//! frames of a queue with a socket in the XSKMAP go to that socket, all others (and
//! all frames of queues without a socket) go on to the kernel's stack as before.
//!
//! It is attached through a *bpf link* (`BPF_LINK_CREATE`), not the netlink
//! attachment: a link lives exactly as long as its file descriptor, so when the switch
//! exits (cleanly, by a panic, or by `kill -9`) the kernel detaches the program and the
//! interface is as it was. A link also refuses to replace a program someone else
//! attached, so the switch never clobbers another user's XDP program.
//!
//! No clang or object file is involved, at build time or at run time.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;

/// `XDP_FLAGS_SKB_MODE`: the generic, driver-independent hook (works on every interface).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: the driver's native hook.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `union bpf_attr`, as bytes: big enough for every command used here, zero elsewhere
/// (the kernel rejects non-zero bytes in fields it does not expect).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn bytes(&mut self, off: usize, v: &[u8]) -> &mut Attr {
        self.0[off..off + v.len()].copy_from_slice(v);
        self
    }
}

fn sys_bpf(cmd: i64, attr: &mut Attr) -> Result<i32, std::io::Error> {
    // SAFETY: attr is a valid, fully initialised bpf_attr of the size passed; pointers
    // inside it (instructions, log buffer, keys) are set by the callers to live buffers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr as *mut libc::c_void,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: fd was just returned by bpf() and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Creates an XSKMAP with `entries` slots (one per rx queue id).
pub fn create_xskmap(entries: u32) -> Result<OwnedFd, std::io::Error> {
    let mut a = Attr::new();
    a.u32(0, BPF_MAP_TYPE_XSKMAP)
        .u32(4, 4)
        .u32(8, 4)
        .u32(12, entries)
        .bytes(28, b"vswitch_xsks");
    sys_bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

/// Puts AF_XDP socket `xsk` in slot `queue` of `map`.
pub fn xskmap_set(map: &OwnedFd, queue: u32, xsk: &OwnedFd) -> Result<(), std::io::Error> {
    let key = queue;
    let val = xsk.as_raw_fd() as u32;
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64)
        .u64(16, &val as *const u32 as u64)
        .u64(24, 0);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// One eBPF instruction: opcode, dst and src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (dst & 0xf) | (src << 4);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// The program's instructions for an XSKMAP whose descriptor is `map_fd`.
pub fn redirect_program(map_fd: i32) -> Vec<u8> {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const PSEUDO_MAP_FD: u8 = 1;
    let prog = [
        // r2 = ctx->rx_queue_index (struct xdp_md, offset 16)
        insn(LDX_W, 2, 1, 16, 0),
        // r1 = &xsks (a map reference, two instruction slots)
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when the queue has no socket
        insn(MOV64_K, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        insn(CALL, 0, 0, 0, FUNC_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ];
    prog.concat()
}

/// Loads the redirect program; on failure the error carries the verifier's log.
pub fn load_redirect(map: &OwnedFd) -> Result<OwnedFd, String> {
    let code = redirect_program(map.as_raw_fd());
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 4096];
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, (code.len() / 8) as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .bytes(48, b"vswitch_xsk")
        .u32(68, BPF_XDP);
    match sys_bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err(if text.is_empty() {
                e.to_string()
            } else {
                format!("{e}; verifier: {text}")
            })
        }
    }
}

/// Attaches `prog` to interface `ifindex` through a bpf link with `flags`
/// ([`XDP_FLAGS_DRV_MODE`] or [`XDP_FLAGS_SKB_MODE`]). Dropping the returned link
/// detaches the program.
pub fn attach_xdp(prog: &OwnedFd, ifindex: u32, flags: u32) -> Result<OwnedFd, std::io::Error> {
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, ifindex)
        .u32(8, BPF_XDP)
        .u32(12, flags);
    sys_bpf(BPF_LINK_CREATE, &mut a).map(owned)
}
