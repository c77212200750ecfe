#![no_main]
use libfuzzer_sys::fuzz_target;
use vswitch_fuzz::virtq::{run, Dir};

fuzz_target!(|data: &[u8]| run(data, Dir::Enqueue));
