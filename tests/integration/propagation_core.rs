//! Core NATS: publish/subscribe and request/reply through the layer and the
//! consumer adapter, against a real server; spans checked through the
//! in-memory exporter.

use nats_otel::{
    publish::Requester, ContextSource, CorePublisher, MessageContextExt, Publish,
    TracePropagationLayer,
};
use opentelemetry::trace::{Span as _, SpanId, SpanKind, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::Context;
use tower::Layer;
use tracing::Instrument;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;
use crate::support::versions::rewrites_traceparent;

#[tokio::test]
async fn core_publish_subscribe_keeps_one_trace_api_publish_process_handler() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.core").await;

    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
    let api = tracing::info_span!("api");
    publish_in_span(&mut publisher, api, Publish::new("jobs.core", "{\"id\":1}")).await;

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"{\"id\":1}");
    let record = cx
        .extraction()
        .expect("the adapter stores an extraction record");
    assert_eq!(record.source(), ContextSource::Headers);
    assert_eq!(record.reason(), None);
    assert_eq!(record.header_name(), None, "lowercase traceparent arrived");
    handle(cx).await;

    let Chain { process, .. } = telemetry.chain("jobs.core");
    assert_attribute(&process, "nats_otel.context.source", "headers");
    assert_attribute(&process, "messaging.destination.name", "jobs.core");
}

#[tokio::test]
async fn request_reply_responder_joins_the_requesters_trace() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;

    let mut requests = traced_subscription(&client, "svc.echo").await;
    let responder_client = client.clone();
    let responder = tokio::spawn(async move {
        let (request, cx) = next(&mut requests).await;
        assert_eq!(
            cx.extraction().unwrap().source(),
            ContextSource::Headers,
            "{}",
            cx.extraction().unwrap()
        );
        let reply = request
            .reply
            .clone()
            .expect("a request carries a reply subject");
        let span = cx.handler_span(tracing::info_span!("responder")).unwrap();
        async move {
            let answer = format!("pong:{}", String::from_utf8_lossy(&request.payload));
            responder_client
                .publish(reply, answer.into())
                .await
                .unwrap();
            responder_client.flush().await.unwrap();
        }
        .instrument(span)
        .await;
        drop(cx);
    });

    let mut requester = TracePropagationLayer::new().layer(Requester::new(client.clone()));
    let api = tracing::info_span!("api");
    let reply = publish_in_span(&mut requester, api, Publish::new("svc.echo", "ping")).await;
    assert_eq!(&reply.payload[..], b"pong:ping", "the reply arrives");
    tokio::time::timeout(WAIT, responder)
        .await
        .expect("responder finished")
        .unwrap();

    let api = telemetry.span("api");
    let request = telemetry.span("publish svc.echo");
    let process = telemetry.span("process svc.echo");
    let responder = telemetry.span("responder");
    assert_eq!(trace_id(&responder), trace_id(&api));
    assert_child_of(&request, &api);
    assert_kind(&request, SpanKind::Producer);
    assert_child_of(&process, &request);
    assert_kind(&process, SpanKind::Consumer);
    assert_child_of(&responder, &process);
    assert_within(&responder, &process);
    // The request span covers the round trip: it ends once the reply is in.
    assert!(request.end_time >= responder.end_time);
}

#[tokio::test]
async fn caller_set_traceparent_is_kept_in_any_casing() {
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let caller_traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");

    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.caller.*").await;
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));

    for (i, header) in ["traceparent", "Traceparent"].into_iter().enumerate() {
        let subject = format!("jobs.caller.{i}");
        let api = tracing::info_span!("api", otel.name = format!("api {i}"));
        let publish = Publish::new(subject.clone(), "job")
            .header(header, &caller_traceparent)
            .unwrap();
        publish_in_span(&mut publisher, api, publish).await;

        let (message, cx) = next(&mut jobs).await;
        let headers = message.headers.as_ref().expect("headers arrived");
        // nats-server 2.11.0 to 2.12.11 rename any-case traceparent.
        let arrived = if rewrites_traceparent(&server.version()) {
            "traceparent"
        } else {
            header
        };
        assert_eq!(
            headers
                .get_all(arrived)
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            [caller_traceparent.as_str()],
            "the caller's {header} is sent untouched, once"
        );
        assert_eq!(
            headers
                .iter()
                .filter(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case("traceparent"))
                .count(),
            1,
            "no second traceparent next to the caller's {header}: {headers:?}"
        );
        assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
        drop(cx);

        let api = telemetry.span(&format!("api {i}"));
        let publish = telemetry.span(&format!("publish {subject}"));
        let process = telemetry.span(&format!("process {subject}"));
        // The producer span is still recorded, in the caller's trace...
        assert_child_of(&publish, &api);
        // ...but the consumer continues the trace the caller chose.
        assert_eq!(trace_id(&process), TraceId::from_hex(CALLER_TRACE).unwrap());
        assert_eq!(
            process.parent_span_id,
            SpanId::from_hex(CALLER_SPAN).unwrap()
        );
        assert_ne!(process.parent_span_id, span_id(&publish));
    }
}

