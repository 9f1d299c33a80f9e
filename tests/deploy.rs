//! The files of `deploy/`, checked offline with the tools `./scripts/test`
//! installs: the Dockerfile (hadolint and the image's properties), the
//! Compose stack (its structure and the files it mounts), the Kubernetes
//! overlays (rendered by `kubectl kustomize`, validated against the OpenAPI
//! schemas of pinned Kubernetes versions, and their wiring), every config the
//! stacks run (`tollgate check-config` with the environment the stack gives
//! it), the Prometheus config (`promtool`), and every metric these files name
//! (present in a real `/metrics`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deploy::*;
use common::*;
use serde_json::Value;

/// The oldest and newest Kubernetes versions the manifests are validated against.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// The overlays of `deploy/k8s`.
const OVERLAYS: &[&str] = &["sim", "gpu"];
/// Keys of the Secret `tollgate` the manifests read (deploy/README.md shows how to create it).
const SECRET_KEYS: &[&str] = &[
    "jwt-secret",
    "cluster-secret",
    "ops-client-secret",
    "redis-password",
    "redis-url",
    "hf-token",
];

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The value after `flag` in an argument list.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Every value of a repeated `flag`.
fn flags<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// A top-level or `[section]` integer key of a TOML text.
fn toml_int(toml: &str, section: Option<&str>, key: &str) -> u64 {
    let mut current = None;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            current = Some(line.trim_matches(['[', ']']).to_owned());
        } else if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
            && current.as_deref() == section
        {
            return v
                .split('#')
                .next()
                .unwrap()
                .trim()
                .replace('_', "")
                .parse()
                .unwrap();
        }
    }
    panic!("no {section:?}.{key} in:\n{toml}");
}

// ---------------------------------------------------------------------------
// Dockerfile

