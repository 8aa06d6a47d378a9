//! Fuzz target `run_folder`: see `readers::run_folder`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::run_folder(data));
