//! Planted secrets appear in no log, span or audit record; control
//! characters cannot forge a record or reach a terminal.

use serde_json::json;

use super::common::observability::*;
use super::common::*;
use super::{chat, request_id};

#[tokio::test]
async fn planted_secrets_are_in_no_log_span_or_record() {
    let mut collector = Collector::start().await;
    let cluster = Cluster::start(Spec {
        otlp: Some((collector.endpoint(), "grpc")),
        env: vec![("TOLLGATE_TELEMETRY__AUDIT_PROMPT_SAMPLE", "true".into())],
        ..Spec::default()
    })
    .await;
    let http = http();
    let base = &cluster.base;
    let token = cluster.token(READER).await;
    let admin = cluster.token(BOSS).await;
    let fake_jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.c2VjcmV0LXNpZ25hdHVyZS12YWx1ZQ";
    let api_key = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e";
    let email = "jane.doe.planted@example.com";
    let wrong = "wrong-secret-planted-9e8d7c6b5a";
    let prompt = format!("my key is {api_key}, mail {email}, token {fake_jwt} and {token}");

    let mut ids = Vec::new();
    for stream in [false, true] {
        let r = chat(&http, base, &token, json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 3, "stream": stream})).await;
        assert_eq!(r.status(), 200);
        ids.push(request_id(&r));
        r.bytes().await.unwrap();
    }
    let r = http
        .post(format!("{base}/v1/completions"))
        .bearer_auth(&token)
        .json(&json!({"prompt": prompt, "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ids.push(request_id(&r));
    // A refused login, and one whose client id tries to forge log lines and colours.
    // (HTTP Basic splits at the first colon: the forged id has none.)
    for (id, secret) in [
        (READER.0, wrong),
        ("evil\r\n{\"event\" \"forged\"}\u{1b}[31m", wrong),
    ] {
        let r = http
            .post(format!("{base}/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        ids.push(request_id(&r));
    }
    let by_id = request_records(&cluster.audit_path(), &ids).await;
    let spans = collector
        .until("the three inference traces and the refusals", |s| {
            // Roots end last: once they are in, so is the rest of each trace.
            let roots = [
                "POST /v1/chat/completions",
                "POST /v1/chat/completions",
                "POST /v1/completions",
            ];
            ids[..3]
                .iter()
                .zip(roots)
                .all(|(id, root)| Trace::of(s, id).has(root))
                && ids[3..]
                    .iter()
                    .all(|id| Trace::of(s, id).has("POST /oauth/token"))
        })
        .await;
    let api = http
        .get(format!("{base}/v1/admin/audit?limit=1000"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let audit_text = std::fs::read_to_string(cluster.audit_path()).unwrap();
    let spans_text: String = spans
        .iter()
        .map(|s| format!("{} {}\n", s.name, s.raw))
        .collect();
    let corpora = [
        ("gateway log", cluster.gateway.stderr()),
        ("worker log", cluster.worker.stderr()),
        ("spans", spans_text),
        ("audit file", audit_text.clone()),
        ("audit API", api),
    ];
    for (what, text) in &corpora {
        assert!(!text.is_empty(), "{what} is empty");
        for secret in [
            READER.1,
            BOSS.1,
            wrong,
            token.as_str(),
            admin.as_str(),
            fake_jwt,
            api_key,
            email,
            CLUSTER_SECRET,
            JWT_SECRET,
        ] {
            assert!(
                !text.contains(secret),
                "{what} contains a planted secret: {secret}"
            );
        }
    }

    // What is kept of the prompt: its digest, its length, a masked sample.
    let r = &by_id[&ids[0]][0];
    assert_eq!(r["prompt_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(r["prompt_chars"], prompt.chars().count());
    let sample = r["prompt_sample"].as_str().unwrap();
    for mask in ["[api_key]", "[email]", "[jwt]"] {
        assert!(sample.contains(mask), "{sample}");
    }
    assert_eq!(
        by_id[&ids[1]][0]["prompt_sha256"], r["prompt_sha256"],
        "same prompt, same digest"
    );

    // A forged line stays inside its record, escaped.
    assert!(!audit_text.contains('\u{1b}'));
    let forged = audit_records(&cluster.audit_path());
    assert!(forged.iter().all(|r| r["event"] != "forged"));
    let denied = forged
        .iter()
        .find(|r| {
            r["client_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("evil"))
        })
        .expect("a record of the forging attempt");
    assert!(
        denied["client_id"].as_str().unwrap().contains("\\r\\n"),
        "{denied}"
    );
    assert!(
        denied["client_id"].as_str().unwrap().contains("\\u{1b}"),
        "{denied}"
    );
    for line in cluster.gateway.stderr().lines() {
        assert!(!line.contains('\u{1b}'), "a raw escape in the log: {line}");
    }
}
