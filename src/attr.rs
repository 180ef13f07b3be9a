//! Attribute names in the `messaging.nats.*` namespace, for what the
//! OpenTelemetry messaging conventions have no standard name for.

/// The JetStream stream a message was consumed from.
pub const NATS_STREAM: &str = "messaging.nats.stream";
/// The message's sequence number in its JetStream stream.
pub const NATS_STREAM_SEQUENCE: &str = "messaging.nats.stream.sequence";
/// How many times JetStream has delivered the message (1 on first delivery).
pub const NATS_DELIVERED: &str = "messaging.nats.delivered";
/// Prefix of captured headers: `messaging.nats.header.<lowercase name>`.
pub const NATS_HEADER_PREFIX: &str = "messaging.nats.header.";
/// Where the consumer's context came from: `headers`, `kv`, `payload` or
/// `none` (see [`ContextSource`](crate::ContextSource)).
pub const CONTEXT_SOURCE: &str = "nats_otel.context.source";
/// Why no context was found, when the source is `none` or a fallback was
/// needed (see [`NoContextReason`](crate::consume::NoContextReason)).
pub const CONTEXT_REASON: &str = "nats_otel.context.reason";
