//! Model backends: what a worker calls to run a job.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use futures::StreamExt;
use greenscale_core::{Completion, ErrorKind, JobError, JobSpec, Outcome, Usage};
use serde::Deserialize;

use crate::sse::SseReader;
use serde_json::{Value, json};

/// Something that turns a job into an answer.
pub trait ModelBackend: Send + Sync + 'static {
    /// Runs one job, handing each piece of generated text to `on_token` as it arrives;
    /// failures come back as [`Outcome::Failed`] saying whether to retry.
    fn run(&self, spec: &JobSpec, on_token: &TokenSink) -> impl Future<Output = Outcome> + Send;
}

/// Receives generated text as it streams in.
pub type TokenSink = dyn Fn(&str) + Send + Sync;

/// Settings of an [`OpenAiBackend`].
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL (`http://host/v1`) or the full `.../chat/completions` URL.
    pub url: String,
    /// Bearer key, if the upstream needs one. Never logged.
    pub api_key: Option<String>,
    /// Model asked for when a job names none.
    pub model: String,
    /// When set, the model always asked for, whatever the job names (a pool's own model
    /// server knows only its own model).
    pub fixed_model: Option<String>,
    /// Sampling temperature when a job sets none.
    pub temperature: f32,
    /// Generated-token limit when a job sets none.
    pub max_tokens: u32,
    /// Longest one job may take, first byte to last.
    pub timeout: Duration,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("fixed_model", &self.fixed_model)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            url: "http://127.0.0.1:8000/v1".into(),
            api_key: None,
            model: "meta-llama/Llama-3.3-70B-Instruct".into(),
            fixed_model: None,
            temperature: 0.7,
            max_tokens: 200,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Why a backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model URL is not an http(s) URL.
    #[error("model URL {url:?} {problem}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The chat-completions URL for a base URL: `.../chat/completions` is kept as it is, a URL
/// with no path gets `/v1/chat/completions`, any other path gets `/chat/completions`.
pub fn chat_completions_url(url: &str) -> Result<String, BackendError> {
    let bad = |problem: String| BackendError::BadUrl {
        url: url.to_string(),
        problem,
    };
    let parsed =
        reqwest::Url::parse(url.trim()).map_err(|e| bad(format!("is not a valid URL: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(bad("must start with http:// or https://".into()));
    }
    let trimmed = url.trim().trim_end_matches('/');
    Ok(if trimmed.ends_with("/chat/completions") {
        trimmed.to_string()
    } else if parsed.path() == "/" || parsed.path().is_empty() {
        format!("{trimmed}/v1/chat/completions")
    } else {
        format!("{trimmed}/chat/completions")
    })
}

/// Calls an OpenAI-compatible `/chat/completions` endpoint with streaming, measuring time
/// to first token. 429, 5xx, connection errors and timeouts are transient (with the
/// upstream's `Retry-After`); other 4xx are permanent.
#[derive(Debug, Clone)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    /// Parsed once: every request is sent to it.
    url: reqwest::Url,
    config: OpenAiConfig,
}

impl OpenAiBackend {
    /// Builds the backend; fails on a malformed URL.
    pub fn new(config: OpenAiConfig) -> Result<Self, BackendError> {
        let url = chat_completions_url(&config.url)?;
        let url = reqwest::Url::parse(&url).map_err(|e| BackendError::BadUrl {
            url: url.clone(),
            problem: format!("is not a valid URL: {e}"),
        })?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .build()?;
        Ok(OpenAiBackend {
            client,
            url,
            config,
        })
    }

    /// The chat-completions URL in use.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    fn request_body(&self, spec: &JobSpec) -> Value {
        json!({
            "model": self.config.fixed_model.as_deref()
                .or(spec.model.as_deref())
                .unwrap_or(&self.config.model),
            "messages": spec.chat_messages(),
            "temperature": spec.temperature.unwrap_or(self.config.temperature),
            "max_tokens": spec.max_tokens.unwrap_or(self.config.max_tokens),
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    }

    async fn call(&self, spec: &JobSpec, on_token: &TokenSink) -> Result<Completion, JobError> {
        let started = Instant::now();
        let mut request = self
            .client
            .post(self.url.clone())
            .json(&self.request_body(spec));
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            transient(
                ErrorKind::Connection,
                format!("cannot reach the model: {}", without_url(&e)),
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response.text().await.unwrap_or_default();
            let message = format!(
                "model answered {}: {}",
                status.as_u16(),
                upstream_message(&body)
            );
            let is_transient = status.as_u16() == 429 || status.is_server_error();
            return Err(JobError {
                kind: if is_transient {
                    ErrorKind::UpstreamTransient
                } else {
                    ErrorKind::UpstreamRejected
                },
                message,
                transient: is_transient,
                retry_after,
            });
        }
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            let body: Value = response.json().await.map_err(|e| {
                transient(
                    ErrorKind::Connection,
                    format!("unreadable answer from the model: {}", without_url(&e)),
                )
            })?;
            let text = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            on_token(&text);
            return Ok(Completion {
                usage: usage_of(&body).unwrap_or_default(),
                text,
                ttft_ms: Some(started.elapsed().as_millis() as u64),
            });
        }
        let mut body = response.bytes_stream();
        let mut sse = SseReader::default();
        let mut answer = Answer::default();
        while !answer.done {
            let Some(bytes) = body.next().await else {
                if let Some(data) = sse.finish() {
                    answer.on_data(&data, started, on_token)?;
                }
                break;
            };
            let bytes = bytes.map_err(|e| {
                transient(
                    ErrorKind::Connection,
                    format!("the model's stream broke: {}", without_url(&e)),
                )
            })?;
            sse.feed(&bytes, |data| answer.on_data(data, started, on_token))?;
        }
        let Answer {
            text,
            chunks,
            usage,
            ttft,
            done,
            finished,
        } = answer;
        if !done && !finished {
            return Err(transient(
                ErrorKind::Connection,
                "the model's stream ended before the answer was complete".into(),
            ));
        }
        Ok(Completion {
            text,
            usage: usage.unwrap_or(Usage {
                prompt_tokens: 0,
                completion_tokens: chunks,
            }),
            ttft_ms: ttft,
        })
    }
}

impl ModelBackend for OpenAiBackend {
    async fn run(&self, spec: &JobSpec, on_token: &TokenSink) -> Outcome {
        match tokio::time::timeout(self.config.timeout, self.call(spec, on_token)).await {
            Ok(Ok(done)) => Outcome::Succeeded(done),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Failed(transient(
                ErrorKind::Timeout,
                format!(
                    "the model did not finish within {} s",
                    self.config.timeout.as_secs()
                ),
            )),
        }
    }
}

/// An answer being assembled from streamed chunks.
#[derive(Default)]
struct Answer {
    text: String,
    chunks: u64,
    usage: Option<Usage>,
    ttft: Option<u64>,
    /// `[DONE]` arrived: the stream is over.
    done: bool,
    /// A chunk carried a `finish_reason`: the answer is complete even if `[DONE]` is missing.
    finished: bool,
}

impl Answer {
    /// Takes one event's data: a chunk, an error, or the `[DONE]` marker.
    fn on_data(
        &mut self,
        data: &str,
        started: Instant,
        on_token: &TokenSink,
    ) -> Result<(), JobError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let Ok(chunk) = serde_json::from_str::<StreamChunk>(data) else {
            return Ok(());
        };
        if let Some(err) = chunk.error {
            return Err(transient(
                ErrorKind::UpstreamTransient,
                format!("the model reported an error mid-stream: {err}"),
            ));
        }
        if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
            self.finished = true;
        }
        if let Some(choice) = chunk.choices.first()
            && let Some(piece) = choice.delta.content.as_deref()
            && !piece.is_empty()
        {
            self.ttft
                .get_or_insert_with(|| started.elapsed().as_millis() as u64);
            self.text.push_str(piece);
            self.chunks += 1;
            on_token(piece);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            });
        }
        Ok(())
    }
}

