#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::request_head`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::request_head(data));
