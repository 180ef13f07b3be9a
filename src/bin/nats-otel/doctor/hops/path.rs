//! The probe's path through the servers, rebuilt from their message-trace
//! events: which server got it from where (the doctor's publish, a route,
//! gateway or leafnode, or a client that republished it), and which trace
//! headers it carried at each ingress compared with what the probe sent.

use nats_otel::hops::{ConnectionKind, Egress, Ingress, TraceEntry, TraceEvent};

/// The trace header families compared at every hop.
pub(in crate::doctor) const FAMILIES: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// One of the doctor's connections: the server it is connected to and its
/// client id there (what trace events name as `cid`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::doctor) struct Endpoint {
    pub(in crate::doctor) server_id: String,
    pub(in crate::doctor) server_name: String,
    pub(in crate::doctor) client_id: u64,
}

impl Endpoint {
    /// Whether `egress` delivers to this connection on `event`'s server.
    pub(super) fn receives(&self, event: &TraceEvent, egress: &Egress) -> bool {
        egress.kind == ConnectionKind::Client
            && egress.cid == self.client_id
            && event.server.id == self.server_id
    }
}

/// How one header family arrived compared with what the probe sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::doctor) enum Carried {
    /// Same names and values.
    AsSent,
    /// Same values under other names (casing).
    Recased,
    /// Other values.
    Changed,
    /// Sent, not there.
    Missing,
    /// Not sent (or only with empty values, which events do not list) and
    /// not there.
    NotSent,
    /// Not sent, but there.
    Added,
}

impl Carried {
    /// Whether the value the probe sent is there, under any name.
    pub(in crate::doctor) fn kept(self) -> bool {
        matches!(self, Self::AsSent | Self::Recased)
    }

    pub(in crate::doctor) fn as_str(self) -> &'static str {
        match self {
            Self::AsSent => "as_sent",
            Self::Recased => "recased",
            Self::Changed => "changed",
            Self::Missing => "missing",
            Self::NotSent => "not_sent",
            Self::Added => "added",
        }
    }
}

/// One header family at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::doctor) struct FamilyCheck {
    pub(in crate::doctor) family: &'static str,
    /// What the probe was published with: (name, value).
    pub(in crate::doctor) sent: Vec<(String, String)>,
    /// What was seen there: (name as it arrived, value).
    pub(in crate::doctor) seen: Vec<(String, String)>,
    pub(in crate::doctor) state: Carried,
}

/// Compares the `sent` and `seen` values of every family in [`FAMILIES`].
/// With `skip_empty`, empty sent values are ignored: trace events do not
/// list headers with empty values (an empty `tracestate`), though the
/// message keeps them.
pub(in crate::doctor) fn check_families(
    sent: &[(String, String)],
    seen: &[(String, String)],
    skip_empty: bool,
) -> Vec<FamilyCheck> {
    FAMILIES
        .iter()
        .map(|&family| {
            let pick = |pairs: &[(String, String)], skip: bool| -> Vec<(String, String)> {
                pairs
                    .iter()
                    .filter(|(n, v)| n.eq_ignore_ascii_case(family) && !(skip && v.is_empty()))
                    .cloned()
                    .collect()
            };
            let sent = pick(sent, skip_empty);
            let seen = pick(seen, false);
            let state = compare(&sent, &seen);
            FamilyCheck {
                family,
                sent,
                seen,
                state,
            }
        })
        .collect()
}

fn compare(sent: &[(String, String)], seen: &[(String, String)]) -> Carried {
    match (sent.is_empty(), seen.is_empty()) {
        (true, true) => Carried::NotSent,
        (true, false) => Carried::Added,
        (false, true) => Carried::Missing,
        (false, false) if distinct(sent, true) != distinct(seen, true) => Carried::Changed,
        (false, false) if distinct(sent, false) != distinct(seen, false) => Carried::Recased,
        (false, false) => Carried::AsSent,
    }
}

