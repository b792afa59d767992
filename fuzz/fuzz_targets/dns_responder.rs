#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::dns_responder`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::dns_responder(data));
