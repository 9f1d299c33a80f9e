//! The spine, end to end: `tollgate up` and separately started gateway,
//! worker and simulator processes, driven over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn up_serves_chat_completions_and_generate_end_to_end() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let http = http();
    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;

    // Non-streaming chat.
    let r = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"model": "Qwen/Qwen2.5-7B-Instruct", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);

    // Streaming chat without usage: role chunk first, content, finish, [DONE]; no usage chunk.
    let body = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty()),
        "no usage chunk unless asked"
    );
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // Streaming chat with usage: the last chunk before [DONE] has empty choices and usage.
    let body = http
        .post(format!("{}/v1/chat/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&body);
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    // Completions, streaming and not.
    let v: Value = http
        .post(format!("{}/v1/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap(), 5);
    let body = http
        .post(format!("{}/v1/completions", up.base))
        .bearer_auth(&t)
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 5, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "text_completion");

    // The simple form.
    let v: Value = http
        .post(format!("{}/v1/generate", up.base))
        .bearer_auth(&t)
        .json(&json!({"prompt": "Say hi", "max_tokens": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["result"].is_string());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4);

    // The served model with its context length, as the shards report it.
    let v: Value = http
        .get(format!("{}/v1/models", up.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(v["data"][0]["max_model_len"], 32768);
}

#[tokio::test]
async fn up_prints_demo_credentials_once_and_keeps_them_private() {
    let dir = temp_dir();
    let first = up(dir.path(), &[]).await;
    let path = dir.path().join(".tollgate/credentials.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = eventually("credentials on stdout", || {
        let s = first.proc.stdout.lock().unwrap().join("\n");
        async move { s.contains("client_secret=").then_some(s) }
    })
    .await;
    assert!(out.contains(&first.infer.1) && out.contains(&first.admin.1));
    assert!(
        !first.proc.stderr().contains(&first.infer.1),
        "secrets never go to the log"
    );
    let (infer, admin) = (first.infer.clone(), first.admin.clone());
    drop(first);

    let second = up(dir.path(), &[]).await;
    assert_eq!(
        (second.infer.clone(), second.admin.clone()),
        (infer.clone(), admin)
    );
    let out = eventually("second banner", || {
        let s = second.proc.stdout.lock().unwrap().join("\n");
        async move { s.contains("credentials in").then_some(s) }
    })
    .await;
    assert!(
        !out.contains(&infer.1),
        "secrets are printed only when created"
    );
    // The same secret still works, and so does the signing key across restarts.
    token(&http(), &second.base, &infer.0, &infer.1).await;
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn bad_requests_get_clear_openai_shaped_errors() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let http = http();
    let chat = format!("{}/v1/chat/completions", up.base);
    let ok_body = json!({"messages": [{"role": "user", "content": "hi"}]});

    let r = http.post(&chat).json(&ok_body).send().await.unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let (s, e) = error_of(r).await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );

    let (s, _) = error_of(
        http.post(&chat)
            .bearer_auth("not.a.jwt")
            .json(&ok_body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);

    let t = token(&http, &up.base, &up.infer.0, &up.infer.1).await;
    let send_raw = |body: &'static str| {
        http.post(&chat)
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (s, e) = error_of(send_raw("{not json").await.unwrap()).await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    let (s, e) = error_of(
        send_raw(r#"{"messages":[{"role":"user","content":"x"}],"chat_template":"evil"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat_template")
    );
    let (s, e) = error_of(
        send_raw(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":100000}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );
    let (s, e) = error_of(
        send_raw(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let big = "x".repeat(3 * 1024 * 1024);
    let (s, _) = error_of(
        http.post(&chat)
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 413);

    let (s, e) = error_of(
        http.get(format!("{}/v1/nothing-here", up.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = error_of(http.get(&chat).bearer_auth(&t).send().await.unwrap()).await;
    assert_eq!(s, 405);

    // Token endpoint, RFC 6749 §5.2.
    let tok = format!("{}/oauth/token", up.base);
    let r = http
        .post(&tok)
        .basic_auth(&up.infer.0, Some("wrong-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let (s, e) = error_of(r).await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_client")));
    let (s, e) = error_of(
        http.post(&tok)
            .basic_auth(&up.infer.0, Some(&up.infer.1))
            .form(&[("grant_type", "password")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (s, e) = error_of(
        http.post(&tok)
            .basic_auth(&up.infer.0, Some(&up.infer.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &up.infer.0),
                ("client_secret", &up.infer.1),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_request")));
    let (s, e) = error_of(
        http.post(&tok)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &up.infer.0),
                ("client_secret", &up.infer.1),
                ("scope", "admin"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_scope")));
    // Form-field authentication and scope narrowing.
    let v: Value = http
        .post(&tok)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &up.admin.0),
            ("client_secret", &up.admin.1),
            ("scope", "infer"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["scope"].as_str(), v["token_type"].as_str()),
        (Some("infer"), Some("Bearer"))
    );
    assert_eq!(v["expires_in"], 3600);
}

#[test]
fn invalid_configs_exit_2_naming_key_value_and_rule() {
    let dir = temp_dir();
    let cases = [
        ("[gateway]\nlisten = \"nowhere\"\n", "gateway.listen"),
        ("[gateway]\nbogus_key = 1\n", "bogus_key"),
        (
            "[auth]\nhs256_secret = \"short\"\n[cluster]\nsecret = \"0123456789abcdef0123\"\n",
            "auth.hs256_secret",
        ),
        (
            "[auth]\nhs256_secret = \"your-super-secret-jwt-key-change-in-production\"\n[cluster]\nsecret = \"0123456789abcdef0123\"\n",
            "published example",
        ),
        (
            "[[tenants]]\nid = \"t\"\npriority = \"urgent\"\n",
            "tenants[0].priority",
        ),
    ];
    for (toml, needle) in cases {
        let path = write(dir.path(), "bad.toml", toml);
        let (code, _, err) = run_to_end(
            dir.path(),
            &["gateway", "--config", path.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(err.contains(needle), "{toml}: expected {needle} in {err}");
    }
    // A gateway with no signing secret at all is refused too.
    let path = write(
        dir.path(),
        "empty.toml",
        "[cluster]\nsecret = \"0123456789abcdef0123\"\n",
    );
    let (code, _, err) = run_to_end(
        dir.path(),
        &["gateway", "--config", path.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("auth.hs256_secret"), "{err}");
}

#[test]
fn check_config_masks_secrets_and_applies_env_overrides() {
    let dir = temp_dir();
    let path = write(
        dir.path(),
        "ok.toml",
        "[auth]\nhs256_secret = { env = \"MY_JWT\" }\n[[tenants]]\nid = \"acme\"\n[[clients]]\nid = \"c1\"\ntenant = \"acme\"\nsecret = \"a-client-secret-0123456789\"\n",
    );
    let (code, out, err) = run_to_end(
        dir.path(),
        &["check-config", "--config", path.to_str().unwrap()],
        &[
            ("MY_JWT", "jwt-secret-value-that-is-long-enough-0123"),
            ("TOLLGATE_GATEWAY__LISTEN", "127.0.0.1:9999"),
            // The bench's secret variable shares the prefix but is no config key.
            ("TOLLGATE_BENCH_SECRET", "not-a-config-key"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["gateway"]["listen"], "127.0.0.1:9999");
    assert_eq!(v["auth"]["hs256_secret"], "***");
    assert!(!out.contains("jwt-secret-value") && !out.contains("a-client-secret"));
}

#[test]
fn a_stray_tollgate_variable_is_ignored_with_a_warning_but_an_unknown_key_fails() {
    let dir = temp_dir();
    let path = write(
        dir.path(),
        "ok.toml",
        "[auth]\nhs256_secret = \"jwt-secret-value-that-is-long-enough-0123\"\n",
    );
    let config = path.to_str().unwrap();
    let (code, _, err) = run_to_end(
        dir.path(),
        &["check-config", "--config", config],
        &[("TOLLGATE_BIN", "x")],
    );
    assert_eq!(code, 0, "{err}");
    let warnings: Vec<_> = err.lines().filter(|l| l.contains("TOLLGATE_BIN")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    let (code, _, err) = run_to_end(
        dir.path(),
        &["check-config", "--config", config],
        &[("TOLLGATE_GATEWAY__NO_SUCH_KEY", "x")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no_such_key"), "{err}");
}

/// Gateway, worker and simulators as separate processes, as on a real cluster.
#[tokio::test]
async fn separate_gateway_worker_and_sim_processes_serve_requests() {
    let dir = temp_dir();
    let secret = "cluster-secret-for-tests-0123456789";
    let mut sims = Vec::new();
    for i in 0..2 {
        let mut cmd = command(dir.path());
        cmd.args(["sim", "--port", "0", "--time-scale", "100"]);
        let p = Proc::spawn(&format!("sim{i}"), cmd);
        let addr = p.listening("sim");
        sims.push((p, format!("http://{addr}")));
    }
    let mut cmd = command(dir.path());
    cmd.args([
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--shard",
        &sims[0].1,
        "--shard",
        &sims[1].1,
    ])
    .env("TOLLGATE_CLUSTER__SECRET", secret);
    let worker = Proc::spawn("worker", cmd);
    let worker_url = format!("http://{}", worker.listening("worker"));
    let config = write(
        dir.path(),
        "gw.toml",
        "[auth]\nhs256_secret = { env = \"JWT\" }\n[[tenants]]\nid = \"acme\"\n[[clients]]\nid = \"c1\"\ntenant = \"acme\"\nsecret = { env = \"C1\" }\n",
    );
    let mut cmd = command(dir.path());
    cmd.args([
        "gateway",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--worker",
        &worker_url,
    ])
    .env("TOLLGATE_CLUSTER__SECRET", secret)
    .env("JWT", "jwt-secret-for-the-separate-process-test")
    .env("C1", "client-one-secret-0123456789");
    let gw = Proc::spawn("gateway", cmd);
    let base = format!("http://{}", gw.listening("gateway"));
    let http = http();
    wait_ready(&http, &format!("{base}/readyz")).await;
    let t = token(&http, &base, "c1", "client-one-secret-0123456789").await;
    for _ in 0..4 {
        let v: Value = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&t)
            .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
    }
    // The worker refuses callers without the cluster credential.
    let r = http
        .get(format!("{worker_url}/internal/v1/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{worker_url}/internal/v1/load"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    let load: Value = r.json().await.unwrap();
    assert_eq!(load["shards"].as_array().unwrap().len(), 2);
}
