//! The Kubernetes overlays: rendered by `kubectl kustomize`, validated
//! against the OpenAPI schemas of pinned versions, and wired together.

use super::roles;
use super::*;

/// The manifests of one overlay, rendered.
pub(crate) struct Rendered {
    pub(crate) overlay: String,
    pub(crate) text: String,
    pub(crate) docs: Vec<Value>,
}

impl Rendered {
    pub(crate) fn of(overlay: &str) -> Rendered {
        let text = kustomize(&deploy().join("k8s/overlays").join(overlay));
        let docs = yaml_docs(&text);
        Rendered {
            overlay: overlay.to_owned(),
            text,
            docs,
        }
    }

    pub(crate) fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay))
    }

    /// (owner, pod spec) of every workload.
    pub(crate) fn pod_specs(&self) -> Vec<(String, &Value)> {
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
    pub(crate) fn pod_labels(&self) -> Vec<&serde_json::Map<String, Value>> {
        self.docs
            .iter()
            .filter_map(|d| d["spec"]["template"]["metadata"]["labels"].as_object())
            .collect()
    }

    /// The contents of `path` as a container sees it through a ConfigMap volume.
    pub(crate) fn mounted_file(&self, pod: &Value, c: &Value, path: &str) -> String {
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

pub(crate) fn matches(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

pub(crate) fn containers(pod: &Value) -> &Vec<Value> {
    pod["containers"].as_array().unwrap()
}

pub(crate) fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Seconds a container's preStop hook sleeps (`sleep N`), 0 without one.
pub(crate) fn pre_stop_sleep(c: &Value) -> u64 {
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
        roles::gateway(&k);
        roles::workers(&k);
        roles::redis(&k);
    }
}

/// Selectors select, ports exist, secrets are referenced, images pinned,
/// Tollgate's own containers locked down.
pub(crate) fn wiring(k: &Rendered) {
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
