//! Which nats-server versions message tracing can be turned on with.

use std::fmt;

/// Why message tracing must not be turned on against a server version.
///
/// Returned by [`message_tracing_safe`] and kept by a disabled
/// [`ServerHops`](super::ServerHops) ([`disabled_reason`](super::ServerHops::disabled_reason)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsafeVersion {
    /// The server predates message tracing (before 2.11.0): it ignores
    /// `Nats-Trace-Dest` and publishes no events.
    Unsupported {
        /// The version as the server reported it.
        version: String,
    },
    /// The server (2.11.0 up to and including 2.12.11, and 2.14.0
    /// development builds) rewrites trace headers while message tracing is
    /// active: any-case `Traceparent` becomes `traceparent` on every inbound
    /// message, and the first letter of a trace header may be overwritten
    /// (`Xraceparent`) on stored messages, which breaks the consumer's
    /// trace. Fixed in 2.12.12 and 2.14.0.
    RewritesTraceHeaders {
        /// The version as the server reported it.
        version: String,
    },
    /// The version string is not `MAJOR.MINOR.PATCH[-PRE][+BUILD]` (an empty
    /// string, for instance, when the client has not connected yet): the
    /// server cannot be checked, so it is treated as unsafe.
    Unparseable {
        /// The version as the server reported it (at most 64 characters).
        version: String,
    },
}

impl UnsafeVersion {
    /// A short, stable name for logs and metrics: `"unsupported"`,
    /// `"rewrites_trace_headers"` or `"unparseable_version"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "unsupported",
            Self::RewritesTraceHeaders { .. } => "rewrites_trace_headers",
            Self::Unparseable { .. } => "unparseable_version",
        }
    }

    /// The version as the server reported it.
    pub fn version(&self) -> &str {
        match self {
            Self::Unsupported { version }
            | Self::RewritesTraceHeaders { version }
            | Self::Unparseable { version } => version,
        }
    }
}

impl fmt::Display for UnsafeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported { version } => write!(
                f,
                "nats-server {version} does not support message tracing (needs 2.11 or later; \
                 2.12.12+ or 2.14+ to be safe)"
            ),
            Self::RewritesTraceHeaders { version } => write!(
                f,
                "nats-server {version} rewrites trace headers while message tracing is active \
                 (`Traceparent` re-cased, `Xraceparent` on stored messages); upgrade to \
                 2.12.12+ or 2.14+"
            ),
            Self::Unparseable { version } => write!(
                f,
                "nats-server version {version:?} cannot be parsed, so message tracing is not \
                 known to be safe"
            ),
        }
    }
}

impl std::error::Error for UnsafeVersion {}

/// Whether message tracing (`Nats-Trace-Dest`) is safe to turn on against
/// a nats-server of this version.
///
/// | Version | Result |
/// |---|---|
/// | before 2.11.0 | [`Unsupported`](UnsafeVersion::Unsupported): no message tracing |
/// | 2.11.0 – 2.12.11 (every 2.11.x) | [`RewritesTraceHeaders`](UnsafeVersion::RewritesTraceHeaders) |
/// | 2.12.12 and later 2.12.x | safe |
/// | 2.14.0 and later | safe |
///
/// Pre-releases are judged conservatively: `2.11.0-RC.1` rewrites headers
/// like 2.11.0 does, `2.12.12-*` and `2.14.0-dev` are unsafe (the fix may
/// not be in them), `2.14.0-RC.*` is safe (the fix landed before the first
/// release candidate). A leading `v` is accepted.
///
/// The check sees one server: in a cluster, or with leafnodes and gateways,
/// every server a traced message crosses must be safe.
///
/// # Examples
///
/// ```
/// use nats_otel::hops::{message_tracing_safe, UnsafeVersion};
///
/// assert!(message_tracing_safe("2.15.1").is_ok());
/// assert!(message_tracing_safe("2.12.12").is_ok());
/// assert!(matches!(
///     message_tracing_safe("2.12.8"),
///     Err(UnsafeVersion::RewritesTraceHeaders { .. })
/// ));
/// assert!(matches!(
///     message_tracing_safe("2.10.26"),
///     Err(UnsafeVersion::Unsupported { .. })
/// ));
/// ```
pub fn message_tracing_safe(version: &str) -> Result<(), UnsafeVersion> {
    let Some(v) = Version::parse(version) else {
        return Err(UnsafeVersion::Unparseable {
            version: version.chars().take(64).collect(),
        });
    };
    let owned = || version.to_owned();
    let core = (v.major, v.minor, v.patch);
    if core < (2, 11, 0) {
        return Err(UnsafeVersion::Unsupported { version: owned() });
    }
    let rewrites = core < (2, 12, 12)
        || (core == (2, 12, 12) && v.pre.is_some())
        || (core == (2, 14, 0) && v.pre.is_some_and(|pre| !is_release_candidate(pre)));
    if rewrites {
        return Err(UnsafeVersion::RewritesTraceHeaders { version: owned() });
    }
    Ok(())
}

