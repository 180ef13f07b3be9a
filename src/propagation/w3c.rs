//! W3C Trace Context rules, checked the way a person debugging a broken
//! trace needs them explained.
//!
//! The SDK's propagator only says "invalid"; [`check_traceparent`] says which
//! rule a `traceparent` value breaks, so the extraction record can name it.
//!
//! This module also holds the W3C fast path used when the propagator is the
//! crate's default (W3C Trace Context + Baggage): `traceparent` formatted
//! into a stack buffer, `tracestate` written only when non-empty, and the
//! W3C limits applied on both sides:
//!
//! - `tracestate`: at most 32 list-members. On inject, members past the
//!   32nd are dropped. On extract, a value with more members (or longer than
//!   any valid 32-member list can be, [`TRACESTATE_CEILING`] bytes) is
//!   invalid and discarded, without failing the trace; a valid value longer
//!   than 512 characters is truncated the way W3C asks (whole entries,
//!   entries over 128 characters first, then from the end).
//! - `baggage`: at most 180 list-members and 8192 bytes. On inject, whole
//!   members are dropped to stay within both; on extract, a longer value is
//!   discarded, as the SDK does. Values are percent-encoded like the SDK's
//!   `BaggagePropagator` does, plus `%` and `\`, which W3C requires and
//!   the SDK leaves as is.

use std::fmt;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

mod baggage;

pub(crate) use baggage::extract_baggage;
#[cfg(test)]
use baggage::trim_unicode;

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
/// use nats_otel::propagation::TraceparentProblem;
/// use nats_otel::propagation::check_traceparent;
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
/// use nats_otel::propagation::check_traceparent;
///
/// assert!(check_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_ok());
/// assert!(check_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_err());
/// ```
pub fn check_traceparent(value: &str) -> Result<(), TraceparentProblem> {
    parse_traceparent(value).map(|_| ())
}

pub(crate) fn parse_traceparent(value: &str) -> Result<Traceparent, TraceparentProblem> {
    if let Some(tp) = parse_exact_v00(value.as_bytes()) {
        return Ok(tp);
    }
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

/// The common case in one pass: exactly 55 bytes, version `00`, lowercase
/// hex, non-zero ids. Anything else (including every invalid value) returns
/// `None` and goes through the field-by-field checks, which name the rule.
#[inline]
fn parse_exact_v00(b: &[u8]) -> Option<Traceparent> {
    if b.len() != TRACEPARENT_LEN
        || b[0] != b'0'
        || b[1] != b'0'
        || b[2] != b'-'
        || b[35] != b'-'
        || b[52] != b'-'
    {
        return None;
    }
    let hi = hex_u64(&b[3..19])?;
    let lo = hex_u64(&b[19..35])?;
    let span_id = hex_u64(&b[36..52])?;
    let flags = (hex_digit(b[53])? << 4) | hex_digit(b[54])?;
    let trace_id = (u128::from(hi) << 64) | u128::from(lo);
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Traceparent {
        trace_id,
        span_id,
        flags,
    })
}

/// Sixteen lowercase hex digits as a `u64`.
#[inline]
fn hex_u64(digits: &[u8]) -> Option<u64> {
    let (hi, lo) = digits.split_at_checked(8)?;
    Some((u64::from(hex8(hi)?) << 32) | u64::from(hex8(lo)?))
}

/// Eight lowercase hex digits as a `u32`, eight bytes at a time (SWAR).
#[inline]
fn hex8(digits: &[u8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_be_bytes(digits.try_into().ok()?);
    if x & HIGH != 0 {
        return None;
    }
    // Every byte is below 0x80 and so is every constant: no sum carries
    // into the next byte, and each byte's high bit answers the comparison.
    let at_least = |c: u64| (x + (0x80 - c) * ONES) & HIGH;
    let digit = at_least(0x30) & !at_least(0x3a);
    let letter = at_least(0x61) & !at_least(0x67);
    if digit | letter != HIGH {
        return None;
    }
    // '0'..='9' -> low nibble; 'a'..='f' -> low nibble + 9.
    let v = (x & 0x0f0f_0f0f_0f0f_0f0f) + (letter >> 7) * 9;
    // Pack the eight nibbles (the first digit is in the highest byte).
    let v = (v | (v >> 4)) & 0x00ff_00ff_00ff_00ff;
    let v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
    let v = (v | (v >> 16)) & 0x0000_0000_ffff_ffff;
    Some(v as u32)
}

#[inline]
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
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

/// Length of a version `00` `traceparent` value.
pub(crate) const TRACEPARENT_LEN: usize = 55;

/// W3C Trace Context: at most 32 `tracestate` list-members.
pub(crate) const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest a valid `tracestate` can be: 32 members of a 256-character
/// key, `=` and a 256-character value, with a comma and one optional
/// whitespace character on each side between members. Longer values are
/// discarded without being parsed.
pub(crate) const TRACESTATE_CEILING: usize =
    MAX_TRACESTATE_MEMBERS * (256 + 1 + 256) + (MAX_TRACESTATE_MEMBERS - 1) * 3;

/// W3C Trace Context: vendors should propagate at least 512 characters of
/// `tracestate`; this crate keeps at most that many on extract.
pub(crate) const TRACESTATE_KEEP_LEN: usize = 512;

/// W3C Trace Context: entries over this many characters are removed first
/// when `tracestate` has to be truncated.
const TRACESTATE_LONG_ENTRY: usize = 128;

/// W3C Baggage: at most 180 list-members.
pub(crate) const MAX_BAGGAGE_MEMBERS: usize = 180;

/// W3C Baggage: at most 8192 bytes for the whole `baggage` value.
pub(crate) const MAX_BAGGAGE_LEN: usize = 8192;

/// Each byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    table
};

