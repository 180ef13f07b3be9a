//! The doctor's report, as text or as JSON.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::evaluate::{Probe, Step, Verdict};

/// The doctor's findings so far.
#[derive(Debug)]
pub(super) struct Report {
    /// `url`, and once connected `name`, `version` and `headers`.
    pub(super) server: Value,
    /// `trace_id` and `span_id`, and once known `subject`, `listen` and
    /// `stream`.
    pub(super) probe: Value,
    steps: Vec<Step>,
    /// With `--hops`: the probe's path, hop by hop, printed after the steps.
    pub(super) hops: Vec<String>,
}

impl Report {
    pub(super) fn new(url: &str, probe: &Probe) -> Self {
        Self {
            server: json!({ "url": url }),
            probe: json!({
                "trace_id": probe.trace_id.to_string(),
                "span_id": probe.span_id.to_string(),
            }),
            steps: Vec::new(),
            hops: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub(super) fn extend(&mut self, steps: Vec<Step>) {
        self.steps.extend(steps);
    }

    /// Prints the report and returns the exit code.
    pub(super) fn finish(self, json: bool) -> u8 {
        let verdict = Verdict::of(&self.steps);
        if json {
            println!("{}", self.json(&verdict));
        } else {
            print!("{}", self.text(&verdict));
        }
        verdict.exit_code()
    }

    /// The report as pretty-printed JSON.
    fn json(&self, verdict: &Verdict<'_>) -> String {
        let status = match verdict.broken {
            Some(step) => {
                let mut broken = finding_json(step);
                broken["status"] = json!("broken");
                broken
            }
            None => json!({ "status": "healthy" }),
        };
        let out = json!({
            "healthy": verdict.broken.is_none(),
            "server": self.server,
            "probe": self.probe,
            "steps": self.steps.iter().map(step_json).collect::<Vec<_>>(),
            "verdict": status,
            "warnings": verdict.warnings.iter().map(|s| finding_json(s)).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&out).expect("JSON report")
    }

    /// The report as text: a header, one line per step, the verdict and
    /// the warnings.
    fn text(&self, verdict: &Verdict<'_>) -> String {
        let mut out = String::new();
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
        let _ = writeln!(out, "nats-otel doctor");
        let _ = writeln!(out, "  server  {}", s(&self.server, "url"));
        if self.server.get("listen").is_some() {
            let _ = writeln!(out, "  listen  {}", s(&self.server["listen"], "url"));
        }
        let _ = write!(out, "  probe   trace {}", s(&self.probe, "trace_id"));
        if self.probe.get("subject").is_some() {
            let _ = write!(
                out,
                ", published to {}, expected on {}",
                s(&self.probe, "subject"),
                s(&self.probe, "listen")
            );
            if let Some(stream) = self.probe["stream"].as_str() {
                let _ = write!(out, " and in stream {stream}");
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out);
        for step in &self.steps {
            let _ = writeln!(
                out,
                "{:<5} {:<19} {}",
                step.status.tag(),
                step.label(),
                step.summary
            );
        }
        let _ = writeln!(out);
        if !self.hops.is_empty() {
            for line in &self.hops {
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(out);
        }
        match verdict.broken {
            Some(step) => {
                let _ = writeln!(out, "verdict: BROKEN at {}", step.label());
                if let Some(cause) = &step.cause {
                    let _ = writeln!(out, "  cause: {}", cause.text);
                    let _ = writeln!(out, "  fix:   {}", cause.fix);
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "verdict: HEALTHY: the consumer continues the probe's trace"
                );
            }
        }
        for step in &verdict.warnings {
            if let Some(cause) = &step.cause {
                let _ = writeln!(out, "warning at {}: {}", step.label(), cause.text);
                let _ = writeln!(out, "  fix:   {}", cause.fix);
            }
        }
        out
    }
}

fn step_json(step: &Step) -> Value {
    json!({
        "step": step.name,
        "path": step.path,
        "status": step.status.as_str(),
        "summary": step.summary,
        "cause": step.cause.as_ref().map(|c| c.code),
        "cause_text": step.cause.as_ref().map(|c| c.text.clone()),
        "fix": step.cause.as_ref().map(|c| c.fix.clone()),
        "data": step.data,
    })
}

/// A failed or warning step, for the verdict and the warnings.
fn finding_json(step: &Step) -> Value {
    json!({
        "step": step.name,
        "path": step.path,
        "cause": step.cause.as_ref().map(|c| c.code),
        "message": step.cause.as_ref().map(|c| c.text.clone()),
        "fix": step.cause.as_ref().map(|c| c.fix.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::evaluate::{Cause, Status};
    use opentelemetry::trace::{SpanId, TraceId};

    fn report(steps: Vec<Step>) -> Report {
        let probe = Probe {
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        };
        let mut report = Report::new("nats://127.0.0.1:4222", &probe);
        report.probe["subject"] = json!("orders.in");
        report.probe["listen"] = json!("orders.out");
        report.probe["stream"] = json!(null);
        report.extend(steps);
        report
    }

    fn warned(name: &'static str, path: Option<&'static str>, status: Status) -> Step {
        Step::new(name, path, status, format!("{name} summary")).cause(Cause::new(
            "some_code",
            format!("{name} text"),
            "the fix",
        ))
    }

    #[test]
    fn text_names_the_first_broken_step_and_lists_warnings() {
        let report = report(vec![
            Step::new("server", None, Status::Ok, "fine".to_owned()),
            warned("transit", Some("core"), Status::Warn),
            warned("extract", Some("core"), Status::Fail),
            warned("trace", Some("core"), Status::Fail),
            Step::new(
                "extract",
                Some("jetstream"),
                Status::Skip,
                "nothing".to_owned(),
            ),
        ]);
        let verdict = Verdict::of(&report.steps);
        assert_eq!(
            report.text(&verdict),
            "nats-otel doctor
  server  nats://127.0.0.1:4222
  probe   trace 4bf92f3577b34da6a3ce929d0e0e4736, published to orders.in, expected on orders.out

ok    server              fine
WARN  transit [core]      transit summary
FAIL  extract [core]      extract summary
FAIL  trace [core]        trace summary
skip  extract [jetstream] nothing

verdict: BROKEN at extract [core]
  cause: extract text
  fix:   the fix
warning at transit [core]: transit text
  fix:   the fix
"
        );
    }

    #[test]
    fn json_carries_steps_verdict_and_warnings() {
        let report = report(vec![warned("transit", Some("core"), Status::Warn)]);
        let verdict = Verdict::of(&report.steps);
        let out: Value = serde_json::from_str(&report.json(&verdict)).unwrap();
        assert_eq!(out["healthy"], true);
        assert_eq!(out["verdict"], json!({ "status": "healthy" }));
        assert_eq!(out["steps"][0]["status"], "warn");
        assert_eq!(out["steps"][0]["cause_text"], "transit text");
        assert_eq!(
            out["warnings"],
            json!([{ "step": "transit", "path": "core", "cause": "some_code",
                     "message": "transit text", "fix": "the fix" }])
        );
        assert!(report.text(&verdict).contains("verdict: HEALTHY"));
    }
}
