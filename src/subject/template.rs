//! Low-cardinality destination templates for span names.
//!
//! OpenTelemetry's messaging conventions name spans `{operation}
//! {destination}`, where the destination is `messaging.destination.template`
//! when one is known, else the destination name unless it is temporary. A
//! subject such as `jobs.job-Pug48oXyZ8aBcD12efGh34` is one of millions, so
//! it must not become a span name; `jobs.*` may.
//!
//! [`SubjectTemplates`] resolves a subject in three steps:
//!
//! 1. **Inbox:** a subject under `_INBOX.` (or a configured
//!    [`inbox_prefix`](SubjectTemplates::inbox_prefix)) is temporary; the
//!    span name is the operation alone (`publish`).
//! 2. **Configured patterns:** the first pattern (in the order given) that
//!    matches the subject is the template.
//! 3. **Heuristic:** each token that looks generated (see
//!    [`looks_generated`]) is replaced by `*`. When no token is, there is no
//!    template and the span name uses the subject as is (no allocation).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::subject_matches;
use crate::telemetry::SpanName;

/// The inbox prefix of every NATS client (`_INBOX.<nuid>...`).
const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// NATS subject patterns that name destinations in span names, so a span is
/// called `publish jobs.*` rather than `publish jobs.job-Pug48oXyZ8aBcD12efGh34`.
///
/// A subject is resolved, in this order, as
///
/// 1. **temporary** when it is under `_INBOX.` or a prefix added with
///    [`inbox_prefix`](Self::inbox_prefix): the span name is the operation
///    alone (`publish`);
/// 2. the **first configured pattern** that matches it (`*` matches one
///    token, `>` one or more trailing tokens);
/// 3. else a **heuristic** template: each token that looks generated is
///    replaced by `*`. Generated means: all digits with at least 4 of them
///    (so `2024` too); a UUID (`8-4-4-4-12` hex, or 32 hex digits); at least
///    12 ASCII letters and digits with both kinds (NUIDs, ULIDs, long hex
///    ids, …); a 22-letter NUID without digits (at least 4 upper- and 4
///    lowercase letters); or a prefixed id — a token
///    with `-`, `_` or `:` in which a part is generated as above, or a part
///    after the first separator is 2 or more digits (`job-<nuid>`,
///    `order_12345`, `user:9f8e7d6c5b4a39281706`, `orders-2024`). Words
///    such as `jobs`, `resize`, `ORDERS`, `v2`, `eu-west-1`, `shard-7` or
///    `deadbeefcafe` (no digit) stay. With no generated token the subject
///    itself names the span.
///
/// `SubjectTemplates::default()` has no patterns (heuristic only) and only
/// the `_INBOX` prefix. Cloning is cheap (the lists are shared).
///
/// # Examples
///
/// ```
/// use nats_otel::subject::SubjectTemplates;
///
/// // Spans on `jobs.<anything>` are named `publish jobs.*`, on
/// // `results.<a>.<b>...` `publish results.>`; other subjects by heuristic.
/// let templates = SubjectTemplates::new(["jobs.*", "results.>"])?;
/// let heuristic_only = SubjectTemplates::default();
/// # let _ = (templates, heuristic_only);
/// # Ok::<(), nats_otel::subject::InvalidSubjectPattern>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectTemplates {
    /// Validated patterns, tried in order.
    patterns: Arc<[String]>,
    /// Inbox prefixes besides [`DEFAULT_INBOX_PREFIX`], without the '.'.
    inbox_prefixes: Arc<[String]>,
}