/// Formats a version `00` `traceparent` into a stack buffer, as the SDK's
/// `TraceContextPropagator` does (flags reduced to the sampled bit).
pub(crate) fn format_traceparent(
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
) -> [u8; TRACEPARENT_LEN] {
    let mut buf = [b'-'; TRACEPARENT_LEN];
    buf[0] = b'0';
    buf[1] = b'0';
    for (i, byte) in trace_id.to_bytes().into_iter().enumerate() {
        let [hi, lo] = HEX_PAIRS[usize::from(byte)];
        buf[3 + 2 * i] = hi;
        buf[4 + 2 * i] = lo;
    }
    for (i, byte) in span_id.to_bytes().into_iter().enumerate() {
        let [hi, lo] = HEX_PAIRS[usize::from(byte)];
        buf[36 + 2 * i] = hi;
        buf[37 + 2 * i] = lo;
    }
    let [hi, lo] = HEX_PAIRS[usize::from((flags & TraceFlags::SAMPLED).to_u8())];
    buf[53] = hi;
    buf[54] = lo;
    buf
}

/// The `traceparent` value as a `String`: one allocation.
pub(crate) fn traceparent_string(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    let buf = format_traceparent(trace_id, span_id, flags);
    // Only ASCII hex digits and dashes: the conversion cannot fail.
    String::from_utf8(buf.to_vec()).unwrap_or_default()
}

/// The `tracestate` header value, or `None` when it is empty (the SDK
/// writes an empty header; W3C allows leaving it out). Members past the
/// 32nd are dropped; the second value says how many.
pub(crate) fn tracestate_value(trace_state: &TraceState) -> Option<(String, usize)> {
    let total = trace_state.into_iter().len();
    if total == 0 {
        return None;
    }
    let kept = total.min(MAX_TRACESTATE_MEMBERS);
    let len = trace_state
        .into_iter()
        .take(kept)
        .map(|(k, v)| k.len() + 1 + v.len())
        .sum::<usize>()
        + kept
        - 1;
    let mut out = String::with_capacity(len);
    for (i, (k, v)) in trace_state.into_iter().take(kept).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    Some((out, total - kept))
}

/// Whether a byte of a baggage key (`in_value == false`) or value must be
/// percent-encoded.
///
/// The SDK's `BaggagePropagator` set (controls, non-ASCII, space, `"`, `,`,
/// `;`, `=`), plus, in values, the two W3C requires that the SDK leaves
/// as is: `%` (so that `100%25` does not arrive as `100%`) and `\`.
#[inline]
fn must_encode(b: u8, in_value: bool) -> bool {
    !(0x20..0x7f).contains(&b)
        || matches!(b, b' ' | b'"' | b',' | b';' | b'=')
        || (in_value && matches!(b, b'%' | b'\\'))
}

fn push_encoded(out: &mut String, s: &str, in_value: bool) {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if must_encode(b, in_value) {
            out.push('%');
            out.push(char::from(UPPER[usize::from(b >> 4)]));
            out.push(char::from(UPPER[usize::from(b & 0x0f)]));
        } else {
            out.push(char::from(b));
        }
    }
}

/// The `baggage` header value for `cx`, or `None` when the context has no
/// baggage.
///
/// Written the way the SDK's `BaggagePropagator` writes it (members in the
/// baggage's order, key and value trimmed and percent-encoded, metadata
/// after `;`), except that `%` and `\` in values are percent-encoded too,
/// as W3C Baggage requires. Whole members are dropped to stay within 180
/// members and 8192 bytes; the second value says how many.
pub(crate) fn baggage_value(cx: &Context) -> Option<(String, usize)> {
    let baggage = cx.baggage();
    if baggage.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(64);
    let (mut kept, mut dropped) = (0usize, 0usize);
    for (key, (value, metadata)) in baggage {
        let mark = out.len();
        if kept > 0 {
            out.push(',');
        }
        push_encoded(&mut out, key.as_str().trim(), false);
        out.push('=');
        push_encoded(&mut out, value.as_str().trim(), true);
        let metadata = metadata.as_str().trim();
        if !metadata.is_empty() {
            out.push(';');
            out.push_str(metadata);
        }
        if kept == MAX_BAGGAGE_MEMBERS || out.len() > MAX_BAGGAGE_LEN {
            // Never a partial member: take this one back out whole.
            out.truncate(mark);
            dropped += 1;
            continue;
        }
        kept += 1;
    }
    (kept > 0).then_some((out, dropped))
}

/// What happened to an incoming `tracestate` or `baggage` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListIssue {
    /// More list-members than W3C allows; the value was discarded.
    TooManyMembers { members: usize, limit: usize },
    /// Longer than any valid value can be; discarded.
    TooLong { len: usize, limit: usize },
    /// A member breaks the syntax; the value was discarded.
    Invalid,
    /// Entries were removed to keep the value within its length limit.
    Truncated { dropped: usize, limit: usize },
}

impl ListIssue {
    /// A note for the extraction record, e.g.
    /// `"tracestate discarded: 40 list-members (W3C allows 32)"`.
    pub(crate) fn note(&self, header: &str) -> String {
        match *self {
            Self::TooManyMembers { members, limit } => format!(
                "{header} discarded: {members} list-members (W3C allows {limit}); the trace continues"
            ),
            Self::TooLong { len, limit } => format!(
                "{header} discarded: {len} bytes (limit {limit}); the trace continues"
            ),
            Self::Invalid => {
                format!("{header} discarded: not a valid W3C list; the trace continues")
            }
            Self::Truncated { dropped, limit } => format!(
                "{header} truncated to {limit} characters: {dropped} entries removed, as W3C \
                 specifies (longest first, then from the end)"
            ),
        }
    }
}

/// Optional whitespace around W3C list-members: space and tab.
#[inline]
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The position of the first `needle` in `bytes`: eight bytes at a time
/// (SWAR), the last word overlapping the one before; a byte loop for fewer
/// than eight bytes. List-members are short: this beats setting up a
/// `memchr` for every delimiter.
#[inline]
fn find_byte(bytes: &[u8], needle: u8) -> Option<usize> {
    let len = bytes.len();
    if len < 8 {
        return bytes.iter().position(|&b| b == needle);
    }
    let pattern = ONES * u64::from(needle);
    let mut at = 0;
    loop {
        let word = bytes
            .get(at..at + 8)
            .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
        let x = word ^ pattern;
        // "Has a zero byte": the lowest flagged byte is always a real zero
        // (false positives only ever sit above a real one).
        let found = x.wrapping_sub(ONES) & !x & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        if at + 8 >= len {
            return None;
        }
        // The bytes a last, overlapping word reads again hold no match.
        at = (at + 8).min(len - 8);
    }
}

