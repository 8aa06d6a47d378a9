//! Fuzz target `hub_config`: see `readers::hub_config`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::hub_config(data));
