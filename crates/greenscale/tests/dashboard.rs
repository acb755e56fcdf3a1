//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven with selenium from the test venv), against `greenscale up` with the demo pool.

use std::process::Command;
use std::time::Duration;

mod common;
use common::Up;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_submits_streams_and_shows_the_pool_waking_and_sleeping() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: install Debian's chromium and chromium-driver (./scripts/test does)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--demo-load-time",
            "1s",
            "--policy",
            "greenscale:cold_cost=2",
            "--gpu",
            "1GiB",
        ],
    )
    .await;
    let page = up.client.get(up.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let python = greenscale_testkit::python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/dashboard.py");
    let base = up.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(base).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}\n--- up log ---\n{}",
        up.process.log()
    );
    println!("{stdout}");
    // Nothing is left running once the pool is idle.
    up.wait_for("the pool back at zero", Duration::from_secs(30), || async {
        up.pool().await["replicas"].as_array().unwrap().is_empty()
    })
    .await;
}
