//! Where `submit` and `status` send their requests: the Redis queue directly, or a running
//! gateway or `greenscale up` over HTTP.

use anyhow::{Context, bail};
use greenscale_core::status::{GpuStatus, PoolStatus};
use greenscale_core::{JobRecord, JobSpec, Producer, QueueStats, Reader};
use greenscale_queue::RedisQueue;
use serde_json::{Value, json};

use crate::cli::{QueueArgs, ServerArgs};
use crate::commands::shared::redacted;

/// A connection to the jobs: the queue itself, or the HTTP API.
#[allow(clippy::large_enum_variant)]
pub enum JobsClient {
    /// The Redis queue.
    Queue(Box<RedisQueue>),
    /// A gateway or `greenscale up`.
    Http {
        /// HTTP client.
        client: reqwest::Client,
        /// Base URL without a trailing slash.
        base: String,
        /// Bearer key.
        key: Option<String>,
    },
}

impl JobsClient {
    /// Connects as the flags say: `--url` means HTTP, otherwise Redis.
    pub async fn connect(queue: &QueueArgs, server: &ServerArgs) -> anyhow::Result<Self> {
        if let Some(url) = &server.url {
            let base = url.trim_end_matches('/').to_string();
            let parsed = reqwest::Url::parse(&base)
                .with_context(|| format!("--url {url:?} is not a valid URL"))?;
            if parsed.scheme() != "http" && parsed.scheme() != "https" {
                bail!("--url must start with http:// or https://");
            }
            return Ok(JobsClient::Http {
                client: reqwest::Client::new(),
                base,
                key: server.api_key.clone(),
            });
        }
        let url = queue.redis_url();
        let q = RedisQueue::connect(&url, &queue.list, queue.tuning.queue_config())?;
        q.ping().await.with_context(|| {
            format!(
                "cannot reach Redis at {} (set --redis-url or REDIS_URL, or --url for a running `greenscale up`)",
                redacted(&url)
            )
        })?;
        Ok(JobsClient::Queue(Box::new(q)))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Option<Value>> {
        let JobsClient::Http { client, base, key } = self else {
            unreachable!("HTTP calls are only made by the HTTP client")
        };
        let method_is_get = method == reqwest::Method::GET;
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {base} (is `greenscale up` running?)"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && method_is_get {
            return Ok(None);
        }
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{base}{path} answered {status}: {message}");
        }
        Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("{base}{path} answered with something that is not JSON")
        })?))
    }

    /// Submits a job; returns its id.
    pub async fn enqueue(&self, spec: JobSpec) -> anyhow::Result<String> {
        match self {
            JobsClient::Queue(q) => Ok(q.enqueue(spec).await?),
            JobsClient::Http { .. } => {
                let deadline_ms = spec
                    .deadline_at_ms
                    .map(|at| at.saturating_sub(crate::commands::shared::now_ms()).max(1));
                let body = json!({
                    "prompt": spec.prompt,
                    "model": spec.model,
                    "max_tokens": spec.max_tokens,
                    "temperature": spec.temperature,
                    "priority": spec.priority,
                    "deadline_ms": deadline_ms,
                });
                let v = self
                    .call(reqwest::Method::POST, "/v1/jobs", Some(body))
                    .await?
                    .unwrap_or_default();
                v["id"]
                    .as_str()
                    .map(str::to_string)
                    .context("the server answered without a job id")
            }
        }
    }

    /// A job's record.
    pub async fn job(&self, id: &str) -> anyhow::Result<Option<JobRecord>> {
        match self {
            JobsClient::Queue(q) => Ok(q.job(id).await?),
            JobsClient::Http { .. } => match self
                .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?
            {
                Some(v) => Ok(Some(
                    serde_json::from_value(v).context("unexpected job record")?,
                )),
                None => Ok(None),
            },
        }
    }

    /// Queue counts.
    pub async fn stats(&self) -> anyhow::Result<QueueStats> {
        match self {
            JobsClient::Queue(q) => Ok(q.stats().await?),
            JobsClient::Http { .. } => {
                let v = self
                    .call(reqwest::Method::GET, "/v1/queue", None)
                    .await?
                    .unwrap_or_default();
                Ok(serde_json::from_value(v).context("unexpected queue counts")?)
            }
        }
    }

    /// The GPUs of a `greenscale up` and what they hold (none without GPU limits).
    pub async fn gpus(&self) -> anyhow::Result<Vec<GpuStatus>> {
        self.list("/v1/gpus", "GPU status").await
    }

    /// The pools of a `greenscale up` (none for Redis or a standalone gateway).
    pub async fn pools(&self) -> anyhow::Result<Vec<PoolStatus>> {
        self.list("/v1/pools", "pool status").await
    }

    /// A list only `greenscale up` serves (empty from Redis, or where it is not served).
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> anyhow::Result<Vec<T>> {
        match self {
            JobsClient::Queue(_) => Ok(Vec::new()),
            JobsClient::Http { .. } => match self.call(reqwest::Method::GET, path, None).await? {
                Some(v) => serde_json::from_value(v).with_context(|| format!("unexpected {what}")),
                None => Ok(Vec::new()),
            },
        }
    }
}
