//! The job model: what producers put on the queue and what the queue records about it.

use crate::InvalidInput;
use crate::tenant::{DEFAULT_TENANT, Priority, validate_tenant};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One chat message in OpenAI's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A job as it travels on the queue (the normalized form of an entry).
///
/// The prototype's `{"job_id", "prompt"}` is a valid `JobSpec`; richer producers may send
/// `messages` instead of `prompt` and per-job model parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique id; producers may choose it, otherwise one is assigned.
    pub job_id: String,
    /// A single user prompt (the prototype's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A chat conversation (used instead of `prompt` when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Model (pool) name; the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Upper bound on generated tokens; the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; the worker's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Free-form data the producer wants kept with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Publish the job's events (start, tokens, end) as it runs, for streaming clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Publish the job's end, with its answer, for a client that waits for it whole (what
    /// `stream` publishes besides, the start and the tokens, is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
    /// The tenant the job belongs to; [`DEFAULT_TENANT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its priority class; `interactive` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// When the job must have started (Unix milliseconds); an unstarted job past it becomes
    /// `expired` and never runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
}

impl JobSpec {
    /// A job with just a prompt and a fresh id.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        JobSpec {
            job_id: new_job_id(),
            prompt: Some(prompt.into()),
            messages: None,
            model: None,
            max_tokens: None,
            temperature: None,
            metadata: None,
            stream: None,
            notify: None,
            tenant: None,
            priority: None,
            deadline_at_ms: None,
        }
    }

    /// The tenant the job belongs to.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// The job's priority class.
    pub fn priority(&self) -> Priority {
        self.priority.unwrap_or_default()
    }

    /// True when the job's events are published as it runs.
    pub fn streams(&self) -> bool {
        self.stream == Some(true)
    }

    /// True when the job's end is published (for `stream` or `notify`).
    pub fn notifies(&self) -> bool {
        self.streams() || self.notify == Some(true)
    }

    /// The conversation to send to the model: `messages`, or `prompt` as one user message.
    pub fn chat_messages(&self) -> Vec<ChatMessage> {
        match (&self.messages, &self.prompt) {
            (Some(m), _) if !m.is_empty() => m.clone(),
            (_, Some(p)) => vec![ChatMessage {
                role: "user".into(),
                content: p.clone(),
            }],
            _ => Vec::new(),
        }
    }

    /// The canonical JSON form stored on the queue.
    pub fn to_entry(&self) -> String {
        serde_json::to_string(self).expect("a JobSpec always serializes")
    }

    /// Validates the job and returns its queue entry, refusing one over the size limit.
    pub fn checked_entry(&self, limits: &Limits) -> Result<String, InvalidInput> {
        self.validate(limits)?;
        let entry = self.to_entry();
        if entry.len() > limits.max_entry_bytes {
            return Err(InvalidInput(format!(
                "the job is {} bytes, over the limit of {} bytes",
                entry.len(),
                limits.max_entry_bytes
            )));
        }
        Ok(entry)
    }

    /// Checks what a producer sent; `Err` says what is wrong in words a user can act on.
    pub fn validate(&self, limits: &Limits) -> Result<(), InvalidInput> {
        if self.job_id.is_empty() || self.job_id.len() > 200 {
            return Err("job_id must be 1 to 200 characters".into());
        }
        if self
            .job_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err("job_id must not contain spaces or control characters".into());
        }
        let messages = self.chat_messages();
        if messages.is_empty() {
            return Err("a job needs a non-empty \"prompt\" or \"messages\"".into());
        }
        if messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err("the prompt is empty".into());
        }
        let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
        if chars > limits.max_prompt_chars {
            return Err(InvalidInput(format!(
                "the prompt has {chars} characters, more than the limit of {}",
                limits.max_prompt_chars
            )));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(InvalidInput(format!("temperature {t} is outside 0..=2")));
        }
        if self.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        if let Some(t) = &self.tenant {
            validate_tenant(t)?;
        }
        Ok(())
    }
}

/// Size limits applied to every job, whoever produced it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest raw queue entry accepted, in bytes.
    pub max_entry_bytes: usize,
    /// Largest prompt (all messages together), in characters.
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_bytes: 1024 * 1024,
            max_prompt_chars: 200_000,
        }
    }
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

/// Now, Unix milliseconds (0 on a clock before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh, unique job id.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Why a raw queue entry cannot be run; it goes to the dead-letter list with this reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    /// The job id, when the entry had a readable one.
    pub job_id: Option<String>,
    /// What is wrong, for the dead-letter list.
    pub reason: String,
}

