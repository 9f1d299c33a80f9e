//! The closed loop: N concurrent clients send small chat completions back to
//! back; the report gives requests/s and latency percentiles. Points at a
//! gateway (with client credentials) or straight at a vLLM server /
//! `tollgate sim` (without), so the two can be compared. Several `--url`s
//! (gateway replicas) take requests in turn. With a token, answers of a
//! client with the `dev` scope carry the gateway's stage timings, and the
//! report gives their percentiles too.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{percentile, timing_header, timings, token};
use crate::cmd::{CmdResult, Failure};

#[derive(clap::Args)]
pub struct ClosedArgs {
    /// Base URL of a gateway or a vLLM server (e.g. http://127.0.0.1:8080).
    /// Repeat it for several gateway replicas: requests go to each in turn,
    /// the token comes from the first (replicas share the signing key).
    #[arg(long, action = clap::ArgAction::Append)]
    url: Vec<String>,
    /// Client id to get a token with (gateway only).
    #[arg(long, requires = "client_secret")]
    client_id: Option<String>,
    /// Client secret (gateway only); also read from TOLLGATE_BENCH_SECRET.
    #[arg(long, env = "TOLLGATE_BENCH_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests sent before measuring starts.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 8)]
    max_tokens: u32,
    /// Stream the answers (SSE).
    #[arg(long)]
    stream: bool,
    /// A label for the report.
    #[arg(long, default_value = "run")]
    label: String,
}

#[derive(Serialize)]
struct Report {
    label: String,
    requests: usize,
    errors: usize,
    concurrency: usize,
    seconds: f64,
    requests_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Percentiles of each stage of `x-tollgate-timing` (empty without it).
    stages: BTreeMap<String, Stage>,
}

#[derive(Serialize)]
struct Stage {
    p50_ms: f64,
    p99_ms: f64,
}

/// What one client saw: latencies, stage durations by name, errors.
#[derive(Default)]
struct Seen {
    lat: Vec<Duration>,
    stages: BTreeMap<String, Vec<Duration>>,
    errors: Vec<String>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.lat.extend(other.lat);
        self.errors.extend(other.errors);
        for (name, d) in other.stages {
            self.stages.entry(name).or_default().extend(d);
        }
    }
}

/// Sends one request; returns its latency and the timing header, if any.
async fn one(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> Result<(Duration, Option<String>), String> {
    let start = Instant::now();
    let mut req = http.post(format!("{url}/v1/chat/completions")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t).header("x-tollgate-debug", "1");
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let timing = timing_header(&resp).map(str::to_owned);
    // Read the whole answer: for streams, the last event.
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    Ok((start.elapsed(), timing))
}

pub async fn run(args: ClosedArgs) -> CmdResult {
    if args.url.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!(
            "give --url (closed loop) or --scenario FILE (open loop)"
        )));
    }
    let urls: Arc<[String]> = args
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    let token = match (&args.client_id, &args.client_secret) {
        (Some(id), Some(secret)) => Some(token(&http, &urls[0], id, secret).await?),
        _ => None,
    };
    let body = serde_json::json!({
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": args.max_tokens,
        "stream": args.stream,
    });
    let run_phase = |n: usize| {
        let (http, urls, token, body) = (http.clone(), urls.clone(), token.clone(), body.clone());
        let concurrency = args.concurrency.max(1);
        async move {
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (http, urls, token, body, next) = (
                    http.clone(),
                    urls.clone(),
                    token.clone(),
                    body.clone(),
                    next.clone(),
                );
                tasks.spawn(async move {
                    let mut seen = Seen::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let url = &urls[i % urls.len()];
                        match one(&http, url, token.as_deref(), &body).await {
                            Ok((d, timing)) => {
                                seen.lat.push(d);
                                for (name, ms) in timing.as_deref().into_iter().flat_map(timings) {
                                    if let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0) {
                                        seen.stages.entry(name.to_owned()).or_default().push(d);
                                    }
                                }
                            }
                            Err(e) => seen.errors.push(e),
                        }
                    }
                    seen
                });
            }
            let mut all = Seen::default();
            while let Some(r) = tasks.join_next().await {
                if let Ok(seen) = r {
                    all.merge(seen);
                }
            }
            all
        }
    };
    run_phase(args.warmup).await;
    let started = Instant::now();
    let Seen {
        mut lat,
        mut stages,
        errors,
    } = run_phase(args.requests).await;
    let seconds = started.elapsed().as_secs_f64();
    lat.sort();
    let stages = stages
        .iter_mut()
        .map(|(name, d)| {
            d.sort();
            let s = Stage {
                p50_ms: percentile(d, 50.0),
                p99_ms: percentile(d, 99.0),
            };
            (name.clone(), s)
        })
        .collect();
    let report = Report {
        label: args.label,
        requests: lat.len(),
        errors: errors.len(),
        concurrency: args.concurrency,
        seconds,
        requests_per_sec: lat.len() as f64 / seconds.max(1e-9),
        p50_ms: percentile(&lat, 50.0),
        p90_ms: percentile(&lat, 90.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        stages,
    };
    if let Some(e) = errors.first() {
        tracing::warn!(count = errors.len(), first = %e, "requests failed");
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::to_string(&report).map_err(|e| Failure::Other(e.into()))?
    )?;
    Ok(())
}