impl SubjectTemplates {
    /// Templates from NATS subject `patterns`, tried in the order given
    /// before the heuristic.
    ///
    /// A pattern is a non-empty, `.`-separated list of non-empty tokens
    /// without whitespace or control characters, where `*` and `>` stand
    /// alone as a token and `>` comes last. A pattern without wildcards
    /// (`jobs.resize`) is allowed and names only that subject.
    ///
    /// # Errors
    ///
    /// [`InvalidSubjectPattern`] for the first pattern that is not valid,
    /// naming it and why.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::subject::SubjectTemplates;
    ///
    /// assert!(SubjectTemplates::new(["jobs.*", "results.>", "audit.*.events"]).is_ok());
    ///
    /// let error = SubjectTemplates::new(["jobs.*", "results.>.raw"]).unwrap_err();
    /// assert_eq!(error.pattern(), "results.>.raw");
    /// assert_eq!(
    ///     error.to_string(),
    ///     r#"invalid subject pattern "results.>.raw": `>` must be the last token"#,
    /// );
    /// ```
    pub fn new<I, S>(patterns: I) -> Result<Self, InvalidSubjectPattern>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns = patterns
            .into_iter()
            .map(|pattern| {
                let pattern = pattern.into();
                match validate(&pattern) {
                    Ok(()) => Ok(pattern),
                    Err(reason) => Err(InvalidSubjectPattern { pattern, reason }),
                }
            })
            .collect::<Result<Arc<[String]>, _>>()?;
        Ok(Self {
            patterns,
            inbox_prefixes: Arc::default(),
        })
    }

    /// Also treats subjects under `prefix.` as temporary (reply inboxes),
    /// besides `_INBOX.`: for a client connected with
    /// `ConnectOptions::custom_inbox_prefix`. A trailing `.` is ignored;
    /// an empty prefix adds nothing. May be called more than once.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::subject::SubjectTemplates;
    ///
    /// // Replies to `_MYINBOX.<nuid>` and `_INBOX.<nuid>` are both named
    /// // after the operation alone.
    /// let templates = SubjectTemplates::new(["jobs.*"])?.inbox_prefix("_MYINBOX");
    /// # let _ = templates;
    /// # Ok::<(), nats_otel::subject::InvalidSubjectPattern>(())
    /// ```
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        while prefix.ends_with('.') {
            prefix.pop();
        }
        if !prefix.is_empty() && !self.inbox_prefixes.contains(&prefix) {
            self.inbox_prefixes = self
                .inbox_prefixes
                .iter()
                .cloned()
                .chain(std::iter::once(prefix))
                .collect();
        }
        self
    }

    /// Whether these are the defaults: no pattern, no inbox prefix besides
    /// `_INBOX` (they name a subject as `SubjectTemplates::default()` does).
    pub(crate) fn is_default(&self) -> bool {
        self.patterns.is_empty() && self.inbox_prefixes.is_empty()
    }

    /// Whether `subject` is a temporary destination: under `_INBOX.` or a
    /// configured inbox prefix followed by `.`.
    pub(crate) fn is_temporary(&self, subject: &str) -> bool {
        is_under(subject, DEFAULT_INBOX_PREFIX)
            || self.inbox_prefixes.iter().any(|p| is_under(subject, p))
    }

    /// How `subject` is named: temporary, a configured pattern (borrowed),
    /// a heuristic template (owned), or none (the subject names itself).
    /// Allocates only when the heuristic replaces a token.
    pub(crate) fn resolve<'a>(&'a self, subject: &'a str) -> Destination<'a> {
        if self.is_temporary(subject) {
            return Destination {
                template: None,
                temporary: true,
            };
        }
        let template = match self.patterns.iter().find(|p| subject_matches(p, subject)) {
            Some(pattern) => Some(Cow::Borrowed(pattern.as_str())),
            None => heuristic_template(subject).map(Cow::Owned),
        };
        Destination {
            template,
            temporary: false,
        }
    }
}

/// What [`SubjectTemplates::resolve`] found for a subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination<'a> {
    /// `messaging.destination.template`, when known.
    pub(crate) template: Option<Cow<'a, str>>,
    /// `messaging.destination.temporary`: a reply inbox.
    pub(crate) temporary: bool,
}

