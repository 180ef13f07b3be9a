//! Extraction: the remote context of a message, from its headers or a
//! carrier, by the W3C rules, and the record of where it came from.

use async_nats::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

use super::carrier::TraceCarrier;
use super::headers::{find_header, scan_w3c, traceparent_values, HeaderExtractor};
use super::propagator::{PropagatorChoice, Resolved};
use super::record::{excerpt, ContextSource, ExtractionRecord, NoContextReason};
use super::w3c::{
    extract_baggage, parse_traceparent, parse_tracestate, BAGGAGE, TRACEPARENT, TRACESTATE,
};

/// Extracts the remote context from message headers and records the
/// outcome. Never panics; the returned context may carry baggage even when
/// it carries no span.
pub(crate) fn extract_headers(
    propagator: &PropagatorChoice,
    headers: Option<&HeaderMap>,
) -> (Context, ExtractionRecord) {
    let Some(headers) = headers.filter(|h| !h.is_empty()) else {
        return (
            Context::new(),
            ExtractionRecord::none(NoContextReason::NoHeaders),
        );
    };
    // Only the choice is made while the global propagator is borrowed; the
    // W3C decoding runs after, and returns straight to the caller.
    let mut generic = None;
    propagator.resolve(|resolved| {
        if let Resolved::Generic(p) = resolved {
            generic = Some(extract_generic(p, headers));
        }
    });
    match generic {
        Some(extracted) => extracted,
        None => extract_w3c(headers),
    }
}

/// How many conflicting `traceparent` values a reason quotes at most.
const AMBIGUOUS_QUOTED: usize = 4;

fn ambiguous_reason(headers: &HeaderMap) -> NoContextReason {
    let values = traceparent_values(headers, AMBIGUOUS_QUOTED);
    NoContextReason::AmbiguousTraceparent {
        headers: values.iter().map(|(name, _)| (*name).to_owned()).collect(),
        values: values.iter().map(|(_, value)| excerpt(value)).collect(),
    }
}

/// The W3C fast path: one pass over the headers, `traceparent` parsed by
/// [`parse_traceparent`], `tracestate` and `baggage` read only when present,
/// within the W3C limits. Gives the same context as the SDK's
/// `TraceContextPropagator` + `BaggagePropagator` for valid input, and
/// rejects everything W3C rejects (some of which the SDK lets through).
pub(crate) fn extract_w3c(headers: &HeaderMap) -> (Context, ExtractionRecord) {
    let found = scan_w3c(headers);
    if found.ambiguous {
        let cx = decode_w3c(None, found.tracestate, found.baggage).context;
        return (cx, ExtractionRecord::none(ambiguous_reason(headers)));
    }
    let decoded = decode_w3c(found.traceparent, found.tracestate, found.baggage);
    let mut record = match decoded.outcome {
        Ok(Some(name)) if name != TRACEPARENT => ExtractionRecord::found(ContextSource::Headers)
            .with_remote(decoded.context.span().span_context())
            .with_header_name(name),
        Ok(_) => ExtractionRecord::found(ContextSource::Headers)
            .with_remote(decoded.context.span().span_context()),
        Err(None) => ExtractionRecord::none(NoContextReason::MissingTraceparent {
            present: header_names(headers),
        }),
        Err(Some(reason)) => ExtractionRecord::none(reason),
    };
    for note in decoded.notes {
        record.push_note(note);
    }
    (decoded.context, record)
}

/// What [`decode_w3c`] made of the three W3C fields.
pub(crate) struct Decoded<'a> {
    /// The remote span context (when `traceparent` was valid) and the
    /// baggage.
    pub(crate) context: Context,
    /// `Ok` with the name `traceparent` came under when it gave a span
    /// context; `Err(None)` when there was no `traceparent`, `Err(Some(..))`
    /// when it was malformed.
    pub(crate) outcome: Result<Option<&'a str>, Option<NoContextReason>>,
    /// What was discarded or cut from `tracestate` and `baggage`.
    pub(crate) notes: Vec<String>,
}

/// The one W3C decoder, for headers, [`TraceCarrier`](TraceCarrier)s
/// and KV records alike: `traceparent` (its name as it came, and its value)
/// by every W3C rule, `tracestate` and `baggage` within the W3C limits.
pub(crate) fn decode_w3c<'a>(
    traceparent: Option<(&'a str, &'a str)>,
    tracestate: Option<&str>,
    baggage: Option<&str>,
) -> Decoded<'a> {
    let mut notes: Vec<String> = Vec::new();
    let (cx, outcome) = match traceparent {
        None => (Context::new(), Err(None)),
        Some((name, value)) => match parse_traceparent(value) {
            Err(problem) => (
                Context::new(),
                Err(Some(NoContextReason::MalformedTraceparent {
                    header: name.to_owned(),
                    value: excerpt(value),
                    problem,
                })),
            ),
            Ok(tp) => {
                let trace_state = match tracestate {
                    None => TraceState::NONE,
                    Some(value) => {
                        let (trace_state, issue) = parse_tracestate(value);
                        if let Some(issue) = issue {
                            notes.push(issue.note(TRACESTATE));
                        }
                        trace_state
                    }
                };
                let span_context = SpanContext::new(
                    TraceId::from(tp.trace_id),
                    SpanId::from(tp.span_id),
                    TraceFlags::new(tp.flags) & TraceFlags::SAMPLED,
                    true,
                    trace_state,
                );
                (
                    Context::new().with_remote_span_context(span_context),
                    Ok(Some(name)),
                )
            }
        },
    };
    let context = match baggage {
        None => cx,
        Some(value) => {
            let (cx, issue) = extract_baggage(cx, value);
            if let Some(issue) = issue {
                notes.push(issue.note(BAGGAGE));
            }
            cx
        }
    };
    Decoded {
        context,
        outcome,
        notes,
    }
}

