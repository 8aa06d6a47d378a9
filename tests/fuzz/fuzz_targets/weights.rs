//! Fuzz target `weights`: see `readers::weights`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::weights(data));
