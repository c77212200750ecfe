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
