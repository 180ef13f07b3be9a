//! W3C Trace Context rules, checked the way a person debugging a broken
//! trace needs them explained.
//!
//! The SDK's propagator only says "invalid"; [`check_traceparent`] says which
//! rule a `traceparent` value breaks, so the extraction record can name it.

use std::fmt;

/// The W3C header that carries the trace id, the parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header that carries vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";
/// The W3C header that carries baggage (application key/value pairs).
pub const BAGGAGE: &str = "baggage";

/// Which W3C Trace Context rule a `traceparent` value breaks.
///
/// # Examples
///
/// ```
/// use nats_otel::TraceparentProblem;
/// use nats_otel::check_traceparent;
///
/// let upper = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01";
/// assert_eq!(check_traceparent(upper), Err(TraceparentProblem::UppercaseHex));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TraceparentProblem {
    /// The value is empty.
    Empty,
    /// The value does not have the four `-`-separated fields of version `00`
    /// (or has trailing data after them).
    WrongFieldCount,
    /// A field has the wrong number of characters.
    WrongLength,
    /// Hex digits are uppercase; W3C requires lowercase.
    UppercaseHex,
    /// A field contains characters other than hex digits.
    NotHex,
    /// The version is `ff`, which W3C forbids.
    ForbiddenVersion,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent span id is all zeros.
    ZeroSpanId,
}

impl TraceparentProblem {
    /// A short, stable name for metrics and logs, e.g. `"uppercase_hex"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::WrongFieldCount => "wrong_field_count",
            Self::WrongLength => "wrong_length",
            Self::UppercaseHex => "uppercase_hex",
            Self::NotHex => "not_hex",
            Self::ForbiddenVersion => "forbidden_version",
            Self::ZeroTraceId => "zero_trace_id",
            Self::ZeroSpanId => "zero_span_id",
        }
    }
}

impl fmt::Display for TraceparentProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the value is empty",
            Self::WrongFieldCount => {
                "expected four '-'-separated fields (version-traceid-spanid-flags)"
            }
            Self::WrongLength => "a field has the wrong length (2-32-16-2 hex digits expected)",
            Self::UppercaseHex => "hex digits must be lowercase",
            Self::NotHex => "a field contains characters that are not hex digits",
            Self::ForbiddenVersion => "version ff is forbidden",
            Self::ZeroTraceId => "the trace id is all zeros",
            Self::ZeroSpanId => "the parent span id is all zeros",
        })
    }
}

/// A `traceparent` value that passed every W3C rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traceparent {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) flags: u8,
}

/// Checks a `traceparent` value against the W3C Trace Context rules.
///
/// Future versions (other than `00` and the forbidden `ff`) are accepted when
/// their first four fields are valid, as the specification asks.
///
/// # Examples
///
/// ```
/// use nats_otel::check_traceparent;
///
/// assert!(check_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_ok());
/// assert!(check_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_err());
/// ```
pub fn check_traceparent(value: &str) -> Result<(), TraceparentProblem> {
    parse_traceparent(value).map(|_| ())
}

pub(crate) fn parse_traceparent(value: &str) -> Result<Traceparent, TraceparentProblem> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return Err(TraceparentProblem::Empty);
    }
    let mut fields = value.split('-');
    let (Some(version), Some(trace_id), Some(span_id), Some(flags)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(TraceparentProblem::WrongFieldCount);
    };
    let version_num = hex_field(version, 2)? as u8;
    if version_num == 0xff {
        return Err(TraceparentProblem::ForbiddenVersion);
    }
    if version_num == 0 && fields.next().is_some() {
        return Err(TraceparentProblem::WrongFieldCount);
    }
    let trace_id = hex_field(trace_id, 32)?;
    let span_id = hex_field(span_id, 16)? as u64;
    let flags = hex_field(flags, 2)? as u8;
    if trace_id == 0 {
        return Err(TraceparentProblem::ZeroTraceId);
    }
    if span_id == 0 {
        return Err(TraceparentProblem::ZeroSpanId);
    }
    Ok(Traceparent {
        trace_id,
        span_id,
        flags,
    })
}

fn hex_field(field: &str, len: usize) -> Result<u128, TraceparentProblem> {
    if field.len() != len {
        // Report uppercase or garbage first when present: it is the more
        // actionable finding (the length is usually a consequence).
        return Err(if field.bytes().all(|b| b.is_ascii_hexdigit()) {
            TraceparentProblem::WrongLength
        } else {
            TraceparentProblem::NotHex
        });
    }
    let mut n: u128 = 0;
    let mut upper = false;
    for b in field.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => {
                upper = true;
                b - b'A' + 10
            }
            _ => return Err(TraceparentProblem::NotHex),
        };
        n = (n << 4) | u128::from(d);
    }
    if upper {
        return Err(TraceparentProblem::UppercaseHex);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn accepts_valid_and_future_versions() {
        let tp = parse_traceparent(VALID).unwrap();
        assert_eq!(tp.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(tp.span_id, 0xb7ad6b7169203331);
        assert_eq!(tp.flags, 1);
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra")
                .is_ok()
        );
    }

    #[test]
    fn names_each_broken_rule() {
        let cases = [
            ("", TraceparentProblem::Empty),
            ("00-abc", TraceparentProblem::WrongFieldCount),
            (
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                TraceparentProblem::ForbiddenVersion,
            ),
            (
                "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
                TraceparentProblem::UppercaseHex,
            ),
            (
                "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
                TraceparentProblem::WrongLength,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
                TraceparentProblem::NotHex,
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                TraceparentProblem::ZeroTraceId,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                TraceparentProblem::ZeroSpanId,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
                TraceparentProblem::WrongFieldCount,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_traceparent(value), Err(expected), "{value:?}");
        }
    }
}
