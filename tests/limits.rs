//! Rate limits across gateway replicas sharing one real Redis: exact under
//! concurrency, tokens settled to what was used, leases of a dead gateway
//! coming back, Redis failure and recovery, and TTLs on every key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate_shared::testing::RedisServer;

const SECRET: &str = "cluster-secret-for-limit-tests-0123";
const CLIENT_SECRET: &str = "limits-client-secret-0123456789";

struct Fleet {
    _dir: tempfile::TempDir,
    _worker: Proc,
    gateways: Vec<(Proc, String)>,
}

/// One worker with two fast simulated shards and `n` gateways sharing `redis`.
async fn fleet(redis: &RedisServer, n: usize, extra_toml: &str, time_scale: &str) -> Fleet {
    fleet_with(redis, n, extra_toml, time_scale, &[]).await
}

async fn fleet_with(
    redis: &RedisServer,
    n: usize,
    extra_toml: &str,
    time_scale: &str,
    env: &[(&str, &str)],
) -> Fleet {
    let dir = temp_dir();
    let mut cmd = command(dir.path());
    cmd.args(["worker", "--sim", "2", "--listen", "127.0.0.1:0"])
        .env("TOLLGATE_CLUSTER__SECRET", SECRET)
        .env("TOLLGATE_SIM__TIME_SCALE", time_scale);
    let worker = Proc::spawn("worker", cmd);
    let worker_url = format!("http://{}", worker.listening("worker"));
    let config = write(
        dir.path(),
        "gw.toml",
        &format!(
            "[auth]\nhs256_secret = {{ env = \"JWT\" }}\n[redis]\nurl = \"{}\"\nkey_prefix = \"lt:\"\ngateway_replicas = {n}\n{extra_toml}",
            redis.url()
        ),
    );
    let mut gateways = Vec::new();
    for i in 0..n {
        let mut cmd = command(dir.path());
        cmd.args([
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--worker",
            &worker_url,
        ])
        .env("TOLLGATE_CLUSTER__SECRET", SECRET)
        .env("JWT", "jwt-secret-shared-by-every-replica-0123")
        .env("C1", CLIENT_SECRET)
        .envs(env.iter().copied());
        let p = Proc::spawn(&format!("gateway{i}"), cmd);
        let base = format!("http://{}", p.listening("gateway"));
        wait_ready(&http(), &format!("{base}/readyz")).await;
        gateways.push((p, base));
    }
    Fleet {
        _dir: dir,
        _worker: worker,
        gateways,
    }
}

fn tenant_and_client(tenant_limits: &str, client_limits: &str) -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\n{tenant_limits}\n[[clients]]\nid = \"c1\"\ntenant = \"acme\"\nsecret = {{ env = \"C1\" }}\n{client_limits}\n"
    )
}

