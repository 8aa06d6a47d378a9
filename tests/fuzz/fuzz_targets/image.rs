//! Fuzz target `image`: see `readers::image`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::image(data));
