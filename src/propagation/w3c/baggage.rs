//! The incoming `baggage` value, read as OpenTelemetry's `BaggagePropagator`
//! reads it, in one pass over the bytes.

use opentelemetry::baggage::{Baggage, BaggageExt, BaggageMetadata};
use opentelemetry::Context;

use super::{has_byte, ListIssue, MAX_BAGGAGE_LEN};

/// Adds the baggage of an incoming `baggage` value to `cx`, read exactly
/// as the SDK's `BaggagePropagator` reads it ([`parse_baggage`]). A value
/// over 8192 bytes is discarded (the SDK does the same); the SDK's
/// `Baggage` keeps at most 64 members.
pub(crate) fn extract_baggage(cx: Context, value: &str) -> (Context, Option<ListIssue>) {
    if value.len() > MAX_BAGGAGE_LEN {
        return (
            cx,
            Some(ListIssue::TooLong {
                len: value.len(),
                limit: MAX_BAGGAGE_LEN,
            }),
        );
    }
    (cx.with_baggage(parse_baggage(value)), None)
}

/// How many `,`-separated segments of a `baggage` value the SDK's
/// `BaggagePropagator` looks at (empty and invalid ones count).
const SDK_BAGGAGE_SEGMENTS: usize = 64;

/// The baggage of a `baggage` value, with the SDK's `BaggagePropagator`
/// rules, to the byte:
///
/// - the first 64 `,`-separated segments, each split at its first `;` into
///   the member and its properties;
/// - the key is what precedes the member's first `=`, the value what lies
///   between its first and second `=` (a member without `=` is skipped);
/// - key and value are percent-decoded (`%` and two hex digits of either
///   case; any other `%` stays), then trimmed of Unicode whitespace; a
///   member whose key or value does not decode to UTF-8 is skipped;
/// - each property is percent-decoded (one that is not UTF-8 is left out)
///   and trimmed, and they are joined with `;` into the metadata;
/// - `Baggage::insert_with_metadata` applies the key rules, the 64-member
///   and 8192-byte limits, and "the last duplicate wins".
///
/// One scan of the bytes, without the SDK's per-member `Vec` and its
/// intermediate `String`s: a key or value is copied once, exactly sized,
/// from the header or from a stack buffer it was decoded into.
pub(crate) fn parse_baggage(value: &str) -> Baggage {
    let bytes = value.as_bytes();
    let mut baggage = Baggage::new();
    let mut segment = BaggageSegment::starting_at(0);
    let mut segments = 0;
    let mut at = 0;
    loop {
        // Most bytes are none of `,;=%`: skip them with one table look-up
        // each.
        while bytes
            .get(at)
            .is_some_and(|&b| BAGGAGE_DELIMITERS[usize::from(b)] == 0)
        {
            at += 1;
        }
        let Some(&delimiter) = bytes.get(at) else {
            segment.add_to(&mut baggage, value, bytes.len());
            break;
        };
        if delimiter == b',' {
            segment.add_to(&mut baggage, value, at);
            segments += 1;
            if segments == SDK_BAGGAGE_SEGMENTS {
                break;
            }
            segment = BaggageSegment::starting_at(at + 1);
        } else {
            segment.note(at, delimiter);
        }
        at += 1;
    }
    baggage
}

/// Which bytes of a `baggage` value [`parse_baggage`] stops at: `,` `;`
/// `=` `%` (non-zero entries).
static BAGGAGE_DELIMITERS: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b',' as usize] = 1;
    table[b';' as usize] = 1;
    table[b'=' as usize] = 1;
    table[b'%' as usize] = 1;
    table
};

/// Where the parts of one `,`-separated segment of a `baggage` value are,
/// as the SDK's `BaggagePropagator` splits it.
struct BaggageSegment {
    start: usize,
    /// The first `;`: the properties follow it.
    semicolon: Option<usize>,
    /// The first `=` before the `;`: the key precedes it.
    eq: Option<usize>,
    /// The second `=` before the `;`: the value ends there.
    eq2: Option<usize>,
    /// Whether the key, or the value, has a `%` to decode.
    key_escaped: bool,
    value_escaped: bool,
}

impl BaggageSegment {
    #[inline]
    fn starting_at(start: usize) -> Self {
        Self {
            start,
            semicolon: None,
            eq: None,
            eq2: None,
            key_escaped: false,
            value_escaped: false,
        }
    }

    /// Takes note of a `;`, `=` or `%` at `at`.
    #[inline]
    fn note(&mut self, at: usize, delimiter: u8) {
        if self.semicolon.is_some() {
            return;
        }
        match (delimiter, self.eq, self.eq2) {
            (b';', _, _) => self.semicolon = Some(at),
            (b'=', None, _) => self.eq = Some(at),
            (b'=', Some(_), None) => self.eq2 = Some(at),
            (b'%', None, _) => self.key_escaped = true,
            (b'%', Some(_), None) => self.value_escaped = true,
            _ => {}
        }
    }