async fn chat(http: &reqwest::Client, base: &str, token: &str, body: Value) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn three_replicas_admit_exactly_the_rpm_of_600_concurrent_requests() {
    let redis = RedisServer::start();
    let f = fleet(&redis, 3, &tenant_and_client("", "rpm = 60"), "100").await;
    let http = http();
    let token = token(&http, &f.gateways[0].1, "c1", CLIENT_SECRET).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let answers = futures::future::join_all((0..600).map(|i| {
        let (http, token, body) = (http.clone(), token.clone(), body.clone());
        let base = f.gateways[i % 3].1.clone();
        async move { chat(&http, &base, &token, body).await }
    }))
    .await;
    let mut ok = 0;
    let mut limited = 0;
    for r in answers {
        match r.status().as_u16() {
            200 => {
                assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
                ok += 1;
            }
            429 => {
                let h = r.headers();
                assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
                assert_eq!(h["x-ratelimit-limit-requests"], "60");
                assert_eq!(h["x-ratelimit-remaining-requests"], "0");
                let e: Value = r.json().await.unwrap();
                assert_eq!(e["error"]["code"], "requests_per_minute");
                assert_eq!(e["error"]["type"], "rate_limit_error");
                limited += 1;
            }
            s => panic!("unexpected status {s}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!((ok, limited), (60, 540));
}

#[tokio::test]
async fn concurrent_streams_overshoot_tpm_by_at_most_one_reservation() {
    let redis = RedisServer::start();
    let f = fleet(&redis, 2, &tenant_and_client("tpm = 3000", ""), "20").await;
    let http = http();
    let token = token(&http, &f.gateways[0].1, "c1", CLIENT_SECRET).await;
    let max_tokens = 400;
    let body = json!({
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": max_tokens, "stream": true, "stream_options": {"include_usage": true}
    });
    let answers = futures::future::join_all((0..30).map(|i| {
        let (http, token, body) = (http.clone(), token.clone(), body.clone());
        let base = f.gateways[i % 2].1.clone();
        async move {
            let r = chat(&http, &base, &token, body).await;
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    }))
    .await;
    let mut used = 0;
    let mut admitted = 0;
    let mut reservation = 0;
    for (status, text) in &answers {
        match status {
            200 => {
                admitted += 1;
                let data = sse_data(text);
                let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
                used += usage["usage"]["total_tokens"].as_u64().unwrap();
                reservation = reservation
                    .max(usage["usage"]["prompt_tokens"].as_u64().unwrap() * 2 + max_tokens);
            }
            429 => assert!(text.contains("tokens_per_minute"), "{text}"),
            s => panic!("unexpected {s}: {text}"),
        }
    }
    assert!((1..30).contains(&admitted), "admitted {admitted}");
    assert!(
        used <= 3000 + reservation,
        "used {used} tokens against tpm 3000 (reservation {reservation})"
    );
}

#[tokio::test]
async fn a_killed_gateways_concurrency_leases_come_back_after_their_ttl() {
    let redis = RedisServer::start();
    let limits = "[gateway]\nrequest_timeout_secs = 2\n".to_owned()
        + &tenant_and_client("", "max_concurrency = 1");
    // Slow shards: the first request is still streaming when its gateway dies.
    let mut f = fleet(&redis, 2, &limits, "0.05").await;
    let http = http();
    let token = token(&http, &f.gateways[0].1, "c1", CLIENT_SECRET).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "stream": true});
    let held = chat(&http, &f.gateways[0].1, &token, body.clone()).await;
    assert_eq!(held.status(), 200);
    let (mut killed, _) = f.gateways.remove(0);
    killed.signal("KILL");
    killed.wait_exit();
    drop(held);
    let other = f.gateways[0].1.clone();
    let r = chat(
        &http,
        &other,
        &token,
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status(), 429, "the dead gateway's lease still counts");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "concurrency");
    eventually("the lease to lapse", || {
        let (http, token, other) = (http.clone(), token.clone(), other.clone());
        async move {
            let r = chat(
                &http,
                &other,
                &token,
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
            )
            .await;
            (r.status() == 200).then_some(())
        }
    })
    .await;
}

/// The `x-ratelimit-*` pairs on an answer: `(requests, tokens)`, each whether present.
fn pairs(h: &reqwest::header::HeaderMap) -> (bool, bool) {
    let has = |dim: &str| {
        let keys = ["limit", "remaining", "reset"].map(|k| format!("x-ratelimit-{k}-{dim}"));
        let n = keys.iter().filter(|k| h.contains_key(k.as_str())).count();
        assert!(n == 0 || n == 3, "a partial {dim} pair: {h:?}");
        n == 3
    };
    (has("requests"), has("tokens"))
}

#[tokio::test]
async fn rate_limit_headers_name_the_limits_that_apply_also_on_a_concurrency_429() {
    let redis = RedisServer::start();
    let toml = "[[tenants]]\nid = \"acme\"\nrpm = 100\nmax_concurrency = 1\n\
        [[tenants]]\nid = \"free\"\n\
        [[clients]]\nid = \"c1\"\ntenant = \"acme\"\nsecret = { env = \"C1\" }\n\
        [[clients]]\nid = \"c2\"\ntenant = \"free\"\nsecret = { env = \"C1\" }\n";
    let f = fleet(&redis, 1, toml, "0.05").await;
    let (http, base) = (http(), f.gateways[0].1.clone());
    let t1 = token(&http, &base, "c1", CLIENT_SECRET).await;
    let held = chat(&http, &base, &t1, json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "stream": true})).await;
    assert_eq!(held.status(), 200);
    assert_eq!(
        pairs(held.headers()),
        (true, false),
        "rpm only: the requests pair"
    );
    assert_eq!(held.headers()["x-ratelimit-limit-requests"], "100");
    let small = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let refused = chat(&http, &base, &t1, small.clone()).await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers().clone();
    let e: Value = refused.json().await.unwrap();
    assert_eq!(e["error"]["code"], "concurrency");
    assert_eq!(
        pairs(&h),
        (true, false),
        "a concurrency 429 keeps the requests pair"
    );
    assert_eq!(h["x-ratelimit-limit-requests"], "100");
    drop(held);
    let t2 = token(&http, &base, "c2", CLIENT_SECRET).await;
    let free = chat(&http, &base, &t2, small).await;
    assert_eq!(free.status(), 200);
    assert_eq!(pairs(free.headers()), (false, false), "no limits, no pairs");
}