/// Instructions of a Dockerfile: continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(t);
                let (k, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((k.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn assert_pinned(image: &str, whose: &str) {
    let name_and_tag = image.rsplit('/').next().unwrap();
    let tag = name_and_tag.split_once(':').map(|(_, t)| t);
    assert!(
        image.contains("@sha256:")
            || tag.is_some_and(|t| t != "latest" && t.chars().any(|c| c.is_ascii_digit())),
        "{whose}: image {image} is not pinned to a version"
    );
}

#[test]
fn the_dockerfile_builds_one_small_non_root_image_and_passes_hadolint() {
    let path = deploy().join("Dockerfile");
    let steps = instructions(&read(&path));
    let froms: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "a builder stage and a runtime stage");
    let mut stages = Vec::new();
    for &i in &froms {
        let words: Vec<&str> = steps[i]
            .1
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        assert_pinned(words[0], "Dockerfile");
        stages.push(words.get(2).map(|s| s.to_string()));
    }
    let runtime = &steps[*froms.last().unwrap()..];
    assert!(
        runtime[0].1.contains("-slim") || runtime[0].1.contains("distroless"),
        "a small runtime base: {}",
        runtime[0].1
    );
    let in_runtime = |k: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let user = *in_runtime("USER")
        .last()
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: a numeric non-root uid (Kubernetes' runAsNonRoot checks it)"
    );
    let copies = in_runtime("COPY");
    let builder = stages[0].clone().expect("the builder stage is named");
    assert!(
        copies
            .iter()
            .any(|c| c.contains(&format!("--from={builder}")) && c.contains("tollgate")),
        "the runtime stage copies the tollgate binary from {builder}: {copies:?}"
    );
    assert!(
        copies.iter().all(|c| c.contains("--from=")),
        "the runtime stage copies nothing from the build context: {copies:?}"
    );
    assert!(in_runtime("ENTRYPOINT").concat().contains("/tollgate"));
    assert!(in_runtime("HEALTHCHECK").concat().contains("/healthz"));
    // No secret is baked in: no ENV or ARG names one.
    for (k, v) in &steps {
        if k == "ENV" || k == "ARG" {
            let name = v.split(['=', ' ']).next().unwrap().to_ascii_uppercase();
            assert!(
                !["SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL"]
                    .iter()
                    .any(|s| name.contains(s)),
                "{k} {v}: secrets come from the runtime environment, never the image"
            );
        }
    }
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    for excluded in ["target", ".git", ".venv", ".tollgate", "**/.env"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            "{excluded} is kept out of the build context"
        );
    }

    let out = Command::new(venv_tool("hadolint"))
        .arg("--no-color")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Compose

fn compose() -> Value {
    yaml_file(&deploy().join("compose.yaml"))
}

fn services(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["services"].as_object().unwrap()
}

fn command(service: &Value) -> Vec<String> {
    strs(&service["command"])
}

/// Host path of the bind mount at `target` in `service`, if any.
fn mount(service: &Value, target: &str) -> Option<PathBuf> {
    strs(&service["volumes"]).iter().find_map(|v| {
        let mut parts = v.split(':');
        let (src, dst) = (parts.next()?, parts.next()?);
        (dst == target && src.starts_with('.')).then(|| deploy().join(src))
    })
}

/// `${NAME…}` interpolations in a Compose value, replaced by stand-in secrets.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap() + i;
        let name = rest[i + 2..end].split([':', '-', '?']).next().unwrap();
        out.push_str(&fake_secret(name).replace('-', "_"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn same_network(service: &Value) -> Option<String> {
    service["network_mode"]
        .as_str()
        .and_then(|m| m.strip_prefix("service:"))
        .map(str::to_owned)
}

#[test]
fn compose_runs_the_whole_stack_from_files_that_exist() {
    let doc = compose();
    let all = services(&doc);
    let named_volumes: BTreeSet<&String> = doc["volumes"].as_object().unwrap().keys().collect();
    for (name, s) in all {
        assert!(s["image"].is_string(), "{name}: no image");
        if let Some(img) = s["image"].as_str() {
            assert_pinned(img, name);
        }
        for v in strs(&s["volumes"]) {
            let src = v.split(':').next().unwrap();
            if src.starts_with('.') {
                assert!(
                    deploy().join(src).exists(),
                    "{name} mounts {src}, which does not exist"
                );
            } else {
                assert!(
                    named_volumes.contains(&src.to_owned()),
                    "{name}: undeclared volume {src}"
                );
            }
        }
        for dep in s["depends_on"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_else(|| strs(&s["depends_on"]))
        {
            assert!(all.contains_key(&dep), "{name} depends on unknown {dep}");
        }
        if let Some(owner) = same_network(s) {
            assert!(all.contains_key(&owner), "{name} joins unknown {owner}");
        }
        // Secrets come from the operator's environment, never literals.
        if let Some(env) = s["environment"].as_object() {
            for (k, v) in env {
                let v = v.as_str().unwrap_or_default();
                let secret = ["SECRET", "PASSWORD", "TOKEN"]
                    .iter()
                    .any(|w| k.contains(w))
                    || k == "REDISCLI_AUTH"
                    || v.contains("redis://:");
                if secret {
                    assert!(
                        v.contains("${"),
                        "{name}: {k} is a literal; take it from the environment"
                    );
                }
            }
        }
        for arg in command(s) {
            if arg.contains("requirepass") || arg.contains("PASSWORD") {
                assert!(
                    arg.starts_with("--") || arg.contains("${"),
                    "{name}: literal secret in {arg}"
                );
            }
        }
    }
    let run = |role: &str| -> Vec<(&String, &Value)> {
        all.iter()
            .filter(|(_, s)| command(s).first().map(String::as_str) == Some(role))
            .collect()
    };

    // Redis with an append-only file on a volume.
    let redis = &all["redis"];
    let conf = read(&mount(redis, "/usr/local/etc/redis/redis.conf").expect("redis.conf mounted"));
    assert!(
        conf.lines().any(|l| l.trim() == "appendonly yes"),
        "AOF persistence"
    );
    assert!(
        strs(&redis["volumes"])
            .iter()
            .any(|v| v.ends_with(":/data"))
    );

    // Two gateways behind the load balancer.
    let gateways = run("gateway");
    assert_eq!(gateways.len(), 2, "two gateway replicas");
    let nginx = read(&mount(&all["lb"], "/etc/nginx/nginx.conf").expect("nginx.conf mounted"));
    for (name, _) in &gateways {
        assert!(
            nginx.contains(&format!("server {name}:8080")),
            "the LB sends to {name}"
        );
    }
    assert!(
        nginx.contains("proxy_buffering off"),
        "streams pass the LB unbuffered"
    );

    // Each worker shares a node's network with exactly one engine per profile.
    let worker_toml = read(&deploy().join("compose/worker.toml"));
    let slots = toml_int(&worker_toml, Some("worker"), "max_inflight_per_shard");
    let workers = run("worker");
    assert_eq!(workers.len(), 2, "two workers");
    for (wname, w) in &workers {
        let node = same_network(w).unwrap_or_else(|| panic!("{wname} joins a node's network"));
        assert_eq!(
            w["environment"]["TOLLGATE_WORKER__ADVERTISE_URL"],
            format!("http://{node}:9100"),
            "{wname} advertises the node's name"
        );
        for profile in ["gpu", "sim"] {
            let engines: Vec<_> = all
                .iter()
                .filter(|(_, s)| same_network(s).as_deref() == Some(node.as_str()))
                .filter(|(_, s)| strs(&s["profiles"]) == [profile])
                .collect();
            assert_eq!(engines.len(), 1, "{node}: one {profile} engine");
            let (ename, e) = engines[0];
            let args = command(e);
            assert_eq!(
                flag(&args, "--host"),
                Some("127.0.0.1"),
                "{ename} listens on its node's loopback only"
            );
            assert_eq!(flag(&args, "--max-model-len"), Some("32768"), "{ename}");
            assert_eq!(
                flag(&args, "--max-num-seqs"),
                Some(slots.to_string().as_str()),
                "{ename}: = max_inflight_per_shard"
            );
            assert!(flag(&args, "--scheduling-policy").is_some(), "{ename}");
            let wdeps = w["depends_on"].as_object().unwrap();
            assert!(
                wdeps.contains_key(ename.as_str()),
                "{wname} stops before {ename}"
            );
            if profile == "gpu" {
                assert!(
                    e["image"]
                        .as_str()
                        .unwrap()
                        .starts_with("vllm/vllm-openai:")
                );
                assert_eq!(flag(&args, "--model"), Some("Qwen/Qwen2.5-7B-Instruct"));
                let gpus = &e["deploy"]["resources"]["reservations"]["devices"][0];
                assert_eq!(gpus["driver"], "nvidia", "{ename} gets a GPU");
                assert_eq!(
                    gpus["device_ids"].as_array().unwrap().len(),
                    1,
                    "{ename}: one GPU"
                );
            } else {
                assert_eq!(args[0], "sim");
            }
        }
    }

    // Traces: collector → Jaeger; metrics: Prometheus with the alert rules; Grafana provisioned.
    let collector = read(&mount(&all["otel-collector"], "/etc/otelcol/config.yaml").unwrap());
    assert!(collector.contains("jaeger:4317"));
    assert!(all.contains_key("jaeger"));
    let gw_toml = read(&deploy().join("compose/gateway.toml"));
    assert!(gw_toml.contains("otlp_endpoint = \"http://otel-collector:4317\""));
    let prom = &all["prometheus"];
    let prom_conf = mount(prom, "/etc/prometheus/compose/prometheus.yml").unwrap();
    let rules = yaml_file(&prom_conf)["rule_files"].clone();
    for r in strs(&rules) {
        // The same relative path resolves in the container and in the repository.
        let container = Path::new("/etc/prometheus/compose").join(&r);
        let container = normalize(&container);
        let host = mount(prom, container.to_str().unwrap())
            .unwrap_or_else(|| panic!("rule file {r} is not mounted at {}", container.display()));
        assert_eq!(
            normalize(&prom_conf.parent().unwrap().join(&r)),
            normalize(&host)
        );
    }
    let grafana = &all["grafana"];
    let board = mount(
        grafana,
        "/var/lib/grafana/dashboards/tollgate/tollgate.json",
    )
    .unwrap();
    assert_eq!(normalize(&board), deploy().join("grafana/tollgate.json"));
    let sources = yaml_file(
        &mount(
            grafana,
            "/etc/grafana/provisioning/datasources/tollgate.yaml",
        )
        .unwrap(),
    );
    assert!(
        sources["datasources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "prometheus" && d["url"] == "http://prometheus:9090")
    );
    let providers = yaml_file(
        &mount(
            grafana,
            "/etc/grafana/provisioning/dashboards/tollgate.yaml",
        )
        .unwrap(),
    );
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards/tollgate"
    );

    // Every variable the operator must set is documented.
    let guide = read(&deploy().join("README.md"));
    let text = read(&deploy().join("compose.yaml"));
    for part in text.split("${").skip(1) {
        let name = part.split([':', '-', '?', '}']).next().unwrap();
        assert!(
            guide.contains(name),
            "deploy/README.md does not mention {name}"
        );
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Configs, as the stacks run them

#[test]
fn every_config_in_deploy_passes_check_config_with_the_environment_its_stack_gives() {
    // Each TOML alone, with the secrets it names.
    let tomls = files_under(&deploy(), &[".toml"]);
    assert!(tomls.len() >= 5, "{tomls:?}");
    for t in &tomls {
        let env: Vec<(String, String)> = env_secrets(&read(t))
            .into_iter()
            .map(|n| (n.clone(), fake_secret(&n)))
            .collect();
        let (code, out) = check_config(t, &env);
        assert_eq!(code, 0, "{}:\n{out}", t.display());
    }

    // Every tollgate container of the Compose stack: its config and exactly its environment.
    let doc = compose();
    let mut checked = 0;
    for (name, s) in services(&doc) {
        let args = command(s);
        let Some(config) = flag(&args, "--config") else {
            continue;
        };
        let host = mount(s, config).unwrap_or_else(|| panic!("{name}: {config} not mounted"));
        let env: Vec<(String, String)> = s["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), interpolate(v.as_str().unwrap())))
            .collect();
        let (code, out) = check_config(&host, &env);
        assert_eq!(code, 0, "compose service {name}:\n{out}");
        checked += 1;
    }
    assert_eq!(checked, 4, "two gateways and two workers");

    // Every tollgate container of each Kubernetes overlay: the ConfigMap's
    // file and the container's env, with Secret values and pod fields stood in.
    let dir = temp_dir();
    for overlay in OVERLAYS {
        let k = Rendered::of(overlay);
        let mut checked = 0;
        for (owner, pod) in k.pod_specs() {
            for c in pod["containers"].as_array().unwrap() {
                let args = strs(&c["args"]);
                let Some(config) = flag(&args, "--config") else {
                    continue;
                };
                let file = k.mounted_file(pod, c, config);
                let path = write(
                    dir.path(),
                    &format!("{overlay}-{}", c["name"].as_str().unwrap()),
                    &file,
                );
                let env = container_env(c);
                if args[0] == "worker" {
                    let url = env
                        .iter()
                        .find(|(k, _)| k == "TOLLGATE_WORKER__ADVERTISE_URL")
                        .unwrap();
                    assert_eq!(
                        url.1, "http://10.1.2.3:9100",
                        "{owner}: the pod IP, from the downward API"
                    );
                }
                let (code, out) = check_config(&path, &env);
                assert_eq!(code, 0, "{overlay}: {owner}/{}:\n{out}", c["name"]);
                checked += 1;
            }
        }
        assert_eq!(checked, 2, "{overlay}: the gateway and the worker");
    }
}

/// A container's environment as the kubelet builds it, with stand-ins for
/// Secret values and pod fields, and `$(VAR)` references expanded.
fn container_env(c: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_owned();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            match r["key"].as_str().unwrap() {
                "redis-url" => format!(
                    "redis://:{}@redis:6379/0",
                    fake_secret("redis").replace('-', "_")
                ),
                key => fake_secret(key),
            }
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap() {
                "status.podIP" => "10.1.2.3".to_owned(),
                "spec.nodeName" => "gpu-node-7".to_owned(),
                other => panic!("{name}: unexpected field {other}"),
            }
        };
        env.push((name, value));
    }
    env
}

// ---------------------------------------------------------------------------
// Kubernetes

/// The manifests of one overlay, rendered.
struct Rendered {
    overlay: String,
    text: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn of(overlay: &str) -> Rendered {
        let text = kustomize(&deploy().join("k8s/overlays").join(overlay));
        let docs = yaml_docs(&text);
        Rendered {
            overlay: overlay.to_owned(),
            text,
            docs,
        }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay))
    }

    /// (owner, pod spec) of every workload.
    fn pod_specs(&self) -> Vec<(String, &Value)> {
        self.docs
            .iter()
            .filter(|d| d["spec"]["template"]["spec"].is_object())
            .map(|d| {
                (
                    format!(
                        "{}/{}",
                        d["kind"].as_str().unwrap(),
                        d["metadata"]["name"].as_str().unwrap()
                    ),
                    &d["spec"]["template"]["spec"],
                )
            })
            .collect()
    }

    /// Pod template labels of every workload.
    fn pod_labels(&self) -> Vec<&serde_json::Map<String, Value>> {
        self.docs
            .iter()
            .filter_map(|d| d["spec"]["template"]["metadata"]["labels"].as_object())
            .collect()
    }

    /// The contents of `path` as a container sees it through a ConfigMap volume.
    fn mounted_file(&self, pod: &Value, c: &Value, path: &str) -> String {
        let (dir, file) = path.rsplit_once('/').unwrap();
        let vm = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm["name"])
            .unwrap();
        let cm = vol["configMap"]["name"].as_str().unwrap();
        self.get("ConfigMap", cm)["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("{cm} has no {file}"))
            .to_owned()
    }
}

fn matches(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn containers(pod: &Value) -> &Vec<Value> {
    pod["containers"].as_array().unwrap()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Seconds a container's preStop hook sleeps (`sleep N`), 0 without one.
fn pre_stop_sleep(c: &Value) -> u64 {
    let cmd = strs(&c["lifecycle"]["preStop"]["exec"]["command"]);
    match cmd.as_slice() {
        [] => 0,
        [s, n] if s == "sleep" => n.parse().unwrap(),
        other => panic!("{}: unexpected preStop {other:?}", c["name"]),
    }
}

#[test]
fn kubernetes_overlays_render_and_validate_against_pinned_schemas() {
    let dir = temp_dir();
    for overlay in OVERLAYS {
        let k = Rendered::of(overlay);
        let file = write(dir.path(), &format!("{overlay}.yaml"), &k.text);
        for version in K8S_VERSIONS {
            let out = Command::new(venv_tool("kubernetes-validate"))
                .args(["--kubernetes-version", version, "--strict", "--quiet"])
                .arg(&file)
                .output()
                .unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && !report.contains("ERROR"),
                "{overlay} on Kubernetes {version}:\n{report}"
            );
            // Only the Prometheus Operator's kinds have no schema here; they are checked below.
            for l in report.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    l.contains("kind ServiceMonitor with api version monitoring.coreos.com/v1")
                        || l.contains(
                            "kind PrometheusRule with api version monitoring.coreos.com/v1"
                        ),
                    "{overlay} on Kubernetes {version}: {l}"
                );
            }
        }
        assert!(
            k.all("Secret").is_empty(),
            "{overlay}: Secrets are created by the operator, never committed"
        );
        for d in &k.docs {
            assert_eq!(
                d["metadata"]["namespace"].as_str().unwrap_or("tollgate"),
                "tollgate",
                "{overlay}: {}",
                d["metadata"]["name"]
            );
        }
        wiring(&k);
        gateway(&k);
        workers(&k);
        redis(&k);
    }
}

/// Selectors select, ports exist, secrets are referenced, images pinned,
/// Tollgate's own containers locked down.
fn wiring(k: &Rendered) {
    let o = &k.overlay;
    for svc in k.all("Service") {
        let sel = &svc["spec"]["selector"];
        let pods: Vec<_> = k
            .pod_labels()
            .into_iter()
            .filter(|l| matches(sel, l))
            .collect();
        assert!(
            !pods.is_empty(),
            "{o}: Service {} selects no pods",
            svc["metadata"]["name"]
        );
    }
    for sm in k.all("ServiceMonitor") {
        let svc = k.all("Service").into_iter().find(|s| {
            matches(
                &sm["spec"]["selector"]["matchLabels"],
                s["metadata"]["labels"].as_object().unwrap(),
            )
        });
        let svc = svc.unwrap_or_else(|| {
            panic!(
                "{o}: ServiceMonitor {} selects no Service",
                sm["metadata"]["name"]
            )
        });
        let ports: Vec<&Value> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["name"])
            .collect();
        for ep in sm["spec"]["endpoints"].as_array().unwrap() {
            assert!(
                ports.contains(&&ep["port"]),
                "{o}: ServiceMonitor port {} not on the Service",
                ep["port"]
            );
            assert_eq!(ep["path"], "/metrics");
        }
    }
    let rules = k.get("PrometheusRule", "tollgate");
    assert!(!rules["spec"]["groups"].as_array().unwrap().is_empty());
    for (owner, pod) in k.pod_specs() {
        for c in containers(pod) {
            let image = c["image"].as_str().unwrap();
            assert_pinned(image, &owner);
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                    assert_eq!(r["name"], "tollgate", "{o}: {owner}");
                    assert!(
                        SECRET_KEYS.contains(&r["key"].as_str().unwrap()),
                        "{o}: {owner} reads key {}",
                        r["key"]
                    );
                }
            }
            if image.contains("tollgate") {
                let sc = &c["securityContext"];
                let non_root =
                    sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true;
                assert!(non_root, "{o}: {owner}/{} runs as non-root", c["name"]);
                assert_eq!(
                    sc["readOnlyRootFilesystem"], true,
                    "{o}: {owner}/{}",
                    c["name"]
                );
                assert_eq!(
                    sc["allowPrivilegeEscalation"], false,
                    "{o}: {owner}/{}",
                    c["name"]
                );
            }
        }
    }
    let guide = read(&deploy().join("README.md"));
    for key in SECRET_KEYS {
        assert!(
            guide.contains(key),
            "deploy/README.md does not say how to create the Secret key {key}"
        );
    }
}

