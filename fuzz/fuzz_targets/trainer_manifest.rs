#![no_main]
//! `latte_rs::fuzzing::trainer_manifest` under libFuzzer: any input may be refused, none may panic, abort or hang.

libfuzzer_sys::fuzz_target!(|data: &[u8]| latte_rs::fuzzing::trainer_manifest(data));