/// Whether `bytes` has a `needle`.
#[inline]
fn has_byte(bytes: &[u8], needle: u8) -> bool {
    find_byte(bytes, needle).is_some()
}

/// One non-empty, OWS-trimmed list-member of a `tracestate` value, split as
/// the SDK's `TraceState::from_str` splits it: the key up to the first `=`,
/// the value after it with any further leading `=`s stripped. `None` for a
/// member without `=`.
type TracestatePair<'a> = Option<(&'a str, &'a str)>;

/// The list-members of a `tracestate` value, in order: what
/// `value.split(',')`, trimmed of OWS, without the empty ones, gives, each
/// split at its first `=`.
struct TracestateMembers<'a> {
    value: &'a str,
    /// Where the next member starts; past the end when there is none.
    at: usize,
}

impl<'a> Iterator for TracestateMembers<'a> {
    type Item = TracestatePair<'a>;

    #[inline]
    fn next(&mut self) -> Option<TracestatePair<'a>> {
        let bytes = self.value.as_bytes();
        loop {
            let rest = bytes.get(self.at..)?;
            let mut start = self.at;
            let mut end = start + find_byte(rest, b',').unwrap_or(rest.len());
            self.at = end + 1;
            while start < end && is_ows(bytes[start]) {
                start += 1;
            }
            while end > start && is_ows(bytes[end - 1]) {
                end -= 1;
            }
            if start == end {
                continue;
            }
            // `,`, `=`, space and tab are ASCII: every bound is on a
            // character boundary.
            let member = bytes.get(start..end).unwrap_or_default();
            return Some(find_byte(member, b'=').and_then(|eq| {
                let key = self.value.get(start..start + eq)?;
                let mut from = start + eq + 1;
                while from < end && bytes[from] == b'=' {
                    from += 1;
                }
                Some((key, self.value.get(from..end)?))
            }));
        }
    }
}

fn tracestate_members(value: &str) -> TracestateMembers<'_> {
    TracestateMembers { value, at: 0 }
}

/// How many `tracestate` members are split on the stack in the first scan;
/// a longer list is split again in a second scan.
const TRACESTATE_INLINE: usize = 8;

/// Parses an incoming `tracestate` within the W3C limits.
///
/// Members are read the way the SDK's `TraceState::from_str` reads them
/// (OWS trimmed, empty members skipped, key up to the first `=`, leading
/// `=`s stripped from the value) and validated by
/// `TraceState::from_key_value`, so a valid value of at most 32 members and
/// 512 characters gives exactly the SDK's result. An invalid value gives
/// the empty trace state and an issue; the trace itself is never failed by
/// its `tracestate`.
///
/// One scan over the value for up to 8 members (split into borrowed pairs
/// on the stack), two for more; the only allocations are the ones
/// `TraceState` itself needs (a string per key and value, and its list).
pub(crate) fn parse_tracestate(value: &str) -> (TraceState, Option<ListIssue>) {
    if value.len() > TRACESTATE_CEILING {
        return (
            TraceState::NONE,
            Some(ListIssue::TooLong {
                len: value.len(),
                limit: TRACESTATE_CEILING,
            }),
        );
    }
    let mut inline = [("", ""); TRACESTATE_INLINE];
    let mut members = 0usize;
    // Every member is checked for its `=` (an invalid list is reported as
    // such, however long); past the 32nd they are only counted.
    for pair in tracestate_members(value) {
        let Some(pair) = pair else {
            return (TraceState::NONE, Some(ListIssue::Invalid));
        };
        if let Some(slot) = inline.get_mut(members) {
            *slot = pair;
        }
        members += 1;
    }
    if members > MAX_TRACESTATE_MEMBERS {
        return (
            TraceState::NONE,
            Some(ListIssue::TooManyMembers {
                members,
                limit: MAX_TRACESTATE_MEMBERS,
            }),
        );
    }
    let parsed = match inline.get(..members) {
        Some(pairs) => TraceState::from_key_value(pairs.iter().copied()),
        // Every member has its `=` (checked above): nothing is left out.
        None => TraceState::from_key_value(tracestate_members(value).flatten()),
    };
    let Ok(trace_state) = parsed else {
        return (TraceState::NONE, Some(ListIssue::Invalid));
    };
    if value.len() <= TRACESTATE_KEEP_LEN {
        return (trace_state, None);
    }
    truncate_tracestate(trace_state)
}

/// Keeps `tracestate` within 512 characters the W3C way: whole entries,
/// those over 128 characters first, then from the end.
fn truncate_tracestate(trace_state: TraceState) -> (TraceState, Option<ListIssue>) {
    let lens: Vec<usize> = trace_state
        .into_iter()
        .map(|(k, v)| k.len() + 1 + v.len())
        .collect();
    let header_len = |keep: &[bool]| {
        let (len, n) = lens
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .fold((0, 0), |(len, n), (l, _)| (len + l, n + 1));
        len + n.max(1) - 1
    };
    let mut keep = vec![true; lens.len()];
    if header_len(&keep) <= TRACESTATE_KEEP_LEN {
        return (trace_state, None);
    }
    for (k, len) in keep.iter_mut().zip(&lens) {
        if *len > TRACESTATE_LONG_ENTRY {
            *k = false;
        }
    }
    for i in (0..lens.len()).rev() {
        if header_len(&keep) <= TRACESTATE_KEEP_LEN {
            break;
        }
        keep[i] = false;
    }
    let dropped = keep.iter().filter(|k| !**k).count();
    let kept = trace_state
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(e, _)| e);
    // The entries were valid when parsed, so rebuilding cannot fail.
    let truncated = TraceState::from_key_value(kept).unwrap_or_default();
    (
        truncated,
        Some(ListIssue::Truncated {
            dropped,
            limit: TRACESTATE_KEEP_LEN,
        }),
    )
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
    fn swar_hex_matches_a_byte_loop() {
        let naive = |d: &[u8]| -> Option<u32> {
            d.iter()
                .try_fold(0u32, |n, &c| Some((n << 4) | u32::from(hex_digit(c)?)))
        };
        let base = *b"0123abcd";
        for c in 0..=255u8 {
            for at in 0..8 {
                let mut d = base;
                d[at] = c;
                assert_eq!(hex8(&d), naive(&d), "{c:#x} at {at}");
            }
        }
        assert_eq!(hex8(b"ffffffff"), Some(u32::MAX));
        assert_eq!(hex8(b"00000000"), Some(0));
        assert_eq!(hex8(b"0123456"), None);
        assert_eq!(hex_u64(b"0af7651916cd43dd"), Some(0x0af7651916cd43dd));
        assert_eq!(hex_u64(b"0af7651916cd43d"), None);
    }

    #[test]
    fn formats_like_the_sdk() {
        let buf = format_traceparent(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0xb7ad6b7169203331),
            TraceFlags::new(0x03),
        );
        assert_eq!(&buf[..], VALID.as_bytes());
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

