//! Every config in `deploy/`, as the stacks run it: `tollgate check-config`
//! with exactly the environment each container gets.

use super::compose::{command, compose, interpolate, mount, services};
use super::k8s::Rendered;
use super::*;

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
pub(crate) fn container_env(c: &Value) -> Vec<(String, String)> {
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
