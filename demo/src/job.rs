//! The job and its result, as they travel.

use serde::{Deserialize, Serialize};

/// The stream holding the jobs, and the subjects it captures.
pub(crate) const STREAM: &str = "JOBS";
pub(crate) const STREAM_SUBJECTS: &str = "jobs.>";
/// Where the API publishes jobs.
pub(crate) const JOB_SUBJECT: &str = "jobs.resize";
/// The worker's durable pull consumer.
pub(crate) const CONSUMER: &str = "worker";
/// How long the API waits for the worker's result (and the demo client for the API).
pub(crate) const RESULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A job: the message payload on `jobs.resize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) job_id: String,
    pub(crate) input: String,
}

/// What `POST /jobs` accepts.
#[derive(Debug, Deserialize)]
pub(crate) struct JobRequest {
    job_id: Option<String>,
    input: String,
}

/// What the worker publishes on `results.<job_id>`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobResult {
    pub(crate) job_id: String,
    pub(crate) status: String,
    pub(crate) output: Option<String>,
    pub(crate) error: Option<String>,
    /// The worker's `handle_job` trace id.
    pub(crate) trace_id: String,
}

/// The core NATS subject a job's result is published on.
pub(crate) fn result_subject(job_id: &str) -> String {
    format!("results.{job_id}")
}

/// Job ids end up in a subject token and a header: keep them to `[A-Za-z0-9_-]{1,64}`.
pub(crate) fn check_job_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "job_id {id:?} must be 1 to 64 characters from A-Z a-z 0-9 - _"
        ))
    }
}

/// Parses a `POST /jobs` body, assigning a job id when it has none.
pub(crate) fn parse_job_request(body: &[u8]) -> Result<Job, String> {
    let request: JobRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid job JSON: {e}"))?;
    let job_id = match request.job_id {
        Some(id) => {
            check_job_id(&id)?;
            id
        }
        None => format!("job-{}", nuid::next()),
    };
    Ok(Job {
        job_id,
        input: request.input,
    })
}
