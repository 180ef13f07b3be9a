//! Extraction: bytes → a header map built fallibly → the consumer's
//! `ContextExtractor` (and `HeaderExtractor::extract_context`) → a context
//! and an extraction record that must agree with each other and with the
//! headers. See `../checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::extract(data));
