#![no_main]
use libfuzzer_sys::fuzz_target;
use vswitch_fuzz::virtq::{run_layout, Dir, Layout};

fuzz_target!(|data: &[u8]| run_layout(data, Dir::Enqueue, Layout::Packed));
