#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::durable::fuzz::log_ops(data));
