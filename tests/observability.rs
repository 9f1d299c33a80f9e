//! The audit trail and observability, end to end, on real processes: spans
//! caught by OTLP receivers inside this test (gRPC and HTTP/protobuf), the
//! audit file and the Redis-backed audit API, `/metrics`, the dashboard in
//! headless Chromium, and the files in `deploy/` checked against `/metrics`.
//!
//! - `traces`: the span tree of each stage, across processes; a dead collector
//! - `audit`: exactly one record per request, whatever its answer; the audit API
//! - `secrets`: planted secrets in no log, span or record; escaped control characters
//! - `dashboards`: `/dashboard` in headless Chromium; `deploy/` against `/metrics`
//! - `bench`: added latency of tracing and audit (ignored: a benchmark)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "observability/audit.rs"]
mod audit;
#[path = "observability/bench.rs"]
mod bench;
#[path = "observability/dashboards.rs"]
mod dashboards;
#[path = "observability/secrets.rs"]
mod secrets;
#[path = "observability/traces.rs"]
mod traces;

use common::observability::*;
use common::*;
use serde_json::{Value, json};

pub async fn chat(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    body: Value,
) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// Traffic that gives every metric of CONTRACT §5 a series: answers, a
/// stream, a refusal, a rate limit.
pub async fn all_kinds_of_traffic(cluster: &Cluster) {
    let http = http();
    let base = &cluster.base;
    let reader = cluster.token(READER).await;
    let slow = cluster.token(SLOW).await;
    for stream in [false, true, false, true] {
        let r = chat(&http, base, &reader, json!({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "stream": stream})).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let r = chat(&http, base, "nope", json!({})).await;
    assert_eq!(r.status(), 401);
    let statuses = [
        chat(
            &http,
            base,
            &slow,
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
        )
        .await
        .status(),
        chat(
            &http,
            base,
            &slow,
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
        )
        .await
        .status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 429]);
}
