//! The fuzz targets' code, shared by `fuzz_targets/*` (libFuzzer entry points) and the
//! seed writer (`examples/seeds.rs`): how each target reads its input and what it
//! checks. Run them with `bash scripts/fuzz.sh SECONDS [TARGET...]`.

pub mod config;
pub mod frame;
pub mod protocol;
pub mod virtq;
