//! Helpers of the observability tests: OTLP receivers inside the test process
//! (gRPC by `fake-opentelemetry-collector`, HTTP/protobuf by a small server
//! of our own), a gateway and a worker started as real processes with a
//! chosen config, the audit file, and headless Chromium.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_opentelemetry_collector::FakeCollectorServer;
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Proc, command, eventually, http, temp_dir, token, wait_ready, write};

pub const CLUSTER_SECRET: &str = "cluster-secret-for-observability-tests-0123";
pub const JWT_SECRET: &str = "jwt-secret-for-the-observability-tests-0123456";
/// Clients of the test config: (id, secret).
pub const READER: (&str, &str) = ("reader", "reader-secret-planted-7f3a9c2e1b");
pub const BOSS: (&str, &str) = ("boss", "boss-secret-planted-5d8e0a4f6c");
pub const SLOW: (&str, &str) = ("slow", "slow-secret-planted-2b7c9e1d3a");
pub const MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

/// One exported span, as either receiver gives it.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: String,
    /// Values as text (arrays joined by `,`).
    pub attributes: BTreeMap<String, String>,
    /// Each value's OTLP type as the receiver decoded it (`IntValue`, `StringValue`, …).
    pub kinds: BTreeMap<String, String>,
    /// Every attribute and event as the receiver saw it, for secret scans.
    pub raw: String,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The OTLP type of an `AnyValue` in its Debug form (the first one named).
fn value_kind(debug: &str) -> String {
    [
        "StringValue(",
        "IntValue(",
        "BoolValue(",
        "DoubleValue(",
        "ArrayValue(",
    ]
    .into_iter()
    .filter_map(|k| debug.find(k).map(|i| (i, k)))
    .min()
    .map_or_else(String::new, |(_, k)| k.trim_end_matches('(').to_owned())
}

/// An OTLP `AnyValue` in its Debug form (how the fake collector hands
/// attributes over) reduced to its text.
fn value_text(debug: &str) -> String {
    let mut out = Vec::new();
    for kind in ["StringValue(\"", "IntValue(", "BoolValue(", "DoubleValue("] {
        let mut rest = debug;
        while let Some(i) = rest.find(kind) {
            rest = &rest[i + kind.len()..];
            let end = if kind.ends_with('"') {
                // Up to the closing quote that is not escaped.
                let mut j = 0;
                let b = rest.as_bytes();
                while j < b.len() && !(b[j] == b'"' && (j == 0 || b[j - 1] != b'\\')) {
                    j += 1;
                }
                j
            } else {
                rest.find(')').unwrap_or(rest.len())
            };
            out.push(rest[..end].replace("\\\"", "\""));
            rest = &rest[end..];
        }
    }
    out.join(",")
}

/// The gRPC receiver.
pub struct Collector {
    server: FakeCollectorServer,
    pub spans: Vec<Span>,
}

impl Collector {
    pub async fn start() -> Collector {
        Collector {
            server: FakeCollectorServer::start().await.unwrap(),
            spans: Vec::new(),
        }
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// Receives (and forgets) spans for ever, so the exporter never waits on
    /// this receiver (the benchmark's use).
    pub fn discard(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let _ = self
                    .server
                    .exported_spans(1_000, Duration::from_millis(100))
                    .await;
            }
        })
    }

    async fn drain(&mut self, wait: Duration) {
        let got = self.server.exported_spans(1, wait).await;
        for s in got {
            let raw = format!("{s:?}");
            self.spans.push(Span {
                trace_id: s.trace_id,
                span_id: s.span_id,
                parent_span_id: s.parent_span_id,
                name: s.name,
                kind: s.kind,
                attributes: s
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), value_text(v)))
                    .collect(),
                kinds: s
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), value_kind(v)))
                    .collect(),
                raw,
            });
        }
    }

    /// Collects spans until `done` holds for what has arrived.
    pub async fn until(&mut self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = std::time::Instant::now() + super::PATIENCE;
        loop {
            self.drain(Duration::from_millis(50)).await;
            if done(&self.spans) {
                return self.spans.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "spans never showed {what}; got {:#?}",
                self.spans
            );
        }
    }
}

/// A minimal OTLP/HTTP (protobuf) receiver: `POST /v1/traces`.
pub struct HttpCollector {
    pub addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpCollector {
    pub async fn start() -> HttpCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_otlp_http(conn, store.clone()));
            }
        });
        HttpCollector { addr, spans, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        eventually(what, || {
            let spans = self.spans.lock().unwrap().clone();
            let ok = done(&spans);
            async move { ok.then_some(spans) }
        })
        .await
    }
}

/// Reads HTTP/1.1 requests off one connection (keep-alive) and decodes each body.
async fn serve_otlp_http(mut conn: tokio::net::TcpStream, store: Arc<Mutex<Vec<Span>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        assert!(
            head.starts_with("post /v1/traces "),
            "unexpected OTLP request: {head}"
        );
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let mut got = Vec::new();
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            got.push(Span {
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent_span_id: hex(&s.parent_span_id),
                name: s.name.clone(),
                kind: format!("{:?}", s.kind()),
                attributes: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), value_text(&format!("{:?}", kv.value))))
                    .collect(),
                kinds: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), value_kind(&format!("{:?}", kv.value))))
                    .collect(),
                raw: format!("{:?} {:?}", s.attributes, s.events),
            });
        }
        store.lock().unwrap().extend(got);
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// The spans of one trace, and lookups by name.
pub struct Trace(pub Vec<Span>);