/// Any other propagator, through [`HeaderExtractor`]; the outcome is
/// explained with the W3C rules where `traceparent` is involved.
fn extract_generic(p: &dyn TextMapPropagator, headers: &HeaderMap) -> (Context, ExtractionRecord) {
    let cx = p.extract_with_context(&Context::new(), &HeaderExtractor::new(headers));
    if cx.span().span_context().is_valid() {
        let mut record =
            ExtractionRecord::found(ContextSource::Headers).with_remote(cx.span().span_context());
        if let Some((name, value)) = find_header(headers, TRACEPARENT) {
            // The SDK's parser pads short ids and reads short flags; hold
            // the value to every W3C rule before trusting it.
            if let Err(problem) = parse_traceparent(value) {
                let reason = NoContextReason::MalformedTraceparent {
                    header: name.to_owned(),
                    value: excerpt(value),
                    problem,
                };
                return (without_span(&cx), ExtractionRecord::none(reason));
            }
            if name != TRACEPARENT {
                record = record.with_header_name(name);
            }
        }
        return (cx, record);
    }
    if p.fields().any(|f| f == TRACEPARENT) && scan_w3c(headers).ambiguous {
        return (cx, ExtractionRecord::none(ambiguous_reason(headers)));
    }
    let reason = match find_header(headers, TRACEPARENT) {
        Some((name, value)) => match parse_traceparent(value) {
            Err(problem) => NoContextReason::MalformedTraceparent {
                header: name.to_owned(),
                value: excerpt(value),
                problem,
            },
            Ok(_) => NoContextReason::PropagatorRejected {
                fields: present_fields(p, headers),
            },
        },
        None => {
            let fields = present_fields(p, headers);
            if fields.is_empty() || fields.iter().all(|f| !is_trace_field(f)) {
                NoContextReason::MissingTraceparent {
                    present: header_names(headers),
                }
            } else {
                NoContextReason::PropagatorRejected { fields }
            }
        }
    };
    (cx, ExtractionRecord::none(reason))
}

/// Reads a [`TraceCarrier`](TraceCarrier) with the one W3C decoder
/// ([`decode_w3c`]), by the same rules and limits as headers; `what` names
/// the carrier in reasons (e.g. `"kv traceparent"`).
pub(crate) fn context_from_carrier(
    carrier: &TraceCarrier,
    what: &str,
) -> Result<Context, NoContextReason> {
    let decoded = decode_w3c(
        Some((what, carrier.traceparent.as_deref().unwrap_or(""))),
        carrier.tracestate.as_deref(),
        carrier.baggage.as_deref(),
    );
    match decoded.outcome {
        Ok(_) => Ok(decoded.context),
        Err(reason) => Err(reason.unwrap_or(NoContextReason::PropagatorRejected {
            fields: vec![what.to_owned()],
        })),
    }
}

/// The names of `headers`, sorted, so that reasons read the same every time
/// (the header map does not keep an order).
fn header_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
    names.sort_unstable();
    names
}

/// `cx` with its baggage but without its span context.
fn without_span(cx: &Context) -> Context {
    use opentelemetry::baggage::BaggageExt;
    Context::new().with_baggage(
        cx.baggage()
            .iter()
            .map(|(k, (v, _))| opentelemetry::KeyValue::new(k.clone(), v.clone())),
    )
}

fn present_fields(
    p: &dyn opentelemetry::propagation::TextMapPropagator,
    headers: &HeaderMap,
) -> Vec<String> {
    p.fields()
        .filter(|f| find_header(headers, f).is_some())
        .map(str::to_owned)
        .collect()
}

/// Fields that carry a span (as opposed to baggage or trace state).
fn is_trace_field(field: &str) -> bool {
    !matches!(field, "baggage" | "tracestate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::record::EXCERPT_LEN;
    use crate::propagation::TraceparentProblem;

    #[test]
    fn excerpt_truncates_on_char_boundary() {
        let long = "ж".repeat(100);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_LEN + 1);
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn reasons_for_each_header_shape() {
        let choice = PropagatorChoice::Auto;
        let (_, r) = extract_headers(&choice, None);
        assert_eq!(r.reason(), Some(&NoContextReason::NoHeaders));

        let mut h = HeaderMap::new();
        h.insert("job-id", "1");
        let (_, r) = extract_headers(&choice, Some(&h));
        assert_eq!(r.reason().unwrap().as_str(), "no_traceparent");

        h.insert(
            "Traceparent",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        );
        let (_, r) = extract_headers(&choice, Some(&h));
        assert!(matches!(
            r.reason(),
            Some(NoContextReason::MalformedTraceparent {
                problem: TraceparentProblem::UppercaseHex,
                ..
            })
        ));

        let mut h = HeaderMap::new();
        h.insert(
            "Traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let (cx, r) = extract_headers(&choice, Some(&h));
        assert_eq!(r.source(), ContextSource::Headers);
        assert_eq!(r.header_name(), Some("Traceparent"));
        assert!(cx.span().span_context().is_remote());
    }
}
