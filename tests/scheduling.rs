//! The scheduler through the real binary: strict classes under contention,
//! nothing sent upstream for a client that left while queued, and the
//! answers for a full queue and a queue timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

const SECRET: &str = "scheduling-client-secret-0123456789";

/// `tollgate up` with one slow shard of two slots and three tenants, one per class.
async fn up_with_classes(extra: &str) -> (tempfile::TempDir, Up) {
    let dir = temp_dir();
    let mut toml = String::from(
        // Echo shards answer with the prompt: a blocker's long prompt keeps it
        // running until it is dropped (no natural stop comes first).
        "[worker]\nmax_inflight_per_shard = 2\n[sim]\ntime_scale = 0.2\nmax_num_seqs = 2\necho = true\n",
    );
    toml.push_str(extra);
    for (tenant, priority) in [("hi", "high"), ("mid", "normal"), ("lo", "low")] {
        toml.push_str(&format!(
            "[[tenants]]\nid = \"{tenant}\"\npriority = \"{priority}\"\n"
        ));
        toml.push_str(&format!("[[clients]]\nid = \"{tenant}-app\"\ntenant = \"{tenant}\"\nsecret = {{ env = \"S\" }}\n"));
    }
    toml.push_str("[[clients]]\nid = \"ops\"\ntenant = \"lo\"\nscopes = [\"infer\", \"admin\"]\nsecret = { env = \"S\" }\n");
    let config = write(dir.path(), "up.toml", &toml);
    let mut cmd = command(dir.path());
    cmd.args([
        "up",
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ])
    .env("S", SECRET);
    let proc = Proc::spawn("up", cmd);
    let base = format!("http://{}", proc.listening("gateway"));
    wait_ready(&http(), &format!("{base}/readyz")).await;
    let up = Up {
        proc,
        base,
        infer: ("hi-app".into(), SECRET.into()),
        admin: ("ops".into(), SECRET.into()),
    };
    (dir, up)
}

fn body(max_tokens: u32, stream: bool, tag: &str) -> Value {
    json!({"messages": [{"role": "user", "content": format!("{tag}: count to ten")}], "max_tokens": max_tokens, "stream": stream})
}

/// A stream that has started (its first token arrived) and holds a slot until dropped.
async fn blocker(http: &reqwest::Client, base: &str, token: &str, n: usize) -> impl Sized + use<> {
    let long = format!("blocker {n}: {}", "and so on ".repeat(1500));
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"messages": [{"role": "user", "content": long}], "max_tokens": 4000, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") {
        seen.push_str(&String::from_utf8_lossy(&s.next().await.unwrap().unwrap()));
    }
    s
}

