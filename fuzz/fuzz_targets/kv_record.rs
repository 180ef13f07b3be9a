//! The KV fallback record decoder (`nats_otel::fallback::decode_record`),
//! the carrier it yields read the way the consumer reads it, and the KV key
//! encoding. See `../checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::kv_record(data));
