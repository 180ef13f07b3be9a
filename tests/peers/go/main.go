// Command peer is the Go peer of the nats-otel interop tests
// (tests/integration/interop_peers.rs).
//
// It speaks the peer protocol of tests/peers/README.md and is written the way Go
// services write it: nats.go (Debian's 1.22.1, legacy JetStream API) for NATS, and
// OpenTelemetry Go (Debian's 1.1.0) with its own W3C propagators, injecting into and
// extracting from propagation.HeaderCarrier(http.Header(msg.Header)). That carrier is
// the point of this peer: it writes the canonical names Traceparent, Tracestate and
// Baggage (http.Header.Set) and on extract looks up only those names (http.Header.Get),
// so a lowercase traceparent is not found.
//
//	peer produce --url URL --subject S [--count N] [--jetstream]
//	             [--tracestate TS] [--baggage KEY=VALUE ...]
//	peer consume --url URL --subject S [--count N] [--timeout SECONDS]
//	             [--jetstream --stream STREAM --durable NAME]
//
// Output: one JSON object per line on stdout. Errors go to stderr with exit status 1;
// a consume timeout exits 2.
//
// Build offline in GOPATH mode from Debian's golang-go, golang-github-nats-io-go-nats-dev
// and golang-opentelemetry-otel-dev (cargo xtask install-peers does this):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=/tmp/gocache \
//	    go build -o target/peers-go/peer tests/peers/go/main.go
//
// Quirks of otel-go 1.1.0 baggage (fixed upstream in 1.11+, see open-telemetry/
// opentelemetry-go#2523 and #3144): baggage.NewMember accepts only W3C baggage-octets
// (ASCII, no ',', ';', '\', '"', space), so a value like "ключ" is rejected; Member.String
// (used by Inject) then percent-encodes with url.QueryEscape; and Parse (used by Extract)
// does not decode, so Member.Value() returns the value as it travelled, still
// percent-encoded. This peer uses the API as it is and reports what it returns.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// exitTimeout is the exit status when no message arrives within --timeout.
const exitTimeout = 2

// errTimeout marks a consume timeout (exit status 2).
var errTimeout = errors.New("timeout")

// baggageFlag collects repeated --baggage KEY=VALUE flags.
type baggageFlag []string

func (b *baggageFlag) String() string { return strings.Join(*b, ",") }

func (b *baggageFlag) Set(v string) error {
	if _, _, ok := strings.Cut(v, "="); !ok {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*b = append(*b, v)
	return nil
}

type options struct {
	url, subject    string
	count           int
	jetstream       bool
	tracestate      string
	baggage         baggageFlag
	timeout         float64
	stream, durable string
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "produce" && os.Args[1] != "consume") {
		fmt.Fprintln(os.Stderr, "usage: peer produce|consume --url URL --subject S [flags]")
		os.Exit(1)
	}
	cmd := os.Args[1]
	opts, err := parseFlags(cmd, os.Args[2:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer %s: %v\n", cmd, err)
		os.Exit(1)
	}

	// The usual Go setup: an SDK tracer provider and the W3C propagators, both global.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	if cmd == "produce" {
		err = produce(opts)
	} else {
		err = consume(opts)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer %s: %v\n", cmd, err)
		_ = tp.Shutdown(context.Background())
		if errors.Is(err, errTimeout) {
			os.Exit(exitTimeout)
		}
		os.Exit(1)
	}
}

func parseFlags(cmd string, args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("peer "+cmd, flag.ContinueOnError)
	fs.StringVar(&o.url, "url", "", "NATS server URL")
	fs.StringVar(&o.subject, "subject", "", "subject to publish to or subscribe on")
	fs.IntVar(&o.count, "count", 1, "number of messages")
	fs.BoolVar(&o.jetstream, "jetstream", false, "use JetStream")
	if cmd == "produce" {
		fs.StringVar(&o.tracestate, "tracestate", "", "W3C tracestate the spans inherit")
		fs.Var(&o.baggage, "baggage", "baggage entry KEY=VALUE (repeatable)")
	} else {
		fs.Float64Var(&o.timeout, "timeout", 20, "seconds to wait for each message")
		fs.StringVar(&o.stream, "stream", "", "JetStream stream (with --jetstream)")
		fs.StringVar(&o.durable, "durable", "", "durable pull consumer to bind (with --jetstream)")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.url == "" || o.subject == "":
		return nil, errors.New("--url and --subject are required")
	case o.count < 0:
		return nil, errors.New("--count must not be negative")
	case cmd == "consume" && o.jetstream && (o.stream == "" || o.durable == ""):
		return nil, errors.New("--jetstream needs --stream and --durable")
	case cmd == "consume" && o.timeout <= 0:
		return nil, errors.New("--timeout must be positive")
	}
	return o, nil
}

// emit writes one JSON object as one line; os.Stdout is unbuffered, so each line is
// out as soon as it is written.
func emit(v interface{}) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// firstValues maps each header name, as stored, to its first value.
func firstValues(h nats.Header) map[string]string {
	out := make(map[string]string, len(h))
	for name, values := range h {
		if len(values) > 0 {
			out[name] = values[0]
		}
	}
	return out
}

