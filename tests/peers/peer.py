"""A Python NATS peer for the interop tests (tests/interop_python.rs).

Uses nats-py for NATS and opentelemetry-python's own W3C propagators
(TraceContextTextMapPropagator + W3CBaggagePropagator), so the Rust crate is
checked against another implementation, not against itself.

    peer.py produce --url URL --subject S [--casing otel|go|lower]
                    [--tracestate TS] [--baggage KEY=VALUE ...]
        Starts a span (opentelemetry-sdk), injects its context into a dict
        with the W3C propagators, renames the header names as the chosen
        peer would write them, publishes one message with those headers and
        prints one JSON line: {"trace_id", "span_id", "headers"}.

    peer.py consume --url URL --subject S [--timeout SECONDS]
        Subscribes, prints {"ready": true} once the subscription is
        registered with the server, waits for one message, extracts its
        context with the W3C propagators and prints one JSON line:
        {"trace_id", "parent_span_id", "is_remote", "sampled", "tracestate",
         "baggage", "headers"}. Exits non-zero on timeout.

Baggage values are given unencoded; the propagator percent-encodes them
(e.g. "ключ" travels as %D0%BA%D0%BB%D1%8E%D1%87).
"""

import argparse
import asyncio
import json
import os
import sys

import nats
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = CompositePropagator(
    [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
)


def emit(doc):
    print(json.dumps(doc, ensure_ascii=False), flush=True)


def rename(name, casing):
    """The header name as a peer of the given kind writes it."""
    if casing == "go":
        # Go's propagation.HeaderCarrier stores names through
        # http.Header.Set, i.e. textproto.CanonicalMIMEHeaderKey.
        return "-".join(part.capitalize() for part in name.split("-"))
    # opentelemetry-python, Java and Rust write the W3C lowercase names.
    return name.lower()


async def produce(args):
    tracer = TracerProvider().get_tracer("nats-otel-peer")
    parent = Context()
    if args.tracestate:
        # Tracestate rides on the span context; start under a remote parent
        # carrying it (the SDK sampler keeps the parent's trace state).
        remote = SpanContext(
            trace_id=int.from_bytes(os.urandom(16), "big") or 1,
            span_id=int.from_bytes(os.urandom(8), "big") or 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState.from_header([args.tracestate]),
        )
        parent = trace.set_span_in_context(NonRecordingSpan(remote), parent)
    for pair in args.baggage:
        key, _, value = pair.partition("=")
        parent = baggage.set_baggage(key, value, context=parent)

    nc = await nats.connect(args.url)
    with tracer.start_as_current_span("python-producer", context=parent) as span:
        carrier = {}
        # The span in the parent context, so the baggage set there travels.
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, parent))
        headers = {rename(k, args.casing): v for k, v in carrier.items()}
        await nc.publish(args.subject, b"from python", headers=headers)
        await nc.flush()
        sc = span.get_span_context()
        emit(
            {
                "trace_id": format(sc.trace_id, "032x"),
                "span_id": format(sc.span_id, "016x"),
                "headers": headers,
            }
        )
    await nc.drain()


async def consume(args):
    nc = await nats.connect(args.url)
    sub = await nc.subscribe(args.subject)
    await nc.flush()
    emit({"ready": True})
    try:
        msg = await sub.next_msg(timeout=args.timeout)
    except Exception as e:  # nats.errors.TimeoutError
        print(f"peer.py consume: no message within {args.timeout} s: {e!r}", file=sys.stderr)
        await nc.close()
        return 2
    headers = dict(msg.headers or {})
    cx = PROPAGATOR.extract(headers)
    sc = trace.get_current_span(cx).get_span_context()
    emit(
        {
            "trace_id": format(sc.trace_id, "032x"),
            "parent_span_id": format(sc.span_id, "016x"),
            "is_remote": sc.is_remote,
            "sampled": sc.trace_flags.sampled,
            "tracestate": sc.trace_state.to_header(),
            "baggage": {k: str(v) for k, v in baggage.get_all(cx).items()},
            "headers": headers,
            "payload": msg.data.decode("utf-8", "replace"),
        }
    )
    await nc.close()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--url", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--casing", choices=["otel", "go", "lower"], default="otel")
    p.add_argument("--tracestate", default="")
    p.add_argument("--baggage", action="append", default=[])
    c = sub.add_parser("consume")
    c.add_argument("--url", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    if args.command == "produce":
        return asyncio.run(produce(args)) or 0
    return asyncio.run(consume(args))


if __name__ == "__main__":
    sys.exit(main())
