//! Fuzz target `npy`: see `readers::npy`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::npy(data));
