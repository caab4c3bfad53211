#![no_main]
//! `latte_rs::fuzzing::torch_checkpoint` under libFuzzer: any input may be refused, none may panic, abort or hang.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latte_rs::fuzzing::torch_checkpoint(data));
