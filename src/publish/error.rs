//! Small typed errors: bad headers, failed publishes and KV writes.

use std::fmt;

/// A header name or value that cannot travel in a NATS header.
///
/// # Examples
///
/// ```
/// use nats_otel::Publish;
///
/// let err = Publish::new("jobs", "x").header("bad name", "v").unwrap_err();
/// assert_eq!(err.header_name(), "bad name");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHeader {
    name: String,
    in_value: bool,
}

impl InvalidHeader {
    pub(crate) fn name(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            in_value: false,
        }
    }

    pub(crate) fn value(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            in_value: true,
        }
    }

    /// The header name given.
    pub fn header_name(&self) -> &str {
        &self.name
    }

    /// Whether the value (rather than the name) was invalid.
    pub fn is_value(&self) -> bool {
        self.in_value
    }
}

impl fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.in_value {
            write!(
                f,
                "invalid value for NATS header {:?}: values cannot contain CR or LF",
                self.name
            )
        } else {
            write!(
                f,
                "invalid NATS header name {:?}: names must be printable ASCII without ':' or spaces",
                self.name
            )
        }
    }
}

impl std::error::Error for InvalidHeader {}

/// The error of a [`TracePropagation`](super::TracePropagation) service:
/// the inner publish service's error, or the KV fallback's write that
/// [`WritePolicy::Required`](crate::fallback::WritePolicy::Required) made a
/// condition of publishing.
///
/// The type is the same with the fallback on or off; without it (or with
/// [`WritePolicy::BestEffort`](crate::fallback::WritePolicy::BestEffort), the
/// default) only [`Error::Publish`] occurs.
///
/// # Examples
///
/// ```
/// use nats_otel::publish::Error;
///
/// let error: Error<std::io::Error> = Error::Publish(std::io::Error::other("no connection"));
/// assert_eq!(error.to_string(), "no connection");
/// assert!(error.kv_write_error().is_none());
/// assert_eq!(error.into_publish_error().unwrap().to_string(), "no connection");
/// ```
#[derive(Debug)]
pub enum Error<E> {
    /// The inner publish service failed; its error, unchanged.
    Publish(E),
    /// The KV write failed under
    /// [`WritePolicy::Required`](crate::fallback::WritePolicy::Required);
    /// nothing was published.
    KvWrite(KvWriteError),
}

impl<E> Error<E> {
    /// The inner service's error, if that is what failed.
    pub fn into_publish_error(self) -> Option<E> {
        match self {
            Self::Publish(e) => Some(e),
            Self::KvWrite(_) => None,
        }
    }

    /// The inner service's error, by reference.
    pub fn publish_error(&self) -> Option<&E> {
        match self {
            Self::Publish(e) => Some(e),
            Self::KvWrite(_) => None,
        }
    }

    /// The failed KV write, if that is what failed.
    pub fn kv_write_error(&self) -> Option<&KvWriteError> {
        match self {
            Self::KvWrite(e) => Some(e),
            Self::Publish(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KvWrite(e) => write!(f, "{e}; message not published (fallback required)"),
            Self::Publish(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    // Transparent for the inner error: its message is this one's, so the
    // chain goes on with its source.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::KvWrite(e) => Some(e),
            Self::Publish(e) => e.source(),
        }
    }
}

/// The trace carrier could not be written to the fallback bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWriteError {
    pub(crate) bucket: String,
    pub(crate) key: String,
    pub(crate) message: String,
}

impl KvWriteError {
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The encoded key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for KvWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "writing the trace carrier to KV bucket {:?} under key {:?} failed: {}",
            self.bucket, self.key, self.message
        )
    }
}

impl std::error::Error for KvWriteError {}
