#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::api_definition`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::api_definition(data));
