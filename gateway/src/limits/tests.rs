//! One suite, two backends: every case runs against the in-memory limiter and
//! against a real `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use tollgate_shared::config::{Limits, RedisFailureMode};
use tollgate_shared::openai::Usage;
use tollgate_shared::store::Redis;
use tollgate_shared::testing::RedisServer;

use super::*;

pub(super) const DAY: Duration = Duration::from_secs(86_400);

fn limits(rpm: Option<u64>, tpm: Option<u64>, conc: Option<u64>) -> Limits {
    Limits {
        rpm,
        tpm,
        max_concurrency: conc,
        daily_tokens: None,
    }
}

pub(super) fn subject<'a>(client: &'a str, tenant: Limits, own: Limits) -> Subject<'a> {
    Subject {
        tenant: "acme",
        client,
        tenant_limits: tenant,
        client_limits: own,
    }
}

pub(super) fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

/// The backends: memory, and Redis (the server must outlive the limiter).
pub(super) fn backends(mode: RedisFailureMode) -> Vec<(Arc<Limiter>, Option<RedisServer>)> {
    let server = RedisServer::start();
    let mut cfg = server.config("test:");
    cfg.on_failure = mode;
    let redis = Redis::new(&cfg).unwrap();
    vec![
        (
            Limiter::new(None, mode, 1, Duration::from_secs(30), DAY),
            None,
        ),
        (
            Limiter::new(Some(redis), mode, 2, Duration::from_secs(30), DAY),
            Some(server),
        ),
    ]
}

#[tokio::test]
async fn concurrent_requests_admit_exactly_the_rpm() {
    for (l, _server) in backends(RedisFailureMode::Local) {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.admit(
                        &subject("c1", Limits::default(), limits(Some(60), None, None)),
                        0,
                    )
                    .await
                })
            })
            .collect();
        let mut admitted = 0;
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(Refusal::Limited {
                    kind,
                    retry_after_ms,
                    headroom,
                }) => {
                    assert_eq!(kind, LimitKind::RequestsPerMinute);
                    let ms = retry_after_ms.unwrap();
                    assert!(ms > 0 && ms <= 60_000, "{ms}");
                    assert_eq!(headroom.requests.unwrap().remaining, 0);
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((admitted, refused), (60, 140));
    }
}

#[tokio::test]
async fn the_tenant_caps_its_clients_together_and_client_values_override_defaults() {
    for (l, _server) in backends(RedisFailureMode::Local) {
        let tenant = limits(Some(3), None, None);
        // c1 has its own rpm of 2; c2 inherits the tenant's 3 as its default.
        assert!(
            l.admit(&subject("c1", tenant, limits(Some(2), None, None)), 0)
                .await
                .is_ok()
        );
        assert!(
            l.admit(&subject("c1", tenant, limits(Some(2), None, None)), 0)
                .await
                .is_ok()
        );
        assert!(
            l.admit(&subject("c1", tenant, limits(Some(2), None, None)), 0)
                .await
                .is_err()
        );
        assert!(
            l.admit(&subject("c2", tenant, Limits::default()), 0)
                .await
                .is_ok()
        );
        match l.admit(&subject("c2", tenant, Limits::default()), 0).await {
            Err(Refusal::Limited { kind, .. }) => assert_eq!(kind, LimitKind::RequestsPerMinute),
            other => panic!("the tenant's aggregate must refuse: {other:?}"),
        }
    }
}

#[tokio::test]
async fn tokens_are_reserved_then_settled_to_what_was_used() {
    for (l, _server) in backends(RedisFailureMode::Local) {
        let s = subject("c1", limits(None, Some(1000), None), Limits::default());
        let (t1, h) = l.admit(&s, 900).await.unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 100);
        assert!(matches!(
            l.admit(&s, 200).await,
            Err(Refusal::Limited {
                kind: LimitKind::TokensPerMinute,
                ..
            })
        ));
        l.settle_now(t1, usage(50, 50)).await;
        let (_, h) = l.admit(&s, 200).await.unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 700);
        assert!(matches!(
            l.admit(&s, 1001).await,
            Err(Refusal::Limited {
                retry_after_ms: None,
                ..
            })
        ));
    }
}

#[tokio::test]
async fn concurrency_leases_come_back_when_requests_end() {
    for (l, _server) in backends(RedisFailureMode::Local) {
        let s = subject("c1", limits(None, None, Some(2)), Limits::default());
        let (a, _) = l.admit(&s, 0).await.unwrap();
        let (_b, _) = l.admit(&s, 0).await.unwrap();
        assert!(matches!(
            l.admit(&s, 0).await,
            Err(Refusal::Limited {
                kind: LimitKind::Concurrency,
                ..
            })
        ));
        l.settle_now(a, usage(1, 1)).await;
        assert!(l.admit(&s, 0).await.is_ok());
    }
}

