#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::zone_document`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::zone_document(data));
