//! A fleet on loopback for cluster tests: a real redis-server, a gateway
//! process finding workers through it, worker processes (`tollgate worker`),
//! and standalone simulators. Everything is killed on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_shared::store::Redis;
use tollgate_shared::testing::RedisServer;
use tollgate_shared::worker_api::registry;

use super::{Proc, command, http, sse_data, token, wait_ready, write};

pub const CLUSTER_SECRET: &str = "cluster-secret-for-fleet-tests-0123456789";
const JWT_SECRET: &str = "jwt-secret-for-the-fleet-tests-0123456789";
const CLIENT_ID: &str = "c1";
const CLIENT_SECRET: &str = "client-one-secret-0123456789";
/// A hang guard for one streamed answer, not a timing assertion.
pub const STREAM_GUARD: Duration = Duration::from_secs(60);

/// Redis and the temp dir every process of one test shares.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub redis: RedisServer,
    pub http: reqwest::Client,
}

/// A `tollgate worker` process.
pub struct Worker {
    pub proc: Proc,
    pub id: String,
    pub url: String,
}

/// A `tollgate gateway` process.
pub struct Gateway {
    pub proc: Proc,
    pub base: String,
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet {
            dir: super::temp_dir(),
            redis: RedisServer::start(),
            http: http(),
        }
    }

    fn env<'a>(&'a self, cmd: &mut std::process::Command, redis_url: &'a str) {
        cmd.env("TOLLGATE_CLUSTER__SECRET", CLUSTER_SECRET)
            .env("TOLLGATE_REDIS__URL", redis_url);
    }

    /// Starts `tollgate worker --id ID ARGS…` registering in this fleet's Redis.
    pub fn worker(&self, id: &str, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut cmd = command(self.dir.path());
        cmd.args(["worker", "--listen", "127.0.0.1:0", "--id", id])
            .args(args);
        let redis_url = self.redis.url();
        self.env(&mut cmd, &redis_url);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(&format!("worker {id}"), cmd);
        let url = format!("http://{}", proc.listening("worker"));
        Worker {
            proc,
            id: id.to_owned(),
            url,
        }
    }

    /// Starts `tollgate sim ARGS…` on a free port (or `--port` in `args`).
    pub fn sim(&self, name: &str, args: &[&str]) -> (Proc, String) {
        let mut cmd = command(self.dir.path());
        cmd.arg("sim");
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.args(args);
        let p = Proc::spawn(name, cmd);
        let url = format!("http://{}", p.listening("sim"));
        (p, url)
    }

    /// Starts a gateway finding workers in Redis (plus `static_workers`).
    pub fn gateway(&self, static_workers: &[&str]) -> Gateway {
        let config = write(
            self.dir.path(),
            "gateway.toml",
            &format!(
                "[auth]\nhs256_secret = {{ env = \"JWT\" }}\n[[tenants]]\nid = \"acme\"\n[[clients]]\nid = \"{CLIENT_ID}\"\ntenant = \"acme\"\nscopes = [\"infer\", \"admin\"]\nsecret = {{ env = \"C1\" }}\n"
            ),
        );
        let mut cmd = command(self.dir.path());
        cmd.args([
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        for w in static_workers {
            cmd.args(["--worker", w]);
        }
        let redis_url = self.redis.url();
        self.env(&mut cmd, &redis_url);
        cmd.env("JWT", JWT_SECRET).env("C1", CLIENT_SECRET);
        let proc = Proc::spawn("gateway", cmd);
        let base = format!("http://{}", proc.listening("gateway"));
        Gateway { proc, base }
    }

    /// A handle on this fleet's Redis, under the default key prefix.
    pub fn store(&self) -> Redis {
        Redis::new(&self.redis.config("tollgate:")).unwrap()
    }

    /// Worker `id`'s registration as Redis holds it now.
    pub async fn registration(&self, id: &str) -> Option<Value> {
        let redis = self.store();
        let v: Option<String> = redis
            .query(redis::cmd("GET").arg(redis.key(&registry::key(id))))
            .await
            .unwrap();
        v.map(|v| serde_json::from_str(&v).unwrap())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Worker {
    /// The worker's `/internal/v1/load` report.
    pub async fn load(&self, http: &reqwest::Client) -> Option<Value> {
        let r = http
            .get(format!("{}/internal/v1/load", self.url))
            .bearer_auth(CLUSTER_SECRET)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Requests this worker has in flight, over all its shards.
    pub async fn inflight(&self, http: &reqwest::Client) -> u64 {
        let Some(load) = self.load(http).await else {
            return 0;
        };
        load["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["inflight"].as_u64().unwrap())
            .sum()
    }
}

impl Gateway {
    pub async fn token(&self, http: &reqwest::Client) -> String {
        token(http, &self.base, CLIENT_ID, CLIENT_SECRET).await
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) {
        wait_ready(http, &format!("{}/readyz", self.base)).await;
    }

    /// Waits until the gateway has polled `worker` successfully.
    pub async fn wait_worker_up(&self, worker_url: &str) {
        wait_logged(&self.proc, &format!("{worker_url} up"), |f| {
            f["message"] == "worker up" && f["worker"] == worker_url
        })
        .await;
    }

    /// `/v1/admin/workers`: this gateway's view of its workers.
    pub async fn workers(&self, http: &reqwest::Client, token: &str) -> Value {
        super::get_json(http, &format!("{}/v1/admin/workers", self.base), token).await
    }

    /// Starts a streamed chat completion; see [`open_stream`].
    pub async fn open_stream(&self, http: &reqwest::Client, token: &str, words: usize) -> Stream {
        open_stream(http, &self.base, token, words).await
    }

    /// A non-streamed chat completion; returns its status and body.
    pub async fn chat(&self, http: &reqwest::Client, token: &str, max_tokens: u32) -> (u16, Value) {
        let r = http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(token)
            .json(&json!({"messages": [{"role": "user", "content": format!("{} hello there", unique_word())}], "max_tokens": max_tokens}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A word no other request of this test process starts with. Identical
/// prompts share a prefix, and the scheduler keeps a shared prefix on the
/// shard that served it last; these tests want the load-aware spread instead.
fn unique_word() -> String {
    static NTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "req{}",
        NTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Starts a streamed chat completion at the gateway `base` and returns it
/// once its first content token has arrived. The prompt is `words` words and
/// `max_tokens` is `words` too: with `--echo` shards, the answer's length.
pub async fn open_stream(http: &reqwest::Client, base: &str, token: &str, words: usize) -> Stream {
    let prompt = std::iter::once(unique_word())
        .chain((1..words).map(|i| format!("w{i}")))
        .collect::<Vec<_>>()
        .join(" ");
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": words,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = Stream {
        inner: Box::pin(futures::StreamExt::map(resp.bytes_stream(), |c| {
            c.map(|b| b.to_vec())
        })),
        body: String::new(),
    };
    while !s.body.contains("\"content\":\"") || sse_data(&s.body).len() < 2 {
        let chunk = tokio::time::timeout(STREAM_GUARD, futures::StreamExt::next(&mut s.inner))
            .await
            .expect("no first token")
            .expect("stream ended before its first token")
            .unwrap();
        s.body.push_str(&String::from_utf8_lossy(&chunk));
    }
    s
}

/// Waits (polling) until `proc` has logged a line whose fields satisfy `pred`.
pub async fn wait_logged(proc: &Proc, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    super::eventually(what, || {
        let found = proc.logged(&pred).into_iter().next();
        async move { found }
    })
    .await
}

/// A streamed answer being read.
pub struct Stream {
    inner: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    pub body: String,
}

/// How a streamed answer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `data: [DONE]` after a last chunk that is not an error.
    Done,
    /// The last event is an error event and no `[DONE]` follows.
    Error,
    /// Anything else (the test fails on it).
    Other(String),
}

impl Stream {
    /// Reads on until one more content token arrives; false if the stream
    /// ended (or failed) first.
    pub async fn more(&mut self) -> bool {
        let seen = self.body.matches("\"content\":\"").count();
        loop {
            let next =
                tokio::time::timeout(STREAM_GUARD, futures::StreamExt::next(&mut self.inner))
                    .await
                    .expect("the stream hung");
            match next {
                Some(Ok(c)) => self.body.push_str(&String::from_utf8_lossy(&c)),
                _ => return false,
            }
            if self.body.contains("[DONE]") || self.body.contains("{\"error\"") {
                return false;
            }
            if self.body.matches("\"content\":\"").count() > seen {
                return true;
            }
        }
    }

    /// Reads the stream to its end (bounded by [`STREAM_GUARD`], a hang guard).
    pub async fn finish(mut self) -> (End, String) {
        let read = async {
            while let Some(chunk) = futures::StreamExt::next(&mut self.inner).await {
                match chunk {
                    Ok(c) => self.body.push_str(&String::from_utf8_lossy(&c)),
                    // The gateway ended the connection badly: visible as `Other`.
                    Err(_) => break,
                }
            }
        };
        tokio::time::timeout(STREAM_GUARD, read)
            .await
            .expect("the stream hung");
        let data = sse_data(&self.body);
        let end = match data.last().map(String::as_str) {
            Some("[DONE]") if !data.iter().any(|d| d.starts_with("{\"error\"")) => End::Done,
            Some(last) if last.starts_with("{\"error\"") => End::Error,
            _ => End::Other(
                self.body
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect(),
            ),
        };
        (end, self.body)
    }
}
