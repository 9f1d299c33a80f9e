//! `deploy/compose.yaml`: the whole stack, from files that exist, with
//! secrets from the environment and each engine beside its worker.

use super::*;

pub(crate) fn compose() -> Value {
    yaml_file(&deploy().join("compose.yaml"))
}

pub(crate) fn services(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["services"].as_object().unwrap()
}

pub(crate) fn command(service: &Value) -> Vec<String> {
    strs(&service["command"])
}

/// Host path of the bind mount at `target` in `service`, if any.
pub(crate) fn mount(service: &Value, target: &str) -> Option<PathBuf> {
    strs(&service["volumes"]).iter().find_map(|v| {
        let mut parts = v.split(':');
        let (src, dst) = (parts.next()?, parts.next()?);
        (dst == target && src.starts_with('.')).then(|| deploy().join(src))
    })
}

/// `${NAME…}` interpolations in a Compose value, replaced by stand-in secrets.
pub(crate) fn interpolate(value: &str) -> String {
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

pub(crate) fn same_network(service: &Value) -> Option<String> {
    service["network_mode"]
        .as_str()
        .and_then(|m| m.strip_prefix("service:"))
        .map(str::to_owned)
}

/// Reads the Compose file (it starts no container): every service's image
/// is pinned, its mounts and dependencies exist, its secrets come from the
/// environment.
#[test]
fn compose_services_use_pinned_images_and_only_files_volumes_and_services_that_exist() {
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
