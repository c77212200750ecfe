//! `socket_group` and `socket_mode` (the unix sockets the switch listens on), and
//! the directory a socket goes in.

use super::raw::GroupSpec;
use pmd::sockperm::SocketPerms;
use std::path::Path;

/// `socket_mode` unless configured: owner and group read and write.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// The largest gid a socket can be given: `u32::MAX` is chown's "no change".
const MAX_GID: i64 = u32::MAX as i64 - 1;

/// A mode as written in the file: octal (a negative number as it is).
pub(crate) fn octal(mode: i64) -> String {
    if mode < 0 {
        mode.to_string()
    } else {
        format!("0o{mode:03o}")
    }
}

/// The gid `socket_group` names: a group's name (looked up through NSS, as `chown`
/// does), a numeric gid, or a string of digits that is no group's name.
pub(crate) fn resolve_group(g: &GroupSpec) -> Result<u32, String> {
    match g {
        GroupSpec::Gid(n) if (0..=MAX_GID).contains(n) => Ok(*n as u32),
        GroupSpec::Gid(_) => Err(format!("a gid must be 0..={MAX_GID}")),
        GroupSpec::Name(n) if n.is_empty() => Err("a group name or a numeric gid".into()),
        GroupSpec::Name(n) => match nix::unistd::Group::from_name(n) {
            Ok(Some(group)) => Ok(group.gid.as_raw()),
            Ok(None) => match n.parse::<u32>() {
                Ok(gid) if i64::from(gid) <= MAX_GID => Ok(gid),
                _ => Err("no such group".into()),
            },
            Err(e) => Err(format!("cannot look the group up: {e}")),
        },
    }
}

/// `socket_mode`: permission bits that let the owner (the switch) read and write.
pub(crate) fn check_mode(mode: i64) -> Result<u32, String> {
    if !(0..=0o777).contains(&mode) {
        return Err("must be within 0o777; write it in octal (0o660, not 660)".into());
    }
    if mode & 0o600 != 0o600 {
        return Err("must give the owner read and write (0o600)".into());
    }
    Ok(mode as u32)
}

/// The permissions from `socket_group` and `socket_mode` under `section` (`switch.`
/// or nothing for a port's), each key not given taken from `base`.
pub(crate) fn perms(
    section: &str,
    group: Option<&GroupSpec>,
    mode: Option<i64>,
    base: SocketPerms,
) -> Result<SocketPerms, String> {
    let gid = match group {
        None => base.gid,
        Some(g) => {
            Some(resolve_group(g).map_err(|m| format!("key '{section}socket_group' = {g}: {m}"))?)
        }
    };
    let mode = match mode {
        None => base.mode,
        Some(m) => check_mode(m)
            .map_err(|why| format!("key '{section}socket_mode' = {}: {why}", octal(m)))?,
    };
    Ok(SocketPerms { gid, mode })
}

/// A socket's directory must exist, unless it is `made_at_start` (the control
/// socket's, which the service creates).
pub(crate) fn check_dir(sock: &Path, made_at_start: Option<&Path>) -> Result<(), String> {
    let dir = parent(sock);
    if made_at_start == Some(dir) || dir.is_dir() {
        return Ok(());
    }
    Err(format!("directory {} does not exist", dir.display()))
}

/// The directory a socket path is in (`.` for a bare name).
pub(crate) fn parent(sock: &Path) -> &Path {
    sock.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}
