//! Lifecycle: cancellation reaches vLLM, shutdown drains what is in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use futures::StreamExt;
use serde_json::json;

/// Slow simulated shards (0.1× real time), so a long answer is still being
/// generated when the client leaves or the process is told to stop.
const SLOW: &[(&str, &str)] = &[("TOLLGATE_SIM__TIME_SCALE", "0.1")];

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
        .json(&json!({"messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 4000, "stream": true}))
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
