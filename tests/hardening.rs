//! Transport hardening against the real binary: limits on heads and bodies,
//! slow clients, request smuggling (raw TCP for what HTTP libraries will not
//! send), TLS and HTTP/2, and the pacing of streams (keep-alives, late
//! errors, readers that stop reading). Body validation and guardrails are in
//! `guardrails.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::hardening::*;
use common::*;
use serde_json::{Value, json};

// ---- transport -------------------------------------------------------------

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let close = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
    // Over gateway.max_header_bytes (32 KiB) yet under actix-http's own 128 KiB: the gateway's check.
    let big = format!("{close}X-Big: {}\r\n\r\n", "a".repeat(40_000));
    // More than actix-http's 96 headers.
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("{close}{many}\r\n");
    for head in [big, many] {
        let mut raw = Raw::connect(&up.base);
        raw.send(head.as_bytes());
        let answer = tokio::task::spawn_blocking(move || raw.read_to_close())
            .await
            .unwrap();
        assert_eq!(statuses(&answer), [431], "{answer}");
    }
    // Ordinary heads pass.
    let mut raw = Raw::connect(&up.base);
    raw.send(format!("{close}\r\n").as_bytes());
    let answer = tokio::task::spawn_blocking(move || raw.read_to_close())
        .await
        .unwrap();
    assert_eq!(statuses(&answer), [200]);
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off_while_others_are_served() {
    let dir = temp_dir();
    let up = up_with_env(
        dir.path(),
        &[],
        &[("TOLLGATE_GATEWAY__HEADER_TIMEOUT_SECS", "1")],
    )
    .await;
    let mut slow: Vec<Raw> = (0..20).map(|_| Raw::connect(&up.base)).collect();
    for s in &mut slow {
        s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    }
    // Served while twenty heads hang open.
    let r = http()
        .get(format!("{}/readyz", up.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cut: Vec<(usize, String)> = tokio::task::spawn_blocking(move || {
        slow.iter_mut()
            .map(|s| s.drip_until_closed(b"", std::time::Duration::from_millis(100)))
            .collect()
    })
    .await
    .unwrap();
    for (sent, answer) in cut {
        // Closed by the timer, not by the size limit (32 KiB).
        assert!(sent < 16_384, "{sent} bytes went in before the cut");
        assert!(matches!(statuses(&answer)[..], [] | [408]), "{answer}");
    }
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408_and_the_connection_closes() {
    let dir = temp_dir();
    let up = up_with_env(
        dir.path(),
        &[],
        &[("TOLLGATE_GATEWAY__BODY_TIMEOUT_SECS", "1")],
    )
    .await;
    let t = token(&http(), &up.base, &up.infer.0, &up.infer.1).await;
    let mut raw = Raw::connect(&up.base);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\":"
    );
    raw.send(head.as_bytes());
    let answer = tokio::task::spawn_blocking(move || raw.read_to_close())
        .await
        .unwrap();
    assert_eq!(statuses(&answer), [408], "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
}

#[tokio::test]
async fn request_smuggling_shapes_get_400_and_nothing_after_them_is_read() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let post = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
    let shapes = [
        (
            "Content-Length with Transfer-Encoding",
            format!("{post}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "a signed length",
            format!("{post}Content-Length: +5\r\n\r\nabcde"),
        ),
        (
            "two different lengths",
            format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
        ),
    ];
    // What a desynchronised server would answer as a second request.
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for (name, head) in shapes {
        let mut raw = Raw::connect(&up.base);
        raw.send(format!("{head}{smuggled}").as_bytes());
        let answer = tokio::task::spawn_blocking(move || raw.read_to_close())
            .await
            .unwrap();
        assert_eq!(statuses(&answer), [400], "{name}: {answer}");
    }
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_while_it_streams() {
    let dir = temp_dir();
    let up = up_with_env(
        dir.path(),
        &[],
        &[("TOLLGATE_GATEWAY__MAX_BODY_BYTES", "65536")],
    )
    .await;
    let http = http();
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    // No length announced: the limit must be enforced on the bytes as they come.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 16_384]));
    let r = http
        .post(chat_url(&up.base))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn tls_is_served_with_http2_by_alpn() {
    let dir = temp_dir();
    let client = tls_client();
    let config = format!(
        "[gateway]\ntls = {{ cert = {:?}, key = {:?} }}\n",
        fixture("tls/cert.pem"),
        fixture("tls/key.pem")
    );
    let (_proc, base) = up_config(dir.path(), &config, &[], &[], &client, "https").await;
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let (id, secret) = demo_infer(dir.path());
    let t = token(&client, &base, &id, &secret).await;
    let (s, v) = post_json(&client, &chat_url(&base), &t, &user("hello")).await;
    assert_eq!(s, 200, "{v}");
    // Plain HTTP to the TLS port is not served.
    let addr = base.trim_start_matches("https://localhost:");
    assert!(
        http()
            .get(format!("http://127.0.0.1:{addr}/readyz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn plaintext_serves_http1_and_h2c() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c.get(format!("{}/readyz", up.base)).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let t = token(&h2c, &up.base, &up.infer.0, &up.infer.1).await;
    let (s, v) = post_json(&h2c, &chat_url(&up.base), &t, &user("hello")).await;
    assert_eq!(s, 200, "{v}");
}

// ---- streams ----------------------------------------------------------------

#[tokio::test]
async fn a_stream_nobody_reads_is_aborted_and_frees_its_slot() {
    let dir = temp_dir();
    let config = "[gateway]\nstream_idle_timeout_secs = 1\n[worker]\nmax_inflight_per_shard = 1\n[sim]\ntime_scale = 1000\n[guardrails]\nallow_fields = [\"ignore_eos\"]\n";
    let (proc, base) =
        up_config(dir.path(), config, &["--shards", "1"], &[], &http(), "http").await;
    let (id, secret) = demo_infer(dir.path());
    let t = token(&http(), &base, &id, &secret).await;
    // Eight choices of 8192 tokens: megabytes more than any socket buffers.
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8192,
        "n": 8, "ignore_eos": true, "stream": true});
    let mut raw = Raw::connect(&base);
    raw.send(&raw_post("/v1/chat/completions", &t, &body.to_string()));
    let head = tokio::task::spawn_blocking(move || {
        let head = raw.read_until("\r\n\r\n");
        (raw, head)
    });
    let (raw, head) = head.await.unwrap();
    assert_eq!(statuses(&head), [200], "{head}");
    // From here on this client reads nothing.
    proc.wait_log("the stalled stream's abort", |f| {
        f["message"] == "client stopped reading a stream; aborted upstream"
    });
    // Its only slot is free again: the next request is served.
    let (s, v) = post_json(&http(), &chat_url(&base), &t, &user("next")).await;
    assert_eq!(s, 200, "{v}");
    drop(raw);
}

#[tokio::test]
async fn a_queued_stream_gets_keepalives_and_a_late_timeout_as_an_sse_error() {
    let dir = temp_dir();
    let config = "[gateway]\nsse_keepalive_secs = 1\n[scheduler]\nqueue_timeout_secs = 3\n[worker]\nmax_inflight_per_shard = 1\n[guardrails]\nallow_fields = [\"ignore_eos\"]\n";
    let (_proc, base) =
        up_config(dir.path(), config, &["--shards", "1"], &[], &http(), "http").await;
    let (id, secret) = demo_infer(dir.path());
    let http = http();
    let t = token(&http, &base, &id, &secret).await;
    // The only slot, held by a long generation (real-time simulator).
    let holder = http
        .post(chat_url(&base))
        .bearer_auth(&t)
        .json(
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8192,
            "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let mut holder = holder.bytes_stream();
    use futures::StreamExt;
    let first = holder.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    let r = http
        .post(chat_url(&base))
        .bearer_auth(&t)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let frames = sse_frames(&r.text().await.unwrap());
    assert_eq!(frames[0], ": keep-alive", "{frames:?}");
    let last = frames.last().unwrap().strip_prefix("data: ").unwrap();
    let v: Value = serde_json::from_str(last).unwrap();
    assert_eq!(code(&v), "overloaded", "{frames:?}");
    assert!(!frames.iter().any(|f| f == "data: [DONE]"));
    drop(holder);
}

#[tokio::test]
async fn a_stream_waiting_for_its_first_token_gets_keepalives() {
    let dir = temp_dir();
    // A thousand times slower than real time: prefill takes seconds.
    let up = up_with_env(
        dir.path(),
        &["--shards", "1"],
        &[
            ("TOLLGATE_SIM__TIME_SCALE", "0.001"),
            ("TOLLGATE_GATEWAY__SSE_KEEPALIVE_SECS", "1"),
        ],
    )
    .await;
    let http = http();
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    let r = http
        .post(chat_url(&up.base))
        .bearer_auth(&t)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let frames = sse_frames(&r.text().await.unwrap());
    assert_eq!(frames[0], ": keep-alive", "{frames:?}");
    assert_eq!(frames.last().unwrap(), "data: [DONE]");
    let data: Vec<_> = frames.iter().filter(|f| f.starts_with("data: {")).collect();
    assert!(!data.is_empty(), "{frames:?}");
}
