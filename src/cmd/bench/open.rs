//! The open loop: each tenant of a scenario sends requests at Poisson
//! arrival times whatever the answers do, so an overloaded gateway shows
//! its queueing, shedding and fairness instead of slowing the load down.
//!
//! ```toml
//! url = "http://127.0.0.1:8080"
//! duration_secs = 60
//! warmup_secs = 5               # latencies of requests sent earlier are left out
//! [[tenants]]
//! name = "a"                    # label in the report
//! url = "http://127.0.0.1:8081" # optional: this tenant's gateway (another replica), else `url`
//! client_id = "a-app"
//! client_secret = { env = "A_SECRET" }
//! weight = 1                    # for the fairness index
//! rate = 4.0                    # mean requests per second
//! prompt_tokens = [256, 256]    # uniform range
//! output_tokens = [256, 256]
//! stream = true
//! extra = { ignore_eos = true } # extra body fields, if the gateway allows them
//! ```

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tollgate_shared::secret::SecretSource;

use super::report::{Outcome, Recorder};
use super::{timing_header, timings, token};
use crate::cmd::{CmdResult, Failure};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub url: String,
    pub duration_secs: u64,
    #[serde(default = "default_bucket")]
    pub bucket_secs: u64,
    #[serde(default)]
    pub seed: u64,
    /// How long to wait for answers still open when arrivals stop.
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
    /// Latency percentiles leave out requests sent in the first seconds
    /// (they are still sent, counted and credited).
    #[serde(default)]
    pub warmup_secs: u64,
    pub tenants: Vec<TenantLoad>,
}

fn default_bucket() -> u64 {
    1
}

