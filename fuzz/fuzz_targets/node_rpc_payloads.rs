#![no_main]
//! libFuzzer entry point; the target itself is `meridian_fuzz::node_rpc_payloads`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| meridian_fuzz::node_rpc_payloads(data));
