//! Injected faults and clients that go away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::json;

use super::{chat_body, frames, json_of, options};
use crate::sim::faults::ExitHook;

#[tokio::test(start_paused = true)]
async fn health_is_503_while_unhealthy() {
    let mut opts = options();
    opts.faults.unhealthy_secs = 5.0;
    let (svc, _) = service!(opts);
    let health = || TestRequest::get().uri("/health").to_request();
    assert_eq!(
        test::call_service(&svc, health()).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    let resp = test::call_service(&svc, health()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(test::read_body(resp).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn injected_failures_use_the_status_and_shape() {
    let mut opts = options();
    opts.faults.fail_rate = 1.0;
    opts.faults.fail_status = 503;
    let (svc, _) = service!(opts);
    let (status, r) = json_of(
        test::call_service(&svc, post!("/v1/chat/completions", chat_body(json!({})))).await,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (&r["error"]["type"], &r["error"]["code"]),
        (&json!("ServiceUnavailableError"), &json!(503))
    );
}

async fn next_chunk<B: MessageBody + Unpin>(
    body: &mut B,
) -> Option<Result<actix_web::web::Bytes, B::Error>> {
    futures::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_next(cx)).await
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_aborts_the_request() {
    let (svc, state) = service!(options());
    let body = chat_body(json!({"max_tokens": 1000, "ignore_eos": true, "stream": true}));
    let resp = test::call_service(&svc, post!("/v1/chat/completions", body)).await;
    let mut body = resp.into_body();
    let first = next_chunk(&mut body).await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let busy = state.engine.snapshot().await.unwrap();
    assert_eq!(busy.running, 1);
    drop(body); // the client disconnects
    let idle = state.engine.snapshot().await.unwrap();
    assert_eq!((idle.running, idle.kv_cache_usage), (0, 0.0));
    assert_eq!(
        idle.stats.finished[crate::sim::engine::FinishReason::Abort.index()],
        1
    );
}

#[tokio::test(start_paused = true)]
async fn drop_fault_cuts_the_stream_without_done() {
    let mut opts = options();
    opts.faults.drop_after_tokens = Some(3);
    let (svc, state) = service!(opts);
    let body = chat_body(json!({"max_tokens": 50, "ignore_eos": true, "stream": true}));
    let resp = test::call_service(&svc, post!("/v1/chat/completions", body)).await;
    let mut body = resp.into_body();
    let mut text = Vec::new();
    let error = loop {
        match next_chunk(&mut body).await {
            Some(Ok(b)) => text.extend_from_slice(&b),
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly"),
        }
    };
    assert!(error.to_string().contains("dropped"));
    let f = frames(&text);
    assert_eq!(f.len(), 1 + 3, "role chunk and three tokens");
    assert!(!f.contains(&json!("[DONE]")));
    assert_eq!(state.engine.snapshot().await.unwrap().running, 0);
}

#[tokio::test(start_paused = true)]
async fn stall_fault_keeps_the_stream_open_and_silent() {
    let mut opts = options();
    opts.faults.stall_after_tokens = Some(2);
    let (svc, state) = service!(opts);
    let body = chat_body(json!({"max_tokens": 50, "ignore_eos": true, "stream": true}));
    let resp = test::call_service(&svc, post!("/v1/chat/completions", body)).await;
    let mut body = resp.into_body();
    let mut text = Vec::new();
    // Read until the stream goes quiet: an hour of simulated silence.
    while let Ok(chunk) =
        tokio::time::timeout(Duration::from_secs(3600), next_chunk(&mut body)).await
    {
        text.extend_from_slice(&chunk.unwrap().unwrap());
    }
    assert_eq!(frames(&text).len(), 1 + 2);
    assert_eq!(
        state.engine.snapshot().await.unwrap().running,
        0,
        "upstream work was aborted"
    );
}

#[tokio::test(start_paused = true)]
async fn exit_hook_runs_once_when_the_count_is_reached() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut opts = options();
    opts.faults.exit_after_requests = Some(2);
    let counter = calls.clone();
    opts.faults.on_exit = Some(ExitHook(Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })));
    let (svc, _) = service!(opts);
    let req = || post!("/v1/completions", json!({"prompt": "hi", "max_tokens": 1}));
    assert_eq!(
        test::call_service(&svc, req()).await.status(),
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The request that reaches the count never gets an answer.
    let second =
        tokio::time::timeout(Duration::from_secs(3600), test::call_service(&svc, req())).await;
    assert!(second.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
