//! The Kubernetes objects of each role: gateways (probes, drain, HPA, PDB),
//! workers and their engines (GPUs, flags, drain order, network policy), Redis.

use super::configs::container_env;
use super::k8s::{Rendered, container, containers, matches, pre_stop_sleep};
use super::*;

pub(crate) fn gateway(k: &Rendered) {
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

pub(crate) fn workers(k: &Rendered) {
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

pub(crate) fn redis(k: &Rendered) {
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
