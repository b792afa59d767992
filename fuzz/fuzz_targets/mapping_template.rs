#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::mapping_template`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::mapping_template(data));
