//! The `vswitch` library: what the `vswitch` binary and its tools share. Today that
//! is the configuration file's parser ([`config`]), so that it can be fuzzed and
//! tested without the binary.

pub mod config;
