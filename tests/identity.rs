//! Identity and access across gateway replicas, black-box: real
//! redis-server, two `tollgate gateway` processes and a worker. The registry
//! and its admin API, revocation, disabling and rotation seen by every
//! replica, failing closed without Redis, scopes and tenant boundaries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::identity::*;
use common::*;
use serde_json::{Value, json};

async fn chat(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    debug: bool,
    stream: bool,
) -> reqwest::Response {
    let mut r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": stream}));
    if debug {
        r = r.header("x-tollgate-debug", "1");
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn registry_changes_revocations_and_kills_reach_every_replica() {
    let c = Cluster::start(2, &hs256_auth()).await;
    let (a, b, http) = (&c.bases[0], &c.bases[1], &c.http);
    let ops = token_for(http, a, OPS.0, OPS.1, None).await;
    let admin = |method: reqwest::Method, base: &str, path: &str| {
        http.request(method, format!("{base}/v1/admin/{path}"))
            .bearer_auth(&ops)
    };

    // A tenant and a client made on A.
    let (s, _, t) = answer(
        admin(reqwest::Method::POST, a, "tenants")
            .json(&json!({"id": "initech", "priority": "low", "rpm": 100}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, t["priority"].as_str()), (201, Some("low")), "{t}");
    let (s, h, created) = answer(
        admin(reqwest::Method::POST, a, "clients")
            .json(&json!({"tenant": "initech", "scopes": ["infer"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(h["cache-control"], "no-store");
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tgs_"));

    // B sees it within a sync, and never shows its secret.
    let seen: String = eventually("the client on B", || async {
        let r = admin(reqwest::Method::GET, b, &format!("clients/{id}"))
            .send()
            .await
            .unwrap();
        (r.status() == 200).then_some(())?;
        Some(r.text().await.unwrap())
    })
    .await;
    assert!(
        !seen.contains(&secret) && !seen.contains("argon2") && !seen.contains("secret"),
        "{seen}"
    );
    let t1 = token_for(http, b, &id, &secret, None).await;
    assert_eq!(models(http, a, &t1).await.0, 200);
    assert_eq!(models(http, b, &t1).await.0, 200);

    // Revoked by its owner on A: refused on A at once, replayed on B refused within a sync.
    let r = http
        .post(format!("{a}/oauth/revoke"))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", &t1)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let (s, h, _) = models(http, a, &t1).await;
    assert_eq!(s, 401);
    assert!(www_authenticate(&h).contains("revoked"), "{h:?}");
    let (h, _) = models_become(http, b, &t1, 401).await;
    assert!(www_authenticate(&h).contains("invalid_token"));

    // Disabled on B: its live token dies on A, and it gets no new one.
    let t2 = token_for(http, a, &id, &secret, None).await;
    let (s, _, v) = answer(
        admin(reqwest::Method::PATCH, b, &format!("clients/{id}"))
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["disabled"].as_bool()), (200, Some(true)));
    models_become(http, a, &t2, 401).await;
    eventually("token requests of a disabled client to fail", || async {
        (token_request(http, a, &id, &secret, None).await.status() == 401).then_some(())
    })
    .await;
    // Enabled again: new tokens work, the one from before the disable stays dead.
    let (s, _, _) = answer(
        admin(reqwest::Method::PATCH, a, &format!("clients/{id}"))
            .json(&json!({"disabled": false}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let t3 = token_for(http, b, &id, &secret, None).await;
    assert_eq!(models(http, b, &t2).await.0, 401);
    assert_eq!(models(http, b, &t3).await.0, 200);

    // Rotated on A: the old secret and the live token stop working on B too.
    let (s, _, rotated) = answer(
        admin(
            reqwest::Method::POST,
            a,
            &format!("clients/{id}/rotate-secret"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    models_become(http, b, &t3, 401).await;
    eventually("the old secret to fail on B", || async {
        (token_request(http, b, &id, &secret, None).await.status() == 401).then_some(())
    })
    .await;
    let t4 = token_for(http, b, &id, &new_secret, None).await;
    assert_eq!(models(http, a, &t4).await.0, 200);

    // Mass assignment is refused, field by field.
    for (method, path, body, field) in [
        (
            reqwest::Method::PATCH,
            format!("clients/{id}"),
            json!({"secret_hash": "$argon2id$v=19$m=19456,t=2,p=1$AAAA$BBBB"}),
            "secret_hash",
        ),
        (
            reqwest::Method::PATCH,
            format!("clients/{id}"),
            json!({"tenant": "acme"}),
            "tenant",
        ),
        (
            reqwest::Method::POST,
            "clients".to_owned(),
            json!({"tenant": "initech", "secret": "chosen-by-me-0123456789"}),
            "secret",
        ),
        (
            reqwest::Method::POST,
            "clients".to_owned(),
            json!({"tenant": "initech", "generation": 0}),
            "generation",
        ),
        (
            reqwest::Method::PATCH,
            "tenants/initech".to_owned(),
            json!({"deleted": false}),
            "deleted",
        ),
    ] {
        let (s, _, e) = answer(admin(method, a, &path).json(&body).send().await.unwrap()).await;
        assert_eq!(
            (s, e["error"]["param"].as_str()),
            (400, Some(field)),
            "{body}: {e}"
        );
    }
    let listing = admin(reqwest::Method::GET, a, "clients")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listing.contains("secret") && !listing.contains("argon2"),
        "{listing}"
    );

    // Deletion: a tenant with clients stays; the client goes, and its tokens with it.
    let (s, _, _) = answer(
        admin(reqwest::Method::DELETE, b, "tenants/initech")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 409);
    let (s, _, _) = answer(
        admin(reqwest::Method::DELETE, b, &format!("clients/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    models_become(http, a, &t4, 401).await;
    eventually("the tenant to be deletable on A", || async {
        (admin(reqwest::Method::DELETE, a, "tenants/initech")
            .send()
            .await
            .unwrap()
            .status()
            == 200)
            .then_some(())
    })
    .await;
    let (s, _, _) = answer(
        admin(reqwest::Method::GET, a, "tenants/initech")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);

    // Every change and token event is audited, and no secret or token is in the trail.
    let events: Vec<String> = eventually("the audit records", || async {
        let all: Vec<Value> = (0..2).flat_map(|i| c.audit(i)).collect();
        let events: Vec<String> = all
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_owned())
            .collect();
        (events.iter().filter(|e| *e == "admin_change").count() >= 7).then_some(events)
    })
    .await;
    for e in ["token_issued", "token_denied", "token_revoked"] {
        assert!(events.iter().any(|x| x == e), "no {e} in {events:?}");
    }
    let text = c.audit_text();
    for s in [&secret, &new_secret, &t1, &t2, &ops, &OPS.1.to_owned()] {
        assert!(
            !text.contains(s.as_str()),
            "a secret or token reached the audit trail"
        );
    }
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed_with_503_then_recovers() {
    let mut c = Cluster::start(1, &hs256_auth()).await;
    let (a, http) = (c.bases[0].clone(), c.http.clone());
    let t = token_for(&http, &a, APP.0, APP.1, None).await;
    assert_eq!(models(&http, &a, &t).await.0, 200);
    c.redis.kill();
    let headers = eventually("the gateway to fail closed", || async {
        let (s, h, v) = models(&http, &a, &t).await;
        assert!(s == 200 || s == 503, "a valid token got {s}: {v}");
        (s == 503).then_some((h, v))
    })
    .await;
    assert!(headers.0.contains_key("retry-after"));
    assert_eq!(headers.1["error"]["code"], "auth_unavailable");
    let (s, h, v) = answer(token_request(&http, &a, APP.0, APP.1, None).await).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert!(h.contains_key("retry-after"));
    c.redis.restart();
    models_become(&http, &a, &t, 200).await;
}

#[tokio::test]
async fn scopes_debug_timing_bearer_rules_and_tenant_boundaries() {
    let c = Cluster::start(1, &hs256_auth()).await;
    let (a, http) = (&c.bases[0], &c.http);
    let app = token_for(http, a, APP.0, APP.1, None).await;
    let ops = token_for(http, a, OPS.0, OPS.1, None).await;

    // `dev` + x-tollgate-debug: 1 → the timing breakdown; nobody else gets it.
    let r = chat(http, a, &ops, true, false).await;
    assert_eq!(r.status(), 200);
    let timing = r.headers()["x-tollgate-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    for stage in ["auth;dur=", "dispatch;dur=", "relay;dur=", "total;dur="] {
        assert!(timing.contains(stage), "{timing}");
    }
    let r = chat(http, a, &ops, true, true).await;
    assert!(
        r.headers().contains_key("x-tollgate-timing"),
        "streamed answers carry it too"
    );
    r.text().await.unwrap();
    let r = http
        .post(format!("{a}/v1/generate"))
        .bearer_auth(&ops)
        .header("x-tollgate-debug", "1")
        .json(&json!({"prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-tollgate-timing"));
    assert!(
        !chat(http, a, &ops, false, false)
            .await
            .headers()
            .contains_key("x-tollgate-timing")
    );
    assert!(
        !chat(http, a, &app, true, false)
            .await
            .headers()
            .contains_key("x-tollgate-timing")
    );

    // Missing scope: 403 naming it.
    let admin_only = token_for(http, a, OPS.0, OPS.1, Some("admin")).await;
    let (s, h, e) = answer(chat(http, a, &admin_only, false, false).await).await;
    assert_eq!(
        (s, e["error"]["type"].as_str()),
        (403, Some("permission_error"))
    );
    let w = www_authenticate(&h);
    assert!(
        w.contains("error=\"insufficient_scope\"") && w.contains("scope=\"infer\""),
        "{w}"
    );
    let (s, h, _) = answer(
        http.get(format!("{a}/v1/admin/tenants"))
            .bearer_auth(&app)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 403);
    assert!(www_authenticate(&h).contains("scope=\"admin\""));

    // The scheme is case-insensitive; a token in the query string is refused, header or not.
    let (s, _, _) = answer(
        http.get(format!("{a}/v1/models"))
            .header("authorization", format!("bEaReR {app}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = answer(
        http.get(format!("{a}/v1/models?access_token={app}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    let (s, h, _) = answer(
        http.get(format!("{a}/v1/models?access_token={app}"))
            .bearer_auth(&app)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(www_authenticate(&h).contains("invalid_request"));

    // Tenant boundaries: a globex client reads nothing of acme's.
    let gx = token_for(http, a, GX.0, GX.1, None).await;
    for path in [
        "/v1/usage?tenant=acme",
        "/v1/admin/usage?tenant=acme",
        "/v1/admin/clients?tenant=acme",
        "/v1/admin/tenants/acme",
    ] {
        let (s, _, _) = answer(
            http.get(format!("{a}{path}"))
                .bearer_auth(&gx)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 403, "{path}");
    }

    // Revocation rights: not another client's token; an admin's bearer may; one's own always.
    let revoke =
        |auth: reqwest::RequestBuilder, token: &str| auth.form(&[("token", token.to_owned())]);
    let url = format!("{a}/oauth/revoke");
    let (s, _, e) = answer(
        revoke(http.post(&url).basic_auth(APP.0, Some(APP.1)), &ops)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("unauthorized_client")));
    assert_eq!(models(http, a, &ops).await.0, 200);
    let (s, _, _) = answer(
        revoke(
            http.post(&url).basic_auth(APP.0, Some(APP.1)),
            "not.a.token",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "RFC 7009 §2.2: an invalid token is not an error");
    let (s, _, _) = answer(
        revoke(http.post(&url).bearer_auth(&ops), &app)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(models(http, a, &app).await.0, 401);
    let own = token_for(http, a, GX.0, GX.1, None).await;
    let (s, _, _) = answer(
        revoke(http.post(&url).bearer_auth(&own), &own)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(models(http, a, &own).await.0, 401);
    let (s, _, e) = answer(revoke(http.post(&url), &gx).send().await.unwrap()).await;
    assert_eq!((s, e["error"].as_str()), (401, Some("invalid_client")));
}