fn is_release_candidate(pre: &str) -> bool {
    pre.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("rc"))
}

/// `MAJOR.MINOR.PATCH[-PRE][+BUILD]`, as nats-server reports it.
struct Version<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Option<&'a str>,
}

impl<'a> Version<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let s = s.split_once('+').map_or(s, |(core, _build)| core);
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre)),
            Some(_) => return None,
            None => (s, None),
        };
        let mut parts = core.split('.');
        let mut number = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let (major, minor, patch) = (number()?, number()?, number()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
            pre,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_gate_table() {
        let unsupported = |v: &str| UnsafeVersion::Unsupported { version: v.into() };
        let rewrites = |v: &str| UnsafeVersion::RewritesTraceHeaders { version: v.into() };
        let table: &[(&str, Result<(), UnsafeVersion>)] = &[
            ("2.9.10", Err(unsupported("2.9.10"))),
            ("2.10.25", Err(unsupported("2.10.25"))),
            ("2.10.26", Err(unsupported("2.10.26"))),
            ("1.4.1", Err(unsupported("1.4.1"))),
            ("2.11.0-preview.1", Err(rewrites("2.11.0-preview.1"))),
            ("2.11.0-RC.1", Err(rewrites("2.11.0-RC.1"))),
            ("2.11.0", Err(rewrites("2.11.0"))),
            ("2.11.11", Err(rewrites("2.11.11"))),
            ("2.11.17", Err(rewrites("2.11.17"))),
            ("2.12.0", Err(rewrites("2.12.0"))),
            ("2.12.8", Err(rewrites("2.12.8"))),
            ("2.12.11", Err(rewrites("2.12.11"))),
            ("2.12.12-RC.1", Err(rewrites("2.12.12-RC.1"))),
            ("2.12.12", Ok(())),
            ("2.12.15", Ok(())),
            ("2.13.0", Ok(())),
            ("2.14.0-dev", Err(rewrites("2.14.0-dev"))),
            ("2.14.0-RC.1", Ok(())),
            ("2.14.0", Ok(())),
            ("2.14.6", Ok(())),
            ("2.15.1", Ok(())),
            ("v2.15.1", Ok(())),
            ("2.15.1+build.7", Ok(())),
            ("3.0.0", Ok(())),
            ("2.10.99-RC.1", Err(unsupported("2.10.99-RC.1"))),
        ];
        for (version, expected) in table {
            assert_eq!(&message_tracing_safe(version), expected, "{version}");
        }
    }

    #[test]
    fn unparseable_versions() {
        for bad in [
            "", "2", "2.15", "2.15.x", "2.15.1.4", "2.15.1-", "x2.15.1", "2..1", "2.15.-1",
        ] {
            let err = message_tracing_safe(bad).unwrap_err();
            assert_eq!(err.as_str(), "unparseable_version", "{bad:?}");
            assert_eq!(err.version(), bad);
        }
        let long = "9".repeat(10_000);
        let err = message_tracing_safe(&long).unwrap_err();
        assert_eq!(err.version().len(), 64);
        assert!(err.to_string().contains("cannot be parsed"));
    }

    #[test]
    fn reasons_read_well() {
        let err = message_tracing_safe("2.12.8").unwrap_err();
        assert_eq!(err.as_str(), "rewrites_trace_headers");
        assert!(err.to_string().contains("2.12.12+"), "{err}");
        let err = message_tracing_safe("2.10.26").unwrap_err();
        assert_eq!(err.as_str(), "unsupported");
        assert!(err.to_string().contains("2.10.26"), "{err}");
    }
}