impl Destination<'_> {
    /// What a span name shows after the operation: the template, else the
    /// subject; empty for a temporary destination.
    pub(crate) fn span_destination<'s>(&'s self, subject: &'s str) -> &'s str {
        match &self.template {
            _ if self.temporary => "",
            Some(template) => template,
            None => subject,
        }
    }

    /// `{operation} {template}`, else `{operation} {subject}`; the
    /// operation alone for a temporary (or empty) destination.
    pub(crate) fn span_name(&self, operation: &'static str, subject: &str) -> String {
        SpanName::Joined(operation, self.span_destination(subject)).to_string()
    }
}

/// Why a subject pattern was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Empty,
    Whitespace,
    EmptyToken,
    PartialWildcard,
    FullWildcardNotLast,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "the pattern is empty",
            Reason::Whitespace => "it contains whitespace or a control character",
            Reason::EmptyToken => "empty token (a leading, trailing or doubled `.`)",
            Reason::PartialWildcard => "`*` and `>` must be a whole token",
            Reason::FullWildcardNotLast => "`>` must be the last token",
        }
    }
}

/// A subject pattern given to [`SubjectTemplates::new`] that is not a valid
/// NATS subject pattern: empty, with whitespace or a control character, with
/// an empty token (`jobs..new`, `.jobs`, `jobs.`), with a wildcard inside a
/// token (`jobs.new*`), or with `>` before the last token.
///
/// # Examples
///
/// ```
/// use nats_otel::subject::{InvalidSubjectPattern, SubjectTemplates};
///
/// let error: InvalidSubjectPattern = SubjectTemplates::new(["jobs..new"]).unwrap_err();
/// assert_eq!(error.pattern(), "jobs..new");
/// assert!(error.to_string().contains("empty token"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSubjectPattern {
    pattern: String,
    reason: Reason,
}

impl InvalidSubjectPattern {
    /// The rejected pattern, as given.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::subject::SubjectTemplates;
    ///
    /// let error = SubjectTemplates::new(["jobs.*", "orders new"]).unwrap_err();
    /// assert_eq!(error.pattern(), "orders new");
    /// ```
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Display for InvalidSubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid subject pattern {:?}: {}",
            self.pattern,
            self.reason.as_str()
        )
    }
}

impl std::error::Error for InvalidSubjectPattern {}

/// Checks `pattern` is a NATS subject pattern.
fn validate(pattern: &str) -> Result<(), Reason> {
    if pattern.is_empty() {
        return Err(Reason::Empty);
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Reason::Whitespace);
    }
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(Reason::EmptyToken);
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(Reason::PartialWildcard);
        }
        if token == ">" && tokens.peek().is_some() {
            return Err(Reason::FullWildcardNotLast);
        }
    }
    Ok(())
}