fn default_drain() -> u64 {
    120
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLoad {
    pub name: String,
    /// The gateway this tenant's clients reach (e.g. another replica); the
    /// scenario's `url` when absent.
    pub url: Option<String>,
    /// Client credentials at a gateway; leave both out to load a vLLM server directly.
    pub client_id: Option<String>,
    pub client_secret: Option<SecretSource>,
    #[serde(default = "one")]
    pub weight: f64,
    pub rate: f64,
    pub prompt_tokens: [u32; 2],
    pub output_tokens: [u32; 2],
    #[serde(default = "yes")]
    pub stream: bool,
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Sent as `x-tollgate-priority` (a request may only demote itself).
    #[serde(default)]
    pub priority: Option<String>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

fn load(path: &Path) -> Result<Scenario, Failure> {
    use figment::providers::{Format, Toml};
    let s: Scenario = figment::Figment::from(Toml::file(path))
        .extract()
        .map_err(|e| Failure::Other(anyhow::anyhow!("scenario {}: {e}", path.display())))?;
    if s.tenants.is_empty()
        || s.duration_secs == 0
        || s.bucket_secs == 0
        || s.warmup_secs >= s.duration_secs
    {
        return Err(Failure::Other(anyhow::anyhow!(
            "scenario: give tenants, duration_secs > 0, bucket_secs > 0, warmup_secs < duration_secs"
        )));
    }
    for t in &s.tenants {
        if !(t.rate > 0.0 && t.rate.is_finite())
            || t.prompt_tokens[0] > t.prompt_tokens[1]
            || t.output_tokens[0] > t.output_tokens[1]
        {
            return Err(Failure::Other(anyhow::anyhow!(
                "scenario tenant {}: rate > 0, ranges [min, max]",
                t.name
            )));
        }
    }
    Ok(s)
}

/// A prompt of about `tokens` tokens: short common words are one token each.
fn prompt(rng: &mut StdRng, tokens: u32) -> String {
    const WORDS: &[&str] = &[
        "the", "cat", "sat", "on", "a", "mat", "and", "saw", "red", "fox", "run", "far", "away",
        "in", "sun",
    ];
    let mut s = String::with_capacity(tokens as usize * 4);
    for i in 0..tokens.max(1) {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

pub async fn run(path: &Path, out: &Path) -> CmdResult {
    let scenario = load(path)?;
    let urls: Vec<String> = scenario
        .tenants
        .iter()
        .map(|t| {
            t.url
                .as_deref()
                .unwrap_or(&scenario.url)
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    let mut tokens = Vec::new();
    for (t, url) in scenario.tenants.iter().zip(&urls) {
        let tok = match (&t.client_id, &t.client_secret) {
            (Some(id), Some(secret)) => {
                let secret = secret
                    .resolve()
                    .map_err(|e| Failure::Other(anyhow::anyhow!("tenant {}: {e}", t.name)))?;
                Some(token(&http, url, id, secret.expose()).await?)
            }
            (None, None) => None,
            _ => {
                return Err(Failure::Other(anyhow::anyhow!(
                    "tenant {}: give client_id and client_secret together",
                    t.name
                )));
            }
        };
        tokens.push(tok);
    }
    let names: Vec<String> = scenario.tenants.iter().map(|t| t.name.clone()).collect();
    let weights: Vec<f64> = scenario.tenants.iter().map(|t| t.weight).collect();
    let recorder = Arc::new(Recorder::new(
        names,
        weights,
        Duration::from_secs(scenario.bucket_secs),
    ));
    let start = Instant::now();
    let duration = Duration::from_secs(scenario.duration_secs);
    let scenario = Arc::new(scenario);
    let mut arrivals = tokio::task::JoinSet::new();
    for (i, tok) in tokens.into_iter().enumerate() {
        let (http, url, rec, sc) = (
            http.clone(),
            urls[i].clone(),
            recorder.clone(),
            scenario.clone(),
        );
        arrivals.spawn(tenant_loop(i, http, url, tok, rec, sc, start, duration));
    }
    let progress = {
        let rec = recorder.clone();
        // Ends when the bench does: aborted below.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let _ = writeln!(
                    std::io::stderr(),
                    "{:>5.0}s  {}",
                    start.elapsed().as_secs_f64(),
                    rec.progress()
                );
            }
        })
    };
    // The tenants' loops end with the arrival period, each handing back its
    // requests still open: they get at most `drain_secs` more to finish.
    let mut open = Vec::new();
    while let Some(r) = arrivals.join_next().await {
        if let Ok(set) = r {
            open.push(set);
        }
    }
    let until =
        tokio::time::Instant::from_std(start + duration + Duration::from_secs(scenario.drain_secs));
    let _ = tokio::time::timeout_at(until, async {
        for set in &mut open {
            while set.join_next().await.is_some() {}
        }
    })
    .await;
    for set in &mut open {
        set.abort_all();
    }
    progress.abort();
    let report = recorder.report(start.elapsed(), duration);
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Failure::Other(e.into()))?;
    std::fs::write(out.join("report.json"), &json)?;
    std::fs::write(out.join("service.svg"), recorder.svg(duration))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", report.summary())?;
    writeln!(
        stdout,
        "report: {}  chart: {}",
        out.join("report.json").display(),
        out.join("service.svg").display()
    )?;
    Ok(())
}

/// Sends tenant `i`'s requests at their arrival times, each in a task of its
/// own (made when it is due: a long run holds only the requests in flight),
/// and returns those still open when the arrival period ends.
#[allow(clippy::too_many_arguments)]
async fn tenant_loop(
    i: usize,
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    rec: Arc<Recorder>,
    sc: Arc<Scenario>,
    start: Instant,
    duration: Duration,
) -> tokio::task::JoinSet<()> {
    let t = &sc.tenants[i];
    let mut rng = StdRng::seed_from_u64(sc.seed.wrapping_mul(31).wrapping_add(i as u64));
    let mut at = Duration::ZERO;
    let mut out = tokio::task::JoinSet::new();
    loop {
        // Exponential inter-arrival times: a Poisson process of the tenant's rate.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        at += Duration::from_secs_f64(-u.ln() / t.rate);
        if at >= duration {
            return out;
        }
        let measured = at >= Duration::from_secs(sc.warmup_secs);
        let input = rng.random_range(t.prompt_tokens[0]..=t.prompt_tokens[1]);
        let output = rng.random_range(t.output_tokens[0]..=t.output_tokens[1]);
        let mut body = serde_json::json!({
            "messages": [{"role": "user", "content": prompt(&mut rng, input)}],
            "max_tokens": output,
            "stream": t.stream,
        });
        if t.stream {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        for (k, v) in &t.extra {
            body[k] = v.clone();
        }
        let mut req = http
            .post(format!("{url}/v1/chat/completions"))
            .header("x-tollgate-debug", "1")
            .json(&body);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        if let Some(p) = &t.priority {
            req = req.header("x-tollgate-priority", p.as_str());
        }
        let rec = rec.clone();
        let stream = t.stream;
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + at)).await;
        while out.try_join_next().is_some() {}
        out.spawn(async move {
            rec.sent(i);
            let outcome = send(req, stream, &rec, i, start, u64::from(input)).await;
            rec.done(i, measured, start.elapsed(), outcome);
        });
    }
}

/// Sends one request and follows its answer, crediting service as it arrives.
async fn send(
    req: reqwest::RequestBuilder,
    stream: bool,
    rec: &Recorder,
    i: usize,
    start: Instant,
    input: u64,
) -> Outcome {
    let sent = Instant::now();
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => return Outcome::failed(0),
    };
    let status = resp.status().as_u16();
    let queue_ms = timing_header(&resp)
        .and_then(|h| timings(h).find_map(|(name, ms)| (name == "queue").then_some(ms)));
    if status != 200 {
        let _ = resp.bytes().await;
        return Outcome::failed(status);
    }
    let mut o = Outcome {
        status,
        queue_ms,
        ..Outcome::default()
    };
    if !stream {
        if let Ok(v) = resp.json::<serde_json::Value>().await {
            o.prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            o.completion_tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
            rec.credit(
                i,
                start.elapsed(),
                o.prompt_tokens + 2 * o.completion_tokens,
            );
        }
        o.e2e = Some(sent.elapsed());
        return o;
    }
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if data == "[DONE]" {
                o.e2e = Some(sent.elapsed());
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                o.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                o.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            }
            let has_text = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            if has_text {
                if o.ttft.is_none() {
                    o.ttft = Some(sent.elapsed());
                    // The prompt counts as served when its first token comes out.
                    rec.credit(i, start.elapsed(), input);
                }
                // Output is credited as it streams: 2 units a token.
                rec.credit(i, start.elapsed(), 2);
            }
        }
    }
    if o.e2e.is_none() {
        o.status = 0;
    }
    o
}
