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
    /// The path is opened without following a symlink and must be a socket: whoever
    /// can write the directory cannot swap in a link to another file and have it
    /// given the socket's group and mode.
    pub fn apply(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: c is a NUL-terminated path; open(2) reads it and returns a new fd
        // or -1.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: libc::stat is plain data, valid when zeroed.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open and st is a valid, writable stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a socket", path.display()),
            ));
        }
        let empty = c"";
        if let Some(gid) = self.gid {
            // SAFETY: fd is open; AT_EMPTY_PATH makes fchownat act on fd itself.
            let r = unsafe {
                libc::fchownat(
                    fd.as_raw_fd(),
                    empty.as_ptr(),
                    u32::MAX,
                    gid,
                    libc::AT_EMPTY_PATH,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // fchmod does not take an O_PATH fd; its /proc/self/fd link names the same
        // inode (the socket checked above), whatever the path names now.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            std::fs::Permissions::from_mode(self.mode & 0o777),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    #[test]
    fn a_socket_gets_its_mode_and_a_symlink_is_refused() {
        let dir = std::env::temp_dir().join(format!("sockperm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let perms = SocketPerms {
            gid: None,
            mode: 0o640,
        };
        perms.apply(&sock).unwrap();
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert!(m.file_type().is_socket());
        // A link to another file in the socket's place is refused, the file untouched.
        let victim = dir.join("victim");
        std::fs::write(&victim, "x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("l.sock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(SocketPerms {
            gid: Some(0),
            mode: 0o666
        }
        .apply(&link)
        .is_err());
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
        // And a plain file is not a socket.
        assert!(perms.apply(&victim).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
