//! Small typed errors.

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
