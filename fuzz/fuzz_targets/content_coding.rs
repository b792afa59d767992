#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::content_coding`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::content_coding(data));