#[tokio::test]
async fn redis_dying_mid_run_degrades_to_local_shares_then_recovers() {
    let mut redis = RedisServer::start();
    // Limits degrade to local shares; authentication keeps its last good view
    // (by default it would fail closed with 503 once that view is 1 s old).
    let f = fleet_with(
        &redis,
        2,
        &tenant_and_client("", "rpm = 40"),
        "100",
        &[("TOLLGATE_AUTH__ON_REDIS_FAILURE", "stale")],
    )
    .await;
    let http = http();
    let base = f.gateways[0].1.clone();
    let token = token(&http, &base, "c1", CLIENT_SECRET).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    assert_eq!(chat(&http, &base, &token, body.clone()).await.status(), 200);
    redis.kill();
    // Local mode: this replica enforces 40 ÷ 2 = 20 on its own. No 500s, no hangs.
    let statuses: Vec<u16> =
        futures::future::join_all((0..30).map(|_| chat(&http, &base, &token, body.clone())))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        10,
        "{statuses:?}"
    );
    redis.restart();
    // Redis is empty after its restart: the shared window starts over.
    eventually("limits to be shared again", || {
        let (http, token, base, body) = (http.clone(), token.clone(), base.clone(), body.clone());
        async move { (chat(&http, &base, &token, body).await.status() == 200).then_some(()) }
    })
    .await;
    let conn = redis::Client::open(redis.url()).unwrap();
    let mut c = conn.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("lt:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the gateway writes to Redis again");
}

#[tokio::test]
async fn every_key_under_the_prefix_has_a_ttl_after_a_run() {
    let redis = RedisServer::start();
    let f = fleet(
        &redis,
        1,
        &tenant_and_client(
            "rpm = 100\ntpm = 100000\nmax_concurrency = 10\ndaily_tokens = 1000000",
            "rpm = 50",
        ),
        "100",
    )
    .await;
    let http = http();
    let base = f.gateways[0].1.clone();
    let token = token(&http, &base, "c1", CLIENT_SECRET).await;
    for stream in [false, true] {
        let r = chat(&http, &base, &token, json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream})).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    let conn = redis::Client::open(redis.url()).unwrap();
    let mut c = conn.get_multiplexed_async_connection().await.unwrap();
    // Settlement runs after the answer: wait for the usage record it writes.
    let usage: Value = eventually("usage to be metered", || {
        let (http, token, base) = (http.clone(), token.clone(), base.clone());
        async move {
            let v = get_json(&http, &format!("{base}/v1/usage"), &token).await;
            (v["data"][0]["requests"] == 2).then_some(v)
        }
    })
    .await;
    assert_eq!(usage["tenant"], "acme");
    assert!(usage["data"][0]["completion_tokens"].as_u64().unwrap() >= 2);
    // The client registry is configuration, kept until changed; everything the
    // limiter and the usage meter write expires by itself.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("lt:{acme}*")
        .query_async(&mut c)
        .await
        .unwrap();
    // One hash of limiter state for the tenant and its clients, one of usage.
    assert!(keys.iter().any(|k| k == "lt:{acme}:limits"), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("lt:{acme}:usage:")),
        "{keys:?}"
    );
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no TTL");
    }
}

/// Script calls Redis has served, from `INFO commandstats`.
struct ScriptCalls {
    /// `EVALSHA` and `EVAL` calls that ran their script.
    ran: u64,
    /// `EVALSHA` calls refused with NOSCRIPT (the script was not cached yet).
    missed: u64,
    /// `SCRIPT LOAD` calls.
    loads: u64,
}

async fn script_calls(c: &mut redis::aio::MultiplexedConnection) -> ScriptCalls {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let stat = |cmd: &str, field: &str| -> u64 {
        let prefix = format!("cmdstat_{cmd}:");
        let field = format!("{field}=");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix(field.as_str())))
            .map_or(0, |n| n.parse().unwrap())
    };
    let ran =
        |cmd: &str| stat(cmd, "calls") - stat(cmd, "failed_calls") - stat(cmd, "rejected_calls");
    ScriptCalls {
        ran: ran("evalsha") + ran("eval"),
        missed: stat("evalsha", "failed_calls"),
        loads: stat("script|load", "calls"),
    }
}