/// Whether `subject` is `prefix` followed by `.` and more.
fn is_under(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// `subject` with each generated-looking token replaced by `*`, or `None`
/// (without allocating) when no token looks generated.
fn heuristic_template(subject: &str) -> Option<String> {
    if !may_have_generated_token(subject) {
        return None;
    }
    let mut template: Option<String> = None;
    let mut start = 0;
    for token in subject.split('.') {
        let end = start + token.len();
        if looks_generated(token) {
            template
                .get_or_insert_with(|| {
                    // '*' is never longer than the token it replaces.
                    let mut template = String::with_capacity(subject.len());
                    template.push_str(&subject[..start]);
                    template
                })
                .push('*');
        } else if let Some(template) = &mut template {
            template.push_str(token);
        }
        if end < subject.len() {
            if let Some(template) = &mut template {
                template.push('.');
            }
        }
        start = end + 1;
    }
    template
}

/// Whether any token of `subject` could look generated: every rule of
/// [`looks_generated`] needs an ASCII digit or at least 22 bytes (22
/// letters, 32 hex digits, a 36-byte UUID). Most subjects are short words
/// (`orders.created`): this rules them out in one pass, without splitting.
#[inline]
fn may_have_generated_token(subject: &str) -> bool {
    subject.len() >= 22 || subject.bytes().any(|b| b.is_ascii_digit())
}

/// Separators of a prefixed id (`job-…`, `order_…`, `user:…`).
fn is_separator(byte: u8) -> bool {
    matches!(byte, b'-' | b'_' | b':')
}

/// Whether a subject token looks like a generated id rather than a word:
/// [`looks_generated_part`], a dashed UUID, or a prefixed id (a token with
/// `-`, `_` or `:` where a part looks generated, or a part after the first
/// separator is 2 or more digits).
fn looks_generated(token: &str) -> bool {
    let bytes = token.as_bytes();
    if !bytes.iter().copied().any(is_separator) {
        return looks_generated_part(bytes);
    }
    if is_dashed_uuid(bytes) {
        return true;
    }
    let mut parts = bytes.split(|&b| is_separator(b));
    // The head (`job` in `job-…`) only by the plain rules: `eu-west-1`
    // stays, `2024-01-15` goes by its tail.
    if parts.next().is_some_and(looks_generated_part) {
        return true;
    }
    parts.any(|part| {
        (part.len() >= 2 && part.iter().all(u8::is_ascii_digit)) || looks_generated_part(part)
    })
}

/// `8-4-4-4-12` hex digits.
fn is_dashed_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether a separator-free token (or part) looks generated:
///
/// - all digits, at least 4 (`12345`, also `2024`);
/// - at least 12 ASCII letters and digits with both kinds: NUIDs (22
///   base62), ULIDs (26 Crockford base32), hex ids of 12+ with a digit,
///   32-hex UUIDs;
/// - 32 hex digits (a dashless UUID, even without a digit);
/// - 22 letters with at least 4 upper- and 4 lowercase: a NUID without
///   digits (about 2% of NUIDs have none; 1 in 1,000 of those has fewer
///   than 4 of one case, so about 1 NUID in 55,000 escapes). A camelCase
///   word of exactly 22 letters keeps its name with 3 capitals or fewer
///   (`ProcessPaymentsRequest`); with more it is templated — a word lost
///   from a span name costs less than an id in every span name, and a
///   configured pattern names it.
fn looks_generated_part(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let (mut digits, mut upper, mut lower, mut hex) = (0usize, 0usize, 0usize, 0usize);
    for &b in bytes {
        let is_upper = match b {
            b'0'..=b'9' => {
                digits += 1;
                hex += 1;
                continue;
            }
            b'A'..=b'Z' => true,
            b'a'..=b'z' => false,
            _ => return false,
        };
        if b.is_ascii_hexdigit() {
            hex += 1;
        }
        if is_upper {
            upper += 1;
        } else {
            lower += 1;
        }
    }
    let len = bytes.len();
    if digits == len {
        return len >= 4;
    }
    (digits > 0 && len >= 12)
        || (len == 32 && hex == len)
        || (len == 22 && digits == 0 && upper >= 4 && lower >= 4)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// The heuristic template of `subject` (no patterns), or the subject.
    fn template(subject: &str) -> String {
        let templates = SubjectTemplates::default();
        let destination = templates.resolve(subject);
        assert!(!destination.temporary, "{subject}");
        match destination.template {
            Some(template) => template.into_owned(),
            None => subject.to_owned(),
        }
    }

    const NUIDS: [&str; 10] = [
        "Ky9Pf34qY6Nb3wWD25RQ4F",
        "5ZR3qa7yEeeby3abP3E2Zs",
        "8IQ9Y7aJZqhB6baeCN6Zj4",
        "a3dDVhYRnKTbxTNJFoBinF",
        "5aJXVuLkSIc47WQAmL9xVQ",
        "2zg4mZaouqKLiMcVbpT4r5",
        "yHUig43kiJfahqSIjOugM1",
        "yTMAd7V3DnI8lFPPwtV5AS",
        "PZHu8qRtZHjQMhuOzE95B9",
        "EgE0VrbBGI09QYNdaKy8is",
    ];

    #[test]
    fn ten_nuid_jobs_share_one_template() {
        let names: BTreeSet<String> = NUIDS
            .iter()
            .map(|nuid| {
                let subject = format!("jobs.job-{nuid}");
                let templates = SubjectTemplates::default();
                templates.resolve(&subject).span_name("publish", &subject)
            })
            .collect();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["publish jobs.*"]);
        // Bare NUIDs, too.
        for nuid in NUIDS {
            assert_eq!(template(&format!("jobs.{nuid}.done")), "jobs.*.done");
        }
    }

    #[test]
    fn nuid_without_digits() {
        assert_eq!(template("jobs.KyPfqYNbwWDRQFaBcDeFgH"), "jobs.*");
        // Few case changes, no short lowercase runs: still an id.
        assert_eq!(template("jobs.job-nrgMQZQmpnpqtffPUAeMlv"), "jobs.*");
        assert_eq!(template("jobs.job-xaQchjpuHpoqoluwRWQsji"), "jobs.*");
        // camelCase words of the same length with 3 capitals or fewer stay.
        assert_eq!(
            template("api.ProcessPaymentsRequest"),
            "api.ProcessPaymentsRequest"
        );
        // With more they are templated: a configured pattern names them.
        assert_eq!(template("api.HTTPRequestHandlerTest"), "api.*");
        let named = SubjectTemplates::new(["api.HTTPRequestHandlerTest"]).unwrap();
        assert_eq!(
            named
                .resolve("api.HTTPRequestHandlerTest")
                .span_name("publish", "api.HTTPRequestHandlerTest"),
            "publish api.HTTPRequestHandlerTest"
        );
    }

    /// NUID-like tokens from a fixed-seed xorshift: almost all are caught
    /// (a miss is digit-free with 3 or fewer capitals or lowercase letters:
    /// about 1 in 55,000).
    #[test]
    fn random_nuids_are_almost_always_replaced() {
        const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut misses = 0;
        for _ in 0..10_000 {
            let nuid: String = (0..22)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    BASE62[(state % 62) as usize] as char
                })
                .collect();
            if !looks_generated(&nuid) {
                misses += 1;
            }
        }
        assert!(misses <= 1, "{misses} of 10000 NUIDs kept");
    }

    #[test]
    fn uuids() {
        assert_eq!(
            template("orders.550e8400-e29b-41d4-a716-446655440000.created"),
            "orders.*.created"
        );
        assert_eq!(
            template("orders.550E8400E29B41D4A716446655440000"),
            "orders.*"
        );
        assert_eq!(
            template("orders.abcdefabcdefabcdefabcdefabcdefab"),
            "orders.*"
        );
        assert_eq!(
            template("orders.order-550e8400-e29b-41d4-a716-446655440000"),
            "orders.*"
        );
    }

    #[test]
    fn ulids() {
        assert_eq!(template("events.01ARZ3NDEKTSV4RRFFQ69G5FAV"), "events.*");
        assert_eq!(
            template("events.01arz3ndektsv4rrffq69g5fav.ack"),
            "events.*.ack"
        );
    }

    #[test]
    fn numeric() {
        assert_eq!(template("orders.12345"), "orders.*");
        assert_eq!(template("orders.1234.items.42"), "orders.*.items.42");
        assert_eq!(template("orders.2024"), "orders.*");
        assert_eq!(template("orders.123"), "orders.123");
        assert_eq!(template("shard.7"), "shard.7");
    }

    #[test]
    fn hex_and_long_mixed() {
        assert_eq!(template("blobs.9f8e7d6c5b4a"), "blobs.*");
        assert_eq!(
            template("commits.da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            "commits.*"
        );
        assert_eq!(template("sessions.abc123def456ghi"), "sessions.*");
        // Short, or without a digit: kept.
        assert_eq!(template("blobs.9f8e7d6c"), "blobs.9f8e7d6c");
        assert_eq!(template("blobs.deadbeefcafe"), "blobs.deadbeefcafe");
    }

    #[test]
    fn prefixed_ids() {
        assert_eq!(template("jobs.order_12345"), "jobs.*");
        assert_eq!(
            template("users.user:9f8e7d6c5b4a39281706.updated"),
            "users.*.updated"
        );
        assert_eq!(template("jobs.job-Pug48oXyZ8aBcD12efGh34"), "jobs.*");
        assert_eq!(template("reports.orders-2024"), "reports.*");
        assert_eq!(template("reports.2024-01-15"), "reports.*");
        assert_eq!(template("jobs.Pug48oXyZ8aBcD12efGh34-retry"), "jobs.*");
        // Single digits and words after separators stay.
        assert_eq!(
            template("regions.eu-west-1.deploy"),
            "regions.eu-west-1.deploy"
        );
        assert_eq!(template("work.shard-7"), "work.shard-7");
        assert_eq!(template("work.my_queue:high"), "work.my_queue:high");
    }

    #[test]
    fn words_are_kept_without_allocating() {
        for subject in [
            "jobs",
            "jobs.resize",
            "ORDERS.created",
            "api.v2.users",
            "regions.eu-west-1",
            "a..b",
            "",
            ".",
            "jobs.*",
            "jobs.>",
            "événements.créés",
        ] {
            let templates = SubjectTemplates::default();
            let destination = templates.resolve(subject);
            assert_eq!(destination.template, None, "{subject:?}");
            assert!(!destination.temporary);
        }
        let subject = "jobs.resize";
        assert_eq!(
            SubjectTemplates::default()
                .resolve(subject)
                .span_name("publish", subject),
            "publish jobs.resize"
        );
    }

    #[test]
    fn several_tokens_and_positions() {
        assert_eq!(template("12345.a.67890"), "*.a.*");
        assert_eq!(template("12345"), "*");
        assert_eq!(template("a.12345.b.c"), "a.*.b.c");
        assert_eq!(template("a..12345"), "a..*");
    }

    #[test]
    fn configured_pattern_wins() {
        let templates = SubjectTemplates::new(["jobs.*.*", "results.>", "audit.12345"]).unwrap();
        let subject = "jobs.job-Pug48oXyZ8aBcD12efGh34.resize";
        let destination = templates.resolve(subject);
        assert!(matches!(
            destination.template,
            Some(Cow::Borrowed("jobs.*.*"))
        ));
        assert_eq!(
            destination.span_name("publish", subject),
            "publish jobs.*.*"
        );

        // `>` patterns take any tail, even one the heuristic would keep.
        let subject = "results.eu.12345.done";
        assert_eq!(
            templates.resolve(subject).template.as_deref(),
            Some("results.>")
        );
        assert_eq!(templates.resolve("results").template.as_deref(), None);

        // A literal pattern names its subject.
        assert_eq!(
            templates.resolve("audit.12345").template.as_deref(),
            Some("audit.12345")
        );
        // No match: the heuristic.
        assert_eq!(
            templates.resolve("orders.12345").template.as_deref(),
            Some("orders.*")
        );
        // The first matching pattern, in order.
        let templates = SubjectTemplates::new(["a.>", "a.*"]).unwrap();
        assert_eq!(templates.resolve("a.b").template.as_deref(), Some("a.>"));
    }

    #[test]
    fn inbox_is_temporary() {
        let templates = SubjectTemplates::new([">"]).unwrap();
        for subject in ["_INBOX.Pug48oXyZ8aBcD12efGh34", "_INBOX.abc.1", "_INBOX."] {
            let destination = templates.resolve(subject);
            assert!(destination.temporary, "{subject}");
            assert_eq!(destination.template, None);
            assert_eq!(destination.span_name("publish", subject), "publish");
            assert!(templates.is_temporary(subject));
        }
        for subject in ["_INBOX", "_INBOXES.a", "x._INBOX.a", "_MYINBOX.abc"] {
            assert!(!templates.is_temporary(subject), "{subject}");
        }

        let custom = SubjectTemplates::default()
            .inbox_prefix("_MYINBOX.")
            .inbox_prefix("app.replies")
            .inbox_prefix("_MYINBOX")
            .inbox_prefix("");
        assert_eq!(&*custom.inbox_prefixes, ["_MYINBOX", "app.replies"]);
        for subject in ["_MYINBOX.abc", "app.replies.x.y", "_INBOX.abc"] {
            assert!(custom.is_temporary(subject), "{subject}");
            assert_eq!(
                custom.resolve(subject).span_name("request", subject),
                "request"
            );
        }
        assert!(!custom.is_temporary("_MYINBOX"));
        assert!(!custom.is_temporary("app.repliesx.y"));
    }

    #[test]
    fn span_names() {
        let templates = SubjectTemplates::default();
        let subject = "orders.12345";
        assert_eq!(
            templates.resolve(subject).span_name("process", subject),
            "process orders.*"
        );
        assert_eq!(templates.resolve("").span_name("publish", ""), "publish");
    }

    #[test]
    fn invalid_patterns() {
        let cases = [
            ("", "the pattern is empty"),
            ("jobs. new", "it contains whitespace or a control character"),
            (
                "jobs.\tnew",
                "it contains whitespace or a control character",
            ),
            (
                "jobs.new\n",
                "it contains whitespace or a control character",
            ),
            (
                "jobs..new",
                "empty token (a leading, trailing or doubled `.`)",
            ),
            (".jobs", "empty token (a leading, trailing or doubled `.`)"),
            ("jobs.", "empty token (a leading, trailing or doubled `.`)"),
            ("jobs.new*", "`*` and `>` must be a whole token"),
            ("jobs.>>", "`*` and `>` must be a whole token"),
            ("jobs.>.new", "`>` must be the last token"),
            (">.>", "`>` must be the last token"),
        ];
        for (pattern, why) in cases {
            let error = SubjectTemplates::new(["ok.*", pattern]).unwrap_err();
            assert_eq!(error.pattern(), pattern);
            assert_eq!(
                error.to_string(),
                format!("invalid subject pattern {pattern:?}: {why}")
            );
        }
        for pattern in ["*", ">", "jobs", "jobs.*.new", "*.*.>", "événements.*"] {
            assert!(SubjectTemplates::new([pattern]).is_ok(), "{pattern}");
        }
        let error: Box<dyn std::error::Error> = Box::new(SubjectTemplates::new([""]).unwrap_err());
        assert!(error.to_string().starts_with("invalid subject pattern"));
    }

    /// Tokens that are words, generated ids, or arbitrary text.
    fn subject() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            3 => "[a-z]{1,10}",
            2 => "[0-9A-Za-z]{22}",
            1 => "[0-9]{1,8}",
            1 => "[a-z]{1,5}[-_:][0-9A-Za-z]{1,24}",
            1 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            1 => "\\PC{0,6}",
        ];
        prop::collection::vec(token, 1..6).prop_map(|tokens| tokens.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn template_matches_its_subject(subject in subject()) {
            let templates = SubjectTemplates::default();
            let destination = templates.resolve(&subject);
            if let Some(template) = &destination.template {
                prop_assert!(subject_matches(template, &subject), "{} !~ {}", template, subject);
                prop_assert!(template.len() <= subject.len());
                prop_assert!(template.contains('*'));
            }
        }

        /// The quick rule-out never hides a token the heuristic would
        /// template: digit-free tokens of every length, hex and letters
        /// around 22, 32 and 36 bytes included.
        #[test]
        fn rule_out_keeps_every_generated_token(
            token in "[a-zA-Z_:-]{0,40}|[a-fA-F-]{20,40}|[a-zA-Z]{21,23}|[0-9a-zA-Z_:-]{0,12}"
        ) {
            if looks_generated(&token) {
                prop_assert!(may_have_generated_token(&token), "{}", token);
            }
            if !may_have_generated_token(&token) {
                prop_assert_eq!(heuristic_template(&token), None);
            }
        }

        #[test]
        fn never_panics(subject in "\\PC*|.*") {
            let templates = SubjectTemplates::new(["a.*"]).unwrap().inbox_prefix("_X");
            let destination = templates.resolve(&subject);
            let _ = destination.span_name("publish", &subject);
            if let Some(template) = &destination.template {
                prop_assert!(subject_matches(template, &subject));
            }
            let _ = SubjectTemplates::new([subject.as_str()]);
        }
    }
}
