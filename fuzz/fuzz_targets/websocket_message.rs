#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::websocket_message`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::websocket_message(data));