fn gateway(k: &Rendered) {
    let o = &k.overlay;
    let dep = k.get("Deployment", "tollgate-gateway");
    let pod = &dep["spec"]["template"]["spec"];
    let labels = dep["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let c = container(pod, "gateway");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{o}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{o}");
    let toml = k.mounted_file(pod, c, flag(&strs(&c["args"]), "--config").unwrap());
    let grace = toml_int(&toml, None, "shutdown_grace_secs");
    let pre_stop = pre_stop_sleep(c);
    assert!(
        pre_stop > 0,
        "{o}: the gateway waits for its endpoint to go before draining"
    );
    let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        period > pre_stop + grace,
        "{o}: terminationGracePeriodSeconds {period} ≤ preStop {pre_stop} + shutdown_grace_secs {grace}"
    );
    assert_eq!(
        dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "{o}"
    );

    let hpa = k.get("HorizontalPodAutoscaler", "tollgate-gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "tollgate-gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let metrics = hpa["spec"]["metrics"].as_array().unwrap();
    assert!(
        metrics
            .iter()
            .any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu"),
        "{o}: HPA on CPU"
    );
    assert!(
        metrics
            .iter()
            .any(|m| m["pods"]["metric"]["name"] == "tollgate_queue_depth"
                || m["external"]["metric"]["name"] == "tollgate_queue_depth"),
        "{o}: HPA on queue depth"
    );
    assert!(
        hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
        "{o}: two replicas at least"
    );
    assert_eq!(
        toml_int(&toml, Some("redis"), "gateway_replicas"),
        hpa["spec"]["minReplicas"].as_u64().unwrap(),
        "{o}: redis.gateway_replicas follows the HPA's minimum"
    );
    let pdb = k.get("PodDisruptionBudget", "tollgate-gateway");
    assert!(
        matches(&pdb["spec"]["selector"]["matchLabels"], labels),
        "{o}: the PDB covers the gateways"
    );
}

