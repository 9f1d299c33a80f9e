//! Exactly one audit record per request, whatever its answer, with the
//! right fields; the audit API over the Redis stream.

use serde_json::{Value, json};

use super::common::observability::*;
use super::common::*;
use super::{chat, request_id};

/// What one request was answered, to hold its audit record against.
struct Made {
    id: String,
    status: u16,
    code: Option<String>,
    client: Option<&'static str>,
    route: &'static str,
}

async fn made(r: reqwest::Response, client: Option<&'static str>, route: &'static str) -> Made {
    let id = request_id(&r);
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .or(body["error"].as_str())
        .map(str::to_owned);
    Made {
        id,
        status,
        code,
        client,
        route,
    }
}

/// Every record the audit API gives for `query`, page after page (newest first).
async fn api_pages(http: &reqwest::Client, base: &str, admin: &str, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/admin/audit?{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["source"], "redis");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 4, "a page holds at most `limit` records");
        all.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

/// Polls `/v1/admin/stats` until the gateway sees worker `w2` up (or not),
/// keeping each poll among the requests made.
async fn wait_for_w2(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    done: &mut Vec<Made>,
    up: bool,
) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = http
            .get(format!("{base}/v1/admin/stats"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        let id = request_id(&r);
        let stats: Value = r.json().await.unwrap();
        done.push(Made {
            id,
            status: 200,
            code: None,
            client: Some("boss"),
            route: "/v1/admin/stats",
        });
        let w2_up =
            stats["workers"].as_array().unwrap().iter().any(|w| {
                w["worker"] == "w2" && w["up"] == true && w["shards"][0]["healthy"] == true
            });
        if w2_up == up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "w2 never became up={up}: {stats}"
        );
        // A poll interval, not a synchronisation: the loop ends on what the gateway says.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_token_request_leaves_one_record_its_token_event() {
    let cluster = Cluster::start(Spec::default()).await;
    let http = http();
    let base = &cluster.base;
    let token = |secret: &'static str| {
        http.post(format!("{base}/oauth/token"))
            .basic_auth(READER.0, Some(secret))
            .header("user-agent", "token-test/1")
            .form(&[("grant_type", "client_credentials")])
            .send()
    };
    let issued = token(READER.1).await.unwrap();
    assert_eq!(issued.status(), 200);
    let denied = token("wrong-secret").await.unwrap();
    assert_eq!(denied.status(), 401);
    let cases = [
        (request_id(&issued), "token_issued", 200, None),
        (
            request_id(&denied),
            "token_denied",
            401,
            Some("invalid_client"),
        ),
    ];
    let ids: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let by_id = request_records(&cluster.audit_path(), &ids).await;
    let all = audit_records(&cluster.audit_path());
    for (id, event, status, code) in cases {
        let mine: Vec<&Value> = all.iter().filter(|r| r["request_id"] == id).collect();
        assert_eq!(mine.len(), 1, "one record for {id}: {mine:#?}");
        assert_eq!(by_id[&id].len(), 1);
        let r = mine[0];
        assert_eq!(r["event"], event, "{r}");
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(r["error_code"].as_str(), code, "{r}");
        assert_eq!(r["client_id"], READER.0, "{r}");
        assert_eq!(r["route"], "/oauth/token", "{r}");
        assert_eq!(r["user_agent"], "token-test/1", "{r}");
        assert!(r["latency_ms"].is_u64() && r["ip"] == "127.0.0.1", "{r}");
    }
}

