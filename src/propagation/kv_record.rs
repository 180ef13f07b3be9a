//! The KV record: a small versioned JSON document holding the carrier.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::carrier::TraceCarrier;

/// The record version this crate writes and reads.
pub(crate) const RECORD_VERSION: u32 = 1;

/// The longest record this crate decodes (W3C caps keep real ones far
/// smaller).
const MAX_RECORD_LEN: usize = 64 * 1024;

#[derive(Deserialize)]
struct Record {
    v: u32,
    #[serde(flatten)]
    carrier: TraceCarrier,
}

/// The carrier fields of a record to write, borrowed from the message's
/// headers: encoding copies nothing but the output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CarrierRef<'a> {
    /// The W3C `traceparent` value.
    pub(crate) traceparent: &'a str,
    /// The W3C `tracestate` value, if not empty.
    pub(crate) tracestate: Option<&'a str>,
    /// The W3C `baggage` value.
    pub(crate) baggage: Option<&'a str>,
}

/// The record as written: the same document [`Record`] reads, with the
/// fields spelled out (a flattened struct serializes as a slower map).
#[derive(Serialize)]
struct RecordRef<'a> {
    v: u32,
    traceparent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baggage: Option<&'a str>,
}

/// Encodes `carrier` as `{"v":1,"traceparent":…,"tracestate":…,"baggage":…}`.
///
/// A document of strings always serializes; the error is only passed on,
/// never expected.
pub(crate) fn encode(carrier: CarrierRef<'_>) -> Result<Vec<u8>, serde_json::Error> {
    // Room for the field names, quotes and separators around the values.
    let len = 64
        + carrier.traceparent.len()
        + carrier.tracestate.map_or(0, str::len)
        + carrier.baggage.map_or(0, str::len);
    let mut out = Vec::with_capacity(len);
    serde_json::to_writer(
        &mut out,
        &RecordRef {
            v: RECORD_VERSION,
            traceparent: carrier.traceparent,
            tracestate: carrier.tracestate,
            baggage: carrier.baggage,
        },
    )?;
    Ok(out)
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
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let written = CarrierRef {
            traceparent,
            tracestate: None,
            baggage: Some("k=v"),
        };
        let carrier = TraceCarrier {
            traceparent: Some(traceparent.into()),
            tracestate: None,
            baggage: Some("k=v".into()),
        };
        let bytes = encode(written).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            format!(r#"{{"v":1,"traceparent":"{traceparent}","baggage":"k=v"}}"#)
        );
        assert_eq!(decode_record(&bytes).unwrap(), carrier);
        let full = CarrierRef {
            tracestate: Some("a=b"),
            ..written
        };
        assert_eq!(
            decode_record(&encode(full).unwrap())
                .unwrap()
                .tracestate
                .as_deref(),
            Some("a=b")
        );
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