/// The fast path against the SDK's `TraceContextPropagator` +
/// `BaggagePropagator`, on random contexts and random (often broken) headers.
#[cfg(test)]
mod parity_tests {
    use std::collections::HashMap;

    use async_nats::HeaderMap;
    use opentelemetry::baggage::{Baggage, BaggageExt};
    use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
    use opentelemetry::trace::{SpanContext, TraceContextExt};
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use proptest::prelude::*;

    use super::super::extract::extract_w3c;
    use super::super::headers::HeaderInjector;
    use super::super::record::{ContextSource, NoContextReason};
    use super::*;

    fn sdk() -> TextMapCompositePropagator {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    }

    /// The hand-written way: exact-match lookups in the header map.
    struct Exact<'a>(&'a HeaderMap);

    impl Extractor for Exact<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(|v| v.as_str())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k.as_ref()).collect()
        }
    }

    fn sorted_baggage(cx: &Context) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| (k.to_string(), v.to_string(), m.as_str().to_owned()))
            .collect();
        v.sort();
        v
    }

    fn tracestate_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9_*/-]{0,12}",
            "[a-z0-9][a-z0-9_*/-]{0,8}@[a-z][a-z0-9_*/-]{0,6}",
        ]
    }

    fn tracestate_value_str() -> impl Strategy<Value = String> {
        "[!-+\\--<>-~]([ !-+\\--<>-~]{0,14}[!-+\\--<>-~])?"
    }

    fn trace_state() -> impl Strategy<Value = TraceState> {
        prop::collection::vec((tracestate_key(), tracestate_value_str()), 0..=32).prop_map(|kvs| {
            // Later duplicates of a key would make a different list; keep
            // the first of each.
            let mut seen = std::collections::HashSet::new();
            let kvs: Vec<_> = kvs
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect();
            TraceState::from_key_value(kvs).unwrap()
        })
    }

    fn baggage() -> impl Strategy<Value = Baggage> {
        prop::collection::vec(
            (
                "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
                // `%` and `\\` are encoded on purpose where the SDK does
                // not; see `baggage_percent_and_backslash_are_encoded`.
                "[^%\\\\\\p{C}]{0,16}",
                prop_oneof![Just(String::new()), "[a-z]{1,5}(=[a-z0-9]{1,5})?"],
            ),
            0..8,
        )
        .prop_map(|kvs| {
            let mut b = Baggage::new();
            for (k, v, m) in kvs {
                b.insert_with_metadata(k, v, m);
            }
            b
        })
    }

    fn context() -> impl Strategy<Value = Context> {
        (
            any::<u128>(),
            any::<u64>(),
            any::<u8>(),
            any::<bool>(),
            trace_state(),
            baggage(),
        )
            .prop_map(|(t, s, f, remote, ts, b)| {
                let sc = SpanContext::new(
                    TraceId::from(t),
                    SpanId::from(s),
                    TraceFlags::new(f),
                    remote,
                    ts,
                );
                Context::new().with_remote_span_context(sc).with_baggage(b)
            })
    }

    fn hex(n: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&b"0123456789abcdef"[..]), n)
            .prop_map(|v| String::from_utf8(v).unwrap())
    }

    /// Valid `traceparent`s, and the same with one random mutation.
    fn traceparent() -> impl Strategy<Value = String> {
        let version = prop_oneof![4 => Just("00".to_owned()), 1 => hex(2)];
        let valid = || {
            (
                version.clone(),
                hex(32),
                hex(16),
                hex(2),
                "(-[a-z0-9-]{0,6})?",
            )
                .prop_map(|(v, t, s, f, rest)| {
                    let rest = if v == "00" { String::new() } else { rest };
                    format!("{v}-{t}-{s}-{f}{rest}")
                })
        };
        let mutated = (
            valid(),
            any::<prop::sample::Index>(),
            prop::sample::select(vec![
                "A", "F", "g", "-", " ", "0", "+", "z", "", "00", "\t", "ff", "--",
            ]),
            0..5u8,
        )
            .prop_map(|(s, i, ins, op)| {
                let at = i.index(s.len() + 1);
                let mut s = s;
                match op {
                    0 => s.insert_str(at, ins),
                    1 if at < s.len() => {
                        s.replace_range(at..at + 1, ins);
                    }
                    2 => s.truncate(at),
                    3 => s = s.to_ascii_uppercase(),
                    _ => s.push_str(ins),
                }
                s
            });
        let zeros = Just("00-00000000000000000000000000000000-b7ad6b7169203331-01".to_owned());
        prop_oneof![
            4 => valid(),
            6 => mutated,
            1 => zeros,
            1 => "[0-9a-fA-F +-]{0,60}",
        ]
    }

    /// `tracestate` strings, valid or not, with optional whitespace.
    fn tracestate_header() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            8 => (tracestate_key(), tracestate_value_str()).prop_map(|(k, v)| format!("{k}={v}")),
            1 => "[ -~]{0,10}",
            1 => Just(String::new()),
        ];
        (
            prop::collection::vec(member, 0..=34),
            prop::sample::select(vec![",", ", ", " ,\t"]),
        )
            .prop_map(|(members, sep)| members.join(sep))
    }

    fn baggage_header() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            6 => ("[a-zA-Z0-9_.-]{1,10}", "[a-zA-Z0-9%_ .-]{0,12}", "(;[a-z]{1,4}(=[a-z]{1,3})?)?")
                .prop_map(|(k, v, m)| format!("{k}={v}{m}")),
            1 => "[ -~]{0,12}",
        ];
        prop::collection::vec(member, 0..12).prop_map(|m| m.join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn inject_matches_sdk(cx in context()) {
            let mut ours = HeaderMap::new();
            let mut injector = HeaderInjector::new(&mut ours);
            injector.inject_w3c(&cx);
            prop_assert!(injector.skipped().is_empty());

            let mut theirs: HashMap<String, String> = HashMap::new();
            sdk().inject_context(&cx, &mut theirs);

            for (name, value) in &theirs {
                // By default each field is written lowercase, as the SDK
                // does, and again under Go's canonical name.
                let canonical = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
                for name in [name.as_str(), canonical.as_str()] {
                    let got = ours.get(name).map(|v| v.as_str());
                    if name.eq_ignore_ascii_case(TRACESTATE) && value.is_empty() {
                        prop_assert_eq!(got, None, "empty tracestate is left out");
                    } else {
                        prop_assert_eq!(got, Some(value.as_str()), "{}", name);
                    }
                }
            }
            let expected = theirs
                .iter()
                .filter(|(n, v)| !(n.as_str() == TRACESTATE && v.is_empty()))
                .count();
            prop_assert_eq!(ours.len(), 2 * expected);
        }

        #[test]
        fn extract_matches_sdk(
            tp in prop::option::weighted(0.95, traceparent()),
            ts in prop::option::of(tracestate_header()),
            bg in prop::option::of(baggage_header()),
        ) {
            let mut headers = HeaderMap::new();
            headers.insert("job-id", "7");
            for (name, value) in [(TRACEPARENT, &tp), (TRACESTATE, &ts), (BAGGAGE, &bg)] {
                if let Some(value) = value {
                    headers.insert(name, value.as_str());
                }
            }
            let (ours, record) = extract_w3c(&headers);
            let theirs = sdk().extract_with_context(&Context::new(), &Exact(&headers));
            let (o, t) = (ours.span().span_context().clone(), theirs.span().span_context().clone());

            let w3c_valid = tp.as_deref().is_some_and(|v| parse_traceparent(v).is_ok());
            prop_assert_eq!(o.is_valid(), w3c_valid);
            prop_assert_eq!(record.source() == ContextSource::Headers, w3c_valid);
            if o.is_valid() {
                // Everything the fast path accepts, the SDK accepts the same way.
                prop_assert!(t.is_valid());
                prop_assert_eq!(o.trace_id(), t.trace_id());
                prop_assert_eq!(o.span_id(), t.span_id());
                prop_assert_eq!(o.trace_flags(), t.trace_flags());
                prop_assert!(o.is_remote() && t.is_remote());
                let raw_ts = ts.as_deref().unwrap_or("");
                let segments = raw_ts.split_terminator(',').count();
                if raw_ts.len() <= TRACESTATE_KEEP_LEN && segments <= MAX_TRACESTATE_MEMBERS {
                    prop_assert_eq!(o.trace_state(), t.trace_state());
                } else {
                    prop_assert!(o.trace_state().header().len() <= TRACESTATE_KEEP_LEN);
                }
            } else {
                let explained = !matches!(
                    record.reason(),
                    None | Some(NoContextReason::PropagatorRejected { .. })
                );
                prop_assert!(explained, "reason: {:?}", record.reason());
            }
            prop_assert_eq!(sorted_baggage(&ours), sorted_baggage(&theirs));
        }
    }

    #[test]
    fn baggage_percent_and_backslash_are_encoded() {
        let values = [
            "100%", "100%25", "a%00b", "%%", "50 % off", "C:\\dir", "é,;=\"",
        ];
        for value in values {
            let cx = Context::new().with_baggage([opentelemetry::KeyValue::new("v", value)]);
            let (header, dropped) = baggage_value(&cx).unwrap();
            assert_eq!(dropped, 0);
            assert!(
                !header[2..].contains(['\\', ',', ';', '"', ' ']),
                "{header}"
            );
            // Every `%` on the wire starts an escape.
            assert!(
                header.match_indices('%').all(|(i, _)| header[i + 1..]
                    .bytes()
                    .take(2)
                    .filter(u8::is_ascii_hexdigit)
                    .count()
                    == 2),
                "{header}"
            );
            // The SDK's extraction gives the value back unchanged.
            let mut headers = HeaderMap::new();
            headers.insert(BAGGAGE, header.as_str());
            let back = sdk().extract_with_context(&Context::new(), &Exact(&headers));
            assert_eq!(
                back.baggage().get("v").map(|v| v.as_str()),
                Some(value),
                "{header}"
            );
        }
    }

    #[test]
    fn sdk_leniencies_are_rejected() {
        // The SDK accepts these; W3C does not.
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-1-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, value);
            let (cx, record) = extract_w3c(&headers);
            assert!(!cx.span().span_context().is_valid(), "{value}");
            assert_eq!(record.reason().unwrap().as_str(), "malformed_traceparent");
            let sdk_cx = sdk().extract_with_context(&Context::new(), &Exact(&headers));
            assert!(
                sdk_cx.span().span_context().is_valid(),
                "the SDK accepts {value}"
            );
        }
    }
}

