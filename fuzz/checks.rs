//! What the fuzz targets check, shared with `tests/integration/fuzz_regressions.rs`,
//! which replays the committed inputs (`fuzz/seeds/`, `fuzz/regressions/`)
//! through the same functions in the normal test suite.
//!
//! Beyond "no panic", each input's outcome must be consistent: the
//! extraction record must agree with the context it comes with and with the
//! headers it was made from.
#![allow(dead_code)]

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use nats_otel::{
    consume::ContextExtractor, consume::MessageMeta, consume::NoContextReason,
    propagation::check_traceparent, propagation::HeaderExtractor, ContextSource, ExtractionRecord,
    MessageContextExt, TraceCarrier,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;

/// A message decoded from fuzz bytes.
#[derive(Debug)]
pub struct Input {
    pub headers: Option<HeaderMap>,
    pub payload: Vec<u8>,
    pub payload_carrier: bool,
}

/// Decodes fuzz bytes into a message, building the header map fallibly.
///
/// Byte 0 holds flags: bit 0 = no headers at all, bit 1 = also read a
/// `TraceCarrier` from the JSON payload, bit 2 = an empty header map. The
/// rest is `entries\n\npayload`; entries are separated by `\n`, each a
/// selector byte and the value's bytes (lossily UTF-8: a `HeaderMap` holds
/// only strings). The selector picks the name: `traceparent`,
/// `Traceparent`, `TRACEPARENT`, `tracestate`, `baggage`, `Tracestate` or
/// `Baggage`, `TraceParent`, or, for 7, `name:value` from the bytes.
/// Entries whose name or value async-nats refuses (e.g. a value with `\r`)
/// are left out, as a careful publisher would.
pub fn decode(data: &[u8]) -> Input {
    let (flags, rest) = match data.split_first() {
        Some((flags, rest)) => (*flags, rest),
        None => (0, &[][..]),
    };
    let (entries, payload) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    if flags & 0b100 == 0 {
        for entry in entries.split(|b| *b == b'\n') {
            let Some((selector, value)) = entry.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value);
            let (name, value) = match selector % 8 {
                0 => ("traceparent".into(), value),
                1 => ("Traceparent".into(), value),
                2 => ("TRACEPARENT".into(), value),
                3 => ("tracestate".into(), value),
                4 => ("baggage".into(), value),
                5 if selector & 0b1000 == 0 => ("Tracestate".into(), value),
                5 => ("Baggage".into(), value),
                6 => ("TraceParent".into(), value),
                _ => match value.split_once(':') {
                    Some((name, value)) => (name.to_owned(), value.to_owned().into()),
                    None => continue,
                },
            };
            let (Ok(name), Ok(value)) = (
                name.parse::<HeaderName>(),
                value.as_ref().parse::<HeaderValue>(),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
    }
    Input {
        headers: (flags & 1 == 0).then_some(headers),
        payload: payload.to_vec(),
        payload_carrier: flags & 0b10 != 0,
    }
}

fn message(headers: Option<HeaderMap>, payload: Vec<u8>) -> async_nats::Message {
    async_nats::Message {
        subject: "fuzz.jobs".into(),
        reply: None,
        payload: payload.into(),
        headers,
        status: None,
        description: None,
        length: 0,
    }
}

/// Every `traceparent` value, in any casing of the name, with the name.
fn traceparents(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|(name, _)| {
            let name: &str = name.as_ref();
            name.eq_ignore_ascii_case("traceparent")
        })
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| (name.to_owned(), v.to_string()))
        })
        .collect()
}

/// Whether `value` is a valid traceparent naming exactly `sc`.
fn names(value: &str, sc: &SpanContext) -> bool {
    if check_traceparent(value).is_err() {
        return false;
    }
    let mut fields = value.trim_matches([' ', '\t']).split('-').skip(1);
    fields.next() == Some(&format!("{:032x}", sc.trace_id()))
        && fields.next() == Some(&format!("{:016x}", sc.span_id()))
}

/// The W3C limits on what reaches a handler.
fn within_limits(cx: &Context) {
    let sc = cx.span().span_context().clone();
    let state = sc.trace_state().header();
    let members = state.split(',').filter(|m| !m.trim().is_empty()).count();
    assert!(
        members <= 32,
        "tracestate with {members} members: {state:?}"
    );
    let baggage = cx.baggage();
    assert!(baggage.len() <= 180, "{} baggage members", baggage.len());
    let bytes: usize = baggage
        .iter()
        .map(|(k, (v, _))| k.as_str().len() + v.as_str().len() + 2)
        .sum();
    // Decoded values can be shorter than encoded ones, never longer.
    assert!(bytes <= 8192 + 1, "{bytes} bytes of baggage");
}

