#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shipit_fuzz::index(data));
