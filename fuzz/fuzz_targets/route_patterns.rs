#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::route_patterns`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::route_patterns(data));