    /// Adds the member of the segment, which ends at `end`, to `baggage`,
    /// when it has a key and a value that decode.
    #[inline]
    fn add_to(&self, baggage: &mut Baggage, value: &str, end: usize) {
        let Some(eq) = self.eq else {
            return;
        };
        let member_end = self.semicolon.unwrap_or(end);
        // Every bound is the position of an ASCII byte, or the end: all are
        // on character boundaries.
        let (Some(key), Some(val)) = (
            value.get(self.start..eq),
            value.get(eq + 1..self.eq2.unwrap_or(member_end)),
        ) else {
            return;
        };
        let (Some(key), Some(val)) = (
            decoded_trimmed(key, self.key_escaped),
            decoded_trimmed(val, self.value_escaped),
        ) else {
            return;
        };
        match self.semicolon.and_then(|at| value.get(at + 1..end)) {
            // The SDK's metadata for a member without properties: empty.
            None => baggage.insert_with_metadata(key, val, BaggageMetadata::default()),
            Some(properties) => {
                baggage.insert_with_metadata(key, val, baggage_metadata(properties).as_str())
            }
        };
    }
}

/// The properties of a baggage member (after its first `;`) as the SDK
/// joins them into metadata: each percent-decoded (left out when not
/// UTF-8) and trimmed, joined with `;`.
fn baggage_metadata(properties: &str) -> String {
    let mut out = String::with_capacity(properties.len());
    let mut first = true;
    for property in properties.split(';') {
        let Some(decoded) = percent_decoded(property) else {
            continue;
        };
        if !first {
            out.push(';');
        }
        first = false;
        out.push_str(decoded.trim());
    }
    out
}

/// Decodes `%` followed by two hex digits (either case) into the byte they
/// spell and copies every other byte, as `percent_encoding::percent_decode`
/// does; `out` must be at least as long as `raw`. Returns the decoded
/// length.
fn percent_decode_into(raw: &[u8], out: &mut [u8]) -> usize {
    let (mut i, mut n) = (0, 0);
    while let (Some(&b), Some(slot)) = (raw.get(i), out.get_mut(n)) {
        let (byte, step) = match (b, raw.get(i + 1), raw.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => {
                let (hi, lo) = (HEX_VALUES[usize::from(hi)], HEX_VALUES[usize::from(lo)]);
                if hi | lo < 0x10 {
                    ((hi << 4) | lo, 3)
                } else {
                    (b, 1)
                }
            }
            _ => (b, 1),
        };
        *slot = byte;
        n += 1;
        i += step;
    }
    n
}

/// Each byte's value as a hex digit of either case; `0xff` for the bytes
/// that are not hex digits.
static HEX_VALUES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// `raw` percent-decoded, or `None` when the result is not UTF-8 (what the
/// SDK's `percent_decode_str(raw).decode_utf8()` gives, as an `Option`).
pub(super) fn percent_decoded(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !has_byte(raw.as_bytes(), b'%') {
        return Some(std::borrow::Cow::Borrowed(raw));
    }
    let mut buf = vec![0u8; raw.len()];
    let len = percent_decode_into(raw.as_bytes(), &mut buf);
    buf.truncate(len);
    String::from_utf8(buf).ok().map(std::borrow::Cow::Owned)
}

/// Bytes of a key or value decoded on the stack before they are copied out.
const DECODE_ON_STACK: usize = 128;

/// `s` trimmed of Unicode whitespace, exactly as `str::trim` does, without
/// decoding characters when neither end can be whitespace.
///
/// Every whitespace character (`char::is_whitespace`) starts with an ASCII
/// whitespace byte or one of the lead bytes `C2`, `E1`, `E2`, `E3` (U+0085,
/// U+00A0, U+1680, U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F,
/// U+3000), and ends with an ASCII whitespace byte or one of the last bytes
/// `80..=8A`, `9F`, `A0`, `A8`, `A9`, `AF`. Any other first (last) byte
/// means there is nothing to trim at that end.
#[inline(always)]
pub(super) fn trim_unicode(s: &str) -> &str {
    let s = match s.as_bytes().first() {
        Some(&b) if !may_start_whitespace(b) => s,
        _ => s.trim_start(),
    };
    match s.as_bytes().last() {
        Some(&b) if !may_end_whitespace(b) => s,
        _ => s.trim_end(),
    }
}

/// Whether a character starting with byte `b` can be whitespace.
#[inline]
fn may_start_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r' | 0xc2 | 0xe1..=0xe3)
}

/// Whether a character ending with byte `b` can be whitespace.
#[inline]
fn may_end_whitespace(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'..=b'\r' | 0x80..=0x8a | 0x9f | 0xa0 | 0xa8 | 0xa9 | 0xaf
    )
}

/// A baggage key or value: percent-decoded (when `escaped`: it has a `%`),
/// then trimmed of Unicode whitespace, copied once into an exactly-sized
/// `String` (which becomes a `Key` or `StringValue` without reallocating);
/// `None` when the decoded bytes are not UTF-8.
#[inline]
fn decoded_trimmed(raw: &str, escaped: bool) -> Option<String> {
    if escaped {
        decoded_escaped(raw)
    } else {
        Some(trim_unicode(raw).to_owned())
    }
}

/// [`decoded_trimmed`] for a key or value with a `%`: decoded on the stack
/// (on the heap past [`DECODE_ON_STACK`] bytes) before it is copied out.
#[inline(never)]
fn decoded_escaped(raw: &str) -> Option<String> {
    let mut stack = [0u8; DECODE_ON_STACK];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if raw.len() <= DECODE_ON_STACK {
        &mut stack
    } else {
        heap.resize(raw.len(), 0);
        &mut heap
    };
    let len = percent_decode_into(raw.as_bytes(), buf);
    let decoded = std::str::from_utf8(buf.get(..len)?).ok()?;
    Some(trim_unicode(decoded).to_owned())
}
