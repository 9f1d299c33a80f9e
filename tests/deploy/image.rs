//! The image: `deploy/Dockerfile` passes hadolint and builds one small,
//! pinned, non-root image of the `tollgate` binary with no secret in it.

use super::*;

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

/// Reads the Dockerfile (it builds no image: that needs a container
/// runtime) and runs hadolint on it.
#[test]
fn the_dockerfile_declares_a_small_non_root_runtime_stage_and_passes_hadolint() {
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
