//! Prometheus: `promtool` on the config, the Operator's rules equal to the
//! alerts, every alert explained, every metric named in `deploy/` present.

use super::*;

/// The PrometheusRule of `deploy/k8s/base` as it must be: `deploy/prometheus/alerts.yml`'s groups.
const RULE_GENERATOR: &str = r##"
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
groups = yaml.safe_load(open(src))["groups"]
class Block(str): pass
yaml.SafeDumper.add_representer(Block, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))
def mark(v):
    if isinstance(v, dict): return {k: mark(x) for k, x in v.items()}
    if isinstance(v, list): return [mark(x) for x in v]
    return Block(v) if isinstance(v, str) else v
doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
       "metadata": {"name": "tollgate", "labels": {"app.kubernetes.io/name": "tollgate"}},
       "spec": {"groups": mark(groups)}}
head = ("# Generated from deploy/prometheus/alerts.yml for the Prometheus Operator; do not edit.\n"
        "# tests/deploy.rs fails when the two differ; regenerate with\n"
        "#   TOLLGATE_UPDATE_DEPLOY=1 cargo test --test deploy\n")
open(dst, "w").write(head + yaml.safe_dump(doc, sort_keys=False, width=4096, allow_unicode=True))
"##;

#[test]
fn prometheus_config_passes_promtool_and_the_operator_rules_match_the_alerts() {
    let out = Command::new(system_tool("promtool"))
        .args(["check", "config"])
        .arg(deploy().join("compose/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config (with the rule files it names):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let alerts = deploy().join("prometheus/alerts.yml");
    let rule = deploy().join("k8s/base/prometheus-rule.yaml");
    if std::env::var_os("TOLLGATE_UPDATE_DEPLOY").is_some() {
        let mut cmd = Command::new(venv_tool("python"));
        cmd.args(["-c", RULE_GENERATOR]).arg(&alerts).arg(&rule);
        run_ok(cmd, "");
    }
    // The operations guide says what to do about every alert.
    let guide = read(&deploy().join("README.md"));
    for group in yaml_file(&alerts)["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            if let Some(name) = r["alert"].as_str() {
                assert!(
                    guide.contains(&format!("`{name}`")),
                    "deploy/README.md does not say what to do about {name}"
                );
            }
        }
    }
    assert_eq!(
        yaml_file(&rule)["spec"]["groups"],
        yaml_file(&alerts)["groups"],
        "{} differs from {}: regenerate it with TOLLGATE_UPDATE_DEPLOY=1 cargo test --test deploy",
        rule.display(),
        alerts.display()
    );
}

// ---------------------------------------------------------------------------
// Metrics

/// `tollgate_…` names in a text, histogram suffixes taken off.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tollgate_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let name = &tail[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        rest = &tail[len..];
    }
    out
}

#[tokio::test]
async fn every_metric_the_deploy_files_name_is_in_metrics() {
    // The files of this directory that are not checked elsewhere: the
    // dashboard and alerts are (tests/observability), the generated
    // PrometheusRule equals the alerts (above).
    let skip = [
        deploy().join("grafana"),
        deploy().join("prometheus"),
        deploy().join("k8s/base/prometheus-rule.yaml"),
    ];
    let mut named: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in files_under(&deploy(), &[".yaml", ".yml", ".toml", ".conf", ".md"]) {
        if skip.iter().any(|s| f.starts_with(s)) {
            continue;
        }
        for m in metric_names_in(&read(&f)) {
            named.entry(m).or_insert(f.clone());
        }
    }
    assert!(
        named.contains_key("tollgate_queue_depth"),
        "the HPA's metric is among them: {named:?}"
    );

    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let http = http();
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    let r = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&t)
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // A refused token, so the failure counter has a series.
    let r = http
        .get(format!("{}/v1/models", up.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = http
        .get(format!("{}/metrics", up.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exposed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split_whitespace().next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect();
    for (m, file) in &named {
        assert!(
            exposed.contains(m),
            "{} names `{m}`, which /metrics does not have",
            file.display()
        );
    }
}
