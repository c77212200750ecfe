//! Group and mode of the unix sockets the switch listens on.

/// Who may connect to a listening unix socket: its group (`None`: the switch's own)
/// and its permission bits (e.g. `0o660`), as the configuration resolved them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketPerms {
    /// The group the socket file is given; `None` leaves the switch's own group.
    pub gid: Option<u32>,
    /// The socket file's permission bits, within `0o777`.
    pub mode: u32,
}

impl SocketPerms {
    /// Gives the socket file at `path` its group and mode. Call it right after the
    /// socket is bound: until then the file has the mode the process umask leaves
    /// (see [`restrict_umask`]: owner only), so nobody else can connect in between.
    pub fn apply(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(gid) = self.gid {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode & 0o777))
    }
}

/// Makes files and sockets the process creates owner-only until given their mode
/// (umask 0o077): a socket is never reachable by others before [`SocketPerms::apply`].
pub fn restrict_umask() {
    // SAFETY: umask(2) only swaps the process's file mode mask; it cannot fail and
    // touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}
