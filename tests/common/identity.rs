//! Harness for the identity tests: a real redis-server, one `tollgate worker
//! --sim 1`, and gateway replicas sharing one config and one Redis; the
//! PyJWT forging script; small request helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tollgate_shared::testing::RedisServer;

use super::{Proc, command, eventually, http, temp_dir, wait_ready, write};

pub const CLUSTER_SECRET: &str = "cluster-secret-for-identity-tests-0123";
pub const JWT_SECRET: &str = "jwt-secret-for-the-identity-tests-0123456789";

/// Clients every identity cluster starts with: (id, secret, tenant, scopes).
pub const OPS: (&str, &str) = ("ops", "ops-secret-for-identity-tests-0123");
pub const APP: (&str, &str) = ("app", "app-secret-for-identity-tests-0123");
pub const GX: (&str, &str) = ("gx", "globex-secret-for-identity-tests-01");
/// A secret with characters that HTTP Basic needs form-urlencoded (RFC 6749 §2.3.1).
pub const ODD: (&str, &str) = ("odd.client", "p:a%s+s w/o?rd&=0123456789");

pub fn registry_toml() -> String {
    format!(
        r#"[[tenants]]
id = "acme"
priority = "high"
[[tenants]]
id = "globex"
[[clients]]
id = "{}"
tenant = "acme"
secret = "{}"
scopes = ["infer", "admin", "dev"]
[[clients]]
id = "{}"
tenant = "acme"
secret = "{}"
scopes = ["infer"]
[[clients]]
id = "{}"
tenant = "globex"
secret = "{}"
scopes = ["infer"]
[[clients]]
id = "{}"
tenant = "globex"
secret = {{ env = "ODD_SECRET" }}
scopes = ["infer"]
"#,
        OPS.0, OPS.1, APP.0, APP.1, GX.0, GX.1, ODD.0
    )
}

/// The `[auth]` section for HS256 with the test secret.
pub fn hs256_auth() -> String {
    format!("hs256_secret = \"{JWT_SECRET}\"")
}

/// A token's JOSE header.
pub fn jose_header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

/// Redis, a worker, and gateway replicas; all killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub redis: RedisServer,
    pub worker: Proc,
    pub worker_url: String,
    pub gateways: Vec<Proc>,
    pub bases: Vec<String>,
    pub http: reqwest::Client,
    /// Replicas started so far (names their audit logs).
    started: usize,
}

impl Cluster {
    /// `auth` is the body of the `[auth]` section.
    pub async fn start(replicas: usize, auth: &str) -> Cluster {
        let dir = temp_dir();
        let redis = RedisServer::start();
        let mut cmd = command(dir.path());
        cmd.args(["worker", "--sim", "1", "--listen", "127.0.0.1:0"])
            .env("TOLLGATE_CLUSTER__SECRET", CLUSTER_SECRET)
            .env("TOLLGATE_SIM__TIME_SCALE", "100");
        let worker = Proc::spawn("worker", cmd);
        let worker_url = format!("http://{}", worker.listening("worker"));
        let mut c = Cluster {
            dir,
            redis,
            worker,
            worker_url,
            gateways: Vec::new(),
            bases: Vec::new(),
            http: http(),
            started: 0,
        };
        c.write_config(auth);
        for _ in 0..replicas {
            c.add_gateway().await;
        }
        c
    }

    pub fn write_config(&self, auth: &str) -> PathBuf {
        write(
            self.dir.path(),
            "gateway.toml",
            &format!(
                "[auth]\n{auth}\n[redis]\nurl = \"{}\"\nkey_prefix = \"id:\"\n{}",
                self.redis.url(),
                registry_toml()
            ),
        )
    }

    /// Starts one more replica with the current config; its audit log is `audit-N.jsonl`.
    pub async fn add_gateway(&mut self) -> String {
        let n = self.started;
        self.started += 1;
        let mut cmd = command(self.dir.path());
        cmd.args([
            "gateway",
            "--config",
            "gateway.toml",
            "--listen",
            "127.0.0.1:0",
            "--worker",
            &self.worker_url,
        ])
        .env("TOLLGATE_CLUSTER__SECRET", CLUSTER_SECRET)
        .env("TOLLGATE_TELEMETRY__AUDIT_LOG", format!("audit-{n}.jsonl"))
        .env("ODD_SECRET", ODD.1);
        let p = Proc::spawn(&format!("gateway{n}"), cmd);
        let base = format!("http://{}", p.listening("gateway"));
        wait_ready(&self.http, &format!("{base}/readyz")).await;
        self.gateways.push(p);
        self.bases.push(base.clone());
        base
    }

    /// Stops replica `i` (SIGKILL) and forgets it.
    pub fn stop_gateway(&mut self, i: usize) {
        drop(self.gateways.remove(i));
        self.bases.remove(i);
    }

    /// Every audit record replica `i` wrote so far.
    pub fn audit(&self, i: usize) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join(format!("audit-{i}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The raw text of every audit file.
    pub fn audit_text(&self) -> String {
        (0..self.started)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("audit-{i}.jsonl")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// A token request by HTTP Basic (id and secret form-urlencoded first).
pub async fn token_request(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
    scope: Option<&str>,
) -> reqwest::Response {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    http.post(format!("{base}/oauth/token"))
        .basic_auth(enc(id), Some(enc(secret)))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// A token, waiting until the replica knows the client (a change elsewhere
/// reaches it within a sync) and its registry is fresh.
pub async fn token_for(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
    scope: Option<&str>,
) -> String {
    eventually(&format!("a token for {id} from {base}"), || async move {
        let r = token_request(http, base, id, secret, scope).await;
        if r.status() != 200 {
            return None;
        }
        let v: Value = r.json().await.unwrap();
        Some(v["access_token"].as_str().unwrap().to_owned())
    })
    .await
}

/// Status, headers and JSON body (Null when there is none).
pub async fn answer(r: reqwest::Response) -> (u16, HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// `GET /v1/models` with `token`: the cheapest call that needs scope `infer`.
pub async fn models(http: &reqwest::Client, base: &str, token: &str) -> (u16, HeaderMap, Value) {
    answer(
        http.get(format!("{base}/v1/models"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Polls until `GET /v1/models` with `token` answers `status` on `base`.
pub async fn models_become(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    status: u16,
) -> (HeaderMap, Value) {
    eventually(
        &format!("{base}/v1/models to answer {status}"),
        || async move {
            let (s, h, v) = models(http, base, token).await;
            (s == status).then_some((h, v))
        },
    )
    .await
}

pub fn www_authenticate(h: &HeaderMap) -> String {
    h.get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Runs `tests/attacks/forge.py ARGS…` and returns its stdout.
pub fn forge(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/forge.py");
    let out = Command::new(super::python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "forge.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Key pairs (`rs`, `es`, `ed`, `attacker`) as PEM files in `dir`, made by `cryptography`.
pub fn forge_keys(dir: &Path) {
    forge(&["keys", dir.to_str().unwrap()]);
}
