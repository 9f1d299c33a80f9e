//! The limiter on a real Redis Cluster, where writes wait for a replica:
//! a settlement sent again after its call's answer was lost counts once,
//! and every key it writes shares the tenant's slot and expires.

use std::time::Duration;

use tollgate_shared::config::{Limits, RedisFailureMode};
use tollgate_shared::store::Redis;
use tollgate_shared::testing::RedisCluster;

use super::tests::{DAY, subject, usage};
use super::*;

#[tokio::test]
async fn a_settlement_sent_again_counts_once_and_every_key_shares_the_tenants_slot() {
    let cluster = RedisCluster::start();
    let redis = Redis::new(&cluster.config("cl:")).unwrap();
    assert!(redis.waits_for_replicas());
    // `local`: a verdict stands when its write is late to reach the replica
    // (a busy machine); `closed` would refuse it.
    let l = Limiter::new(
        Some(redis.clone()),
        RedisFailureMode::Local,
        1,
        Duration::from_secs(30),
        DAY,
    );
    let limits = Limits {
        rpm: Some(100),
        tpm: Some(10_000),
        max_concurrency: Some(1),
        daily_tokens: Some(100_000),
    };
    let s = subject("c1", limits, limits);
    let (t, _) = l.admit(&s, 100).await.unwrap();
    assert!(l.admit(&s, 100).await.is_err(), "max_concurrency = 1");
    // The same settlement twice, as a retry after a lost answer sends it.
    let used = usage(10, 20);
    let ttl_ms = 30_000;
    for _ in 0..2 {
        let (v, _) = redis::step(&redis, &t.state_key, &[(&t, &used)], &[], ttl_ms, DAY)
            .await
            .unwrap();
        assert!(v.is_empty());
    }
    let today = now_ms() / 86_400_000;
    let days = l.usage().query(Some("acme"), today, today).await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].total.requests, 1, "counted once");
    assert_eq!(days[0].total.completion_tokens, 20);
    // Its lease came back once: the next request gets in, the one after not.
    let (_held, _) = l.admit(&s, 100).await.unwrap();
    assert!(l.admit(&s, 100).await.is_err());

    // Limits, usage and the settled ids: one slot, the tenant's; all expire.
    let keys = [
        "cl:{acme}:limits".to_owned(),
        format!("cl:{{acme}}:usage:{}", crate::audit::utc_date(today)),
        "cl:{acme}:settled".to_owned(),
    ];
    let port = cluster.primary_of(&keys[0]);
    for k in &keys {
        assert_eq!(cluster.primary_of(k), port);
        match cluster.query(port, &["PTTL", k]) {
            Some(::redis::Value::Int(ms)) => assert!(ms > 0, "{k} has no TTL ({ms})"),
            other => panic!("PTTL {k}: {other:?}"),
        }
    }
}
