"""A Python NATS peer for the interop tests (tests/integration/interop_peers.rs,
tests/integration/interop_python.rs); the command line and output are those
of every peer, described in tests/peers/README.md.

Uses nats-py for NATS and opentelemetry-python's own W3C propagators
(TraceContextTextMapPropagator + W3CBaggagePropagator) over a dict of the
message headers, as Python services do, so the Rust crate is checked against
another implementation, not against itself.

    peer.py produce --url URL --subject S [--count N] [--jetstream]
                    [--tracestate TS] [--baggage KEY=VALUE ...]
                    [--casing otel|go|lower]
    peer.py consume --url URL --subject S [--count N] [--timeout SECONDS]
                    [--jetstream --stream STREAM --durable NAME]

`--casing go` renames the headers as Go's HeaderCarrier writes them
(Traceparent), to check readers against that casing without Go.
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
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = CompositePropagator(
    [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
)
TRACER = TracerProvider().get_tracer("nats-otel-peer")


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


def parent_context(args):
    """A fresh root context with the requested tracestate and baggage."""
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
    return parent


async def produce(args):
    nc = await nats.connect(args.url)
    js = nc.jetstream() if args.jetstream else None
    for index in range(args.count):
        parent = parent_context(args)
        with TRACER.start_as_current_span(
            "python-producer", context=parent, kind=SpanKind.PRODUCER
        ) as span:
            carrier = {}
            # The span in the parent context, so the baggage set there travels.
            PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, parent))
            headers = {rename(k, args.casing): v for k, v in carrier.items()}
            payload = f"msg-{index}".encode()
            if js is not None:
                await js.publish(args.subject, payload, headers=headers)
            else:
                await nc.publish(args.subject, payload, headers=headers)
            sc = span.get_span_context()
            emit(
                {
                    "index": index,
                    "trace_id": format(sc.trace_id, "032x"),
                    "span_id": format(sc.span_id, "016x"),
                    "headers": headers,
                }
            )
    await nc.flush()
    await nc.drain()


async def consume(args):
    nc = await nats.connect(args.url)
    if args.jetstream:
        if not (args.stream and args.durable):
            print("peer.py consume --jetstream needs --stream and --durable", file=sys.stderr)
            return 1
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind(args.durable, args.stream)
    else:
        sub = await nc.subscribe(args.subject)
        # nats-py's flush() may send its PING ahead of a queued SUB, so a
        # PONG does not prove the subscription is in place. A message to
        # ourselves, queued after the SUB on the same connection, does.
        probe = nc.new_inbox()
        probe_sub = await nc.subscribe(probe)
        await nc.publish(probe, b"")
        await probe_sub.next_msg(timeout=args.timeout)
        await probe_sub.unsubscribe()
    await nc.flush()
    emit({"ready": True})
    pending = []
    for _ in range(args.count):
        try:
            if args.jetstream:
                while not pending:
                    pending = await sub.fetch(args.count, timeout=args.timeout)
                msg = pending.pop(0)
            else:
                msg = await sub.next_msg(timeout=args.timeout)
        except Exception as e:  # nats.errors.TimeoutError
            print(
                f"peer.py consume: no message within {args.timeout} s: {e!r}",
                file=sys.stderr,
            )
            await nc.close()
            return 2
        headers = dict(msg.headers or {})
        cx = PROPAGATOR.extract(headers)
        remote = trace.get_current_span(cx).get_span_context()
        with TRACER.start_as_current_span(
            "process", context=cx, kind=SpanKind.CONSUMER
        ) as span:
            sc = span.get_span_context()
            parent = span.parent
            if args.jetstream:
                await msg.ack()
        emit(
            {
                "payload": msg.data.decode("utf-8", "replace"),
                "trace_id": format(sc.trace_id, "032x"),
                "parent_span_id": format(parent.span_id if parent else 0, "016x"),
                "is_remote": remote.is_remote,
                "sampled": remote.trace_flags.sampled,
                "tracestate": remote.trace_state.to_header(),
                "baggage": {k: str(v) for k, v in baggage.get_all(cx).items()},
                "headers": headers,
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
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--jetstream", action="store_true")
    p.add_argument("--casing", choices=["otel", "go", "lower"], default="otel")
    p.add_argument("--tracestate", default="")
    p.add_argument("--baggage", action="append", default=[])
    c = sub.add_parser("consume")
    c.add_argument("--url", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--timeout", type=float, default=20.0)
    c.add_argument("--jetstream", action="store_true")
    c.add_argument("--stream", default="")
    c.add_argument("--durable", default="")
    args = parser.parse_args()
    if args.command == "produce":
        return asyncio.run(produce(args)) or 0
    return asyncio.run(consume(args))


if __name__ == "__main__":
    sys.exit(main())
