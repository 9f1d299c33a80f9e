//! Tokens and the token endpoint, black-box: attack tokens forged with
//! PyJWT, signing-key rotation across restarts, RFC 6749 client
//! authentication and brute-force backoff shared by replicas.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;

use common::identity::*;
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn attack_tokens_forged_with_pyjwt_are_refused_and_rotated_keys_still_verify() {
    let keys = temp_dir();
    forge_keys(keys.path());
    let pem = |name: &str| keys.path().join(name).to_str().unwrap().to_owned();
    let auth = format!(
        r#"algorithm = "RS256"
signing_key = {{ file = "{}" }}
kid = "rs-1"
[[auth.verify_keys]]
kid = "es-old"
algorithm = "ES256"
public_key = {{ file = "{}" }}
[[auth.verify_keys]]
kid = "ed-old"
algorithm = "EdDSA"
public_key = {{ file = "{}" }}
[[auth.verify_keys]]
algorithm = "HS256"
secret = "{JWT_SECRET}""#,
        pem("rs.key.pem"),
        pem("es.pub.pem"),
        pem("ed.pub.pem"),
    );
    let c = Cluster::start(1, &auth).await;
    let (a, http) = (&c.bases[0], &c.http);
    let spec = json!({
        "iss": "tollgate", "aud": "tollgate-api", "sub": APP.0, "tid": "acme", "scope": "infer",
        "other_tenant": "globex", "hs_secret": JWT_SECRET,
        "kids": {"rs": "rs-1", "es": "es-old", "ed": "ed-old"},
    });
    let tokens: serde_json::Map<String, Value> = serde_json::from_str(&forge(&[
        "tokens",
        keys.path().to_str().unwrap(),
        &spec.to_string(),
    ]))
    .unwrap();
    assert!(tokens.len() > 30);
    let mut wrong = Vec::new();
    for (name, token) in &tokens {
        let (s, h, _) = models(http, a, token.as_str().unwrap()).await;
        let ok = if name.starts_with("valid_") {
            s == 200
        } else {
            s == 401 && www_authenticate(&h).contains("invalid_token")
        };
        if !ok {
            wrong.push(format!("{name}: {s}"));
        }
    }
    assert!(wrong.is_empty(), "wrongly answered: {wrong:?}");

    // A bearer over the cap is refused before anyone parses it; a 1 MB one does
    // not even get through the HTTP layer (the connection is closed), and the
    // gateway carries on.
    let (s, h, _) = models(http, a, &"A".repeat(5000)).await;
    assert_eq!(s, 401);
    assert!(www_authenticate(&h).contains("too large"), "{h:?}");
    let huge = format!("Bearer {}", "A".repeat(1 << 20));
    if let Ok(r) = common::http()
        .get(format!("{a}/v1/models"))
        .header("authorization", huge)
        .send()
        .await
    {
        assert!(
            [400, 401, 413, 431].contains(&r.status().as_u16()),
            "{}",
            r.status()
        );
    }
    // A fresh connection: the refused one was closed by the gateway.
    assert_eq!(
        common::http()
            .get(format!("{a}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        models(http, a, tokens["valid_rs256"].as_str().unwrap())
            .await
            .0,
        200
    );

    // The published keys: public halves only, with their ids.
    let jwks: Value = http
        .get(format!("{a}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["rs-1", "es-old", "ed-old"]);
    for k in jwks["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(k.get(private).is_none(), "{k}");
        }
    }
    // PyJWT verifies the gateway's own token with nothing but that JWK Set.
    let ours = token_for(http, a, APP.0, APP.1, None).await;
    assert_eq!(jose_header(&ours)["kid"], "rs-1");
    let claims: Value = serde_json::from_str(&forge(&[
        "verify",
        &jwks.to_string(),
        &ours,
        "tollgate-api",
        "tollgate",
    ]))
    .unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["tid"].as_str()),
        (Some(APP.0), Some("acme"))
    );
}

#[tokio::test]
async fn signing_keys_rotate_across_restarts_without_killing_live_tokens() {
    let keys = temp_dir();
    forge_keys(keys.path());
    let pem = |name: &str| keys.path().join(name).to_str().unwrap().to_owned();
    let es = format!(
        "algorithm = \"ES256\"\nsigning_key = {{ file = \"{}\" }}\nkid = \"es-1\"",
        pem("es.key.pem")
    );
    let mut c = Cluster::start(1, &es).await;
    let http = c.http.clone();
    let old = token_for(&http, &c.bases[0], APP.0, APP.1, None).await;
    assert_eq!(jose_header(&old)["alg"], "ES256");

    // RS256 signs from now on; the ES256 key verifies until its tokens expire.
    let rs = format!(
        "algorithm = \"RS256\"\nsigning_key = {{ file = \"{}\" }}\nkid = \"rs-1\"",
        pem("rs.key.pem")
    );
    c.write_config(&format!(
        "{rs}\n[[auth.verify_keys]]\nkid = \"es-1\"\nalgorithm = \"ES256\"\npublic_key = {{ file = \"{}\" }}",
        pem("es.pub.pem")
    ));
    c.add_gateway().await;
    c.stop_gateway(0);
    let b = c.bases[0].clone();
    assert_eq!(
        models(&http, &b, &old).await.0,
        200,
        "a live token survives the rotation"
    );
    let new = token_for(&http, &b, APP.0, APP.1, None).await;
    assert_eq!(jose_header(&new)["kid"], "rs-1");
    let jwks: Value = http
        .get(format!("{b}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["rs-1", "es-1"]);

    // Once the old tokens have expired the old key goes, and with it whatever it signed.
    c.write_config(&rs);
    c.add_gateway().await;
    c.stop_gateway(0);
    let d = c.bases[0].clone();
    assert_eq!(models(&http, &d, &old).await.0, 401);
    assert_eq!(models(&http, &d, &new).await.0, 200);
}

#[tokio::test]
async fn token_endpoint_follows_rfc_6749_and_slows_brute_force_without_locking_out() {
    let c = Cluster::start(2, &hs256_auth()).await;
    let (a, b, http) = (&c.bases[0], &c.bases[1], &c.http);
    let tok = format!("{a}/oauth/token");

    // HTTP Basic with id and secret form-urlencoded first (RFC 6749 §2.3.1).
    let r = token_request(http, a, ODD.0, ODD.1, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        (
            r.headers()["cache-control"].to_str().unwrap(),
            r.headers()["pragma"].to_str().unwrap()
        ),
        ("no-store", "no-cache")
    );
    // Duplicate or missing grant_type, other grants, both methods, scope beyond the client.
    for (form, code) in [
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            "invalid_request",
        ),
        ("scope=infer", "invalid_request"),
        (
            "grant_type=password&username=u&password=p",
            "unsupported_grant_type",
        ),
        (
            "grant_type=client_credentials&scope=infer%20admin",
            "invalid_scope",
        ),
    ] {
        let (s, h, e) = answer(
            http.post(&tok)
                .basic_auth(APP.0, Some(APP.1))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((s, e["error"].as_str()), (400, Some(code)), "{form}");
        assert_eq!(h["cache-control"], "no-store");
    }
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        APP.0, APP.1
    );
    let (s, _, e) = answer(
        http.post(&tok)
            .basic_auth(APP.0, Some(APP.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_request")),
        "both methods at once"
    );

    // From an attacker's address: an unknown id and a wrong secret get the same answer.
    let attacker = reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let unknown = answer(
        token_request(
            &attacker,
            a,
            "no-such-client",
            "guess-0123456789abcdef",
            None,
        )
        .await,
    )
    .await;
    let wrong =
        answer(token_request(&attacker, a, APP.0, "guess-0123456789abcdef", None).await).await;
    assert_eq!((unknown.0, &unknown.2), (wrong.0, &wrong.2));
    assert_eq!(unknown.0, 401);
    assert_eq!(www_authenticate(&unknown.1), www_authenticate(&wrong.1));
    assert!(www_authenticate(&wrong.1).starts_with("Basic"));

    // Guessing on, all on replica a: a few more 401s, then 429 with Retry-After.
    let mut answers = vec![wrong.0];
    let refusal = loop {
        assert!(answers.len() < 16, "never slowed down: {answers:?}");
        let (s, h, v) =
            answer(token_request(&attacker, a, APP.0, "guess-0123456789abcdef", None).await).await;
        answers.push(s);
        if s == 429 {
            break (h, v);
        }
        assert_eq!(s, 401);
    };
    assert!(
        answers.iter().filter(|s| **s == 401).count() >= 5,
        "{answers:?}"
    );
    assert_eq!(refusal.1["error"], "slow_down");
    let wait: u64 = refusal.0["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 1);
    // Replica b never saw a guess from this address, yet slows it down at
    // once: the count is shared (a per-replica count would answer 401 here).
    let (s, _, v) =
        answer(token_request(&attacker, b, APP.0, "guess-0123456789abcdef", None).await).await;
    assert_eq!((s, v["error"].as_str()), (429, Some("slow_down")), "{v}");

    // The real client, from its own address, is not locked out...
    let owner = reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    assert_eq!(
        token_request(&owner, b, APP.0, APP.1, None).await.status(),
        200
    );
    // ...and from the attacker's address too once the wait is over: no lockout for good.
    eventually(
        "the right secret to work again from the slowed address",
        || async {
            (token_request(&attacker, a, APP.0, APP.1, None)
                .await
                .status()
                == 200)
                .then_some(())
        },
    )
    .await;
    let denied: Vec<Value> = eventually("slow_down audit records", || async {
        let d: Vec<Value> = (0..2)
            .flat_map(|i| c.audit(i))
            .filter(|r| r["error_code"] == "slow_down")
            .collect();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(denied[0]["ip"], "127.0.0.2");
}

/// `cargo nextest run --test identity_tokens bench --run-ignored only --no-capture`:
/// `/oauth/token` requests/s with the configured argon2 parameters, through
/// one Redis-backed replica. Prints figures; asserts nothing about speed.
#[tokio::test]
#[ignore = "benchmark: run on demand"]
async fn bench_token_endpoint_requests_per_second() {
    let c = Cluster::start(1, &hs256_auth()).await;
    let (a, http) = (c.bases[0].clone(), c.http.clone());
    token_for(&http, &a, APP.0, APP.1, None).await;
    let run = std::time::Duration::from_secs(5);
    for concurrency in [1usize, 2, 4, 8] {
        let started = std::time::Instant::now();
        let workers = (0..concurrency).map(|_| {
            let (http, a) = (http.clone(), a.clone());
            async move {
                let mut latencies = Vec::new();
                while started.elapsed() < run {
                    let t = std::time::Instant::now();
                    let r = token_request(&http, &a, APP.0, APP.1, None).await;
                    assert_eq!(r.status(), 200);
                    latencies.push(t.elapsed());
                }
                latencies
            }
        });
        let mut all: Vec<_> = futures::future::join_all(workers)
            .await
            .into_iter()
            .flatten()
            .collect();
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        println!(
            "/oauth/token concurrency {concurrency}: {:.1} req/s, p50 {:.1} ms, p99 {:.1} ms ({} requests)",
            all.len() as f64 / elapsed,
            all[all.len() / 2].as_secs_f64() * 1e3,
            all[all.len() * 99 / 100].as_secs_f64() * 1e3,
            all.len()
        );
    }
}
