//! The TOML configuration parser (`vswitch::config::Config::parse`): any text gives a
//! configuration or an error naming the file, never a panic, and a configuration it
//! accepts keeps the documented bounds.

use std::path::Path;
use vswitch::config::{Config, Origin, PortKind, VlanMode};

pub const FILE: &str = "/fuzz/vswitch.toml";

/// Runs one input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new(FILE);
    match Config::parse(file, text) {
        Ok(c) => {
            assert_eq!(c.file, file);
            assert!(!c.pmd_cores.is_empty());
            let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            for (i, &core) in c.pmd_cores.iter().enumerate() {
                assert!(core < ncpus);
                assert!(!c.pmd_cores[..i].contains(&core));
            }
            assert!((1..=10_000).contains(&c.tx_stall_ms));
            assert!((1024..=4_194_304).contains(&c.mbufs));
            assert!((16..=16_777_216).contains(&c.fdb_capacity));
            assert!((1..=86_400).contains(&c.aging_secs));
            assert!(c.max_per_port <= c.fdb_capacity);
            assert!(c.socket_perms.mode <= 0o777 && c.socket_perms.mode & 0o600 == 0o600);
            assert!(!c.ports.is_empty() && c.ports.len() <= 1024);
            for (i, p) in c.ports.iter().enumerate() {
                assert!((1..=32).contains(&p.name.len()));
                assert!((1..=16).contains(&p.queues));
                assert!(c.ports[..i].iter().all(|q| q.name != p.name));
                let v = &p.vlan;
                assert_eq!(v.mode == VlanMode::Trunk, v.tag == 0);
                assert!(v.tag <= 4094 && v.trunks.iter().all(|&t| t <= 4095));
                assert!(v.trunks.windows(2).all(|w| w[0] < w[1]));
                if let PortKind::VhostUser { socket_perms, .. } = &p.kind {
                    assert!(socket_perms.mode <= 0o777);
                }
            }
        }
        Err(e) => {
            assert_eq!(e.origin, Origin::File(file.into()));
            assert!(!e.msg.is_empty());
            assert!(e.to_string().starts_with(FILE));
        }
    }
}
