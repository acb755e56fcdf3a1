//! Streaming cadence: how a 200-token streamed answer arrives, straight from llama.cpp's
//! `llama-server` and through `greenscale up` in front of the same server (same model, same
//! flags, warm), in one run. Prints chunks per answer, time to first token, the gaps
//! between content chunks (p50/p99) and the total time, and the ratios.
//!
//! The model is the test suite's tiny random-weight GGUF (about 1,700 tokens/s here), the
//! hardest case for a proxy: a token every ~0.6 ms leaves little room to hide overhead.

mod common;

use std::time::{Duration, Instant};

use greenscale_testkit::llama::{self, ModelSize};

const TRIALS: usize = 30;
const TOKENS: u32 = 200;

struct Trial {
    chunks: usize,
    ttft_ms: f64,
    gaps_ms: Vec<f64>,
    total_ms: f64,
}

/// One streamed chat completion; times every content chunk.
async fn stream_once(client: &reqwest::Client, url: &str, model: &str, i: usize) -> Trial {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("Tell me a long story, number {i}.")}],
        "max_tokens": TOKENS,
        "stream": true,
    });
    let start = Instant::now();
    let mut r = client.post(url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut buf = String::new();
    let mut times = Vec::new();
    while let Some(bytes) = r.chunk().await.unwrap() {
        let now = start.elapsed().as_secs_f64() * 1000.0;
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            let content = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !content.is_empty() {
                times.push(now);
            }
        }
    }
    let total_ms = start.elapsed().as_secs_f64() * 1000.0;
    Trial {
        chunks: times.len(),
        ttft_ms: times.first().copied().unwrap_or(total_ms),
        gaps_ms: times.windows(2).map(|w| w[1] - w[0]).collect(),
        total_ms,
    }
}

struct Summary {
    chunks: f64,
    ttft_p50: f64,
    gap_p50: f64,
    gap_p99: f64,
    total_p50: f64,
}

async fn run(url: &str, model: &str) -> Summary {
    // A new connection per answer on both sides: llama-server may close an idle kept-alive
    // connection just as a request is sent on it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Warm: the first request may include a cold start.
    stream_once(&client, url, model, 0).await;
    let mut trials = Vec::new();
    for i in 1..=TRIALS {
        trials.push(stream_once(&client, url, model, i).await);
    }
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let gaps = sorted(trials.iter().flat_map(|t| t.gaps_ms.clone()).collect());
    let ttft = sorted(trials.iter().map(|t| t.ttft_ms).collect());
    let total = sorted(trials.iter().map(|t| t.total_ms).collect());
    Summary {
        chunks: trials.iter().map(|t| t.chunks as f64).sum::<f64>() / TRIALS as f64,
        ttft_p50: common::quantile(&ttft, 0.5),
        gap_p50: common::quantile(&gaps, 0.5),
        gap_p99: common::quantile(&gaps, 0.99),
        total_p50: common::quantile(&total, 0.5),
    }
}

fn llama_flags(model: &std::path::Path) -> String {
    format!(
        "-m {} --host 127.0.0.1 -c 2048 --threads 1",
        model.display()
    )
}

#[tokio::main]
async fn main() {
    let server = llama::server();
    let model = llama::model(ModelSize::TINY);

    // Direct: llama-server alone.
    let port = greenscale_testkit::free_port();
    let direct = common::Proc(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {} {} --port {port}",
                server.binary.display(),
                llama_flags(&model)
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start llama-server"),
    );
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(&health)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "llama-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("streaming from llama-server directly");
    let d = run(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        "tiny",
    )
    .await;
    direct.stop();

    // Through `greenscale up` in front of the same server.
    let dir = tempfile::tempdir().unwrap();
    let up_port = greenscale_testkit::free_port();
    let listen = format!("127.0.0.1:{up_port}");
    let cmd = format!(
        "{} {} --port {{port}}",
        server.binary.display(),
        llama_flags(&model)
    );
    let up = common::Proc(
        common::greenscale()
            .args(["up", "--listen", &listen, "--model-cmd", &cmd])
            .args(["--model", "tiny", "--policy", "keepalive:10m"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn up"),
    );
    common::wait_for_port(up_port);
    eprintln!("streaming through greenscale up");
    let g = run(&format!("http://{listen}/v1/chat/completions"), "tiny").await;
    up.stop();

    println!(
        "stream cadence: {TRIALS} warm streamed answers of {TOKENS} tokens each, tiny llama.cpp model"
    );
    println!(
        "{:<22} {:>8} {:>10} {:>10} {:>10} {:>11}",
        "", "chunks", "TTFT p50", "gap p50", "gap p99", "total p50"
    );
    for (name, s) in [("llama-server direct", &d), ("through greenscale up", &g)] {
        println!(
            "{name:<22} {:>8.1} {:>8.2}ms {:>8.3}ms {:>8.3}ms {:>9.1}ms",
            s.chunks, s.ttft_p50, s.gap_p50, s.gap_p99, s.total_p50
        );
    }
    println!(
        "ratio (up / direct): chunks {:.2}, TTFT p50 {:.2}, gap p50 {:.2}, gap p99 {:.2}, total p50 {:.2}; TTFT added {:.2} ms",
        g.chunks / d.chunks,
        g.ttft_p50 / d.ttft_p50,
        g.gap_p50 / d.gap_p50,
        g.gap_p99 / d.gap_p99,
        g.total_p50 / d.total_p50,
        g.ttft_p50 - d.ttft_p50
    );
}
