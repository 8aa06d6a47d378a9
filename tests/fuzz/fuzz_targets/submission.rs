//! Fuzz target `submission`: see `readers::submission`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::submission(data));
