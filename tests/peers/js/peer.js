#!/usr/bin/env node
// A JavaScript NATS peer for the interop tests (tests/integration/interop_peers.rs).
//
// Uses nats.js (`nats`) for NATS and OpenTelemetry JS's own W3C propagators
// (W3CTraceContextPropagator + W3CBaggagePropagator from @opentelemetry/core,
// set as the global propagator) with a BasicTracerProvider, so the Rust crate
// is checked against another implementation, not against itself. The carrier
// is a nats.js MsgHdrs with the getter/setter JS services write: exact-name
// `h.get(k)` (nats.js's default match), `h.set(k, v)`, `h.keys()`.
//
// Command line and JSON output: tests/peers/README.md.
//
//   peer.js produce --url URL --subject S [--count N] [--jetstream]
//                   [--tracestate TS] [--baggage KEY=VALUE ...]
//   peer.js consume --url URL --subject S [--count N] [--timeout SECONDS]
//                   [--jetstream --stream STREAM --durable NAME]
//
// CommonJS on purpose: the tests run it with NODE_PATH=target/peers-js/node_modules,
// which `require` honours and ESM `import` does not.
"use strict";

const crypto = require("node:crypto");
const { parseArgs } = require("node:util");

const { connect, headers: natsHeaders, StringCodec } = require("nats");
const {
  ROOT_CONTEXT,
  SpanKind,
  TraceFlags,
  propagation,
  trace,
} = require("@opentelemetry/api");
const {
  CompositePropagator,
  TraceState,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} = require("@opentelemetry/core");
const {
  AlwaysOnSampler,
  BasicTracerProvider,
  ParentBasedSampler,
} = require("@opentelemetry/sdk-trace-base");

propagation.setGlobalPropagator(
  new CompositePropagator({
    propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
  }),
);
// Explicit sampler: BasicTracerProvider would otherwise read OTEL_TRACES_SAMPLER.
const provider = new BasicTracerProvider({
  sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() }),
});
trace.setGlobalTracerProvider(provider);
const tracer = trace.getTracer("nats-otel-peer-js");

// The carrier: nats.js MsgHdrs, accessed the way JS services do.
const setter = { set: (h, k, v) => h.set(k, v) };
const getter = { get: (h, k) => h.get(k), keys: (h) => h.keys() };

const sc = StringCodec();
const TIMEOUT = Symbol("timeout");

function emit(doc) {
  process.stdout.write(JSON.stringify(doc) + "\n");
}

function randomHex(bytes) {
  let hex;
  do {
    hex = crypto.randomBytes(bytes).toString("hex");
  } while (/^0+$/.test(hex));
  return hex;
}

// First value of every header, names as they are in `h`.
function headerDoc(h) {
  const doc = {};
  if (h) {
    for (const k of h.keys()) doc[k] = h.get(k);
  }
  return doc;
}

