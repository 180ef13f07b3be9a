//! The KV record: a small versioned JSON document holding the carrier.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::trace_carrier::TraceCarrier;

/// The record version this crate writes and reads.
pub(crate) const RECORD_VERSION: u32 = 1;

/// The longest record this crate decodes (W3C caps keep real ones far
/// smaller).
const MAX_RECORD_LEN: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Record {
    v: u32,
    #[serde(flatten)]
    carrier: TraceCarrier,
}

/// Encodes `carrier` as `{"v":1,"traceparent":…,"tracestate":…,"baggage":…}`.
pub(crate) fn encode(carrier: &TraceCarrier) -> Vec<u8> {
    serde_json::to_vec(&Record {
        v: RECORD_VERSION,
        carrier: carrier.clone(),
    })
    .expect("a struct of strings serializes")
}

/// Why a KV record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is not the JSON document this crate writes.
    NotJson(String),
    /// The record has a version this crate does not know.
    UnsupportedVersion(u32),
    /// The record is larger than 64 KiB.
    TooLarge(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson(e) => write!(f, "not a nats-otel carrier record: {e}"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "carrier record version {v} is not supported (this version reads {RECORD_VERSION})"
            ),
            Self::TooLarge(n) => write!(f, "carrier record of {n} bytes is too large"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Decodes a KV record; never panics on any input.
pub fn decode_record(bytes: &[u8]) -> Result<TraceCarrier, RecordError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge(bytes.len()));
    }
    let record: Record = serde_json::from_slice(bytes).map_err(|e| {
        let mut msg = e.to_string();
        msg.truncate(120);
        RecordError::NotJson(msg)
    })?;
    if record.v != RECORD_VERSION {
        return Err(RecordError::UnsupportedVersion(record.v));
    }
    Ok(record.carrier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let carrier = TraceCarrier {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
            baggage: Some("k=v".into()),
        };
        assert_eq!(decode_record(&encode(&carrier)).unwrap(), carrier);
        assert!(matches!(
            decode_record(b"nope"),
            Err(RecordError::NotJson(_))
        ));
        assert_eq!(
            decode_record(br#"{"v":2}"#),
            Err(RecordError::UnsupportedVersion(2))
        );
        assert!(matches!(
            decode_record(br#"{"traceparent":"x"}"#),
            Err(RecordError::NotJson(_))
        ));
    }
}