/// One streamed chunk, read without building a JSON tree (this runs once per token).
#[derive(Deserialize)]
struct StreamChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<StreamChoice<'a>>,
    #[serde(default)]
    usage: Option<StreamUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct StreamChoice<'a> {
    #[serde(default, borrow)]
    delta: StreamDelta<'a>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct StreamDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn transient(kind: ErrorKind, message: String) -> JobError {
    JobError {
        kind,
        message,
        transient: true,
        retry_after: None,
    }
}

/// A reqwest error's text without the URL (which may carry credentials): its category
/// and the chain of underlying causes.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    Some(Usage {
        prompt_tokens: u["prompt_tokens"].as_u64()?,
        completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// The upstream's own error message (OpenAI shape), or the start of its body.
fn upstream_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .or_else(|| v["message"].as_str())
            .map(str::to_string)
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        return "(empty body)".into();
    }
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_completed() {
        let u = |s| chat_completions_url(s).unwrap();
        assert_eq!(u("http://h:1/v1"), "http://h:1/v1/chat/completions");
        assert_eq!(u("http://h:1/v1/"), "http://h:1/v1/chat/completions");
        assert_eq!(u("http://h:1"), "http://h:1/v1/chat/completions");
        assert_eq!(
            u("https://api.example.com/v1/chat/completions"),
            "https://api.example.com/v1/chat/completions"
        );
        assert!(chat_completions_url("ftp://x").is_err());
        assert!(chat_completions_url("nonsense").is_err());
    }

    #[test]
    fn upstream_messages_are_extracted() {
        assert_eq!(
            upstream_message(r#"{"error":{"message":"no such model"}}"#),
            "no such model"
        );
        assert_eq!(upstream_message("plain"), "plain");
        assert_eq!(upstream_message(""), "(empty body)");
    }

    #[test]
    fn api_key_is_redacted_in_debug() {
        let cfg = OpenAiConfig {
            api_key: Some("sk-secret".into()),
            ..OpenAiConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("sk-secret"));
    }
}
