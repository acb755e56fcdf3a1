//! A demo model server: OpenAI-compatible, deterministic, offline.
//!
//! It writes text derived from the prompt (the same prompt always gives the same answer),
//! at a chosen speed, after a chosen load time, and always says it is a demo. It is what
//! `greenscale up` runs when no real model is configured, and what tests use as a model.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};

/// The model name the demo server reports.
pub const DEMO_MODEL: &str = "greenscale-demo";

/// How the demo model behaves.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// How long after start `/health` keeps answering 503 (simulated weight loading).
    pub load_time: Duration,
    /// Tokens written per second; 0 writes them as fast as possible.
    pub tokens_per_sec: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            load_time: Duration::ZERO,
            tokens_per_sec: 0.0,
        }
    }
}

struct Demo {
    config: DemoConfig,
    started: Instant,
}

impl Demo {
    fn loaded(&self) -> bool {
        self.started.elapsed() >= self.config.load_time
    }
}

/// The demo server's routes: `/health`, `/v1/models`, `/v1/chat/completions`.
pub fn app(config: DemoConfig) -> Router {
    let state = Arc::new(Demo {
        config,
        started: Instant::now(),
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .with_state(state)
}

const WORDS: &[&str] = &[
    "green", "scale", "queue", "worker", "idle", "wake", "token", "pool", "cold", "warm", "start",
    "drain", "lease", "budget", "latency", "replica", "burst", "quiet", "signal", "policy",
    "oracle", "trace", "cost", "saving", "arrival", "window", "model", "prompt", "answer", "zero",
];

/// The demo's answer to `prompt`, as tokens (each token a word with its leading space).
/// Deterministic: the same prompt and limit always give the same tokens.
pub fn demo_tokens(prompt: &str, max_tokens: usize) -> Vec<String> {
    // FNV-1a, then a small LCG: stable across platforms and releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let count = 12 + (h % 20) as usize;
    let mut tokens = vec!["[demo]".to_string()];
    for _ in 0..count {
        h = h
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tokens.push(format!(" {}", WORDS[(h >> 33) as usize % WORDS.len()]));
    }
    tokens.truncate(max_tokens.max(1));
    tokens
}

async fn health(State(demo): State<Arc<Demo>>) -> Response {
    if demo.loaded() {
        Json(json!({"status": "ok", "model": DEMO_MODEL, "demo": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading", "model": DEMO_MODEL, "demo": true})),
        )
            .into_response()
    }
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": "greenscale-demo"}]
    }))
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat(State(demo): State<Arc<Demo>>, body: Bytes) -> Response {
    if !demo.loaded() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "the demo model is still loading",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "body is not valid JSON",
        );
    };
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "\"messages\" must be a non-empty array",
        );
    };
    let prompt: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    let prompt = prompt.join("\n");
    let max_tokens = request["max_tokens"]
        .as_u64()
        .or_else(|| request["max_completion_tokens"].as_u64())
        .unwrap_or(200) as usize;
    let tokens = demo_tokens(&prompt, max_tokens);
    let usage = json!({
        "prompt_tokens": prompt.split_whitespace().count(),
        "completion_tokens": tokens.len(),
        "total_tokens": prompt.split_whitespace().count() + tokens.len(),
    });
    let id = format!("chatcmpl-demo-{:x}", unix_now());
    let delay = (demo.config.tokens_per_sec > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / demo.config.tokens_per_sec));
    if request["stream"].as_bool().unwrap_or(false) {
        let include_usage = request["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        let events = sse_events(&id, &tokens, include_usage.then_some(usage));
        let body = match delay {
            // Nothing to pace: the whole stream goes out in one write.
            None => Body::from(events.into_iter().map(|(e, _)| e).collect::<String>()),
            Some(d) => Body::from_stream(futures::stream::unfold(
                events.into_iter(),
                move |mut rest| async move {
                    let (event, paced) = rest.next()?;
                    if paced {
                        tokio::time::sleep(d).await;
                    }
                    Some((Ok::<_, Infallible>(event), rest))
                },
            )),
        };
        return (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response();
    }
    if let Some(d) = delay {
        tokio::time::sleep(d * tokens.len() as u32).await;
    }
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": DEMO_MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": tokens.concat()},
            "finish_reason": "stop"
        }],
        "usage": usage,
    }))
    .into_response()
}

/// The SSE events (`data: ...` blocks) of one streamed answer, each marked with whether it
/// is a token (paced at the configured speed). Every chunk shares one envelope, rendered once.
fn sse_events(id: &str, tokens: &[String], usage: Option<Value>) -> Vec<(String, bool)> {
    let created = unix_now();
    let envelope = format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"{DEMO_MODEL}","choices":"#
    );
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {envelope}[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut events = vec![(chunk(r#"{"role":"assistant","content":""}"#, "null"), false)];
    events.extend(tokens.iter().map(|t| {
        let delta = format!(r#"{{"content":{}}}"#, Value::from(t.as_str()));
        (chunk(&delta, "null"), true)
    }));
    events.push((chunk("{}", r#""stop""#), false));
    if let Some(u) = usage {
        events.push((format!("data: {envelope}[],\"usage\":{u}}}\n\n"), false));
    }
    events.push(("data: [DONE]\n\n".to_string(), false));
    events
}

/// Serves the demo model on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Token chunks are small writes: without TCP_NODELAY, Nagle's algorithm and delayed
    // ACKs hold each one back ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(config))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_and_bounded() {
        assert_eq!(
            demo_tokens("What is 2+2?", 200),
            demo_tokens("What is 2+2?", 200)
        );
        assert_ne!(demo_tokens("a", 200), demo_tokens("b", 200));
        assert_eq!(demo_tokens("x", 3).len(), 3);
        assert_eq!(demo_tokens("x", 200)[0], "[demo]");
    }
}
