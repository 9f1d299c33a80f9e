//! The gateway on a real Redis Cluster (three primaries, a replica each):
//! limits, usage, the audit stream and revocations kept in the cluster, and
//! a primary's failover under load admitting no more than the limit and
//! losing no usage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use serde_json::{Value, json};
use tollgate_shared::testing::RedisCluster;

const SECRET: &str = "cluster-secret-for-redis-cluster-tests";
const CLIENT_SECRET: &str = "cluster-client-secret-0123456789";
const PREFIX: &str = "ct:";

struct Fleet {
    _dir: tempfile::TempDir,
    _worker: Proc,
    gateway: Proc,
    base: String,
}

/// Tenants whose limiter state lands on `n` different primaries.
fn spread_tenants(cluster: &RedisCluster, n: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    (0..1000)
        .map(|i| format!("t{i}"))
        .filter(|t| seen.insert(cluster.primary_of(&format!("{PREFIX}{{{t}}}:limits"))))
        .take(n)
        .collect()
}

/// One worker with two fast simulated shards and one gateway whose Redis
/// is `cluster`, named by the environment override of `redis.cluster`.
/// Each tenant has one client, `c-<tenant>`, with `client_limits`; client
/// `ops` (of the first tenant) is an admin.
async fn fleet(
    cluster: &RedisCluster,
    tenants: &[String],
    client_limits: &str,
    redis_toml: &str,
) -> Fleet {
    let dir = temp_dir();
    let mut cmd = command(dir.path());
    cmd.args(["worker", "--sim", "2", "--listen", "127.0.0.1:0"])
        .env("TOLLGATE_CLUSTER__SECRET", SECRET)
        .env("TOLLGATE_SIM__TIME_SCALE", "100");
    let worker = Proc::spawn("worker", cmd);
    let worker_url = format!("http://{}", worker.listening("worker"));
    let mut toml = format!(
        "[auth]\nhs256_secret = {{ env = \"JWT\" }}\n[redis]\nkey_prefix = \"{PREFIX}\"\n{redis_toml}\n"
    );
    for t in tenants {
        toml.push_str(&format!(
            "[[tenants]]\nid = \"{t}\"\n[[clients]]\nid = \"c-{t}\"\ntenant = \"{t}\"\nsecret = {{ env = \"C\" }}\n{client_limits}\n"
        ));
    }
    toml.push_str(&format!(
        "[[clients]]\nid = \"ops\"\ntenant = \"{}\"\nsecret = {{ env = \"C\" }}\nscopes = [\"admin\"]\n",
        tenants[0]
    ));
    let config = write(dir.path(), "gw.toml", &toml);
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
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
    .env("TOLLGATE_REDIS__CLUSTER", format!("[{}]", nodes.join(", ")))
    .env("TOLLGATE_CLUSTER__SECRET", SECRET)
    .env("JWT", "jwt-secret-of-the-cluster-tests-0123456")
    .env("C", CLIENT_SECRET);
    let gateway = Proc::spawn("gateway", cmd);
    let base = format!("http://{}", gateway.listening("gateway"));
    wait_ready(&http(), &format!("{base}/readyz")).await;
    Fleet {
        _dir: dir,
        _worker: worker,
        gateway,
        base,
    }
}