/// The W3C limits, both ways.
#[cfg(test)]
mod limit_tests {
    use async_nats::HeaderMap;
    use opentelemetry::baggage::{Baggage, BaggageExt};
    use opentelemetry::trace::{SpanContext, TraceContextExt};

    use super::super::extract::extract_w3c;
    use super::super::headers::{HeaderInjector, HeaderNames, InjectSkip};
    use super::super::record::{ContextSource, NoContextReason};
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn members(n: usize) -> String {
        (0..n)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn tracestate_over_32_members_is_discarded_not_fatal() {
        let (ts, issue) = parse_tracestate(&members(33));
        assert_eq!(ts, TraceState::NONE);
        assert_eq!(
            issue,
            Some(ListIssue::TooManyMembers {
                members: 33,
                limit: 32
            })
        );
        let (ts, issue) = parse_tracestate(&members(32));
        assert_eq!(ts.into_iter().len(), 32);
        assert_eq!(issue, None);

        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, VALID);
        headers.insert(TRACESTATE, members(40).as_str());
        let (cx, record) = extract_w3c(&headers);
        assert!(cx.span().span_context().is_valid());
        assert_eq!(cx.span().span_context().trace_state(), &TraceState::NONE);
        assert_eq!(record.source(), ContextSource::Headers);
        assert!(
            record.notes()[0].contains("40 list-members"),
            "{:?}",
            record.notes()
        );
    }

