//! nats-server versions and what differs between them for propagation.
#![allow(dead_code)]

/// `major.minor.patch` of a nats-server version string (`2.12.8`,
/// `2.14.0-RC.1`).
pub fn parse_version(version: &str) -> (u32, u32, u32) {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c))) => (a, b, c),
        _ => panic!("cannot parse the nats-server version {version:?}"),
    }
}

/// Whether this nats-server renames a `traceparent` header in any casing
/// (Go's `Traceparent`) to `traceparent` on every inbound message: 2.11.0
/// up to 2.12.11 do (measured on 2.11.11 and 2.12.8; fixed in 2.12.12 and
/// 2.14.0). Consumers that read only `Traceparent` (OpenTelemetry Go's
/// `HeaderCarrier`) then find nothing, whatever the producer wrote.
pub fn rewrites_traceparent(version: &str) -> bool {
    let v = parse_version(version);
    ((2, 11, 0)..(2, 12, 12)).contains(&v)
}
