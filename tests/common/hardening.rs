//! Harness for the hardening tests: raw TCP exchanges (for what an HTTP client
//! library would refuse to send, or to read slowly or not at all), a
//! `tollgate up` from a config file of our own (several tenants, TLS), and
//! small request helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{PATIENCE, Proc, command, http, wait_ready};

/// The served model's name.
pub const MODEL: &str = "Qwen/Qwen2.5-7B-Instruct";

/// The example deny list of CONTRACT §2, as a `[guardrails]` TOML line.
pub const CONTRACT_DENY_PATTERNS: &str = r#"deny_patterns = ["(?i)system:", "(?i)<script>", "(?i)root password", "print\\(", "os\\.", "exec\\("]"#;

/// Two tenants with one client each (secrets are test-only literals).
pub const TWO_TENANTS: &str = r#"
[[tenants]]
id = "alpha"
[[tenants]]
id = "beta"
[[clients]]
id = "alpha-app"
tenant = "alpha"
secret = "alpha-secret-0123456789abcdef"
[[clients]]
id = "beta-app"
tenant = "beta"
secret = "beta-secret-0123456789abcdef"
"#;

pub const ALPHA: (&str, &str) = ("alpha-app", "alpha-secret-0123456789abcdef");
pub const BETA: (&str, &str) = ("beta-app", "beta-secret-0123456789abcdef");

pub fn chat_url(base: &str) -> String {
    format!("{base}/v1/chat/completions")
}

/// A one-message chat asking for one token.
pub fn user(text: &str) -> Value {
    serde_json::json!({"messages": [{"role": "user", "content": text}], "max_tokens": 1})
}

/// A file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `tollgate up --config <file>` with `extra` arguments and `env`; returns the
/// process and the gateway's address once `/readyz` answers over `scheme`.
pub async fn up_config(
    dir: &Path,
    config: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    client: &reqwest::Client,
    scheme: &str,
) -> (Proc, String) {
    let path = super::write(dir, "tollgate.toml", config);
    let mut cmd = command(dir);
    cmd.args(["up", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc::spawn("up", cmd);
    let addr = proc.listening("gateway");
    let host = if scheme == "https" {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let base = format!("{scheme}://{host}");
    wait_ready(client, &format!("{base}/readyz")).await;
    (proc, base)
}

/// A client that trusts only the test certificate (tests/fixtures/tls).
pub fn tls_client() -> reqwest::Client {
    let pem = std::fs::read(fixture("tls/cert.pem")).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

/// POSTs `body` as JSON with a bearer token; returns the status and JSON answer.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POSTs raw bytes as `application/json` (bodies serde would never write).
pub async fn post_raw(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The error `code` of an OpenAI-shaped error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A raw HTTP/1.x connection.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(base: &str) -> Raw {
        let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until the server closes the connection; panics if it does not
    /// within `PATIENCE`.
    pub fn read_to_close(&mut self) -> String {
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => break,
                Err(e) => panic!(
                    "the server did not close the connection ({e}); got so far:\n{}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until `marker` has arrived (at most `PATIENCE`); returns what came.
    pub fn read_until(&mut self, marker: &str) -> String {
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&out).contains(marker) {
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed before {marker:?}");
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A slowloris client: sends `head`, then one more header line every
    /// `pace` until the server closes the connection. Returns the bytes sent
    /// and what the server answered.
    pub fn drip_until_closed(&mut self, head: &[u8], pace: Duration) -> (usize, String) {
        let deadline = Instant::now() + PATIENCE;
        let mut sent = head.len();
        let mut answer = Vec::new();
        self.stream.write_all(head).unwrap();
        // The read timeout paces the drip: this is the slow client itself.
        self.stream.set_read_timeout(Some(pace)).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            assert!(
                Instant::now() < deadline,
                "a slow head was never cut off ({sent} bytes sent)"
            );
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            let line = b"X-Drip: a\r\n";
            if self.stream.write_all(line).is_err() {
                break;
            }
            sent += line.len();
        }
        (sent, String::from_utf8_lossy(&answer).into_owned())
    }
}

/// The status codes of every response in a raw HTTP/1.x byte stream.
pub fn statuses(text: &str) -> Vec<u16> {
    text.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 ") || l.starts_with("HTTP/1.0 "))
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect()
}

/// A POST as raw bytes with a bearer token and the given body.
pub fn raw_post(path: &str, token: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `data:` payloads and the comment lines of an SSE body, in order.
pub fn sse_frames(body: &str) -> Vec<String> {
    body.split("\n\n")
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A plain client (no proxy), as the rest of the harness uses.
pub fn plain() -> reqwest::Client {
    http()
}

/// The `infer` demo client `tollgate up` created in `dir`.
pub fn demo_infer(dir: &Path) -> (String, String) {
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(".tollgate/credentials.json")).unwrap(),
    )
    .unwrap();
    let c = &creds["clients"][0];
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}
