//! [`ConfigError`]: what is wrong, and where it came from.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A configuration file (`vswitch run`, `check`, a reload).
    File(PathBuf),
    /// `vswitch ctl add-port NAME key=value...`, for the port `name`.
    AddPort { name: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::AddPort { name } => write!(f, "add-port {name:?}"),
        }
    }
}

/// A configuration refused: where it came from, and a message that names the key
/// and the value (`vswitch run`/`check` print it and exit with code 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub msg: String,
}

impl ConfigError {
    pub(crate) fn new(origin: &Origin, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: origin.clone(),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.msg)
    }
}

impl std::error::Error for ConfigError {}