// Resolves to the promise's value, or to TIMEOUT after `seconds`.
async function within(promise, seconds) {
  let timer;
  const expired = new Promise((resolve) => {
    timer = setTimeout(() => resolve(TIMEOUT), seconds * 1000);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

// The parent of message i's span: empty, or (with --tracestate) a fresh remote
// sampled parent carrying the tracestate, which the SDK span inherits; plus the
// baggage. A fresh parent per message, so every message starts its own trace.
function producerParent(args) {
  let parent = ROOT_CONTEXT;
  if (args.tracestate) {
    parent = trace.setSpanContext(parent, {
      traceId: randomHex(16),
      spanId: randomHex(8),
      traceFlags: TraceFlags.SAMPLED,
      isRemote: true,
      traceState: new TraceState(args.tracestate),
    });
  }
  if (args.baggage.length > 0) {
    const entries = {};
    for (const pair of args.baggage) {
      const eq = pair.indexOf("=");
      if (eq < 0) throw new Error(`--baggage ${pair}: expected KEY=VALUE`);
      entries[pair.slice(0, eq)] = { value: pair.slice(eq + 1) };
    }
    parent = propagation.setBaggage(parent, propagation.createBaggage(entries));
  }
  return parent;
}

async function produce(args) {
  producerParent(args); // rejects a malformed --baggage before connecting
  const nc = await connect({ servers: args.url });
  const js = args.jetstream ? nc.jetstream() : null;
  for (let i = 0; i < args.count; i++) {
    const parent = producerParent(args);
    const span = tracer.startSpan(
      `publish ${args.subject}`,
      { kind: SpanKind.PRODUCER },
      parent,
    );
    const h = natsHeaders();
    propagation.inject(trace.setSpan(parent, span), h, setter);
    const payload = sc.encode(`msg-${i}`);
    if (js) {
      await js.publish(args.subject, payload, { headers: h });
    } else {
      nc.publish(args.subject, payload, { headers: h });
    }
    span.end();
    const { traceId, spanId } = span.spanContext();
    emit({ index: i, trace_id: traceId, span_id: spanId, headers: headerDoc(h) });
  }
  await nc.flush();
  await nc.drain();
  return 0;
}

// One received message: extract, start the `process` span as its child, report.
function report(msg) {
  const extracted = propagation.extract(ROOT_CONTEXT, msg.headers, getter);
  const span = tracer.startSpan("process", { kind: SpanKind.CONSUMER }, extracted);
  const remote = trace.getSpanContext(extracted);
  const parentSpanId = span.parentSpanContext ? span.parentSpanContext.spanId : "";
  if (parentSpanId !== (remote ? remote.spanId : "")) {
    throw new Error(
      `process span's parent ${parentSpanId} is not the extracted span ${remote && remote.spanId}`,
    );
  }
  span.end();
  const baggage = {};
  const bag = propagation.getBaggage(extracted);
  if (bag) {
    for (const [k, entry] of bag.getAllEntries()) baggage[k] = entry.value;
  }
  emit({
    payload: sc.decode(msg.data),
    trace_id: span.spanContext().traceId,
    parent_span_id: parentSpanId,
    is_remote: remote ? remote.isRemote === true : false,
    sampled: remote ? (remote.traceFlags & TraceFlags.SAMPLED) !== 0 : false,
    tracestate: remote && remote.traceState ? remote.traceState.serialize() : "",
    baggage,
    headers: headerDoc(msg.headers),
  });
}

async function consume(args) {
  const nc = await connect({ servers: args.url });
  let next;
  if (args.jetstream) {
    // Bind to the existing durable pull consumer (get() fails if it is absent).
    // next() pulls exactly one message per call, so nothing beyond --count is
    // left delivered-but-unacked.
    const consumer = await nc.jetstream().consumers.get(args.stream, args.durable);
    const expires = Math.max(1000, Math.ceil(args.timeout * 1000));
    next = async () => {
      const m = await within(consumer.next({ expires }), args.timeout);
      return m === null ? TIMEOUT : m;
    };
  } else {
    const sub = nc.subscribe(args.subject);
    await nc.flush(); // the SUB has reached the server
    const it = sub[Symbol.asyncIterator]();
    next = async () => {
      const r = await within(it.next(), args.timeout);
      if (r === TIMEOUT) return TIMEOUT;
      if (r.done) throw new Error("subscription closed");
      return r.value;
    };
  }
  emit({ ready: true });

  for (let i = 0; i < args.count; i++) {
    const msg = await next();
    if (msg === TIMEOUT) {
      process.stderr.write(
        `peer.js consume: no message ${i + 1} of ${args.count} within ${args.timeout} s\n`,
      );
      await nc.close();
      return 2;
    }
    report(msg);
    if (args.jetstream) await msg.ackAck();
  }
  await nc.drain();
  return 0;
}

function parse(argv) {
  const [command, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    strict: true,
    options: {
      url: { type: "string" },
      subject: { type: "string" },
      count: { type: "string", default: "1" },
      timeout: { type: "string", default: "20" },
      jetstream: { type: "boolean", default: false },
      stream: { type: "string" },
      durable: { type: "string" },
      tracestate: { type: "string", default: "" },
      baggage: { type: "string", multiple: true, default: [] },
    },
  });
  const usage = (why) => new Error(`${why}\nusage: see tests/peers/README.md`);
  if (command !== "produce" && command !== "consume") {
    throw usage(`unknown command ${JSON.stringify(command)}`);
  }
  if (!values.url || !values.subject) throw usage("--url and --subject are required");
  const count = Number(values.count);
  const timeout = Number(values.timeout);
  if (!Number.isInteger(count) || count < 0) throw usage(`bad --count ${values.count}`);
  if (!(timeout > 0)) throw usage(`bad --timeout ${values.timeout}`);
  if (command === "consume" && values.jetstream && (!values.stream || !values.durable)) {
    throw usage("consume --jetstream needs --stream and --durable");
  }
  return { command, ...values, count, timeout };
}

async function main() {
  const args = parse(process.argv.slice(2));
  return args.command === "produce" ? produce(args) : consume(args);
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`peer.js: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
