//! Tollgate across hosts: Redis, two gateways and two workers each in a
//! network namespace of its own with its own address on a private LAN, run
//! with the Kubernetes configs of `deploy/k8s/base` and the environment the
//! pods give them. Traffic enters through both gateways; one worker is killed
//! mid-stream. So nothing may assume loopback between roles or a shared
//! filesystem (each process has its own directory and copy of its config).
//!
//! Needs root and iproute2 (`ip netns`). A developer who is not root gets
//! a skip that says so; as root, and under CI, it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::deploy::{Lan, repo};
use common::fleet::{CLUSTER_SECRET, End, Worker, open_stream, wait_logged};
use common::*;
use futures::future::join_all;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JWT_SECRET: &str = "jwt-secret-for-the-multihost-test-0123456789";
const OPS_SECRET: &str = "ops-client-secret-for-the-multihost-test-0123";
const REDIS_PASSWORD: &str = "redis-password-for-the-multihost-test";
/// Prompt words of a long stream; with slow echo shards it runs for seconds.
const LONG: usize = 600;

/// A host's own directory with its own copy of its config.
fn host_dir(root: &Path, host: &str, config: &str) -> std::path::PathBuf {
    let dir = root.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo().join("deploy/k8s/base").join(config);
    std::fs::copy(src, dir.join(config)).unwrap();
    dir
}

/// Polls Redis at `addr` from the root namespace until it answers PING.
async fn wait_redis(addr: &str) {
    eventually("redis to answer on the LAN", || async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let cmd = format!("AUTH {REDIS_PASSWORD}\r\nPING\r\n");
        s.write_all(cmd.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = String::new();
        while !got.contains("PONG") {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Some(())
    })
    .await;
}

/// Requests the caller's tenant made today and before, per `GET /v1/usage`.
async fn usage_requests(http: &reqwest::Client, base: &str, token: &str) -> u64 {
    let v: Value = http
        .get(format!("{base}/v1/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["requests"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn gateways_and_workers_on_separate_hosts_serve_through_a_dead_worker() {
    let Some(lan) = Lan::create(&["redis", "gw1", "gw2", "w1", "w2"]) else {
        return;
    };
    let root = temp_dir();
    let http = http();
    let redis_url = format!("redis://:{REDIS_PASSWORD}@{}:6379/0", lan.addr("redis"));

    let mut cmd = lan.command("redis", "redis-server");
    cmd.args(["--bind", &lan.addr("redis"), "--port", "6379"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--requirepass", REDIS_PASSWORD]);
    let _redis = Proc::spawn("redis", cmd);
    wait_redis(&format!("{}:6379", lan.addr("redis"))).await;

    // As on Kubernetes: the shipped configs, secrets and addresses from the
    // environment; spans to a collector that is not there.
    let common_env = [
        ("TOLLGATE_CLUSTER_SECRET", CLUSTER_SECRET.to_owned()),
        ("TOLLGATE_REDIS__URL", redis_url.clone()),
        (
            "TOLLGATE_TELEMETRY__OTLP_ENDPOINT",
            "http://127.0.0.1:9".to_owned(),
        ),
    ];
    let worker = |host: &str| {
        let dir = host_dir(root.path(), host, "worker.toml");
        let mut cmd = lan.tollgate(host, &dir);
        cmd.args(["worker", "--config", "worker.toml", "--sim", "2"]);
        for (k, v) in &common_env {
            cmd.env(k, v);
        }
        let url = format!("http://{}:9100", lan.addr(host));
        // The pod's name and IP; two slots a shard, slow echo shards.
        cmd.env("TOLLGATE_WORKER__ID", host)
            .env("TOLLGATE_WORKER__ADVERTISE_URL", &url)
            .env("TOLLGATE_WORKER__MAX_INFLIGHT_PER_SHARD", "2")
            .env("TOLLGATE_SIM__TIME_SCALE", "0.5")
            .env("TOLLGATE_SIM__ECHO", "true");
        let proc = Proc::spawn(host, cmd);
        proc.listening("worker");
        Worker {
            proc,
            id: host.to_owned(),
            url,
        }
    };
    let gateway = |host: &str| {
        let dir = host_dir(root.path(), host, "gateway.toml");
        let mut cmd = lan.tollgate(host, &dir);
        cmd.args(["gateway", "--config", "gateway.toml"]);
        for (k, v) in &common_env {
            cmd.env(k, v);
        }
        cmd.env("TOLLGATE_JWT_SECRET", JWT_SECRET)
            .env("OPS_CLIENT_SECRET", OPS_SECRET);
        let proc = Proc::spawn(host, cmd);
        proc.listening("gateway");
        (proc, format!("http://{}:8080", lan.addr(host)))
    };
    let w1 = worker("w1");
    let w2 = worker("w2");
    let (gw1, base1) = gateway("gw1");
    let (gw2, base2) = gateway("gw2");
    for (gw, base) in [(&gw1, &base1), (&gw2, &base2)] {
        for w in [&w1, &w2] {
            wait_logged(gw, &format!("{} up", w.url), |f| {
                f["message"] == "worker up" && f["worker"] == w.url.as_str()
            })
            .await;
        }
        wait_ready(&http, &format!("{base}/readyz")).await;
    }

    // A token from one replica is good at the other: one signing secret, one
    // registry in Redis.
    let t = token(&http, &base1, "ops", OPS_SECRET).await;
    let workers: Value = http
        .get(format!("{base2}/v1/admin/workers"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for w in [&w1, &w2] {
        assert!(
            workers.to_string().contains(&w.url),
            "gw2 knows {} by its LAN address: {workers}",
            w.url
        );
    }

    // Eight long streams, half through each gateway, fill both workers' slots.
    let streams = join_all((0..8).map(|i| {
        let base = if i % 2 == 0 { &base1 } else { &base2 };
        open_stream(&http, base, &t, LONG)
    }))
    .await;
    assert_eq!(
        (w1.inflight(&http).await, w2.inflight(&http).await),
        (4, 4),
        "every slot of both workers is in use"
    );
    // These wait in gw2's queue.
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let (base, http, t) = (base2.clone(), http.clone(), t.clone());
            tokio::spawn(async move { open_stream(&http, &base, &t, 40).await.finish().await })
        })
        .collect();

    w1.proc.signal("KILL");

    let ends: Vec<_> = join_all(streams.into_iter().map(|s| s.finish())).await;
    let errors = ends.iter().filter(|(e, _)| *e == End::Error).count();
    let done = ends.iter().filter(|(e, _)| *e == End::Done).count();
    assert_eq!(
        (errors, done),
        (4, 4),
        "the killed worker's streams end with an error event, the others cleanly: {:?}",
        ends.iter().map(|(e, _)| e).collect::<Vec<_>>()
    );
    for q in queued {
        let (end, body) = q.await.unwrap();
        assert_eq!(end, End::Done, "a queued request failed: {body}");
    }
    for base in [&base1, &base2, &base1, &base2] {
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&t)
            .json(&serde_json::json!({"messages": [{"role": "user", "content": "after the loss"}], "max_tokens": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Both replicas drop the dead worker once its registration expires.
    for gw in [&gw1, &gw2] {
        wait_logged(gw, "the dead worker to leave", |f| {
            f["message"] == "worker left the registry" && f["worker"] == w1.url.as_str()
        })
        .await;
    }
    // Usage is metered in Redis: either replica reports what both served
    // (8 streams, 2 queued, 4 after the loss).
    eventually("usage of both replicas in one place", || async {
        (usage_requests(&http, &base2, &t).await == 14).then_some(())
    })
    .await;
}