// remoteParent returns ctx with a sampled remote parent span context with random ids
// and the given tracestate, so that a span started under it inherits the tracestate.
func remoteParent(ctx context.Context, ts trace.TraceState) (context.Context, error) {
	var tid trace.TraceID
	var sid trace.SpanID
	if _, err := rand.Read(tid[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(sid[:]); err != nil {
		return nil, err
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: true,
	})
	return trace.ContextWithRemoteSpanContext(ctx, sc), nil
}

func produce(o *options) error {
	var ts trace.TraceState
	if o.tracestate != "" {
		var err error
		if ts, err = trace.ParseTraceState(o.tracestate); err != nil {
			return fmt.Errorf("--tracestate: %w", err)
		}
	}
	base := context.Background()
	if len(o.baggage) > 0 {
		members := make([]baggage.Member, 0, len(o.baggage))
		for _, kv := range o.baggage {
			key, value, _ := strings.Cut(kv, "=")
			m, err := baggage.NewMember(key, value)
			if err != nil {
				return fmt.Errorf("--baggage %s: %w", kv, err)
			}
			members = append(members, m)
		}
		bag, err := baggage.New(members...)
		if err != nil {
			return fmt.Errorf("--baggage: %w", err)
		}
		base = baggage.ContextWithBaggage(base, bag)
	}

	nc, err := nats.Connect(o.url, nats.Name("nats-otel-go-peer"))
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.url, err)
	}
	defer nc.Close()
	var js nats.JetStreamContext
	if o.jetstream {
		if js, err = nc.JetStream(); err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
	}

	tracer := otel.Tracer("nats-otel-go-peer")
	for i := 0; i < o.count; i++ {
		parent := base
		if o.tracestate != "" {
			if parent, err = remoteParent(base, ts); err != nil {
				return err
			}
		}
		// Without --tracestate there is no span in parent: a new root per message.
		ctx, span := tracer.Start(parent, o.subject+" send", trace.WithSpanKind(trace.SpanKindProducer))
		msg := nats.NewMsg(o.subject)
		msg.Data = []byte(fmt.Sprintf("msg-%d", i))
		otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(http.Header(msg.Header)))
		if o.jetstream {
			_, err = js.PublishMsg(msg) // waits for the stream's ack
		} else if err = nc.PublishMsg(msg); err == nil {
			err = nc.Flush()
		}
		span.End()
		if err != nil {
			return fmt.Errorf("publish %d to %s: %w", i, o.subject, err)
		}
		sc := span.SpanContext()
		if err := emit(map[string]interface{}{
			"index":    i,
			"trace_id": sc.TraceID().String(),
			"span_id":  sc.SpanID().String(),
			"headers":  firstValues(msg.Header),
		}); err != nil {
			return err
		}
	}
	return nil
}

func consume(o *options) error {
	nc, err := nats.Connect(o.url, nats.Name("nats-otel-go-peer"))
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.url, err)
	}
	defer nc.Close()
	timeout := time.Duration(o.timeout * float64(time.Second))

	var next func() (*nats.Msg, error)
	if o.jetstream {
		js, err := nc.JetStream()
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		sub, err := js.PullSubscribe(o.subject, o.durable, nats.Bind(o.stream, o.durable))
		if err != nil {
			return fmt.Errorf("bind to %s/%s: %w", o.stream, o.durable, err)
		}
		next = func() (*nats.Msg, error) {
			msgs, err := sub.Fetch(1, nats.MaxWait(timeout))
			if err != nil {
				return nil, err
			}
			return msgs[0], nil
		}
	} else {
		sub, err := nc.SubscribeSync(o.subject)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", o.subject, err)
		}
		// The server has the subscription once the flush round trip is done.
		if err := nc.Flush(); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		next = func() (*nats.Msg, error) { return sub.NextMsg(timeout) }
	}
	if err := emit(map[string]bool{"ready": true}); err != nil {
		return err
	}

	tracer := otel.Tracer("nats-otel-go-peer")
	for i := 0; i < o.count; i++ {
		msg, err := next()
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: no message %d of %d on %s within %gs",
				errTimeout, i+1, o.count, o.subject, o.timeout)
		}
		if err != nil {
			return fmt.Errorf("receive message %d: %w", i+1, err)
		}

		ctx := otel.GetTextMapPropagator().Extract(context.Background(),
			propagation.HeaderCarrier(http.Header(msg.Header)))
		remote := trace.SpanContextFromContext(ctx)
		_, span := tracer.Start(ctx, "process", trace.WithSpanKind(trace.SpanKindConsumer))
		if o.jetstream {
			err = msg.AckSync()
		}
		span.End()
		if err != nil {
			return fmt.Errorf("ack message %d: %w", i+1, err)
		}

		bag := map[string]string{}
		for _, m := range baggage.FromContext(ctx).Members() {
			bag[m.Key()] = m.Value()
		}
		if err := emit(map[string]interface{}{
			"payload":        string(msg.Data),
			"trace_id":       span.SpanContext().TraceID().String(),
			"parent_span_id": remote.SpanID().String(),
			"is_remote":      remote.IsRemote(),
			"sampled":        remote.IsSampled(),
			"tracestate":     remote.TraceState().String(),
			"baggage":        bag,
			"headers":        firstValues(msg.Header),
		}); err != nil {
			return err
		}
	}
	return nil
}