#[tokio::test]
async fn headroom_names_each_window_that_applies_also_on_a_concurrency_refusal() {
    for (l, _server) in backends(RedisFailureMode::Local) {
        let s = subject("c1", limits(Some(100), None, Some(1)), Limits::default());
        let (_held, h) = l.admit(&s, 5).await.unwrap();
        assert!(h.requests.is_some() && h.tokens.is_none(), "{h:?}");
        match l.admit(&s, 5).await {
            Err(Refusal::Limited {
                kind: LimitKind::Concurrency,
                headroom,
                ..
            }) => {
                let r = headroom.requests.unwrap();
                assert_eq!(r.remaining, r.limit - 1, "{headroom:?}");
                assert!(headroom.tokens.is_none());
                let names: Vec<_> = headers(&headroom).into_iter().map(|(n, _)| n).collect();
                assert_eq!(names.len(), 3, "{names:?}");
            }
            other => panic!("not a concurrency refusal: {other:?}"),
        }
        let free = subject("c2", Limits::default(), Limits::default());
        let (_, h) = l.admit(&free, 5).await.unwrap();
        assert!(headers(&h).is_empty(), "no limits, no pairs: {h:?}");
    }
}

#[tokio::test]
async fn usage_is_metered_per_tenant_client_and_day() {
    for (l, _server) in backends(RedisFailureMode::Local) {
        for (client, p, c) in [("c1", 10, 5), ("c1", 20, 6), ("c2", 1, 1)] {
            let (t, _) = l
                .admit(&subject(client, Limits::default(), Limits::default()), 0)
                .await
                .unwrap();
            l.settle_now(t, usage(p, c)).await;
        }
        let today = usage::day_of(now_ms() / 1000);
        let rows = l
            .usage()
            .query(Some("acme"), today - 1, today)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].total.requests, 3);
        assert_eq!(rows[0].total.prompt_tokens, 31);
        assert_eq!(rows[0].clients["c1"].completion_tokens, 11);
        assert_eq!(l.usage().query(None, today, today).await.unwrap(), rows);
        assert!(
            l.usage()
                .query(Some("other"), today, today)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn redis_down_degrades_as_configured_then_recovers() {
    let per_mode = [
        (RedisFailureMode::Local, "local"),
        (RedisFailureMode::Open, "open"),
        (RedisFailureMode::Closed, "closed"),
    ];
    for (mode, name) in per_mode {
        let mut server = RedisServer::start();
        let mut cfg = server.config("down:");
        cfg.on_failure = mode;
        // Two replicas share the limit: each enforces half while Redis is down.
        let l = Limiter::new(
            Some(Redis::new(&cfg).unwrap()),
            mode,
            2,
            Duration::from_secs(30),
            DAY,
        );
        let s = subject("c1", limits(Some(4), None, None), Limits::default());
        assert!(l.admit(&s, 0).await.is_ok(), "{name}");
        server.kill();
        let results: Vec<_> = futures::future::join_all((0..5).map(|_| l.admit(&s, 0))).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        match mode {
            RedisFailureMode::Local => assert_eq!(ok, 2, "local: limit ÷ replicas"),
            RedisFailureMode::Open => assert_eq!(ok, 5, "open: no limits"),
            RedisFailureMode::Closed => {
                assert_eq!(ok, 0);
                assert!(
                    results
                        .iter()
                        .all(|r| matches!(r, Err(Refusal::Unavailable)))
                );
            }
        }
        server.restart();
        // Back on Redis once its retry pause has passed: the shared counter is fresh.
        let mut recovered = false;
        for _ in 0..200 {
            if l.redis_up() && l.admit(&s, 0).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recovered, "{name}: did not recover");
    }
}

#[test]
fn reset_durations_read_like_openais() {
    assert_eq!(reset_text(20), "20ms");
    assert_eq!(reset_text(1000), "1s");
    assert_eq!(reset_text(1001), "2s");
    assert_eq!(reset_text(360_000), "6m0s");
}

/// Waits, if need be, until the UTC day has more than ten seconds left, so a
/// test's requests all fall on one day.
async fn clear_of_midnight() {
    let left = DAY.as_millis() as u64 - now_ms() % DAY.as_millis() as u64;
    if left < 10_000 {
        tokio::time::sleep(Duration::from_millis(left + 1000)).await;
    }
}

#[tokio::test]
async fn daily_tokens_refuse_until_midnight_and_settling_corrects_the_day() {
    clear_of_midnight().await;
    for (l, _server) in backends(RedisFailureMode::Local) {
        let tenant = Limits {
            daily_tokens: Some(1000),
            ..Limits::default()
        };
        let s = subject("c1", tenant, Limits::default());
        let (t1, _) = l.admit(&s, 900).await.unwrap();
        match l.admit(&s, 200).await {
            Err(Refusal::Limited {
                kind: LimitKind::DailyTokens,
                retry_after_ms: Some(ms),
                ..
            }) => {
                let midnight = DAY.as_millis() as u64 - now_ms() % DAY.as_millis() as u64;
                assert!(
                    ms.abs_diff(midnight) < 2000,
                    "{ms} ms, midnight in {midnight}"
                );
            }
            other => panic!("the day's budget must refuse: {other:?}"),
        }
        assert!(matches!(
            l.admit(&s, 1001).await,
            Err(Refusal::Limited {
                kind: LimitKind::DailyTokens,
                retry_after_ms: None,
                ..
            })
        ));
        // 100 used of the 900 reserved: the day is corrected to 100.
        l.settle_now(t1, usage(60, 40)).await;
        let (t2, _) = l.admit(&s, 900).await.unwrap();
        assert!(l.admit(&s, 1).await.is_err(), "1000 of 1000 used");
        l.settle_now(t2, usage(500, 0)).await;
        let (_, _) = l.admit(&s, 400).await.unwrap();
        assert!(l.admit(&s, 1).await.is_err(), "100 + 500 + 400 used");
    }
}

/// The two backends take the same decisions: one random run of admissions
/// and settlements (two clients, every limit set, the window crossing
/// seconds) against both, every verdict and every headroom compared.
#[tokio::test]
async fn memory_and_redis_agree_on_a_random_run() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    clear_of_midnight().await;
    let server = RedisServer::start();
    let redis = Redis::new(&server.config("same:")).unwrap();
    let ttl = Duration::from_secs(30);
    let mode = RedisFailureMode::Local;
    let both = [
        Limiter::new(None, mode, 1, ttl, DAY),
        Limiter::new(Some(redis), mode, 1, ttl, DAY),
    ];
    let tenant = Limits {
        rpm: Some(1000),
        tpm: Some(30_000),
        max_concurrency: Some(10),
        daily_tokens: Some(25_000),
    };
    let own = Limits {
        rpm: Some(300),
        tpm: Some(8_000),
        max_concurrency: Some(6),
        daily_tokens: None,
    };
    let mut rng = StdRng::seed_from_u64(20_261_203);
    let mut held: Vec<[Ticket; 2]> = Vec::new();
    let (mut admitted, mut refused) = (0, 0);
    for step in 0..600 {
        // Keep a few requests in flight, under the concurrency limits.
        if held.is_empty() || (held.len() < 10 && rng.random_bool(0.6)) {
            let s = if rng.random_bool(0.5) {
                subject("c1", tenant, own)
            } else {
                subject("c2", tenant, Limits::default())
            };
            let tokens = rng.random_range(0..500);
            let [m, r] = [
                both[0].admit(&s, tokens).await,
                both[1].admit(&s, tokens).await,
            ];
            match (m, r) {
                (Ok((tm, hm)), Ok((tr, hr))) => {
                    assert_eq!(hm, hr.map_reset(&hm), "step {step}: headroom");
                    held.push([tm, tr]);
                    admitted += 1;
                }
                (
                    Err(Refusal::Limited {
                        kind: km,
                        headroom: hm,
                        retry_after_ms: rm,
                    }),
                    Err(Refusal::Limited {
                        kind: kr,
                        headroom: hr,
                        retry_after_ms: rr,
                    }),
                ) => {
                    assert_eq!(km, kr, "step {step}: refused by");
                    assert_eq!(rm.is_some(), rr.is_some(), "step {step}: retry");
                    assert_eq!(hm, hr.map_reset(&hm), "step {step}: headroom");
                    refused += 1;
                }
                (m, r) => panic!("step {step}: memory {m:?}, redis {r:?}"),
            }
        } else {
            let [tm, tr] = held.swap_remove(rng.random_range(0..held.len()));
            let used = rng.random_range(0..=tm.reserved + 50);
            let u = usage(used / 2, used - used / 2);
            both[0].settle_now(tm, u).await;
            both[1].settle_now(tr, u).await;
        }
        if step % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    assert!(
        admitted > 50 && refused > 50,
        "{admitted} admitted, {refused} refused"
    );
}

impl Headroom {
    /// This headroom with the resets of `other`: the two backends read
    /// clocks a few ms apart, so only the counts must match.
    fn map_reset(self, other: &Headroom) -> Headroom {
        let with = |a: Option<Remaining>, b: Option<Remaining>| {
            a.map(|a| Remaining {
                reset_ms: b.map_or(a.reset_ms, |b| b.reset_ms),
                ..a
            })
        };
        Headroom {
            requests: with(self.requests, other.requests),
            tokens: with(self.tokens, other.tokens),
        }
    }
}
