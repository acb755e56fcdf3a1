//! `greenscale submit` and `status` from the built binary, as a user runs them against a
//! `greenscale up`: the prompt from standard input or a file, `--wait` without a terminal
//! (the job id first, then the answer), and a pool whose replicas keep failing to start.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::Up;

fn greenscale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_greenscale"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_from_stdin_and_files_and_wait_prints_the_id_then_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), "up", &["--demo-load-time", "100ms"]).await;
    // A prompt longer than one command-line argument may be (128 KiB on Linux) is no
    // problem from a file.
    let long = "word ".repeat(30_000);
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, &long).unwrap();
    let from_file = greenscale()
        .args(["submit", "--url", &up.base, "--wait", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let out = String::from_utf8(from_file.stdout).unwrap();
    let mut lines = out.lines();
    let id = lines.next().unwrap();
    assert!(uuid_like(id), "the job id comes first: {out}");
    assert!(lines.next().unwrap().starts_with("[demo]"), "{out}");
    let job = up.job(id).await;
    assert_eq!(job["status"], "succeeded");

    let mut child = greenscale()
        .args(["submit", "--url", &up.base, "--wait", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from a pipe")
        .unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let out = String::from_utf8(piped.stdout).unwrap();
    let id = out.lines().next().unwrap();
    let job = up.job(id).await;
    assert_eq!(job["messages"][0]["content"], "from a pipe", "{job}");

    // Nothing to send is refused before anything is queued.
    let empty = greenscale()
        .args(["submit", "--url", &up.base, "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("the prompt is empty"));
}

fn uuid_like(s: &str) -> bool {
    s.len() >= 16 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_on_a_pool_that_cannot_start_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--model-cmd",
            "echo 'no GPU here' >&2; exit 127 # {port}",
            "--model",
            "broken",
        ],
    )
    .await;
    let wait = greenscale()
        .args([
            "submit",
            "--url",
            &up.base,
            "--wait",
            "--timeout",
            "5s",
            "hello",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wait.stderr);
    assert!(!wait.status.success());
    assert!(
        stderr.contains("pool broken:") && stderr.contains("failed starts in a row, last:"),
        "{stderr}"
    );
    assert!(stderr.contains("127"), "the exit status is named: {stderr}");
    let status = greenscale()
        .args(["status", "--url", &up.base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("failing") && text.contains("failed starts"),
        "{text}"
    );
}