#[tokio::test]
async fn every_request_leaves_exactly_one_record_whatever_its_answer() {
    let mut cluster = Cluster::start(Spec {
        redis: true,
        ..Spec::default()
    })
    .await;
    let http = http();
    let base = &cluster.base;
    let mut done: Vec<Made> = Vec::new();
    let form = [("grant_type", "client_credentials")];

    // Tokens: issued (200) and refused (401).
    let mut tokens = Vec::new();
    for client in [READER, BOSS, SLOW] {
        let r = http
            .post(format!("{base}/oauth/token"))
            .basic_auth(client.0, Some(client.1))
            .form(&form)
            .send()
            .await
            .unwrap();
        let id = request_id(&r);
        let v: Value = r.json().await.unwrap();
        tokens.push(v["access_token"].as_str().unwrap().to_owned());
        done.push(Made {
            id,
            status: 200,
            code: None,
            client: None,
            route: "/oauth/token",
        });
    }
    let (reader, boss, slow) = (tokens[0].clone(), tokens[1].clone(), tokens[2].clone());
    let r = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(READER.0, Some("wrong-secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    done.push(made(r, None, "/oauth/token").await);

    let hello = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4});
    // 200, non-streamed and streamed.
    done.push(
        made(
            chat(&http, base, &reader, hello.clone()).await,
            Some("reader"),
            "/v1/chat/completions",
        )
        .await,
    );
    let r = chat(&http, base, &reader, json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": true})).await;
    let id = request_id(&r);
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    done.push(Made {
        id,
        status: 200,
        code: None,
        client: Some("reader"),
        route: "/v1/chat/completions",
    });
    // A stream whose client leaves after the first token.
    let r = chat(&http, base, &reader, json!({"messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 2000, "stream": true})).await;
    let id = request_id(&r);
    let mut body = r.bytes_stream();
    let first = tokio::time::timeout(fleet::STREAM_GUARD, futures::StreamExt::next(&mut body))
        .await
        .unwrap();
    assert!(first.is_some());
    drop(body);
    done.push(Made {
        id,
        status: 200,
        code: Some("client_disconnected".into()),
        client: Some("reader"),
        route: "/v1/chat/completions",
    });
    // 401 without a token and with a bad one, 403 without the scope.
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&hello)
        .send()
        .await
        .unwrap();
    done.push(made(r, None, "/v1/chat/completions").await);
    done.push(
        made(
            chat(&http, base, "eyJhbGciOiJIUzI1NiJ9.e30.bad", hello.clone()).await,
            None,
            "/v1/chat/completions",
        )
        .await,
    );
    let r = http
        .get(format!("{base}/v1/admin/audit"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    done.push(made(r, Some("reader"), "/v1/admin/audit").await);
    // 404, 405, 413, 400.
    let r = http.get(format!("{base}/v1/nowhere")).send().await.unwrap();
    done.push(made(r, None, "/v1/nowhere").await);
    let r = http
        .get(format!("{base}/v1/chat/completions"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    done.push(made(r, None, "/v1/chat/completions").await);
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    done.push(
        made(
            chat(&http, base, &reader, big).await,
            Some("reader"),
            "/v1/chat/completions",
        )
        .await,
    );
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&reader)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    done.push(made(r, Some("reader"), "/v1/chat/completions").await);
    // 429: the tight tenant's one request a minute.
    done.push(
        made(
            chat(&http, base, &slow, hello.clone()).await,
            Some("slow"),
            "/v1/chat/completions",
        )
        .await,
    );
    done.push(
        made(
            chat(&http, base, &slow, hello.clone()).await,
            Some("slow"),
            "/v1/chat/completions",
        )
        .await,
    );
    // An admin call.
    let r = http
        .get(format!("{base}/v1/admin/tenants"))
        .bearer_auth(&boss)
        .send()
        .await
        .unwrap();
    done.push(made(r, Some("boss"), "/v1/admin/tenants").await);

    // Upstream failure: the worker's vLLM answers 500 to everything.
    let worker_addr = cluster.worker_url.trim_start_matches("http://").to_owned();
    cluster.worker.signal("KILL");
    cluster.worker.wait_exit();
    let (failing, failing_url) = {
        let mut cmd = command(cluster.dir.path());
        cmd.args([
            "sim",
            "--port",
            "0",
            "--fail-rate",
            "1",
            "--fail-status",
            "500",
        ]);
        let p = Proc::spawn("failing sim", cmd);
        let url = format!("http://{}", p.listening("sim"));
        (p, url)
    };
    let mut cmd = command(cluster.dir.path());
    cmd.args([
        "worker",
        "--shard",
        &failing_url,
        "--listen",
        &worker_addr,
        "--id",
        "w2",
    ])
    .env("TOLLGATE_CLUSTER__SECRET", CLUSTER_SECRET);
    let worker2 = Proc::spawn("worker w2", cmd);
    worker2.listening("worker");
    // Asked of the gateway itself; each question is a request, recorded too.
    wait_for_w2(&http, base, &boss, &mut done, true).await;
    let failed = made(
        chat(&http, base, &reader, hello.clone()).await,
        Some("reader"),
        "/v1/chat/completions",
    )
    .await;
    assert!(failed.status >= 500, "vLLM failing: {}", failed.status);
    done.push(failed);
    // No worker at all: shed after the queue timeout.
    drop(worker2);
    drop(failing);
    wait_for_w2(&http, base, &boss, &mut done, false).await;
    let shed = made(
        chat(&http, base, &reader, hello.clone()).await,
        Some("reader"),
        "/v1/chat/completions",
    )
    .await;
    assert_eq!(shed.status, 503);
    done.push(shed);

    let ids: Vec<String> = done.iter().map(|m| m.id.clone()).collect();
    let by_id = request_records(&cluster.audit_path(), &ids).await;
    for m in &done {
        let records = &by_id[&m.id];
        assert_eq!(records.len(), 1, "one record for {}: {records:#?}", m.id);
        let r = &records[0];
        assert_eq!(r["status"], m.status, "{r}");
        assert_eq!(r["route"], m.route, "{r}");
        assert_eq!(r["error_code"].as_str(), m.code.as_deref(), "{r}");
        if let Some(c) = m.client {
            assert_eq!(r["client_id"], c, "{r}");
        }
        assert!(
            r["latency_ms"].is_u64() && r["ts"].is_string() && r["ip"] == "127.0.0.1",
            "{r}"
        );
    }
    // Nothing more: every request made is one record, no request two.
    let total = audit_records(&cluster.audit_path())
        .iter()
        .filter(|r| is_request_record(r))
        .count();
    assert_eq!(total, done.len());

    let ok = &by_id[&done[4].id][0];
    assert_eq!(done[4].route, "/v1/chat/completions");
    assert_eq!(
        (ok["tenant"].as_str(), ok["priority"].as_str()),
        (Some("acme"), Some("high"))
    );
    assert_eq!(ok["worker"], cluster.worker_url);
    assert_eq!(ok["shard"], 0);
    assert_eq!(ok["prompt_chars"], 5);
    assert_eq!(ok["prompt_sha256"].as_str().unwrap().len(), 64);
    assert!(ok["queue_ms"].is_u64() && ok["prompt_tokens"].as_u64() > Some(0));
    assert!(ok["completion_tokens"].as_u64() <= Some(4) && ok["finish_reason"].is_string());
    let streamed = &by_id[&done[5].id][0];
    assert!(
        streamed["ttft_ms"].as_u64() <= streamed["latency_ms"].as_u64(),
        "{streamed}"
    );
    let left = &by_id[&done[6].id][0];
    assert!(
        left["completion_tokens"].as_u64() >= Some(1),
        "what was produced is counted: {left}"
    );

    // The API reads the Redis stream: every record of a client, newest first, page by page.
    let in_file: Vec<Value> = audit_records(&cluster.audit_path())
        .into_iter()
        .filter(|r| r["client_id"] == "reader")
        .collect();
    // The stream's writer is its own task: wait until it caught up with the file.
    let from_api = eventually("the stream to hold what the file holds", || {
        let (http, base, boss, want) = (http.clone(), base.clone(), boss.clone(), in_file.len());
        async move {
            let got = api_pages(&http, &base, &boss, "client_id=reader&limit=4").await;
            (got.len() == want).then_some(got)
        }
    })
    .await;
    // The same records; their order may differ where two requests ended at
    // once (each sink keeps the order in which the records reached it).
    let key = |r: &Value| format!("{} {} {}", r["ts"], r["request_id"], r["event"]);
    let (mut from_api, mut in_file) = (from_api, in_file);
    from_api.sort_by_key(key);
    in_file.sort_by_key(key);
    assert_eq!(
        from_api, in_file,
        "the API and the file hold the same records"
    );
    let logs: Value = http
        .get(format!("{base}/v1/logs?tenant=tight&limit=1000"))
        .bearer_auth(&boss)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tight: Vec<&Value> = logs["data"].as_array().unwrap().iter().collect();
    assert!(
        tight.iter().all(|r| r["tenant"] == "tight") && tight.len() >= 3,
        "{logs}"
    );
    let future: Value = http
        .get(format!("{base}/v1/admin/audit?since=2999-01-01T00:00:00Z"))
        .bearer_auth(&boss)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(future["data"], json!([]));
    let bad = http
        .get(format!("{base}/v1/admin/audit?limit=0"))
        .bearer_auth(&boss)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
