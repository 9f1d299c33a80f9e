//! The overhead benchmark (ignored by default).

use serde_json::Value;

use super::common::observability::*;
use super::common::*;

/// Added latency of tracing and audit: the same small chat completions
/// through `tollgate up` with both off and with both on (spans exported over
/// gRPC to a receiver in this process, every request audited to a file).
/// `cargo test --release --test observability -- --ignored --nocapture bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_added_latency_of_tracing_and_audit() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let _receiver = collector.discard();
    let dir = temp_dir();
    let mut sim_cmd = command(dir.path());
    sim_cmd.args(["sim", "--port", "0", "--time-scale", "1000"]);
    let sim = Proc::spawn("sim", sim_cmd);
    let sim_url = format!("http://{}", sim.listening("sim"));
    let off = [("TOLLGATE_TELEMETRY__AUDIT_ENABLED", "false")];
    let on = [("TOLLGATE_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str())];
    let requests = std::env::var("BENCH_REQUESTS").unwrap_or_else(|_| "4000".into());
    let mut results: Vec<(&str, Value)> = Vec::new();
    // Twice each, interleaved, so drift of the machine hits both alike.
    for (label, env) in [("off", &off), ("on", &on), ("off", &off), ("on", &on)] {
        let run = temp_dir();
        let up = up_with_env(run.path(), &["--vllm", &sim_url], &env[..]).await;
        let out = tokio::task::spawn_blocking({
            let (base, id, secret, requests) = (
                up.base.clone(),
                up.infer.0.clone(),
                up.infer.1.clone(),
                requests.clone(),
            );
            move || {
                command(std::path::Path::new("."))
                    .args([
                        "bench",
                        "--url",
                        &base,
                        "--client-id",
                        &id,
                        "--concurrency",
                        "16",
                        "--requests",
                        &requests,
                        "--label",
                        label,
                    ])
                    .env("TOLLGATE_BENCH_SECRET", secret)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["errors"], 0, "{report}");
        println!("{report}");
        if label == "on" {
            let audited = audit_records(&run.path().join(".tollgate/audit.jsonl"));
            assert!(audited.len() as u64 >= report["requests"].as_u64().unwrap());
        }
        results.push((label, report));
        drop(up);
    }
    let best = |label: &str, key: &str| {
        results
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, r)| r[key].as_f64().unwrap())
            .fold(f64::INFINITY, f64::min)
    };
    println!(
        "tracing + audit add p50 {:+.3} ms, p99 {:+.3} ms (best of two: off p50 {:.3} / p99 {:.3} ms, on p50 {:.3} / p99 {:.3} ms)",
        best("on", "p50_ms") - best("off", "p50_ms"),
        best("on", "p99_ms") - best("off", "p99_ms"),
        best("off", "p50_ms"),
        best("off", "p99_ms"),
        best("on", "p50_ms"),
        best("on", "p99_ms"),
    );
}
