#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::upstream_response`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::upstream_response(data));