/// Admission is one script call before the answer, settlement at most one
/// more after it (it may ride with a later admission of the same gateway);
/// nothing else on the request path runs a script. (On a fresh Redis the
/// first call of the script also misses the script cache once: NOSCRIPT,
/// `SCRIPT LOAD`, the call again.)
#[tokio::test]
async fn each_request_costs_at_most_one_redis_round_trip_to_admit_and_one_to_settle() {
    const N: u64 = 12;
    let redis = RedisServer::start();
    let limits = "rpm = 1000\ntpm = 1000000\nmax_concurrency = 10\ndaily_tokens = 10000000";
    let f = fleet(&redis, 3, &tenant_and_client(limits, limits), "100").await;
    let http = http();
    let token = token(&http, &f.gateways[0].1, "c1", CLIENT_SECRET).await;
    let conn = redis::Client::open(redis.url()).unwrap();
    let mut c = conn.get_multiplexed_async_connection().await.unwrap();
    let before = script_calls(&mut c).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for i in 1..=N {
        let base = &f.gateways[(i - 1) as usize % f.gateways.len()].1;
        let r = chat(&http, base, &token, body.clone()).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        // This answer's admission is done; settlements may still be running.
        let ran = script_calls(&mut c).await.ran - before.ran;
        assert!(
            (i..=2 * i).contains(&ran),
            "{ran} script calls after answer {i}"
        );
    }
    // Settlement runs after the answer: wait for the usage it records.
    eventually("every request to be settled", || {
        let (http, token, base) = (http.clone(), token.clone(), f.gateways[0].1.clone());
        async move {
            let v = get_json(&http, &format!("{base}/v1/usage"), &token).await;
            let settled: u64 = v["data"]
                .as_array()?
                .iter()
                .filter_map(|d| d["requests"].as_u64())
                .sum();
            (settled == N).then_some(())
        }
    })
    .await;
    let after = script_calls(&mut c).await;
    let ran = after.ran - before.ran;
    assert!(
        (N..=2 * N).contains(&ran),
        "{ran} script calls: at most one admission and one settlement each"
    );
    let missed = after.missed - before.missed;
    assert_eq!(
        after.loads - before.loads,
        missed,
        "each miss loads its script once"
    );
    assert!(
        missed <= 2 * f.gateways.len() as u64,
        "{missed} cache misses"
    );
}

/// With `gateway.tokenizer` set, the reservation is the exact prompt count.
/// A byte-level vocabulary without merges makes that count easy to state:
/// one token per byte of the rendered chat, one per special token.
#[tokio::test]
async fn a_configured_tokenizer_makes_the_reservation_exact() {
    let dir = temp_dir();
    let vocab: serde_json::Map<String, Value> = (0..=255u8)
        .map(|b| (gpt2_byte_char(b).to_string(), json!(b)))
        .collect();
    let tokenizer = json!({
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "added_tokens": [{"id": 300, "content": "<|im_start|>"}, {"id": 301, "content": "<|im_end|>"}],
    });
    let path = write(dir.path(), "tokenizer.json", &tokenizer.to_string());
    let config = write(
        dir.path(),
        "up.toml",
        &format!(
            "[gateway]\ntokenizer = \"{}\"\n[[tenants]]\nid = \"acme\"\ntpm = 100000\n[[clients]]\nid = \"c1\"\ntenant = \"acme\"\nsecret = {{ env = \"C1\" }}\n",
            path.display()
        ),
    );
    let mut cmd = command(dir.path());
    cmd.args([
        "up",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ])
    .env("C1", CLIENT_SECRET)
    .env("TOLLGATE_SIM__TIME_SCALE", "100");
    let p = Proc::spawn("up", cmd);
    let base = format!("http://{}", p.listening("gateway"));
    let http = http();
    wait_ready(&http, &format!("{base}/readyz")).await;
    let token = token(&http, &base, "c1", CLIENT_SECRET).await;
    let r = chat(
        &http,
        &base,
        &token,
        json!({"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 10}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let remaining: u64 = r.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\nhello world\nassistant\n";
    let prompt = text.len() as u64 + 5; // three <|im_start|>, two <|im_end|>
    assert_eq!(remaining, 100_000 - prompt - 10);
}

/// GPT-2's byte-to-character map, as byte-level BPE vocabularies spell bytes.
fn gpt2_byte_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, 33..=126 | 161..=172 | 174..=255);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|x| !printable(*x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}
