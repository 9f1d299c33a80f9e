//! Lifecycle: cancellation reaches vLLM, shutdown drains what is in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::hardening::{Raw, raw_post};
use common::*;
use futures::StreamExt;
use serde_json::json;

/// Slow simulated shards (0.1× real time), so a long answer is still being
/// generated when the client leaves or the process is told to stop; and
/// `ignore_eos` allowed, so a long answer is not ended early by the
/// simulator (it ends texts by itself after 64-511 tokens), which would let
/// a cancellation test pass with no cancellation.
const SLOW: &[(&str, &str)] = &[
    ("TOLLGATE_SIM__TIME_SCALE", "0.1"),
    ("TOLLGATE_GUARDRAILS__ALLOW_FIELDS", "[\"ignore_eos\"]"),
];

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let dir = temp_dir();
    let up = up_with_env(dir.path(), &[], SLOW).await;
    let http = http();
    let sims = sim_urls(&up.proc);
    assert_eq!(sims.len(), 2);
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    let resp = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 4000, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    // Tokens arrive while generation goes on: the relay does not buffer.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    assert_eq!(
        metric_sum(&http, &sims, "vllm:num_requests_running").await,
        1.0
    );
    drop(stream);

    running(&http, &sims, 0.0, "the shard to drop the request").await;
    let generated = metric_sum(&http, &sims, "vllm:generation_tokens_total").await;
    assert!(
        generated < 4000.0,
        "generation went on after the client left: {generated} tokens"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits_0() {
    let dir = temp_dir();
    let mut up = up_with_env(dir.path(), &[], SLOW).await;
    let http = http();
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    let resp = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"messages": [{"role": "user", "content": "Count slowly"}], "max_tokens": 30, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut body = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).into_owned();
    up.proc.signal("TERM");
    while let Some(chunk) = stream.next().await {
        body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let data = sse_data(&body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "the stream was cut: {body}"
    );
    let status = up.proc.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", up.proc.stderr());
}

/// Sends a non-streamed chat request on a plain TCP connection and returns
/// the connection without reading the answer.
fn raw_chat(base: &str, token: &str, max_tokens: u32) -> Raw {
    let body = json!({"messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": max_tokens, "ignore_eos": true});
    let mut raw = Raw::connect(base);
    raw.send(&raw_post("/v1/chat/completions", token, &body.to_string()));
    raw
}

/// Audit records of `up` in `dir` with status 499.
fn abandoned_records(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join(".tollgate/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["status"] == 499)
        .count()
}

/// Waits until the shards run `n` requests in all.
async fn running(http: &reqwest::Client, sims: &[String], n: f64, what: &str) {
    eventually(what, || async {
        (metric_sum(http, sims, "vllm:num_requests_running").await == n).then_some(())
    })
    .await;
}

/// A client that sends a request and closes its socket (as `requests` does
/// on a timeout) has left: queued, its request leaves the queue; running,
/// it is cancelled in vLLM. Each leaves one record, as 499.
#[tokio::test]
async fn a_client_that_closes_its_socket_leaves_the_queue_and_cancels_its_request() {
    let dir = temp_dir();
    let env = [
        SLOW[0],
        SLOW[1],
        ("TOLLGATE_WORKER__MAX_INFLIGHT_PER_SHARD", "1"),
    ];
    let up = up_with_env(dir.path(), &[], &env).await;
    let http = http();
    let sims = sim_urls(&up.proc);
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    let admin = token(&http, &up.base, &up.admin.0, &up.admin.1).await;
    let queues = format!("{}/v1/admin/queues", up.base);
    let depth_is = |n: u64, what: &'static str| {
        let (http, queues, admin) = (&http, &queues, &admin);
        eventually(what, move || async move {
            (get_json(http, queues, admin).await["depth"] == n).then_some(())
        })
    };
    let records_are = |n: usize| {
        let dir = dir.path();
        eventually("the closed client's record, as 499", move || async move {
            (abandoned_records(dir) == n).then_some(())
        })
    };

    // Both shards (one slot each) busy with long streams.
    let mut blockers = Vec::new();
    for _ in 0..2 {
        let resp = http
            .post(format!("{}/v1/chat/completions", up.base))
            .bearer_auth(&t)
            .json(&json!({"messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 4000, "ignore_eos": true, "stream": true}))
            .send()
            .await
            .unwrap();
        let mut s = resp.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("\"content\":\"") {
            seen.push_str(&String::from_utf8_lossy(&s.next().await.unwrap().unwrap()));
        }
        blockers.push(s);
    }

    // Queued, then the client closes its socket: the queue empties.
    let queued = raw_chat(&up.base, &t, 16);
    depth_is(1, "the raw request to queue").await;
    drop(queued);
    depth_is(0, "the closed client's request to leave the queue").await;
    records_are(1).await;

    // Running upstream, then the client closes its socket: vLLM drops it.
    drop(blockers);
    running(&http, &sims, 0.0, "the shards to be free").await;
    let raw = raw_chat(&up.base, &t, 4000);
    running(&http, &sims, 1.0, "the raw request to run").await;
    drop(raw);
    running(
        &http,
        &sims,
        0.0,
        "the shard to drop the closed client's request",
    )
    .await;
    records_are(2).await;
}