/// The record agrees with the context (no OpenTelemetry layer is installed,
/// so the context is the extracted remote one) and with the headers.
fn check_record(cx: &Context, record: &ExtractionRecord, input: &Input) {
    let _ = record.to_string();
    if let Some(reason) = record.reason() {
        let _ = (reason.as_str(), reason.to_string());
    }
    let span = cx.span();
    let sc = span.span_context();
    let traceparents = traceparents(input.headers.as_ref());
    match record.source() {
        ContextSource::Headers => {
            assert!(record.reason().is_none(), "{record}");
            assert!(sc.is_valid() && sc.is_remote(), "{record} but {sc:?}");
            assert!(
                traceparents.iter().any(|(_, v)| names(v, sc)),
                "{record}: {sc:?} is in none of {traceparents:?}"
            );
            if let Some(name) = record.header_name() {
                assert!(traceparents.iter().any(|(n, _)| n == name));
                assert_ne!(name, "traceparent");
            }
        }
        ContextSource::Payload => {
            assert!(input.payload_carrier, "{record} without a payload carrier");
            assert!(record.reason().is_some(), "{record}");
            assert!(sc.is_valid(), "{record} but {sc:?}");
        }
        ContextSource::None => {
            assert!(!sc.is_valid(), "{record} but {sc:?}");
            let reason = record.reason().expect("a new root says why");
            match reason {
                NoContextReason::NoHeaders => {
                    assert!(input.headers.as_ref().is_none_or(HeaderMap::is_empty))
                }
                NoContextReason::MissingTraceparent { .. } => {
                    assert!(traceparents.is_empty(), "{reason} but {traceparents:?}")
                }
                NoContextReason::MalformedTraceparent {
                    header,
                    value,
                    problem,
                } => {
                    assert!(value.chars().count() <= 65, "quoted {} chars", value.len());
                    assert!(
                        traceparents
                            .iter()
                            .any(|(n, v)| n == header && check_traceparent(v) == Err(*problem)),
                        "{reason} matches none of {traceparents:?}"
                    );
                }
                NoContextReason::AmbiguousTraceparent { .. } => {
                    assert!(traceparents.len() >= 2, "{reason} but {traceparents:?}")
                }
                other => panic!("unexpected reason without a fallback: {other:?}"),
            }
            if input.payload_carrier {
                assert!(record.fallback_reason().is_some(), "{record}");
            }
        }
        other => panic!("source {other} without a fallback configured"),
    }
    within_limits(cx);
}

/// The extraction target.
pub fn extract(data: &[u8]) {
    let input = decode(data);
    let message = message(input.headers.clone(), input.payload.clone());
    let meta = MessageMeta::of(&message);
    let mut extractor = ContextExtractor::new();
    if input.payload_carrier {
        extractor = extractor
            .payload_carrier(|meta| serde_json::from_slice::<TraceCarrier>(meta.payload).ok());
    }
    let cx = extractor.extract(&meta);
    let record = cx.extraction().expect("every yielded context has a record");
    check_record(&cx, record, &input);

    // The standalone extractor agrees with the adapter's.
    if let (Some(headers), false) = (&input.headers, input.payload_carrier) {
        let (alone, alone_record) = HeaderExtractor::new(headers).extract_context();
        assert_eq!(alone_record.source(), record.source());
        assert_eq!(alone_record.reason(), record.reason());
        assert_eq!(alone.span().span_context(), cx.span().span_context());
    }
}

/// The KV record target: the decoder, the decoded carrier read the way the
/// consumer reads a KV record, and the KV key encoding.
#[cfg(feature = "kv")]
pub fn kv_record(data: &[u8]) {
    use nats_otel::fallback::{decode_key, decode_record, encode_key, RecordError};

    match decode_record(data) {
        Err(error) => {
            let _ = error.to_string();
            if data.len() > 64 * 1024 {
                assert!(matches!(error, RecordError::TooLarge(_)), "{error:?}");
            }
        }
        Ok(carrier) => {
            assert!(data.len() <= 64 * 1024);
            // The same carrier, re-encoded, decodes to itself.
            let mut doc = serde_json::to_value(&carrier).expect("a carrier serializes");
            doc["v"] = 1.into();
            let again = serde_json::to_vec(&doc).unwrap();
            assert_eq!(decode_record(&again).as_ref(), Ok(&carrier));

            // Read as the consumer reads a record it found.
            let message = message(None, Vec::new());
            let meta = MessageMeta::of(&message);
            let found = carrier.clone();
            let cx = ContextExtractor::new()
                .payload_carrier(move |_| Some(found.clone()))
                .extract(&meta);
            let record = cx.extraction().expect("a record");
            let _ = record.to_string();
            let span = cx.span();
            let sc = span.span_context();
            match record.source() {
                ContextSource::Payload => {
                    assert!(sc.is_valid());
                    let traceparent = carrier.traceparent.as_deref().unwrap_or_default();
                    assert!(names(traceparent, sc), "{sc:?} from {traceparent:?}");
                    within_limits(&cx);
                }
                ContextSource::None => {
                    assert!(!sc.is_valid());
                    assert!(record.fallback_reason().is_some(), "{record}");
                }
                other => panic!("source {other} from a carrier"),
            }
        }
    }

    // Any string as a fallback key id.
    let id = String::from_utf8_lossy(data);
    match encode_key(&id) {
        Ok(key) => {
            assert!(key.len() <= 1024, "{} characters", key.len());
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='),
                "{key:?}"
            );
            assert_eq!(decode_key(&key).as_deref(), Some(id.as_ref()));
        }
        Err(error) => {
            let _ = error.to_string();
            assert!(
                id.is_empty() || id.len() > 1024 / 3,
                "{error} for {} bytes",
                id.len()
            );
        }
    }
    let _ = decode_key(&id);
}
