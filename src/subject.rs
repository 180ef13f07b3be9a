//! NATS subject patterns (`*` one token, `>` the trailing tokens), put to
//! two uses: [`SubjectFilter`] leaves some subjects untraced, and
//! [`SubjectTemplates`] names spans and metrics after low-cardinality
//! destinations (`publish jobs.*`, never `publish jobs.job-Pug48o…`).
//!
//! # Examples
//!
//! ```
//! use nats_otel::subject::{SubjectFilter, SubjectTemplates};
//! use nats_otel::TracePropagationLayer;
//!
//! let layer = TracePropagationLayer::new()
//!     .skip_subjects(SubjectFilter::new(["_INBOX.>"]))
//!     .subject_templates(SubjectTemplates::new(["jobs.*", "results.>"])?);
//! # Ok::<(), nats_otel::subject::InvalidSubjectPattern>(())
//! ```

use std::fmt;
use std::sync::Arc;

mod template;

pub(crate) use template::Destination;
pub use template::{InvalidSubjectPattern, SubjectTemplates};

/// A set of NATS subject patterns (`*` matches one token, `>` one or more
/// trailing tokens).
///
/// # Examples
///
/// ```
/// use nats_otel::SubjectFilter;
///
/// let skip = SubjectFilter::new(["_INBOX.>", "metrics.*.raw"]);
/// assert!(skip.matches("_INBOX.abc.def"));
/// assert!(skip.matches("metrics.cpu.raw"));
/// assert!(!skip.matches("metrics.cpu.avg"));
/// assert!(!skip.matches("jobs.new"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SubjectFilter {
    patterns: Arc<[String]>,
}

impl fmt::Debug for SubjectFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.patterns.iter()).finish()
    }
}

impl SubjectFilter {
    /// A filter matching any of `patterns`.
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether no pattern is set.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `subject` matches any pattern.
    pub fn matches(&self, subject: &str) -> bool {
        self.patterns.iter().any(|p| subject_matches(p, subject))
    }
}

/// Whether `subject` matches the NATS `pattern`.
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    let mut pattern_tokens = pattern.split('.').peekable();
    while let Some(p) = pattern_tokens.next() {
        if p == ">" && pattern_tokens.peek().is_none() {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(s) if p == "*" || p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "x"));
        assert!(subject_matches("*.b.>", "x.b.y"));
    }
}
