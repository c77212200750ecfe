//! `pmd`: the poll-mode driver layer of vswitch.
//!
//! It owns everything that touches memory shared with guests or mapped from the
//! kernel: hugepage memory ([`hugepage`]), packet buffers and their pools
//! ([`mempool`]), the burst rx/tx [`port::Port`] abstraction, the vhost-user
//! driver ([`vhost`]) and the NIC drivers ([`nic`]: AF_XDP, AF_PACKET, TAP). All `unsafe` code of vswitch lives in this crate.

pub mod hugepage;
pub mod idle;
pub mod mempool;
pub mod nic;
pub mod offload;
pub mod port;
pub mod prefetch;
pub mod ratelimit;
pub mod rcu;
pub mod sigbus;
pub mod sockperm;
pub mod tsc;
pub mod vhost;

pub use mempool::{Mbuf, Mempool, MempoolCache};
pub use port::{Port, PortStats, Traffic, TxLane};
