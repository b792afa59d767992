#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::openapi_document`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::openapi_document(data));
