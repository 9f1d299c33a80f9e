//! Test harness: starts the real `tollgate` binary's processes on loopback
//! port 0, learns their addresses from their "listening" log lines, waits on
//! readiness by polling, and kills them on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod deploy;
pub mod fleet;
pub mod hardening;
pub mod identity;
pub mod observability;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to start or a condition to come true.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn tollgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// A running `tollgate` process.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// A fresh command for the binary with a clean `TOLLGATE_*` environment.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(tollgate_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOLLGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir).env("TOLLGATE_LOG", "info");
    cmd
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tollgate");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child: Some(child),
            lines,
            rx,
            stdout: out,
        }
    }

    /// Waits for a JSON log line whose fields satisfy `pred`; returns its fields.
    pub fn wait_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && pred(&v["fields"])
                    {
                        return v["fields"].clone();
                    }
                }
                Err(_) => panic!(
                    "{}: no log line for {what}; stderr so far:\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    /// The address the process logged as `listening` for `role`.
    pub fn listening(&self, role: &str) -> SocketAddr {
        let f = self.wait_log(&format!("{role} listening"), |f| {
            f["message"] == "listening" && f["role"] == role
        });
        f["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Fields of every log line so far that satisfy `pred`.
    pub fn logged(&self, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["fields"].clone())
            .filter(|f| pred(f))
            .collect()
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the binary to completion (for commands that do not serve).
pub fn run_to_end(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = command(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `url` until it answers 200.
pub async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` until it returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The URLs of the simulated shards `tollgate up` started.
pub fn sim_urls(p: &Proc) -> Vec<String> {
    p.logged(|f| f["message"] == "listening" && f["role"] == "sim")
        .iter()
        .map(|f| format!("http://{}", f["addr"].as_str().unwrap()))
        .collect()
}

/// Sums one metric over several servers' `/metrics`.
pub async fn metric_sum(http: &reqwest::Client, urls: &[String], name: &str) -> f64 {
    let mut total = 0.0;
    for u in urls {
        let text = http
            .get(format!("{u}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        total += metric(&text, name);
    }
    total
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A temp dir for one test's processes (config, state, audit files).
/// The Python of the test venv (openai, PyJWT, schemathesis, ...):
/// `TOLLGATE_TEST_PYTHON`, else the repository's `.venv` that
/// `./scripts/test` creates.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_TEST_PYTHON") {
        return std::path::PathBuf::from(p);
    }
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python test environment: run ./scripts/test (it creates .venv with the test packages)"
    );
    venv
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tollgate-test-")
        .tempdir()
        .unwrap()
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// `tollgate up` in `dir` with demo credentials; returns the process, its base URL and the credentials.
pub struct Up {
    pub proc: Proc,
    pub base: String,
    pub infer: (String, String),
    pub admin: (String, String),
}

pub async fn up(dir: &Path, extra: &[&str]) -> Up {
    up_with_env(dir, extra, &[]).await
}

pub async fn up_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Up {
    let mut cmd = command(dir);
    cmd.args(["up", "--listen", "127.0.0.1:0"]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc::spawn("up", cmd);
    let addr = proc.listening("gateway");
    let base = format!("http://{addr}");
    wait_ready(&http(), &format!("{base}/readyz")).await;
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(".tollgate/credentials.json")).unwrap(),
    )
    .unwrap();
    let pick = |i: usize| {
        (
            creds["clients"][i]["client_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            creds["clients"][i]["client_secret"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    Up {
        proc,
        base,
        infer: pick(0),
        admin: pick(1),
    }
}

/// Gets an access token by HTTP Basic client authentication.
pub async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let r = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "token request failed");
    let v: serde_json::Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// GETs `url` with a bearer token and reads the answer as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// Reads one metric's value (summed over label sets) from Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