    #[test]
    fn huge_and_invalid_tracestate_are_discarded() {
        let huge = format!("a={}", "x".repeat(60 * 1024));
        assert!(matches!(
            parse_tracestate(&huge),
            (_, Some(ListIssue::TooLong { .. }))
        ));
        assert_eq!(
            parse_tracestate("a=1,novalue"),
            (TraceState::NONE, Some(ListIssue::Invalid))
        );
        assert_eq!(
            parse_tracestate("A=1"),
            (TraceState::NONE, Some(ListIssue::Invalid))
        );
        assert_eq!(parse_tracestate(""), (TraceState::NONE, None));
    }

    #[test]
    fn tracestate_over_512_is_truncated_the_w3c_way() {
        // 20 entries of 30 characters (600 with commas) and one long one.
        let mut entries: Vec<String> = (0..20)
            .map(|i| format!("k{i:02}={}", "v".repeat(26)))
            .collect();
        entries.insert(3, format!("long={}", "l".repeat(140)));
        let (ts, issue) = parse_tracestate(&entries.join(","));
        let header = ts.header();
        assert!(header.len() <= TRACESTATE_KEEP_LEN, "{}", header.len());
        assert!(ts.get("long").is_none(), "long entries go first");
        assert!(ts.get("k00").is_some(), "then from the end");
        assert!(ts.get("k19").is_none());
        assert!(matches!(issue, Some(ListIssue::Truncated { .. })));
    }

    #[test]
    fn inject_caps_baggage_at_8192_bytes_whole_members() {
        let mut baggage = Baggage::new();
        // 60 members of ~200 encoded bytes (é is 6 bytes encoded): ~12 KB.
        for i in 0..60 {
            baggage.insert(format!("key{i:02}"), "é".repeat(32));
        }
        let cx = Context::new().with_baggage(baggage);
        let mut headers = HeaderMap::new();
        let mut injector = HeaderInjector::new(&mut headers);
        injector.inject_w3c(&cx);
        let skipped = injector.into_skipped();
        let value = headers.get(BAGGAGE).unwrap().as_str();
        assert!(value.len() <= MAX_BAGGAGE_LEN);
        let kept = value.split(',').count();
        for member in value.split(',') {
            let (key, encoded) = member.split_once('=').unwrap();
            assert!(key.starts_with("key"));
            assert_eq!(encoded.len(), 32 * 6, "members are whole");
        }
        assert_eq!(
            skipped,
            vec![InjectSkip::MembersDropped {
                name: BAGGAGE.into(),
                dropped: 60 - kept
            }]
        );
    }

    #[test]
    fn generic_injector_caps_lists() {
        let mut headers = HeaderMap::new();
        let mut injector = HeaderInjector::new(&mut headers);
        use opentelemetry::propagation::Injector;
        injector.set(TRACESTATE, members(40));
        let b = (0..200)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        injector.set(BAGGAGE, b);
        injector.set(
            BAGGAGE.to_uppercase().as_str(),
            format!("big={}", "x".repeat(9000)),
        );
        let skipped = injector.into_skipped();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[2].to_string().contains("8192 bytes"));
        assert_eq!(headers.get(TRACESTATE).unwrap().as_str(), members(32));
        // The oversize single member replaced nothing: the 180 stayed.
        assert_eq!(
            headers.get(BAGGAGE).unwrap().as_str().split(',').count(),
            180
        );
    }

    #[test]
    fn inject_skips_empty_tracestate_and_absent_baggage() {
        let sc = SpanContext::new(
            TraceId::from(1),
            SpanId::from(2),
            TraceFlags::new(0xff),
            false,
            TraceState::NONE,
        );
        let mut headers = HeaderMap::new();
        let cx = Context::new().with_remote_span_context(sc);
        HeaderInjector::new(&mut headers)
            .header_names(HeaderNames::Lowercase)
            .inject_w3c(&cx);
        assert_eq!(headers.len(), 1);
        assert_eq!(
            headers.get(TRACEPARENT).unwrap().as_str(),
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
        // Go's name alone, and both (the default).
        let mut headers = HeaderMap::new();
        HeaderInjector::new(&mut headers)
            .header_names(HeaderNames::Canonical)
            .inject_w3c(&cx);
        assert_eq!(headers.len(), 1);
        assert!(headers.get("Traceparent").is_some());
        let mut headers = HeaderMap::new();
        HeaderInjector::new(&mut headers).inject_w3c(&cx);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers.get("Traceparent"), headers.get(TRACEPARENT));
        // No valid span: nothing at all.
        let mut headers = HeaderMap::new();
        HeaderInjector::new(&mut headers).inject_w3c(&Context::new());
        assert!(headers.is_empty());
    }

    #[test]
    fn duplicate_traceparents_with_different_values_are_ambiguous() {
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        // Two values under one name.
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, VALID);
        headers.append(TRACEPARENT, other);
        let (cx, record) = extract_w3c(&headers);
        assert!(!cx.span().span_context().is_valid());
        let Some(NoContextReason::AmbiguousTraceparent {
            headers: names,
            values,
        }) = record.reason()
        else {
            panic!("{record:?}");
        };
        assert_eq!(names.len(), 2);
        assert!(values.contains(&VALID.to_owned()) && values.contains(&other.to_owned()));
        assert!(record.reason().unwrap().to_string().contains("disagree"));

        // Two casings.
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, VALID);
        headers.insert("Traceparent", other);
        let (_, record) = extract_w3c(&headers);
        assert_eq!(record.reason().unwrap().as_str(), "ambiguous_traceparent");
        let (_, record) = super::super::extract::extract_headers(
            &crate::propagation::PropagatorChoice::custom(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            ),
            Some(&headers),
        );
        assert_eq!(record.reason().unwrap().as_str(), "ambiguous_traceparent");

        // The same value twice (and in two casings) is fine; exact name wins.
        let mut headers = HeaderMap::new();
        headers.append("Traceparent", VALID);
        headers.append("Traceparent", VALID);
        headers.insert(TRACEPARENT, format!(" {VALID}").as_str());
        let (cx, record) = extract_w3c(&headers);
        assert!(cx.span().span_context().is_valid());
        assert_eq!(record.header_name(), None);
    }

    #[test]
    fn go_casing_and_baggage_without_span() {
        let mut headers = HeaderMap::new();
        headers.insert("Traceparent", VALID);
        headers.insert("Tracestate", "congo=t61rcWkgMzE");
        headers.insert("Baggage", "user=%C3%A9,tenant=7");
        let (cx, record) = extract_w3c(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(record.header_name(), Some("Traceparent"));
        assert_eq!(
            cx.baggage().get("user").map(|v| v.as_str().to_owned()),
            Some("é".into())
        );

        let mut headers = HeaderMap::new();
        headers.insert(BAGGAGE, "user=a");
        let (cx, record) = extract_w3c(&headers);
        assert_eq!(record.reason().unwrap().as_str(), "no_traceparent");
        assert_eq!(cx.baggage().len(), 1);

        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, VALID);
        headers.insert(BAGGAGE, format!("a={}", "x".repeat(9000)).as_str());
        let (cx, record) = extract_w3c(&headers);
        assert!(cx.span().span_context().is_valid());
        assert!(cx.baggage().is_empty());
        assert!(record.notes()[0].starts_with("baggage discarded"));
    }

    #[test]
    fn hostile_values_never_panic() {
        let weird = [
            "",
            " ",
            "\u{0}\u{1}",
            "ж",
            "00-ж",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0ж",
            "-----",
            "ff-ff-ff-ff",
        ];
        for value in weird {
            for name in [TRACEPARENT, TRACESTATE, BAGGAGE] {
                let mut headers = HeaderMap::new();
                headers.insert(TRACEPARENT, VALID);
                headers.insert(name, value);
                let _ = extract_w3c(&headers);
                let _ = super::super::extract::extract_headers(
                    &crate::propagation::PropagatorChoice::custom(
                        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                    ),
                    Some(&headers),
                );
            }
        }
    }
}

