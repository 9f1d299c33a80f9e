//! `/dashboard` in headless Chromium, and the Grafana dashboard and alert
//! rules of `deploy/` read only metrics that `/metrics` has.

use std::collections::BTreeSet;

use serde_json::Value;

use super::all_kinds_of_traffic;
use super::common::observability::*;
use super::common::*;

#[tokio::test]
async fn the_dashboard_shows_live_figures_in_headless_chromium() {
    let cluster = Cluster::start(Spec::default()).await;
    all_kinds_of_traffic(&cluster).await;
    let http = http();
    let url = format!("{}/v1/admin/stats", cluster.base);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let reader = cluster.token(READER).await;
    assert_eq!(
        http.get(&url)
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let admin = cluster.token(BOSS).await;
    let stats: Value = http
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acme = stats["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .unwrap();
    assert!(
        acme["requests"].as_u64() >= Some(4) && acme["ttft_ms"]["p99"].is_f64(),
        "{stats}"
    );
    let page = http
        .get(format!("{}/dashboard", cluster.base))
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(
        !page.text().await.unwrap().contains("acme"),
        "the page holds no data"
    );

    // The token rides in the fragment, which never leaves the browser.
    let board = format!("{}/dashboard#token={admin}", cluster.base);
    let dom = headless(&board, &["--virtual-time-budget=15000", "--dump-dom"]);
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never drew the figures:\n{dom}"
    );
    // Every load the browser made succeeded: the icon is declared inline, so
    // no `/favicon.ico` 404 (a console error) is asked of the gateway.
    assert!(
        dom.contains("<link rel=\"icon\" href=\"data:image/svg+xml,"),
        "{dom}"
    );
    let browser_loads: Vec<Value> = audit_records(&cluster.audit_path())
        .into_iter()
        .filter(|r| {
            r["user_agent"]
                .as_str()
                .is_some_and(|ua| ua.contains("HeadlessChrome"))
        })
        .collect();
    assert!(
        !browser_loads.is_empty()
            && browser_loads
                .iter()
                .all(|r| r["status"].as_u64().is_some_and(|s| s < 400)),
        "a load of the page failed: {browser_loads:#?}"
    );
    for shown in [
        "data-tenant=\"acme\"",
        "data-tenant=\"tight\"",
        "data-priority=\"high\"",
        ">w1<",
    ] {
        assert!(dom.contains(shown), "{shown} missing:\n{dom}");
    }
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &board,
        &[
            "--virtual-time-budget=15000",
            "--window-size=1400,1000",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot at {}",
        shot.display()
    );
}

#[tokio::test]
async fn deploy_dashboards_and_alerts_read_only_metrics_that_exist() {
    let cluster = Cluster::start(Spec::default()).await;
    all_kinds_of_traffic(&cluster).await;
    let http = http();
    let mut exposed = BTreeSet::new();
    let mut texts = Vec::new();
    for base in [&cluster.base, &cluster.worker_url] {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        exposed.extend(metric_names(&text));
        texts.push(text);
    }
    for required in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_time_to_first_token_seconds",
        "tollgate_queue_wait_seconds",
        "tollgate_queue_depth",
        "tollgate_tokens_total",
        "tollgate_ratelimited_total",
        "tollgate_auth_failures_total",
        "tollgate_worker_up",
        "tollgate_shard_inflight",
        "tollgate_shard_kv_cache_usage",
        "gen_ai_server_request_duration_seconds",
        "gen_ai_server_time_to_first_token_seconds",
        "gen_ai_server_time_per_output_token_seconds",
    ] {
        assert!(exposed.contains(required), "{required} not in /metrics");
    }
    // No client id or token in any label.
    for text in &texts {
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !l.contains("client_id") && !l.contains("reader") && !l.contains("eyJ"),
                "{l}"
            );
        }
    }

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let files = [
        root.join("grafana/tollgate.json"),
        root.join("prometheus/alerts.yml"),
    ];
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules = yaml_exprs(&std::fs::read_to_string(&files[1]).unwrap());
    assert!(rules.len() >= 10, "{rules:?}");
    for (file, exprs) in [(&files[0], exprs), (&files[1], rules)] {
        for expr in exprs {
            let used = promql_metrics(&expr);
            assert!(
                !used.is_empty(),
                "{}: `{expr}` reads no metric",
                file.display()
            );
            for m in used {
                assert!(
                    exposed.contains(&m),
                    "{} reads `{m}`, which /metrics does not have",
                    file.display()
                );
            }
        }
    }

    // promtool, when installed (./scripts/test installs it), checks the rules and the exposition.
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(&files[1])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check rules: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for text in &texts {
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Every finding but a missing help text (the lint's least) fails: counters
            // without `_total`, units, reserved suffixes, malformed lines.
            let findings: Vec<&str> = report
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.ends_with("no help text"))
                .collect();
            assert!(findings.is_empty(), "promtool check metrics: {report}");
        }
    }
}

/// Metric names (samples and `# TYPE` lines) of a Prometheus text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split_whitespace().next(),
            None if l.starts_with('#') || l.is_empty() => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// Every `expr` string of a Grafana dashboard.
fn json_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

/// Every `expr:` of a Prometheus rules file (one line, or a `|` block).
fn yaml_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        if value == "|" || value == ">" {
            let mut block = Vec::new();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                    block.push(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            out.push(block.join(" "));
        } else {
            out.push(value.to_owned());
        }
    }
    out
}

/// `expr` without what names labels rather than metrics: `{…}` matchers and
/// the lists of `by`, `without`, `on`, `ignoring`, `group_left/right`.
fn strip_labels(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        if c == '{' {
            rest = rest.find('}').map_or("", |i| &rest[i + 1..]);
            continue;
        }
        let keyword = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .iter()
        .find(|k| {
            rest.starts_with(*k)
                && !out.ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_')
                && rest[k.len()..].trim_start().starts_with('(')
        });
        if let Some(k) = keyword {
            let after = rest[k.len()..].trim_start();
            rest = after.find(')').map_or("", |i| &after[i + 1..]);
            out.push(' ');
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The metric names a PromQL expression reads (`tollgate_…`, `gen_ai_…`),
/// with histogram suffixes taken off.
fn promql_metrics(expr: &str) -> Vec<String> {
    let expr = strip_labels(expr);
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start_ok = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let rest = &expr[i..];
        if start_ok && (rest.starts_with("tollgate_") || rest.starts_with("gen_ai_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.push(base.to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}
