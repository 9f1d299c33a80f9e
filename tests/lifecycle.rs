//! Lifecycle: cancellation reaches vLLM, shutdown drains what is in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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

    eventually("the shard to drop the request", || {
        let (http, sims) = (http.clone(), sims.clone());
        async move { (metric_sum(&http, &sims, "vllm:num_requests_running").await == 0.0).then_some(()) }
    })
    .await;
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
async fn raw_chat(base: &str, token: &str, max_tokens: u32) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let body = json!({"messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": max_tokens, "ignore_eos": true})
        .to_string();
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    tcp
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
    let depth = |http: reqwest::Client, base: String, admin: String| async move {
        let q: serde_json::Value = http
            .get(format!("{base}/v1/admin/queues"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        q["depth"].as_u64().unwrap()
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
    let queued = raw_chat(&up.base, &t, 16).await;
    eventually("the raw request to queue", || {
        let f = depth(http.clone(), up.base.clone(), admin.clone());
        async move { (f.await == 1).then_some(()) }
    })
    .await;
    drop(queued);
    eventually("the closed client's request to leave the queue", || {
        let f = depth(http.clone(), up.base.clone(), admin.clone());
        async move { (f.await == 0).then_some(()) }
    })
    .await;
    eventually("its record, as 499", || {
        let n = abandoned_records(dir.path());
        async move { (n == 1).then_some(()) }
    })
    .await;

    // Running upstream, then the client closes its socket: vLLM drops it.
    drop(blockers);
    eventually("the shards to be free", || {
        let (http, sims) = (http.clone(), sims.clone());
        async move { (metric_sum(&http, &sims, "vllm:num_requests_running").await == 0.0).then_some(()) }
    })
    .await;
    let running = raw_chat(&up.base, &t, 4000).await;
    eventually("the raw request to run", || {
        let (http, sims) = (http.clone(), sims.clone());
        async move { (metric_sum(&http, &sims, "vllm:num_requests_running").await == 1.0).then_some(()) }
    })
    .await;
    drop(running);
    eventually("the shard to drop the closed client's request", || {
        let (http, sims) = (http.clone(), sims.clone());
        async move { (metric_sum(&http, &sims, "vllm:num_requests_running").await == 0.0).then_some(()) }
    })
    .await;
    eventually("its record, as 499", || {
        let n = abandoned_records(dir.path());
        async move { (n == 2).then_some(()) }
    })
    .await;
}