/// The single-pass `tracestate` and `baggage` decoders against the code
/// they replaced (the `tracestate` splitter this crate had, and the SDK's
/// `BaggagePropagator`), on tricky inputs and random ones.
#[cfg(test)]
mod fast_path_tests {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry_sdk::propagation::BaggagePropagator;
    use proptest::prelude::*;

    use super::*;

    /// The `tracestate` parser as it was: `split`, `trim_matches`, `find`,
    /// then `TraceState::from_key_value`.
    fn parse_tracestate_reference(value: &str) -> (TraceState, Option<ListIssue>) {
        fn members(value: &str) -> impl Iterator<Item = &str> {
            value
                .split(',')
                .map(|m| m.trim_matches([' ', '\t']))
                .filter(|m| !m.is_empty())
        }
        if value.len() > TRACESTATE_CEILING {
            return (
                TraceState::NONE,
                Some(ListIssue::TooLong {
                    len: value.len(),
                    limit: TRACESTATE_CEILING,
                }),
            );
        }
        let mut count = 0usize;
        for member in members(value) {
            count += 1;
            if !member.contains('=') {
                return (TraceState::NONE, Some(ListIssue::Invalid));
            }
        }
        if count > MAX_TRACESTATE_MEMBERS {
            return (
                TraceState::NONE,
                Some(ListIssue::TooManyMembers {
                    members: count,
                    limit: MAX_TRACESTATE_MEMBERS,
                }),
            );
        }
        let pairs = members(value).map(|member| {
            let (key, value) = member.split_at(member.find('=').unwrap_or(member.len()));
            (key, value.trim_start_matches('='))
        });
        let Ok(trace_state) = TraceState::from_key_value(pairs) else {
            return (TraceState::NONE, Some(ListIssue::Invalid));
        };
        if value.len() <= TRACESTATE_KEEP_LEN {
            return (trace_state, None);
        }
        truncate_tracestate(trace_state)
    }

