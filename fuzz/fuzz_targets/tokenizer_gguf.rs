#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| adore_fuzz::tokenizer_gguf(data));