#[tokio::test]
async fn explicit_context_parents_the_producer_span() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.explicit").await;
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));

    // A span from elsewhere (e.g. a batch job that collected the request).
    let origin = tracing::info_span!("origin");
    let origin_cx = origin.context();
    let api = tracing::info_span!("api");
    publish_in_span(
        &mut publisher,
        api,
        Publish::new("jobs.explicit", "job").context(origin_cx),
    )
    .await;
    drop(origin);

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"job");
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
    drop(cx);

    let origin = telemetry.span("origin");
    let api = telemetry.span("api");
    let publish = telemetry.span("publish jobs.explicit");
    let process = telemetry.span("process jobs.explicit");
    assert_child_of(&publish, &origin);
    assert_ne!(
        trace_id(&publish),
        trace_id(&api),
        "the explicit context wins over the current span"
    );
    assert_child_of(&process, &publish);
}

/// No OpenTelemetry layer in the `tracing` subscriber: the application uses
/// OpenTelemetry directly and attaches its context with `Context::attach`.
#[tokio::test]
async fn context_current_propagates_without_an_opentelemetry_layer() {
    let otel = OtelWithoutLayer::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.plain").await;
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));

    let api = otel.tracer().start("api");
    let api_context = api.span_context().clone();
    assert!(api_context.is_valid());
    {
        let _attached = Context::current_with_span(api).attach();
        publish(&mut publisher, Publish::new("jobs.plain", "job")).await;
    }

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"job");
    let headers = message
        .headers
        .as_ref()
        .expect("the layer injected headers");
    assert_eq!(
        headers.get("traceparent").map(|v| v.as_str()),
        Some(format!("00-{}-{}-01", api_context.trace_id(), api_context.span_id()).as_str()),
    );
    let record = cx.extraction().expect("extraction record");
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    let span_context = cx.span().span_context().clone();
    assert!(span_context.is_valid());
    assert!(span_context.is_remote());
    assert_eq!(span_context.trace_id(), api_context.trace_id());
    assert_eq!(span_context.span_id(), api_context.span_id());
    // Without the layer, handler spans cannot be parented, and that is said.
    let err = cx
        .handler_span(tracing::info_span!("handler"))
        .expect_err("no layer to parent the handler span");
    assert!(matches!(err.kind(), SetParentError::LayerNotFound), "{err}");
    drop(cx);

    let spans = otel.spans();
    let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["api"]);
    assert_eq!(trace_id(&spans[0]), api_context.trace_id());
}

#[tokio::test]
async fn handler_span_entered_too_early_is_reported_not_silent() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.early").await;
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
    let api = tracing::info_span!("api");
    publish_in_span(&mut publisher, api, Publish::new("jobs.early", "job")).await;

    let (_message, cx) = next(&mut jobs).await;
    let handler = tracing::info_span!("handler");
    // What an `#[instrument]` body or an early `enter()` does.
    drop(handler.enter());
    let err = cx
        .handler_span(handler)
        .expect_err("a started span cannot be re-parented");
    assert!(
        matches!(err.kind(), SetParentError::AlreadyStarted),
        "{err}"
    );
    assert!(err.to_string().contains("already started"), "{err}");
    drop(err.into_span());
    drop(cx);

    let process = telemetry.span("process jobs.early");
    let handler = telemetry.span("handler");
    assert_ne!(
        trace_id(&handler),
        trace_id(&process),
        "the early-entered handler span kept its own trace"
    );
}

/// A layer of the user's own below the propagation layer, which makes a span
/// when called and another when its future is polled: children of the
/// PRODUCER span only with `instrument_inner(true)`, else of the caller's.
#[tokio::test]
async fn instrument_inner_parents_inner_layers_spans_under_the_producer_span() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.inner.>").await;
    let own_layer = |core: CorePublisher| {
        tower::service_fn(move |publish: Publish| {
            tracing::info_span!("inner_call").in_scope(|| {});
            let core = core.clone();
            async move {
                tracing::info_span!("inner_poll").in_scope(|| {});
                tower::ServiceExt::oneshot(core, publish).await
            }
        })
    };

    for (instrument, subject) in [
        (None, "jobs.inner.default"),
        (Some(true), "jobs.inner.entered"),
    ] {
        telemetry.reset();
        let mut layer = TracePropagationLayer::new();
        if let Some(enabled) = instrument {
            layer = layer.instrument_inner(enabled);
        }
        let mut publisher = layer.layer(own_layer(CorePublisher::new(client.clone())));
        let api = tracing::info_span!("api");
        publish_in_span(&mut publisher, api, Publish::new(subject, "job")).await;
        let (_message, cx) = next(&mut jobs).await;
        assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
        drop(cx);

        let api = telemetry.span("api");
        let publish = telemetry.span(&format!("publish {subject}"));
        let process = telemetry.span(&format!("process {subject}"));
        assert_child_of(&publish, &api);
        assert_child_of(&process, &publish);
        let expected_parent = if instrument == Some(true) {
            &publish
        } else {
            &api
        };
        for name in ["inner_call", "inner_poll"] {
            let inner = telemetry.span(name);
            assert_eq!(
                inner.parent_span_id,
                span_id(expected_parent),
                "{name} with instrument_inner {instrument:?}: parent should be {:?}",
                expected_parent.name
            );
        }
    }
}
