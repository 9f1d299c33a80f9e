//! `GET /openapi.json`: an OpenAPI 3.1 description of every route the
//! gateway serves, and true to it: schemathesis, run against the live
//! gateway from that document, finds no 5xx, no answer outside the schema,
//! no schema-valid request refused and no invalid one accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::hardening::up_config;
use common::*;
use serde_json::{Value, json};
use tollgate_gateway::http::ROUTES;
use tollgate_gateway::http::openapi::{operations, served};

#[tokio::test]
async fn the_openapi_document_is_3_1_and_describes_every_served_route() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let http = http();
    // A discovery document: no token needed.
    let r = http
        .get(format!("{}/openapi.json", up.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    let documented = operations(&doc);
    assert_eq!(documented, served(), "documented routes vs served routes");

    // And each documented operation is one the live gateway routes: not the
    // 404 of an unknown path, nor a 405.
    for (method, path) in &documented {
        let url = format!("{}{}", up.base, path.replace("{id}", "x"));
        let r = http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}");
        assert_ne!(
            body["error"]["message"], "no such route",
            "{method} {path} is documented but not served"
        );
    }

    // What the document says of the security and of the errors.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["client_basic"]["scheme"], "basic");
    let chat = &doc["paths"]["/v1/chat/completions"]["post"];
    assert_eq!(chat["security"], json!([{"bearer": ["infer"]}]));
    for status in ["400", "401", "403", "404", "413", "429", "503"] {
        assert_eq!(
            chat["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorEnvelope",
            "{status}"
        );
    }
    let admin = &doc["paths"]["/v1/admin/tenants"]["post"];
    assert_eq!(admin["security"], json!([{"bearer": ["admin"]}]));
    assert_eq!(
        doc["paths"]["/oauth/token"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/OAuthErrorBody"
    );
}

/// The sacrificial tenant and client the fuzzed by-id operations act on
/// (see tests/openapi/schemathesis.toml): never the test's own.
async fn sacrificial_pair(http: &reqwest::Client, base: &str, admin: &str) {
    for (path, body) in [
        ("/v1/admin/tenants", json!({"id": "fuzz"})),
        ("/v1/admin/clients", json!({"id": "fuzz", "tenant": "fuzz"})),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test]
async fn schemathesis_finds_the_gateway_true_to_its_openapi_document() {
    let dir = temp_dir();
    // Generated requests ask for up to 8 × 8192 tokens: a fast simulator.
    let (proc, base) = up_config(
        dir.path(),
        "[sim]\ntime_scale = 1000\n",
        &[],
        &[],
        &http(),
        "http",
    )
    .await;
    let http = http();
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".tollgate/credentials.json")).unwrap(),
    )
    .unwrap();
    let admin = &creds["clients"][1];
    assert_eq!(admin["scopes"], json!(["infer", "admin"]));
    // Every scope the document names but `dev`, which only adds timings.
    let token = token(
        &http,
        &base,
        admin["client_id"].as_str().unwrap(),
        admin["client_secret"].as_str().unwrap(),
    )
    .await;
    sacrificial_pair(&http, &base, &token).await;

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/schemathesis.toml");
    let out = Command::new(python())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Every check: no 5xx, statuses, content types, headers and bodies
        // as documented, schema-valid requests accepted and invalid ones
        // refused, authentication not ignored, 405 with `Allow`.
        .args(["--checks", "all"])
        // The stateful phase would follow links the document does not declare.
        .args(["--phases", "examples,coverage,fuzzing"])
        // Enough to reach every operation's bounds; about 20 s here.
        .args(["--max-examples", "30"])
        // One request may ask for 8 × 8192 tokens, relayed by a debug build
        // on a busy machine: a bound against hanging, not a timing check.
        .args(["--request-timeout", "300"])
        .args(["--no-color", "--output-truncate", "false"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found the gateway and its document apart\nstdout:\n{stdout}\nstderr:\n{stderr}\ngateway log:\n{}",
        tail(&proc.stderr(), 40)
    );
    // It did test every operation (a document that failed to load tests
    // none) but `GET /openapi.json`, which schemathesis leaves out when it
    // is the document's own address (the other test covers it).
    let total = ROUTES.len() - 1;
    assert!(
        stdout.contains(&format!("Selected: {total}/{total}"))
            && stdout.contains(&format!("Tested: {total}\n")),
        "not every one of the {total} operations was tested:\n{stdout}"
    );
}