async fn queue_depth(http: &reqwest::Client, base: &str, admin: &str) -> Value {
    http.get(format!("{base}/v1/admin/queues"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_depth(http: &reqwest::Client, base: &str, admin: &str, depth: u64) -> Value {
    eventually(&format!("queue depth {depth}"), || async {
        let q = queue_depth(http, base, admin).await;
        (q["depth"] == depth).then_some(q)
    })
    .await
}

/// Streams a request and returns when its first token arrived.
async fn first_token_at(
    http: reqwest::Client,
    base: String,
    token: String,
    tag: String,
) -> Instant {
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&body(4, true, &tag))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut seen = String::new();
    let mut at = None;
    while let Some(chunk) = s.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if at.is_none() && seen.contains("\"content\":\"") {
            at = Some(Instant::now());
        }
    }
    assert!(seen.contains("[DONE]"), "{seen}");
    at.unwrap()
}

#[tokio::test]
async fn under_contention_high_goes_before_normal_before_low() {
    let (_dir, up) = up_with_classes("").await;
    let http = http();
    let admin = token(&http, &up.base, "ops", SECRET).await;
    let tok = |t: &'static str| {
        let (http, base) = (http.clone(), up.base.clone());
        async move { token(&http, &base, &format!("{t}-app"), SECRET).await }
    };
    let (hi, mid, lo) = (tok("hi").await, tok("mid").await, tok("lo").await);
    let blockers = vec![
        blocker(&http, &up.base, &lo, 1).await,
        blocker(&http, &up.base, &lo, 2).await,
    ];
    // Queued while both slots are taken: low first, high last.
    let mut waiting = Vec::new();
    for (class, token) in [("lo", &lo), ("mid", &mid), ("hi", &hi)] {
        for n in 0..2 {
            let fut = first_token_at(
                http.clone(),
                up.base.clone(),
                token.clone(),
                format!("{class} {n}"),
            );
            waiting.push((class, tokio::spawn(fut)));
        }
    }
    let q = wait_depth(&http, &up.base, &admin, 6).await;
    let classes: Vec<_> = q["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["priority"].clone(), c["depth"].clone()))
        .collect();
    assert_eq!(
        classes,
        vec![
            (json!("high"), json!(2)),
            (json!("normal"), json!(2)),
            (json!("low"), json!(2))
        ]
    );
    drop(blockers);
    let mut at = std::collections::HashMap::<&str, Vec<Instant>>::new();
    for (class, task) in waiting {
        at.entry(class).or_default().push(task.await.unwrap());
    }
    let last = |c: &str| *at[c].iter().max().unwrap();
    let first = |c: &str| *at[c].iter().min().unwrap();
    assert!(
        last("hi") < first("mid"),
        "every high request started before any normal one"
    );
    assert!(
        last("mid") < first("lo"),
        "every normal request started before any low one"
    );
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_sends_nothing_upstream() {
    let (_dir, up) = up_with_classes("").await;
    let http = http();
    let admin = token(&http, &up.base, "ops", SECRET).await;
    let lo = token(&http, &up.base, "lo-app", SECRET).await;
    let hi = token(&http, &up.base, "hi-app", SECRET).await;
    let blockers = vec![
        blocker(&http, &up.base, &lo, 1).await,
        blocker(&http, &up.base, &lo, 2).await,
    ];
    let queued = {
        let (http, base) = (http.clone(), up.base.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&hi)
                .json(&body(4, false, "leaves"))
                .send()
                .await
        })
    };
    wait_depth(&http, &up.base, &admin, 1).await;
    queued.abort();
    // The gateway takes it out of the queue as soon as the connection closes.
    wait_depth(&http, &up.base, &admin, 0).await;
    drop(blockers);
    let sims = sim_urls(&up.proc);
    eventually("the shard to go idle", || async {
        let running = metric_sum(&http, &sims, "vllm:num_requests_running").await;
        let waiting = metric_sum(&http, &sims, "vllm:num_requests_waiting").await;
        (running + waiting == 0.0).then_some(())
    })
    .await;
    // The shard saw the two blockers (aborted), and never the request that left.
    let text = http
        .get(format!("{}/metrics", sims[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let finished: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total"))
        .collect();
    assert_eq!(
        metric(&text, "vllm:request_success_total"),
        2.0,
        "{finished:?}"
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_queue_timeout_503_and_priority_only_goes_down() {
    let (_dir, up) =
        up_with_classes("[scheduler]\nmax_queue_per_tenant = 2\nqueue_timeout_secs = 1\n").await;
    let http = http();
    let admin = token(&http, &up.base, "ops", SECRET).await;
    let lo = token(&http, &up.base, "lo-app", SECRET).await;
    let hi = token(&http, &up.base, "hi-app", SECRET).await;
    let _blockers = [
        blocker(&http, &up.base, &lo, 1).await,
        blocker(&http, &up.base, &lo, 2).await,
    ];
    let send = |demote: Option<&'static str>| {
        let (http, base, hi) = (http.clone(), up.base.clone(), hi.clone());
        tokio::spawn(async move {
            let mut r = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&hi)
                .json(&body(4, false, "wait"));
            if let Some(p) = demote {
                r = r.header("x-tollgate-priority", p);
            }
            r.send().await.unwrap()
        })
    };
    let first = send(Some("low"));
    let second = send(None);
    let q = wait_depth(&http, &up.base, &admin, 2).await;
    let mine: Vec<_> = q["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["priority"].clone())
        .collect();
    assert!(
        mine.contains(&json!("low")) && mine.contains(&json!("high")),
        "{q}"
    );
    // A third request of the same tenant finds its queue full.
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_full");
    // Nobody frees a slot: both queued requests time out.
    for t in [first, second] {
        let r = t.await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(
            r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
    }
    // Asking to be promoted is refused for what it is.
    let r = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&hi)
        .header("x-tollgate-priority", "urgent")
        .json(&body(4, false, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn while_high_is_active_low_leaves_it_a_slot() {
    let (_dir, up) = up_with_classes("[scheduler]\nreserved_slots = 1\n").await;
    let http = http();
    let admin = token(&http, &up.base, "ops", SECRET).await;
    let lo = token(&http, &up.base, "lo-app", SECRET).await;
    let hi = token(&http, &up.base, "hi-app", SECRET).await;
    // A first high request makes the class active.
    first_token_at(http.clone(), up.base.clone(), hi.clone(), "hello".into()).await;
    // Low takes one of the two slots; its second request waits, though a slot is free.
    let _running = blocker(&http, &up.base, &lo, 1).await;
    let queued = {
        let (http, base, lo) = (http.clone(), up.base.clone(), lo.clone());
        tokio::spawn(async move { blocker(&http, &base, &lo, 2).await })
    };
    let q = wait_depth(&http, &up.base, &admin, 1).await;
    assert_eq!(q["classes"][2]["priority"], "low");
    assert_eq!(q["classes"][2]["reserved_slots_per_shard"], 1, "{q}");
    assert_eq!(q["classes"][0]["reserved_slots_per_shard"], 0, "{q}");
    // The next high request starts in the held slot, with low still waiting.
    first_token_at(http.clone(), up.base.clone(), hi.clone(), "urgent".into()).await;
    let q = queue_depth(&http, &up.base, &admin).await;
    assert_eq!(q["classes"][2]["depth"], 1, "{q}");
    assert!(!queued.is_finished());
    queued.abort();
}
