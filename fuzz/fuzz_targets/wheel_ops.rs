#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::wheel_ops(data));
