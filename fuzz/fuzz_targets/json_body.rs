#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::json_body`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::json_body(data));
