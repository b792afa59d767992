#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::client_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::client_request(data));
