//! vhost-user request handling (`pmd::vhost::protocol::Session`, the code each
//! connection on a port's socket runs) driven by a sequence of messages with file
//! descriptors of several kinds: any request code, flags and body, and memfds of any
//! size (guest memory), eventfds (kick and call), pipe ends and `/dev/null`.
//!
//! Checked: no panic; a reply is a well-formed reply to its request (same code,
//! flags version 1 + REPLY, size field = payload length). The first error ends the
//! input, as it ends the connection on the socket.
//!
//! Input layout: `[0]` bit 0 set: the port has two queue pairs (else one); then
//! messages until the input ends (at most `MAX_MSGS`), each:
//! - `code` (u8, the request code), `flags` (u8), `nfds` (u8, at most `MAX_FDS`),
//!   `len` (u16 little-endian, the body's length; cut to what the input has left);
//! - `nfds` descriptor specs: a kind byte ([`FdKind`], mod 5) and, for a memfd, a
//!   size byte (pages of 4 KiB);
//! - the body.

use pmd::vhost::driver::eventfd;
use pmd::vhost::protocol::Session;
use std::fs::File;
use std::os::fd::FromRawFd;

pub const MAX_MSGS: usize = 64;
/// vhost-user carries at most 8 descriptors per message.
pub const MAX_FDS: usize = 8;
const REPLY: u32 = 0x4;

/// Request codes of the vhost-user specification, for seeds.
pub mod req {
    pub const GET_FEATURES: u8 = 1;
    pub const SET_FEATURES: u8 = 2;
    pub const SET_OWNER: u8 = 3;
    pub const RESET_OWNER: u8 = 4;
    pub const SET_MEM_TABLE: u8 = 5;
    pub const SET_LOG_BASE: u8 = 6;
    pub const SET_VRING_NUM: u8 = 8;
    pub const SET_VRING_ADDR: u8 = 9;
    pub const SET_VRING_BASE: u8 = 10;
    pub const GET_VRING_BASE: u8 = 11;
    pub const SET_VRING_KICK: u8 = 12;
    pub const SET_VRING_CALL: u8 = 13;
    pub const GET_PROTOCOL_FEATURES: u8 = 15;
    pub const SET_PROTOCOL_FEATURES: u8 = 16;
    pub const GET_QUEUE_NUM: u8 = 17;
    pub const SET_VRING_ENABLE: u8 = 18;
    pub const SEND_RARP: u8 = 19;
}

/// What a descriptor sent with a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A memfd of `pages` × 4 KiB (guest memory; 0: an empty file).
    Memfd { pages: u8 },
    /// A non-blocking eventfd (what kick and call should be).
    Eventfd,
    /// The read end of a pipe.
    PipeRead,
    /// The write end of a pipe (a call fd that is not an eventfd).
    PipeWrite,
    /// `/dev/null`.
    DevNull,
}

impl FdKind {
    fn code(self) -> u8 {
        match self {
            FdKind::Memfd { .. } => 0,
            FdKind::Eventfd => 1,
            FdKind::PipeRead => 2,
            FdKind::PipeWrite => 3,
            FdKind::DevNull => 4,
        }
    }