fn body() -> Value {
    json!({"messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 8})
}

/// Tokens served: (prompt, completion) of every 200 answer, and the status of each.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    requests: u64,
    prompt: u64,
    completion: u64,
}

async fn chat(http: &reqwest::Client, base: &str, token: &str) -> (u16, Value) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The usage `/v1/usage` reports for the caller's tenant, summed over days.
async fn usage_of(http: &reqwest::Client, base: &str, token: &str) -> Served {
    let v = get_json(http, &format!("{base}/v1/usage"), token).await;
    let mut s = Served::default();
    for d in v["data"].as_array().unwrap() {
        s.requests += d["requests"].as_u64().unwrap();
        s.prompt += d["prompt_tokens"].as_u64().unwrap();
        s.completion += d["completion_tokens"].as_u64().unwrap();
    }
    s
}

fn int(v: Option<redis::Value>) -> i64 {
    match v {
        Some(redis::Value::Int(n)) => n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[test]
fn check_config_takes_the_cluster_from_the_environment_and_refuses_it_beside_a_url() {
    let dir = temp_dir();
    let path = write(
        dir.path(),
        "gw.toml",
        "[auth]\nhs256_secret = \"jwt-secret-value-that-is-long-enough-0123\"\n[redis]\non_failure = \"closed\"\n",
    );
    let config = path.to_str().unwrap();
    let nodes = "[\"redis://:pw-of-the-nodes@127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]";
    let (code, out, err) = run_to_end(
        dir.path(),
        &["check-config", "--config", config],
        &[("TOLLGATE_REDIS__CLUSTER", nodes)],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["redis"]["cluster"], json!(["***", "***"]));
    assert_eq!(v["redis"]["wait_replicas"], 1);
    assert!(!out.contains("pw-of-the-nodes"));
    let (code, _, err) = run_to_end(
        dir.path(),
        &["check-config", "--config", config],
        &[
            ("TOLLGATE_REDIS__CLUSTER", nodes),
            ("TOLLGATE_REDIS__URL", "redis://127.0.0.1:6390"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("redis.cluster") && err.contains("not both"),
        "{err}"
    );
    assert!(!err.contains("pw-of-the-nodes"), "{err}");
}

#[tokio::test]
async fn a_gateway_on_a_cluster_keeps_limits_usage_audit_and_revocations_there() {
    let cluster = RedisCluster::start();
    let tenants = spread_tenants(&cluster, 3);
    let f = fleet(&cluster, &tenants, "rpm = 20", "").await;
    let http = http();
    let mut served = BTreeMap::new();
    for t in &tenants {
        let token = token(&http, &f.base, &format!("c-{t}"), CLIENT_SECRET).await;
        let answers =
            futures::future::join_all((0..50).map(|_| chat(&http, &f.base, &token))).await;
        let mut s = Served::default();
        let mut limited = 0;
        for (status, v) in answers {
            match status {
                200 => {
                    s.requests += 1;
                    s.prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
                    s.completion += v["usage"]["completion_tokens"].as_u64().unwrap();
                }
                429 => {
                    assert_eq!(v["error"]["code"], "requests_per_minute");
                    limited += 1;
                }
                other => panic!("unexpected status {other}: {v}"),
            }
        }
        let degraded = f.gateway.logged(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("redis unreachable"))
        });
        assert_eq!(
            (s.requests, limited),
            (20, 30),
            "tenant {t}: rpm exact (the limiter fell back: {degraded:?})"
        );
        // Settlement runs after the answer: poll until all of it is metered.
        let metered = eventually("usage to be metered", || {
            let (http, base, token) = (http.clone(), f.base.clone(), token.clone());
            async move {
                let u = usage_of(&http, &base, &token).await;
                (u.requests == s.requests).then_some(u)
            }
        })
        .await;
        assert_eq!(metered, s, "tenant {t}: usage is what was served");
        served.insert(t.clone(), s);
    }

    // Each tenant's state and usage are on its own primary, one slot per tenant.
    let owners: HashSet<u16> = tenants
        .iter()
        .map(|t| {
            let key = format!("{PREFIX}{{{t}}}:limits");
            let port = cluster.primary_of(&key);
            assert_eq!(int(cluster.query(port, &["EXISTS", &key])), 1);
            port
        })
        .collect();
    assert_eq!(owners.len(), 3);

    // The admin usage report scans every primary.
    let ops = token(&http, &f.base, "ops", CLIENT_SECRET).await;
    let report = get_json(&http, &format!("{}/v1/admin/usage", f.base), &ops).await;
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    for d in report["data"].as_array().unwrap() {
        *reported
            .entry(d["tenant"].as_str().unwrap().to_owned())
            .or_default() += d["requests"].as_u64().unwrap();
    }
    let want: BTreeMap<String, u64> = served
        .iter()
        .map(|(t, s)| (t.clone(), s.requests))
        .collect();
    assert_eq!(reported, want);

    // Every request left its record in the audit stream.
    let first = format!("c-{}", tenants[0]);
    eventually("the audit stream to hold every request", || {
        let (http, base, ops, first) = (http.clone(), f.base.clone(), ops.clone(), first.clone());
        async move {
            let page = get_json(
                &http,
                &format!("{base}/v1/admin/audit?client_id={first}&limit=100"),
                &ops,
            )
            .await;
            assert_eq!(page["source"], "redis");
            let chats = page["data"]
                .as_array()?
                .iter()
                .filter(|r| r["route"] == "/v1/chat/completions")
                .count();
            (chats == 50).then_some(())
        }
    })
    .await;

    // A revoked token is refused, and the revocation is in the cluster.
    let second = format!("c-{}", tenants[1]);
    let t2 = token(&http, &f.base, &second, CLIENT_SECRET).await;
    let r = http
        .post(format!("{}/oauth/revoke", f.base))
        .basic_auth(&second, Some(CLIENT_SECRET))
        .form(&[("token", &t2)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let models = http
        .get(format!("{}/v1/models", f.base))
        .bearer_auth(&t2)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    let revoked = format!("{PREFIX}{{reg}}:revoked");
    assert_eq!(
        int(cluster.query(cluster.primary_of(&revoked), &["ZCARD", &revoked])),
        1
    );
    drop(f.gateway);
}

/// What the load saw, answer by answer.
#[derive(Default, Debug)]
struct Tally {
    served: Served,
    limited: u64,
    unavailable: u64,
    /// Refused by the limit after the failover: the count came through it.
    limited_after: u64,
}

#[tokio::test]
async fn a_primary_killed_under_load_and_its_replica_promoted_over_admits_nothing_and_loses_no_usage()
 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const RPM: u64 = 300;
    let cluster = RedisCluster::start();
    let tenants = vec!["acme".to_owned()];
    let f = fleet(
        &cluster,
        &tenants,
        &format!("rpm = {RPM}"),
        "on_failure = \"closed\"",
    )
    .await;
    let http = http();
    let token = token(&http, &f.base, "c-acme", CLIENT_SECRET).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (stop, failed_over) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // Eight clients, each sending one request after another until stopped.
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (http, base, token) = (http.clone(), f.base.clone(), token.clone());
            let (tally, stop, failed_over) = (tally.clone(), stop.clone(), failed_over.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let after = failed_over.load(Ordering::Relaxed);
                    let (status, v) = chat(&http, &base, &token).await;
                    let mut t = tally.lock().unwrap();
                    match status {
                        200 => {
                            t.served.requests += 1;
                            t.served.prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
                            t.served.completion +=
                                v["usage"]["completion_tokens"].as_u64().unwrap();
                        }
                        429 => {
                            assert_eq!(v["error"]["code"], "requests_per_minute", "{v}");
                            t.limited += 1;
                            t.limited_after += u64::from(after);
                        }
                        // on_failure = "closed": refused while the slot has no primary
                        // (or one whose writes no replica has yet).
                        503 => t.unavailable += 1,
                        other => panic!("unexpected status {other}: {v}"),
                    }
                }
            })
        })
        .collect();
    // A fifth of the limit admitted: the tenant's primary dies, its replica takes over.
    eventually("the load to be admitted", || {
        let tally = tally.clone();
        async move { (tally.lock().unwrap().served.requests >= RPM / 5).then_some(()) }
    })
    .await;
    let key = format!("{PREFIX}{{acme}}:limits");
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let (dead, _) = cluster.fail_over(&key);
        // The dead node comes back empty and becomes the new primary's replica.
        cluster.restart(dead);
        cluster
    })
    .await
    .unwrap();
    failed_over.store(true, Ordering::Relaxed);
    // The load goes on until the limit refuses it again.
    eventually("the limit to refuse after the failover", || {
        let tally = tally.clone();
        async move { (tally.lock().unwrap().limited_after >= 20).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        t.served.requests <= RPM,
        "over-admission: {} admitted with rpm = {RPM} ({t:?})",
        t.served.requests
    );
    // Usage of every answered request, once: in the cluster, or metered in
    // the gateway for a settlement the cluster did not take.
    let metered = eventually("usage to be metered", || {
        let (http, base, token) = (http.clone(), f.base.clone(), token.clone());
        let want = t.served.requests;
        async move {
            let u = usage_of(&http, &base, &token).await;
            (u.requests >= want).then_some(u)
        }
    })
    .await;
    assert_eq!(metered, t.served, "usage is what was served ({t:?})");
    drop(cluster);
}
