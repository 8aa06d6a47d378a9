//! Fuzz target `label_csv`: see `readers::label_csv`.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod readers;

fuzz_target!(|data: &[u8]| readers::label_csv(data));
