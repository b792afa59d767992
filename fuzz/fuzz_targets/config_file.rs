#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::config_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::config_file(data));