    fn open(self) -> File {
        match self {
            FdKind::Memfd { pages } => {
                // SAFETY: memfd_create with a valid C string; the fd is owned below.
                let fd = unsafe { libc::memfd_create(c"vswitch-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                // SAFETY: a fresh descriptor nothing else owns.
                let f = unsafe { File::from_raw_fd(fd) };
                f.set_len(pages as u64 * 4096).expect("size memfd");
                f
            }
            FdKind::Eventfd => eventfd(0, false),
            FdKind::PipeRead | FdKind::PipeWrite => {
                let mut fds = [0i32; 2];
                // SAFETY: pipe2 writes two descriptors into the array, owned below.
                let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
                assert!(r == 0, "pipe2: {}", std::io::Error::last_os_error());
                // SAFETY: both are fresh descriptors nothing else owns.
                let (rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
                if self == FdKind::PipeRead {
                    rd
                } else {
                    wr
                }
            }
            FdKind::DevNull => File::open("/dev/null").expect("open /dev/null"),
        }
    }
}

/// One message of the input.
#[derive(Clone, Debug)]
pub struct Msg {
    pub code: u8,
    pub flags: u8,
    pub fds: Vec<FdKind>,
    pub body: Vec<u8>,
}

impl Msg {
    /// A message with `flags` = 1 (version 1).
    pub fn new(code: u8, body: &[u8], fds: &[FdKind]) -> Msg {
        Msg {
            code,
            flags: 1,
            fds: fds.to_vec(),
            body: body.to_vec(),
        }
    }
}

/// Decodes an input: (two queue pairs, messages).
pub fn decode(data: &[u8]) -> (bool, Vec<Msg>) {
    let Some((&first, mut rest)) = data.split_first() else {
        return (false, Vec::new());
    };
    let mut msgs = Vec::new();
    while rest.len() >= 5 && msgs.len() < MAX_MSGS {
        let (code, flags, nfds) = (rest[0], rest[1], (rest[2] as usize).min(MAX_FDS));
        let len = u16::from_le_bytes([rest[3], rest[4]]) as usize;
        rest = &rest[5..];
        let mut fds = Vec::with_capacity(nfds);
        for _ in 0..nfds {
            let Some((&k, r)) = rest.split_first() else {
                break;
            };
            rest = r;
            fds.push(match k % 5 {
                0 => {
                    let Some((&pages, r)) = rest.split_first() else {
                        break;
                    };
                    rest = r;
                    FdKind::Memfd { pages }
                }
                1 => FdKind::Eventfd,
                2 => FdKind::PipeRead,
                3 => FdKind::PipeWrite,
                _ => FdKind::DevNull,
            });
        }
        let (body, r) = rest.split_at(len.min(rest.len()));
        rest = r;
        msgs.push(Msg {
            code,
            flags,
            fds,
            body: body.to_vec(),
        });
    }
    (first & 1 != 0, msgs)
}

/// Encodes messages into an input (for seeds): the inverse of [`decode`].
pub fn encode(two_queues: bool, msgs: &[Msg]) -> Vec<u8> {
    let mut v = vec![two_queues as u8];
    for m in msgs {
        v.extend_from_slice(&[m.code, m.flags, m.fds.len() as u8]);
        v.extend_from_slice(&(m.body.len() as u16).to_le_bytes());
        for k in &m.fds {
            v.push(k.code());
            if let FdKind::Memfd { pages } = k {
                v.push(*pages);
            }
        }
        v.extend_from_slice(&m.body);
    }
    v
}

/// Runs one input; panics on a broken property.
pub fn run(data: &[u8]) {
    let (two, msgs) = decode(data);
    run_msgs(two, &msgs);
}

/// Runs messages through a new session; returns it (for tests to look at).
pub fn run_msgs(two: bool, msgs: &[Msg]) -> Session {
    let queues = if two { 2 } else { 1 };
    let mut s = Session::new("fuzz", queues);
    for m in msgs {
        let files: Vec<File> = m.fds.iter().map(|k| k.open()).collect();
        let code = m.code as u32;
        match s.request(code, m.flags as u32, &m.body, files) {
            Ok(Some(reply)) => {
                assert!(reply.len() >= 12, "reply shorter than a header");
                let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap());
                assert_eq!(word(0), code, "reply to another request");
                assert_eq!(word(4), 1 | REPLY, "reply flags");
                assert_eq!(word(8) as usize, reply.len() - 12, "reply size field");
            }
            Ok(None) => {}
            // The socket closes the connection here; so does the fuzzer.
            Err(_) => break,
        }
        s.deliver_interrupts();
        assert_eq!(s.ring_states().len(), 2 * queues);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmd::vhost::RingState;

    /// The seeds bring a device up (else the fuzzer would start from nothing).
    #[test]
    fn the_device_seed_makes_both_rings_live() {
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/corpus/vhost_protocol/seed-device"
        ))
        .unwrap();
        let (two, msgs) = decode(&data);
        assert_eq!(encode(two, &msgs), data);
        let s = run_msgs(two, &msgs);
        assert_eq!(s.ring_states(), [RingState::Live, RingState::Live]);
    }
}
