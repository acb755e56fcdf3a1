//! `greenscale sim` from the built binary.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .arg("sim")
        .args(args)
        .output()
        .expect("run greenscale sim")
}

/// The `--json` report of `greenscale sim` with `args`, one object per policy.
fn sim_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let out = sim(&[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().clone()
}

fn trace(name: &str) -> String {
    format!(
        "{}/../../../shared/traces/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn json_report_has_one_object_per_policy_with_the_documented_keys() {
    let out = sim(&[
        "--trace",
        &trace("AzureLLMInferenceTrace_code.csv"),
        "--policy",
        "greenscale,keda:poll=5s,cooldown=30s,list_length=1,max=5,keepalive:10m",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        for key in [
            "policy",
            "jobs",
            "gpu_seconds",
            "oracle_gpu_seconds",
            "cold_start_waits",
            "wait_p50",
            "wait_p95",
            "wait_p99",
            "interrupted",
            "peak_replicas",
            "scale_ups",
        ] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        assert_eq!(row["jobs"], 8819);
        assert!(row["gpu_seconds"].as_f64().unwrap() > 0.0);
    }
    assert!(
        rows[1]["peak_replicas"].as_u64().unwrap() <= 5,
        "keda max=5 respected"
    );
    assert_eq!(rows[0]["interrupted"], 0);
}

#[test]
fn table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plot.svg");
    let frontier = dir.path().join("frontier.svg");
    let out = sim(&[
        "--synthetic",
        "cron",
        "--policy",
        "greenscale,keda-seed",
        "--plot",
        svg.to_str().unwrap(),
        "--frontier",
        frontier.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("greenscale") && table.contains("keda-seed") && table.contains("oracle")
    );
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("keda-seed"));
    assert!(
        std::fs::read_to_string(frontier)
            .unwrap()
            .contains("<circle")
    );
}

#[test]
fn malformed_traces_and_specs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,10\n2023-11-16 18:00:01.0,ten,10\n",
    )
    .unwrap();
    let out = sim(&["--trace", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("ContextTokens"),
        "{err}"
    );

    let out = sim(&["--synthetic", "poisson", "--policy", "greenscale,kedda"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown policy \"kedda\""));

    let out = sim(&["--synthetic", "poisson", "--policy", "keda:pol=5s"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown parameter"));

    let out = sim(&["--trace", "/nonexistent/trace.csv"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read trace"));

    let multi = dir.path().join("functions.csv");
    std::fs::write(
        &multi,
        "HashFunction,HashApp,HashOwner,minute_1,minute_2\na,b,c,1,2\nd,e,f,0,3\n",
    )
    .unwrap();
    let out = sim(&[
        "--trace",
        multi.to_str().unwrap(),
        "--plot",
        "/tmp/never.svg",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plot draws one pool"));
    let out = sim(&["--trace", multi.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["jobs"], 6);
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // As with `greenscale sim … | head`: the reader is gone before the first line.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .args(["sim", "--synthetic", "poisson", "--policy", "greenscale"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn without_a_trace_it_names_both_sources_and_its_table_stays_aligned() {
    let out = sim(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--trace") && err.contains("--synthetic"),
        "{err}"
    );
    // 100 % cold-start waits (burst) and 0 % (oracle) end in the same column as the header.
    let out = sim(&["--synthetic", "burst", "--policy", "greenscale"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    let header = lines.iter().find(|l| l.starts_with("policy")).unwrap();
    let end = header.find("cold-start waits").unwrap() + "cold-start waits".len();
    for row in lines.iter().filter(|l| l.contains("%)")) {
        assert_eq!(row.find("%)").unwrap() + 2, end, "{header}\n{row}");
    }
}

#[test]
fn a_sleep_tier_is_used_by_greenscale_and_reported() {
    let path = trace("AzureLLMInferenceTrace_code.csv");
    let run = |extra: &[&str]| {
        let mut args = vec!["--trace", &path, "--policy", "greenscale,keepalive:5m"];
        args.extend_from_slice(extra);
        sim_rows(&args)
    };
    let plain = run(&[]);
    let tiered = run(&["--wake", "3s"]);
    assert_eq!(plain[0]["wakes"], 0);
    assert!(tiered[0]["wakes"].as_u64().unwrap() > 0, "{}", tiered[0]);
    assert!(tiered[0]["sleeps"].as_u64().unwrap() >= tiered[0]["wakes"].as_u64().unwrap());
    assert!(tiered[0]["wake_waits"].as_u64().unwrap() > 0);
    // Waking a sleeper instead of a cold start: callers wait less.
    let p95 = |row: &serde_json::Value| row["wait_p95"].as_f64().unwrap();
    assert!(
        p95(&tiered[0]) < p95(&plain[0]),
        "{} vs {}",
        tiered[0],
        plain[0]
    );
    // A fixed TTL knows no tiers.
    assert_eq!(tiered[1]["sleeps"], 0);
    let bad = sim(&["--synthetic", "cron", "--sleep-cost", "0.5"]);
    assert!(!bad.status.success(), "--sleep-cost needs --wake");
}

#[test]
fn many_pools_sharing_gpus_compare_tiers_and_the_peers_policies() {
    // A synthetic day of 24 pools in the Azure Functions format, on GPUs that hold four
    // replicas at once (see greenscale_core::sim::synthetic::functions_day).
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("functions-day.csv");
    std::fs::write(&day, greenscale_core::sim::synthetic::functions_day(24, 1)).unwrap();
    let policies = "greenscale,llama-swap,ollama:max_loaded=4,keepalive:10m";
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--trace",
            day.to_str().unwrap(),
            "--gpu-slots",
            "4",
            "--policy",
            policies,
        ];
        args.extend_from_slice(extra);
        sim_rows(&args)
    };
    let plain = run(&[]);
    let tiered = run(&["--wake", "5s"]);
    let n = |row: &serde_json::Value, key: &str| row[key].as_f64().unwrap();
    for row in plain.iter().chain(&tiered) {
        assert_eq!(row["unserved"], 0, "{row}");
        assert_eq!(
            row["interrupted"], 0,
            "nothing is cut by an eviction: {row}"
        );
        assert!(n(row, "peak_replicas") <= 4.0, "{row}");
        assert!(n(row, "evictions") > 0.0, "{row}");
    }
    // llama-swap runs one model at a time by default: far fewer GPU-seconds, far longer waits.
    assert_eq!(plain[1]["peak_replicas"], 1);
    assert!(n(&plain[1], "wait_p50") > 4.0 * n(&plain[2], "wait_p50"));
    // With a sleep tier, evicted and idle GreenScale replicas sleep and are woken instead
    // of cold-started, and its callers wait less.
    let (ours, ours_tiered) = (&plain[0], &tiered[0]);
    assert!(n(ours_tiered, "wakes") > 0.0, "{ours_tiered}");
    assert!(n(ours_tiered, "cold_starts") < n(ours, "cold_starts"));
    assert!(n(ours_tiered, "wait_p50") < n(ours, "wait_p50"));
    // Each pool on a GPU of its own instead: what the shared budget changes.
    let apart = sim_rows(&["--trace", day.to_str().unwrap(), "--policy", "greenscale"]);
    assert_eq!(apart[0]["evictions"], 0);
    assert!(n(&apart[0], "wait_p50") < n(ours, "wait_p50"));
    for (label, rows) in [
        ("no sleep tier", &plain),
        ("wake 5 s", &tiered),
        ("no shared budget", &apart),
    ] {
        println!("{label}:");
        for r in rows.iter() {
            println!(
                "  {:<22} {:>9.0} GPU-s  wait p50 {:>6.1} s  p95 {:>6.1} s  p99 {:>6.1} s  {:>5} cold starts  {:>5} wakes  {:>5} evictions",
                r["policy"].as_str().unwrap(),
                n(r, "gpu_seconds"),
                n(r, "wait_p50"),
                n(r, "wait_p95"),
                n(r, "wait_p99"),
                r["cold_starts"],
                r["wakes"],
                r["evictions"]
            );
        }
    }
}

#[test]
fn a_batch_share_goes_after_interactive_work_and_its_waits_are_reported_apart() {
    let code = trace("AzureLLMInferenceTrace_code.csv");
    let one_class = sim_rows(&["--trace", &code, "--policy", "greenscale"]);
    let rows = sim_rows(&[
        "--trace",
        &code,
        "--policy",
        "greenscale",
        "--batch-share",
        "0.3",
    ]);
    let r = &rows[0];
    let batch = r["batch_jobs"].as_u64().unwrap();
    assert!(
        (2400..=2900).contains(&batch),
        "about 30 % of 8819: {batch}"
    );
    let interactive_p95 = r["interactive_wait_p95"].as_f64().unwrap();
    assert!(
        interactive_p95 < r["batch_wait_p95"].as_f64().unwrap(),
        "interactive jobs start first: {r}"
    );
    assert!(
        interactive_p95 < one_class[0]["wait_p95"].as_f64().unwrap(),
        "with batch jobs behind them, interactive ones wait less than all jobs in one class"
    );
    let out = sim(&[
        "--trace",
        &code,
        "--policy",
        "greenscale",
        "--batch-share",
        "1.5",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch-share"));
}

#[test]
fn a_deferred_daily_batch_costs_fewer_gpu_seconds_and_cold_starts_and_meets_its_window() {
    let conv = trace("AzureLLMInferenceTrace_conv.csv");
    let rows = sim_rows(&[
        "--trace",
        &conv,
        "--policy",
        "greenscale",
        "--daily-batch",
        "10000",
        "--batch-at",
        "30m",
    ]);
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["policy"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    };
    let (deferred, at_once) = (row("greenscale"), row("greenscale [batch at once]"));
    let gpu = |r: &serde_json::Value| r["gpu_seconds"].as_f64().unwrap();
    let cold = |r: &serde_json::Value| r["cold_starts"].as_u64().unwrap();
    assert!(
        gpu(deferred) < gpu(at_once),
        "deferral must save GPU time: {deferred} against {at_once}"
    );
    assert!(cold(deferred) < cold(at_once), "and cold starts");
    assert_eq!(deferred["batch_jobs"], 10_000);
    assert_eq!(
        deferred["batch_late"], 0,
        "every batch job starts within its window"
    );
    assert_eq!(deferred["unserved"], 0);
    // Interactive jobs do not pay for it: they start first.
    assert!(
        deferred["interactive_wait_p95"].as_f64().unwrap() < 5.0,
        "{deferred}"
    );
}