/// The distinct values (or names) of `pairs`, sorted.
fn distinct(pairs: &[(String, String)], values: bool) -> Vec<&str> {
    let mut v: Vec<&str> = pairs
        .iter()
        .map(|(n, val)| if values { val.as_str() } else { n.as_str() })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The `traceparent` check of a list made by [`check_families`].
pub(in crate::doctor) fn traceparent(checks: &[FamilyCheck]) -> &FamilyCheck {
    &checks[0]
}

/// How a traced server got the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::doctor) enum Via<'a> {
    /// Published there by the doctor (or, when the doctor's connection is
    /// not in any event, the earliest message from a client).
    Publish,
    /// Forwarded by the server of hop `parent` over a route, gateway or
    /// leafnode.
    Link { parent: usize, egress: &'a Egress },
    /// Republished by a client that received it from the server of hop
    /// `parent` on the same connection, keeping `Nats-Trace-Dest`.
    Republish { parent: usize, egress: &'a Egress },
    /// Not linked to the doctor's publish.
    Unlinked,
}

/// One traced server's handling of the probe (or of a republished copy).
#[derive(Debug, Clone)]
pub(in crate::doctor) struct Hop<'a> {
    pub(in crate::doctor) event: &'a TraceEvent,
    pub(in crate::doctor) ingress: &'a Ingress,
    pub(in crate::doctor) via: Via<'a>,
    /// 0 for the first server; one more per link or republish.
    pub(in crate::doctor) depth: usize,
    /// The trace headers at this server's ingress, against what was sent.
    pub(in crate::doctor) headers: Vec<FamilyCheck>,
}

impl<'a> Hop<'a> {
    pub(in crate::doctor) fn egresses(&self) -> impl Iterator<Item = &'a Egress> {
        self.event.entries.iter().filter_map(|e| match e {
            TraceEntry::Egress(eg) => Some(eg),
            _ => None,
        })
    }

    /// Whether the probe's `traceparent` value was there.
    pub(in crate::doctor) fn kept(&self) -> bool {
        traceparent(&self.headers).state.kept()
    }
}

/// The hops in tree order (each server followed by those it forwarded to or
/// whose clients republished it), then the ones not linked to the publish.
#[derive(Debug, Clone, Default)]
pub(in crate::doctor) struct Path<'a> {
    pub(in crate::doctor) hops: Vec<Hop<'a>>,
    /// Route, gateway and leafnode egresses whose next server sent no event:
    /// (hop index, egress).
    pub(in crate::doctor) missing: Vec<(usize, &'a Egress)>,
}

impl<'a> Path<'a> {
    /// Orders `events` into a path. `sent` holds the probe's headers;
    /// `publisher` is the doctor's publishing connection.
    pub(in crate::doctor) fn build(
        events: &'a [TraceEvent],
        sent: &[(String, String)],
        publisher: &Endpoint,
    ) -> Self {
        let mut builder = Builder {
            events,
            sent,
            used: events.iter().map(|e| e.ingress().is_none()).collect(),
            path: Path::default(),
        };
        if let Some(root) = builder.root(publisher) {
            builder.visit(root, Via::Publish, 0);
        }
        // Whatever is left, earliest first: copies republished from another
        // connection, or events whose link was not found.
        let mut rest: Vec<usize> = (0..events.len()).filter(|&i| !builder.used[i]).collect();
        rest.sort_by_key(|&i| events[i].ingress().map(|x| x.timestamp));
        for i in rest {
            if !builder.used[i] {
                builder.visit(i, Via::Unlinked, 0);
            }
        }
        builder.path
    }

    /// The hop and egress that delivered the probe to `consumer`.
    pub(in crate::doctor) fn delivery(&self, consumer: &Endpoint) -> Option<(usize, &'a Egress)> {
        self.hops.iter().enumerate().find_map(|(i, hop)| {
            hop.egresses()
                .find(|eg| eg.error.is_none() && consumer.receives(hop.event, eg))
                .map(|eg| (i, eg))
        })
    }

    /// Whether no more events are expected: the first server reported,
    /// every server the probe was forwarded to did too, no server reported
    /// getting it over a link from a server that did not, and, with
    /// `expect_delivery`, the delivery to `consumer` was seen.
    pub(in crate::doctor) fn complete(&self, consumer: &Endpoint, expect_delivery: bool) -> bool {
        self.hops.first().is_some_and(|h| h.via == Via::Publish)
            && self.missing.is_empty()
            && self.orphans().next().is_none()
            && (!expect_delivery || self.delivery(consumer).is_some())
    }

