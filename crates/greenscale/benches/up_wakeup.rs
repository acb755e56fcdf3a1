//! Wake-up latency of `greenscale up`: a job submitted over HTTP while the pool is at zero
//! → the model-server process is spawned. The model command stamps the wall-clock time as
//! its first act. Side by side: the `greenscale` policy (decides on the arrival) and the
//! prototype's KEDA setup emulated in the same supervisor (`keda`, 5 s polling, so a job
//! waits for the next poll; cooldown shortened to 1 s so that trials do not take minutes).

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn stamps(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn replicas(client: &reqwest::Client, base: &str) -> usize {
    let pools: serde_json::Value = client
        .get(format!("{base}/v1/pools"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    pools[0]["replicas"].as_array().unwrap().len()
}

/// Runs `trials` wake-ups with `policy`; returns the latencies in milliseconds.
async fn measure(policy: &str, trials: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("spawned");
    let exe = env!("CARGO_BIN_EXE_greenscale");
    let command = format!(
        "date +%s%N >> '{}'; exec '{exe}' demo-model --port {{port}}",
        stamp.display()
    );
    let port = greenscale_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let up = common::Proc(
        common::greenscale()
            .args([
                "up",
                "--listen",
                &listen,
                "--model-cmd",
                &command,
                "--policy",
                policy,
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .spawn()
            .expect("spawn up"),
    );
    common::wait_for_port(port);
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for i in 0..trials {
        let deadline = Instant::now() + Duration::from_secs(60);
        while replicas(&client, &base).await > 0 {
            assert!(Instant::now() < deadline, "the pool did not return to zero");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Arrive at a different point of any polling cycle each time.
        tokio::time::sleep(Duration::from_millis(137 * (i as u64 % 8))).await;
        let before = stamps(&stamp).len();
        let t0 = now_ns();
        let r = client
            .post(format!("{base}/v1/jobs"))
            .json(&serde_json::json!({"prompt": "wake up", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(30);
        let spawned = loop {
            let s = stamps(&stamp);
            if s.len() > before {
                break s[before];
            }
            assert!(Instant::now() < deadline, "no model server was spawned");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        out.push((spawned.saturating_sub(t0)) as f64 / 1e6);
    }
    up.stop();
    out
}

fn summary(label: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (common::quantile(&ms, 0.5), common::quantile(&ms, 0.99));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "  {label:<44} n={:<3} mean {mean:>7.1} ms  p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {:>7.1} ms",
        ms.len(),
        ms[ms.len() - 1]
    );
    (mean, p99)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let push = rt.block_on(measure("greenscale:cold_cost=1", 40));
    let poll = rt.block_on(measure("keda:poll=5s,cooldown=1s,list_length=1", 8));
    println!("wake-up latency: job submitted at zero replicas → model-server process spawned");
    let (push_mean, push_p99) = summary("greenscale up, policy greenscale (on arrival)", push);
    let (poll_mean, _) = summary("same supervisor, KEDA emulation polling every 5 s", poll);
    println!(
        "  ratio of means (poll / push): {:.0}x",
        poll_mean / push_mean
    );
    println!(
        "  target p99 <= 50 ms: {}",
        common::verdict(push_p99 <= 50.0)
    );
}