fn workers(k: &Rendered) {
    let o = &k.overlay;
    let ds = k.get("DaemonSet", "tollgate-worker");
    let pod = &ds["spec"]["template"]["spec"];
    let labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let w = container(pod, "worker");
    let args = strs(&w["args"]);
    assert_eq!(w["readinessProbe"]["httpGet"]["path"], "/readyz", "{o}");
    assert_eq!(w["livenessProbe"]["httpGet"]["path"], "/healthz", "{o}");
    let toml = k.mounted_file(pod, w, flag(&args, "--config").unwrap());
    let grace = toml_int(&toml, None, "shutdown_grace_secs");
    let slots = toml_int(&toml, Some("worker"), "max_inflight_per_shard");
    let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        period > grace,
        "{o}: terminationGracePeriodSeconds {period} ≤ shutdown_grace_secs {grace}"
    );
    let env = container_env(w);
    let advertise = env
        .iter()
        .find(|(k, _)| k == "TOLLGATE_WORKER__ADVERTISE_URL")
        .unwrap();
    assert_eq!(
        advertise.1, "http://10.1.2.3:9100",
        "{o}: workers register their pod IP"
    );

    // The engines: one per shard, on the pod's loopback, with vLLM's limits
    // matching the worker's admission, serving until the worker has drained.
    let shards = flags(&args, "--shard");
    let engines: Vec<&Value> = containers(pod)
        .iter()
        .filter(|c| c["name"] != "worker")
        .collect();
    assert_eq!(engines.len(), shards.len(), "{o}: one engine per --shard");
    let gpu = *o == "gpu";
    for e in &engines {
        let name = e["name"].as_str().unwrap();
        let eargs = strs(&e["args"]);
        assert_eq!(
            flag(&eargs, "--host"),
            Some("127.0.0.1"),
            "{o}: {name} listens on the pod's loopback only"
        );
        let url = format!("http://127.0.0.1:{}", flag(&eargs, "--port").unwrap());
        assert!(
            shards.contains(&url.as_str()),
            "{o}: the worker drives {name} at {url}"
        );
        assert_eq!(
            flag(&eargs, "--max-model-len"),
            Some("32768"),
            "{o}: {name}"
        );
        assert_eq!(
            flag(&eargs, "--max-num-seqs"),
            Some(slots.to_string().as_str()),
            "{o}: {name}: = max_inflight_per_shard"
        );
        assert!(flag(&eargs, "--scheduling-policy").is_some(), "{o}: {name}");
        let stay = pre_stop_sleep(e);
        assert!(
            stay > grace && stay < period,
            "{o}: {name} keeps serving through the worker's drain ({stay} s)"
        );
        if gpu {
            assert!(
                e["image"]
                    .as_str()
                    .unwrap()
                    .starts_with("vllm/vllm-openai:"),
                "{o}: {name}"
            );
            assert_eq!(
                flag(&eargs, "--model"),
                Some("Qwen/Qwen2.5-7B-Instruct"),
                "{o}: {name}"
            );
            assert_eq!(
                e["resources"]["limits"]["nvidia.com/gpu"], 1,
                "{o}: {name} gets one GPU"
            );
        } else {
            assert_eq!(eargs[0], "sim", "{o}: {name}");
        }
    }
    if gpu {
        assert_eq!(engines.len(), 8, "{o}: eight GPUs a node");
        assert!(
            !pod["nodeSelector"].as_object().unwrap().is_empty(),
            "{o}: GPU nodes only"
        );
        assert!(
            pod["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "nvidia.com/gpu"),
            "{o}: tolerates the GPU taint"
        );
    }

    // Only gateways (and Prometheus) reach the worker, on its port; no engine port is open.
    let policies: Vec<&Value> = k
        .all("NetworkPolicy")
        .into_iter()
        .filter(|p| {
            let selector = &p["spec"]["podSelector"];
            selector.as_object().unwrap().is_empty() || matches(&selector["matchLabels"], labels)
        })
        .collect();
    assert!(
        policies
            .iter()
            .any(|p| p["spec"]["podSelector"].as_object().unwrap().is_empty()
                && p["spec"]["ingress"].is_null()),
        "{o}: ingress denied by default"
    );
    let gw_labels =
        k.get("Deployment", "tollgate-gateway")["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap()
            .clone();
    let mut open = BTreeSet::new();
    let mut gateways_allowed = false;
    for p in &policies {
        for rule in p["spec"]["ingress"].as_array().into_iter().flatten() {
            let ports: Vec<u64> = rule["ports"]
                .as_array()
                .expect("every rule names its ports")
                .iter()
                .map(|p| p["port"].as_u64().unwrap())
                .collect();
            open.extend(ports.iter().copied());
            gateways_allowed |= rule["from"].as_array().into_iter().flatten().any(|f| {
                f["podSelector"]["matchLabels"].is_object()
                    && matches(&f["podSelector"]["matchLabels"], &gw_labels)
            });
        }
    }
    assert_eq!(
        open,
        BTreeSet::from([9100]),
        "{o}: only the worker's port is open on worker pods"
    );
    assert!(gateways_allowed, "{o}: gateways may reach the workers");
}

fn redis(k: &Rendered) {
    let o = &k.overlay;
    let sts = k.get("StatefulSet", "redis");
    let pod = &sts["spec"]["template"]["spec"];
    let c = container(pod, "redis");
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(
        claims.len(),
        1,
        "{o}: Redis keeps its data on a persistent volume"
    );
    let data = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claims[0]["metadata"]["name"])
        .unwrap();
    let conf_path = strs(&c["args"])[1].clone();
    let conf = k.mounted_file(pod, c, &conf_path);
    assert!(
        conf.lines().any(|l| l.trim() == "appendonly yes"),
        "{o}: AOF persistence"
    );
    assert!(
        conf.lines()
            .any(|l| l.trim() == format!("dir {}", data["mountPath"].as_str().unwrap())),
        "{o}: the AOF is on the volume"
    );
    assert!(
        conf.lines()
            .any(|l| l.trim() == "maxmemory-policy noeviction"),
        "{o}: limits and revocations are never evicted"
    );
    let svc = k.get("Service", "redis");
    assert_eq!(sts["spec"]["serviceName"], "redis");
    assert!(matches(
        &svc["spec"]["selector"],
        sts["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap()
    ));
}

// ---------------------------------------------------------------------------
// Prometheus

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