    /// Hops that got the probe over a route, gateway or leafnode from a
    /// server whose event is not there.
    pub(in crate::doctor) fn orphans(&self) -> impl Iterator<Item = &Hop<'a>> {
        self.hops
            .iter()
            .filter(|h| h.via == Via::Unlinked && h.ingress.kind.is_server_link())
    }

    /// The hops republished from `egress` of hop `parent`.
    pub(in crate::doctor) fn republished_from(&self, parent: usize, egress: &Egress) -> bool {
        self.hops.iter().any(|h| {
            matches!(h.via, Via::Republish { parent: p, egress: e } if p == parent && e == egress)
        })
    }
}

struct Builder<'a, 's> {
    events: &'a [TraceEvent],
    sent: &'s [(String, String)],
    /// Events placed already (or without an ingress).
    used: Vec<bool>,
    path: Path<'a>,
}

impl<'a> Builder<'a, '_> {
    fn ingress(&self, i: usize) -> &'a Ingress {
        self.events[i]
            .ingress()
            .expect("events without ingress are marked used")
    }

    /// The doctor's publish: the client ingress of the publishing
    /// connection, else the earliest client ingress.
    fn root(&self, publisher: &Endpoint) -> Option<usize> {
        let clients = || {
            (0..self.events.len())
                .filter(|&i| !self.used[i] && self.ingress(i).kind == ConnectionKind::Client)
        };
        clients()
            .find(|&i| {
                self.events[i].server.id == publisher.server_id
                    && self.ingress(i).cid == publisher.client_id
            })
            .or_else(|| clients().min_by_key(|&i| self.ingress(i).timestamp))
    }

    fn visit(&mut self, i: usize, via: Via<'a>, depth: usize) {
        self.used[i] = true;
        let event = &self.events[i];
        let ingress = self.ingress(i);
        let seen: Vec<(String, String)> = event
            .request
            .headers
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (n.clone(), v.clone())))
            .collect();
        let index = self.path.hops.len();
        self.path.hops.push(Hop {
            event,
            ingress,
            via,
            depth,
            headers: check_families(self.sent, &seen, true),
        });
        let egresses: Vec<&'a Egress> = self.path.hops[index].egresses().collect();
        for egress in egresses {
            if egress.error.is_some() {
                continue;
            }
            if egress.kind.is_server_link() {
                match self.link_child(event, egress) {
                    Some(child) => {
                        let via = Via::Link {
                            parent: index,
                            egress,
                        };
                        self.visit(child, via, depth + 1);
                    }
                    None => self.path.missing.push((index, egress)),
                }
            } else if egress.kind == ConnectionKind::Client {
                for child in self.republished(event, egress) {
                    if self.used[child] {
                        continue;
                    }
                    let via = Via::Republish {
                        parent: index,
                        egress,
                    };
                    self.visit(child, via, depth + 1);
                }
            }
        }
    }

    /// The event of the server `egress` forwarded to: same hop id, ingress
    /// of the same kind; the one naming both servers, and not earlier than
    /// the egress, preferred.
    fn link_child(&self, parent: &TraceEvent, egress: &Egress) -> Option<usize> {
        let hop = egress.hop.as_deref()?;
        (0..self.events.len())
            .filter(|&i| !self.used[i])
            .filter(|&i| self.ingress(i).kind == egress.kind && self.events[i].hop() == Some(hop))
            .max_by_key(|&i| {
                let child = &self.events[i];
                let ingress = self.ingress(i);
                let names = egress.name.as_deref() == Some(child.server.name.as_str())
                    && ingress.name.as_deref() == Some(parent.server.name.as_str());
                let after = ingress.timestamp >= egress.timestamp;
                (names, after, std::cmp::Reverse(ingress.timestamp))
            })
    }

    /// Messages the client behind `egress` published on the same connection
    /// to the same server afterwards, still traced: its republishes.
    fn republished(&self, parent: &TraceEvent, egress: &Egress) -> Vec<usize> {
        let mut found: Vec<usize> = (0..self.events.len())
            .filter(|&i| !self.used[i])
            .filter(|&i| {
                let ingress = self.ingress(i);
                ingress.kind == ConnectionKind::Client
                    && ingress.cid == egress.cid
                    && self.events[i].server.id == parent.server.id
                    && ingress.timestamp >= egress.timestamp
            })
            .collect();
        found.sort_by_key(|&i| self.ingress(i).timestamp);
        found
    }
}
