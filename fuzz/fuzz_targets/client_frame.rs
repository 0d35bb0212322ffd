#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::client_frame(data));
