//! Benchmarks of the per-request token check, run on demand:
//! `cargo test --release -p tollgate-gateway auth::bench -- --ignored --nocapture`.
//! They print figures and assert nothing about speed.

use std::time::Instant;

use tollgate_shared::config::{
    ClientConfig, ClientCredential, JwtAlgorithm, Limits, Priority, Scope, TenantConfig,
};
use tollgate_shared::secret::Secret;
use tollgate_shared::store::Redis;
use tollgate_shared::testing::RedisServer;

use super::jwt::tests::{KEY, config, test_keys};
use super::registry::Registry;
use super::{TokenService, secret};

const ROUNDS: u32 = 20_000;

fn per_op(started: Instant, n: u32) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn registry(redis: Option<Redis>) -> Registry {
    let tenants = [TenantConfig {
        id: "acme".into(),
        priority: Priority::Normal,
        weight: 1,
        limits: Limits::default(),
    }];
    let clients = [ClientConfig {
        id: "c1".into(),
        credential: ClientCredential::Secret(Secret::new("bench-secret-0123456789".into())),
        tenant: "acme".into(),
        scopes: vec![Scope::Infer],
        limits: Limits::default(),
        disabled: false,
    }];
    Registry::new(&tenants, &clients, redis, 1).unwrap()
}

#[tokio::test]
#[ignore = "benchmark: run on demand with --ignored"]
async fn token_verification_cost_per_request() {
    let server = RedisServer::start();
    let local = registry(None);
    let shared = registry(Some(Redis::new(&server.config("bench:")).unwrap()));
    shared.sync().await.unwrap();
    for (alg, key) in [
        (JwtAlgorithm::HS256, KEY.to_owned()),
        (JwtAlgorithm::RS256, test_keys::rsa().0),
        (JwtAlgorithm::ES256, test_keys::ec().0),
        (JwtAlgorithm::EdDSA, test_keys::ed().0),
    ] {
        let tokens = TokenService::new(&config(alg, &key)).unwrap();
        let (token, _) = tokens.issue("c1", "acme", "infer", 0).unwrap();
        let t = Instant::now();
        for _ in 0..ROUNDS {
            std::hint::black_box(tokens.verify(&token).unwrap());
        }
        let verify = per_op(t, ROUNDS);
        let t = Instant::now();
        for _ in 0..ROUNDS {
            let c = tokens.verify(&token).unwrap();
            std::hint::black_box(local.admit(&c.sub, &c.tid, c.generation, &c.jti).unwrap());
        }
        let with_view = per_op(t, ROUNDS);
        let n = ROUNDS / 10;
        let t = Instant::now();
        for _ in 0..n {
            let c = tokens.verify(&token).unwrap();
            let revoked = shared.revoked_in_store(&c.jti).await.unwrap().unwrap();
            assert!(!revoked);
        }
        let with_round_trip = per_op(t, n);
        println!(
            "{:<6} verify {verify:>7.1} µs | + local revocation view {with_view:>7.1} µs | + Redis EXISTS round trip {with_round_trip:>7.1} µs",
            alg.as_str()
        );
    }
}

#[test]
#[ignore = "benchmark: run on demand with --ignored"]
fn argon2_check_cost() {
    let mut memory = secret::Memory::new();
    let hash = secret::hash("bench-secret-0123456789", &mut memory).unwrap();
    let n = 40;
    let t = Instant::now();
    for _ in 0..n {
        assert!(secret::verify(
            "bench-secret-0123456789",
            &hash,
            &mut memory
        ));
    }
    let each = t.elapsed() / n;
    println!(
        "argon2id m={} KiB t={} p={}: {:.1} ms per check, {:.0} checks/s per core",
        secret::MEMORY_KIB,
        secret::PASSES,
        secret::LANES,
        each.as_secs_f64() * 1e3,
        1.0 / each.as_secs_f64().max(f64::EPSILON)
    );
}