impl Trace {
    pub fn of(spans: &[Span], trace_id: &str) -> Trace {
        Trace(
            spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect(),
        )
    }

    pub fn named(&self, name: &str) -> &Span {
        self.0
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span `{name}` in {:#?}", self.0))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }

    /// Asserts `child` is a child of `parent`.
    pub fn parent_of(&self, parent: &str, child: &str) {
        let p = self.named(parent);
        let c = self.named(child);
        assert_eq!(
            c.parent_span_id, p.span_id,
            "`{child}` should be a child of `{parent}`"
        );
    }
}

/// A gateway and one worker (`--sim 1`), separate processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub gateway: Proc,
    pub worker: Proc,
    pub base: String,
    pub worker_url: String,
    pub redis: Option<tollgate_shared::testing::RedisServer>,
}

/// How to start a [`Cluster`].
#[derive(Default)]
pub struct Spec<'a> {
    /// OTLP endpoint and protocol for both processes.
    pub otlp: Option<(String, &'a str)>,
    pub redis: bool,
    /// More TOML for the gateway's config.
    pub toml: &'a str,
    /// Environment for both processes.
    pub env: Vec<(&'a str, String)>,
}

const BASE_TOML: &str = r#"
[auth]
hs256_secret = { env = "JWT" }
[gateway]
max_body_bytes = 65536
[scheduler]
queue_timeout_secs = 1
[telemetry]
audit_log = "audit.jsonl"
[[tenants]]
id = "acme"
priority = "high"
[[tenants]]
id = "tight"
priority = "low"
rpm = 1
[[clients]]
id = "reader"
tenant = "acme"
secret = { env = "C_READER" }
scopes = ["infer"]
[[clients]]
id = "boss"
tenant = "acme"
secret = { env = "C_BOSS" }
scopes = ["infer", "admin"]
[[clients]]
id = "slow"
tenant = "tight"
secret = { env = "C_SLOW" }
scopes = ["infer"]
"#;

fn observed(cmd: &mut std::process::Command, spec: &Spec<'_>) {
    cmd.env("TOLLGATE_CLUSTER__SECRET", CLUSTER_SECRET)
        // Spans leave within 50 ms instead of the SDK's 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    if let Some((endpoint, protocol)) = &spec.otlp {
        cmd.env("TOLLGATE_TELEMETRY__OTLP_ENDPOINT", endpoint)
            .env("TOLLGATE_TELEMETRY__OTLP_PROTOCOL", protocol);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
}

impl Cluster {
    pub async fn start(spec: Spec<'_>) -> Cluster {
        let dir = temp_dir();
        let redis = spec
            .redis
            .then(tollgate_shared::testing::RedisServer::start);
        let worker = Self::worker(dir.path(), &spec, &[]);
        let worker_url = format!("http://{}", worker.listening("worker"));
        let mut toml = format!("{BASE_TOML}\n{}", spec.toml);
        if let Some(r) = &redis {
            toml = format!(
                "[redis]\nurl = \"{}\"\nkey_prefix = \"obs:\"\n{toml}",
                r.url()
            );
        }
        let config = write(dir.path(), "gateway.toml", &toml);
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
        .env("JWT", JWT_SECRET)
        .env("C_READER", READER.1)
        .env("C_BOSS", BOSS.1)
        .env("C_SLOW", SLOW.1);
        observed(&mut cmd, &spec);
        let gateway = Proc::spawn("gateway", cmd);
        let base = format!("http://{}", gateway.listening("gateway"));
        wait_ready(&http(), &format!("{base}/readyz")).await;
        Cluster {
            dir,
            gateway,
            worker,
            base,
            worker_url,
            redis,
        }
    }

    /// A `tollgate worker --sim 1` (plus `args`) in `dir`.
    pub fn worker(dir: &Path, spec: &Spec<'_>, args: &[&str]) -> Proc {
        let mut cmd = command(dir);
        cmd.args([
            "worker",
            "--sim",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--id",
            "w1",
        ])
        .args(args);
        observed(&mut cmd, spec);
        Proc::spawn("worker", cmd)
    }

    pub async fn token(&self, client: (&str, &str)) -> String {
        token(&http(), &self.base, client.0, client.1).await
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }
}

/// The audit file's records; every line must be one JSON object.
pub fn audit_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not one JSON record per line ({e}): {l:?}"))
        })
        .collect()
}

/// Whether `r` is a request's record: `request`, or the token event that
/// stands for a token endpoint's request (`token_issued`, `token_denied`, …).
pub fn is_request_record(r: &Value) -> bool {
    r["event"]
        .as_str()
        .is_some_and(|e| e == "request" || e.starts_with("token_"))
}

/// The records of the audit file that are a request's, by request id, once
/// each of `ids` has one.
pub async fn request_records(path: &Path, ids: &[String]) -> BTreeMap<String, Vec<Value>> {
    eventually("a request record for every request", || {
        let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in audit_records(path).into_iter().filter(is_request_record) {
            by_id
                .entry(r["request_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(r);
        }
        let all = ids.iter().all(|id| by_id.contains_key(id));
        async move { all.then_some(by_id) }
    })
    .await
}

/// Debian's `chromium`, which `./scripts/test` installs.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = std::process::Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!(
        "headless Chromium is needed (Debian's `chromium`): run ./scripts/test, which installs it"
    );
}

/// Runs headless Chromium on `url` with `args`; returns its stdout.
pub fn headless(url: &str, args: &[&str]) -> String {
    let profile = temp_dir();
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