/// Parses a raw queue entry (as pushed by any producer) into a job.
///
/// Accepts the prototype's `{"job_id","prompt"}` and the richer form; assigns an id when
/// there is none (a numeric id is taken as its decimal text). Never panics.
pub fn parse_entry(raw: &str, limits: &Limits) -> Result<JobSpec, Malformed> {
    let bad = |job_id: Option<String>, reason: String| Malformed { job_id, reason };
    if raw.len() > limits.max_entry_bytes {
        return Err(bad(
            None,
            format!(
                "entry is {} bytes, over the limit of {} bytes",
                raw.len(),
                limits.max_entry_bytes
            ),
        ));
    }
    let mut value: Value = serde_json::from_str(raw)
        .map_err(|e| bad(None, format!("entry is not valid JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(bad(None, "entry is not a JSON object".into()));
    };
    let job_id = match object.get("job_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(bad(None, "job_id must be a string".into())),
    };
    let job_id = job_id.unwrap_or_else(new_job_id);
    object.insert("job_id".into(), Value::String(job_id.clone()));
    let spec: JobSpec = serde_json::from_value(value).map_err(|e| {
        bad(
            Some(job_id.clone()),
            format!("entry has a wrong field: {e}"),
        )
    })?;
    spec.validate(limits).map_err(|r| bad(Some(job_id), r.0))?;
    Ok(spec)
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting to be leased (also while waiting for a retry).
    Queued,
    /// Leased by a worker and running.
    Running,
    /// Finished with an answer.
    Succeeded,
    /// Failed permanently (bad input, upstream refused it).
    Failed,
    /// Moved to the dead-letter list (retry budget spent or malformed).
    Dead,
    /// Cancelled by a user before it finished.
    Cancelled,
    /// Not started before its deadline; it never runs.
    Expired,
}

impl JobStatus {
    /// The lower-case name used in records and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    /// Parses the lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "dead" => JobStatus::Dead,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    /// True once the job will not run again by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::Dead
                | JobStatus::Cancelled
                | JobStatus::Expired
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts reported by the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// Everything the queue knows about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// The tenant it belongs to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Current status.
    pub status: JobStatus,
    /// Runs started so far (a retry or a re-delivery after a lost lease adds one).
    pub attempts: u32,
    /// When the job was accepted (Unix milliseconds).
    pub enqueued_at_ms: Option<u64>,
    /// When its latest run started.
    pub started_at_ms: Option<u64>,
    /// When it reached a terminal status.
    pub finished_at_ms: Option<u64>,
    /// The worker of the latest run.
    pub worker_id: Option<String>,
    /// Kind of the latest error.
    pub error_kind: Option<ErrorKind>,
    /// Message of the latest error.
    pub error_message: Option<String>,
    /// Token usage of the successful run.
    pub usage: Option<Usage>,
    /// Time from the run's start to the first generated token, in milliseconds.
    pub ttft_ms: Option<u64>,
    /// The answer; only ever set on success.
    pub result: Option<String>,
    /// The job as submitted.
    pub spec: Option<JobSpec>,
}

/// Something that happened to a job, published while it runs (all of them for jobs with
/// `stream`, only the end for jobs with `notify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// A worker started a run.
    Started {
        /// The worker.
        worker_id: String,
        /// Which run (1 for the first).
        attempt: u32,
    },
    /// Generated text, in order.
    Token {
        /// The new text.
        text: String,
    },
    /// The run ended; `status` says how (a transient failure ends as `queued`).
    Finished {
        /// The job's status after the run.
        status: JobStatus,
        /// The error message, when the run failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The job's record as the worker left it (its times by the worker's clock, no
        /// spec, no enqueue time), so a waiting client needs no read of the stored one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<Box<JobRecord>>,
    },
}

/// Kinds of failure, as recorded on jobs and dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The upstream answered 429 or 5xx.
    UpstreamTransient,
    /// The upstream refused the request (4xx other than 429).
    UpstreamRejected,
    /// The upstream could not be reached, or the connection broke.
    Connection,
    /// The run took longer than the job timeout.
    Timeout,
    /// The entry on the queue could not be read as a job.
    Malformed,
    /// The job's leases expired more often than the retry budget allows
    /// (its workers kept dying while running it).
    LeaseExpired,
    /// The retry budget was spent on transient failures.
    RetriesExhausted,
}

impl ErrorKind {
    /// The snake_case name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UpstreamTransient => "upstream_transient",
            ErrorKind::UpstreamRejected => "upstream_rejected",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Malformed => "malformed",
            ErrorKind::LeaseExpired => "lease_expired",
            ErrorKind::RetriesExhausted => "retries_exhausted",
        }
    }

    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::UpstreamTransient,
        ErrorKind::UpstreamRejected,
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Malformed,
        ErrorKind::LeaseExpired,
        ErrorKind::RetriesExhausted,
    ];

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototype_entry_parses() {
        let spec = parse_entry(
            r#"{"job_id":"test-001","prompt":"What is 2+2?"}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(spec.job_id, "test-001");
        assert_eq!(spec.chat_messages()[0].content, "What is 2+2?");
    }

    #[test]
    fn missing_id_is_assigned_and_numeric_id_kept() {
        let spec = parse_entry(r#"{"prompt":"hi"}"#, &Limits::default()).unwrap();
        assert_eq!(spec.job_id.len(), 36);
        let spec = parse_entry(r#"{"job_id":42,"prompt":"hi"}"#, &Limits::default()).unwrap();
        assert_eq!(spec.job_id, "42");
    }

    #[test]
    fn malformed_entries_say_why() {
        let l = Limits::default();
        assert!(
            parse_entry("not json", &l)
                .unwrap_err()
                .reason
                .contains("not valid JSON")
        );
        assert!(
            parse_entry("[1]", &l)
                .unwrap_err()
                .reason
                .contains("not a JSON object")
        );
        let e = parse_entry(r#"{"job_id":"a"}"#, &l).unwrap_err();
        assert_eq!(e.job_id.as_deref(), Some("a"));
        assert!(e.reason.contains("prompt"));
        let small = Limits {
            max_entry_bytes: 10,
            ..l
        };
        assert!(
            parse_entry(r#"{"prompt":"long enough"}"#, &small)
                .unwrap_err()
                .reason
                .contains("over the limit")
        );
        assert!(parse_entry(r#"{"prompt":"x","temperature":9}"#, &l).is_err());
        assert!(parse_entry(r#"{"prompt":"x","max_tokens":"many"}"#, &l).is_err());
    }

    #[test]
    fn messages_win_over_prompt() {
        let spec = parse_entry(
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(spec.chat_messages().len(), 2);
    }
}