    /// Offers one value under any key: the SDK's propagator reads it.
    struct One<'a>(&'a str);

    impl Extractor for One<'_> {
        fn get(&self, _key: &str) -> Option<&str> {
            Some(self.0)
        }

        fn keys(&self) -> Vec<&str> {
            vec![BAGGAGE]
        }
    }

    /// A context's baggage, sorted: key, value, metadata.
    fn entries(cx: &Context) -> Vec<(String, String, String)> {
        let mut entries: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| (k.to_string(), v.to_string(), m.as_str().to_owned()))
            .collect();
        entries.sort();
        entries
    }

    fn check_tracestate(value: &str) {
        let ours = parse_tracestate(value);
        assert_eq!(ours, parse_tracestate_reference(value), "{value:?}");
        // Within the limits, the SDK's own parser agrees (it looks at the
        // first 32 segments only, empty ones included).
        if ours.1.is_none() && value.split_terminator(',').count() <= MAX_TRACESTATE_MEMBERS {
            let sdk: TraceState = value.parse().expect("the SDK accepts it too");
            assert_eq!(ours.0, sdk, "{value:?}");
        }
    }

    fn check_baggage(value: &str) {
        let cx = Context::new();
        let (ours, issue) = extract_baggage(cx.clone(), value);
        let theirs = BaggagePropagator::new().extract_with_context(&cx, &One(value));
        assert_eq!(entries(&ours), entries(&theirs), "{value:?}");
        assert_eq!(ours.baggage().len(), theirs.baggage().len(), "{value:?}");
        assert_eq!(issue.is_some(), value.len() > MAX_BAGGAGE_LEN, "{value:?}");
    }

    fn members(n: usize, sep: &str) -> String {
        (0..n)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(sep)
    }

    #[test]
    fn tracestate_matches_the_splitter_it_replaced() {
        let long_key = format!("{}=v", "k".repeat(256));
        let too_long_key = format!("{}=v", "k".repeat(257));
        let long_value = format!("k={}", "v".repeat(256));
        let entries: Vec<String> = (0..20)
            .map(|i| format!("k{i:02}={}", "v".repeat(26)))
            .collect();
        let over_512 = entries.join(",");
        let with_long_entry = format!("a=1,long={},{over_512}", "l".repeat(140));
        let fixed = [
            "",
            ",",
            " , ,\t,",
            "a=1",
            " a=1 ",
            "\ta=1\t",
            "a=1,,b=2",
            "a=1 ,\tb=2",
            "a=1 , \t b=2 \t",
            "a==1",
            "a===",
            "a=",
            "a=1=2",
            "a",
            "a=1,b",
            "=1",
            "a=1,=",
            "A=1",
            "a@b=1",
            "a@=1",
            "1a=1",
            "a=é",
            "é=1",
            "a=1,é",
            "a= 1",
            "a=1 2",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            "a=1,a=2",
            "0==",
            "==",
            "a=,=",
            long_key.as_str(),
            too_long_key.as_str(),
            long_value.as_str(),
            over_512.as_str(),
            with_long_entry.as_str(),
        ];
        for value in fixed {
            check_tracestate(value);
        }
        for sep in [",", ", ", " ,\t", ",,", ", ,"] {
            for n in [1, 7, 8, 9, 31, 32, 33, 40] {
                check_tracestate(&members(n, sep));
                check_tracestate(&format!(" {} ", members(n, sep)));
                check_tracestate(&format!("{},b", members(n, sep)));
            }
        }
        assert_eq!(parse_tracestate(&members(32, ",")).0.into_iter().len(), 32);
        let huge = format!("a={}", "x".repeat(TRACESTATE_CEILING));
        check_tracestate(&huge);
    }

    #[test]
    fn baggage_matches_the_sdk_propagator() {
        let over_64: String = (0..70)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let empty_then: String = format!("{}a=1", ",".repeat(64));
        let long_value = format!("a={}", "%41".repeat(200));
        let near_limit = format!("a={}", "x".repeat(MAX_BAGGAGE_LEN - 2));
        let over_limit = format!("a={}", "x".repeat(MAX_BAGGAGE_LEN - 1));
        let big_members: String = (0..3)
            .map(|i| format!("k{i}={}", "v".repeat(3000)))
            .collect::<Vec<_>>()
            .join(",");
        let fixed = [
            "",
            ",",
            ",,a=1,",
            "a=1",
            "user=%C3%A9-42,tenant=acme",
            "a=1,b=2;prop=1;flag",
            "a=b;",
            "a=b;;c",
            "a=b; p = q ;r",
            "a=b;p=%41;%FF;x%20",
            "a=b;%C3%A9",
            "a",
            "=b",
            "a=",
            "a=b=c",
            "a==c",
            "a;b=c",
            "a=b,a=c",
            "a=1,A=2,a=3",
            "  a  =  b  ",
            "%20a%20=%20b%20",
            "a=%C2%A0b%C2%A0",
            "a=\u{a0}b\u{a0}",
            "a=\u{3000}b\u{2029}",
            "a=\u{85}",
            "ключ=значение",
            "k=é",
            "k=%E2%80%AF",
            "k=%FF",
            "k=%C3",
            "%FF=v",
            "k=%",
            "k=100%",
            "k=%2",
            "k=%zz",
            "k=%%41",
            "k=%4a%4A",
            "k=%25",
            "k=a%2Cb%3Bc%3Dd",
            "a(b=1",
            "a b=1",
            "ä=1",
            "a/b=1",
            "\t=1",
            "a=\tb\t",
            "k=\u{1680}x\u{205f}",
            "%\u{a0}=",
            "0==",
            "==",
            "%==",
            over_64.as_str(),
            empty_then.as_str(),
            long_value.as_str(),
            near_limit.as_str(),
            over_limit.as_str(),
            big_members.as_str(),
        ];
        for value in fixed {
            check_baggage(value);
        }
    }

    #[test]
    fn trim_unicode_is_str_trim() {
        for c in (0..=0x10_ffff).filter_map(char::from_u32) {
            for s in [
                format!("{c}"),
                format!("{c}x"),
                format!("x{c}"),
                format!("{c}x{c}"),
                format!("{c}{c}é{c}"),
            ] {
                assert_eq!(trim_unicode(&s), s.trim(), "{:?}", c);
            }
        }
    }

    #[test]
    fn find_byte_is_position() {
        let mut bytes: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
        for len in 0..bytes.len() {
            for at in 0..len {
                for needle in [b',', b'=', b'%', 0x81] {
                    let saved = bytes[at];
                    bytes[at] = needle;
                    let slice = &bytes[..len];
                    assert_eq!(
                        find_byte(slice, needle),
                        slice.iter().position(|&b| b == needle),
                        "{len} {at} {needle}"
                    );
                    bytes[at] = saved;
                }
            }
            assert_eq!(find_byte(&bytes[..len], b','), None);
        }
        // Zero bytes and bytes just above the needle never match.
        assert_eq!(find_byte(b"\0\0\0\0\0\0\0\0-,", b','), Some(9));
        assert_eq!(
            find_byte(b"\x2d\x2d\x2d\x2d\x2d\x2d\x2d\x2d\x2c", b','),
            Some(8)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn random_tracestate(value in "[a-c0-9=,@*/_ \tA-Bé-]{0,48}") {
            check_tracestate(&value);
        }

        #[test]
        fn random_baggage(value in "[a-c0-9=,;% \tA-FéЖ\u{a0}\u{2028}()]{0,48}") {
            check_baggage(&value);
        }

        #[test]
        fn random_percent_baggage(
            parts in prop::collection::vec(
                prop_oneof![
                    Just("%".to_owned()),
                    "%[0-9A-Fa-fxX]{0,2}",
                    "[a-z]{1,3}",
                    Just("=".to_owned()),
                    Just(",".to_owned()),
                    Just(";".to_owned()),
                    Just(" ".to_owned()),
                ],
                0..16,
            )
        ) {
            check_baggage(&parts.concat());
        }
    }
}
