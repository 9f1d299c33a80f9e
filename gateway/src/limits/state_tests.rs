//! What the limiter leaves in Redis and what it costs Redis: one hash per
//! tenant whose every key expires, state bounded by one window and the live
//! leases, and a handful of commands per request.

use std::collections::HashMap;
use std::time::Duration;

use tollgate_shared::config::{Limits, RedisFailureMode};
use tollgate_shared::store::Redis;
use tollgate_shared::testing::RedisServer;

use super::tests::{DAY, backends, subject, usage};
use super::*;
use crate::audit::utc_date;

/// A limiter on a Redis of its own (keys under `prefix`), with a handle on
/// that Redis; the server lives as long as the first value.
fn on_redis(prefix: &str, mode: RedisFailureMode) -> (RedisServer, Redis, Arc<Limiter>) {
    let server = RedisServer::start();
    let redis = Redis::new(&server.config(prefix)).unwrap();
    let l = Limiter::new(Some(redis.clone()), mode, 1, Duration::from_secs(30), DAY);
    (server, redis, l)
}

#[tokio::test]
async fn every_key_written_has_a_ttl() {
    let (_server, redis, l) = on_redis("ttl:", RedisFailureMode::Local);
    let tenant = Limits {
        rpm: Some(100),
        tpm: Some(10_000),
        max_concurrency: Some(5),
        daily_tokens: Some(100_000),
    };
    let (t, _) = l.admit(&subject("c1", tenant, tenant), 100).await.unwrap();
    let (_held, _) = l.admit(&subject("c1", tenant, tenant), 100).await.unwrap();
    l.settle_now(t, usage(10, 10)).await;
    let mut keys: Vec<String> = redis
        .query(::redis::cmd("KEYS").arg("ttl:*"))
        .await
        .unwrap();
    let today = utc_date(now_ms() / 86_400_000);
    let mut want = vec![
        "ttl:{acme}:limits".to_owned(),
        format!("ttl:{{acme}}:usage:{today}"),
    ];
    keys.sort();
    want.sort();
    assert_eq!(keys, want, "one limiter hash and one usage hash per tenant");
    for k in keys {
        let ttl: i64 = redis.query(::redis::cmd("PTTL").arg(&k)).await.unwrap();
        // Longer than a day: the daily counters live in the same hash.
        assert!(
            ttl > 86_400_000,
            "{k} has no TTL or too short a one ({ttl})"
        );
    }
}

/// The limiter state of one subject in the Redis format (`state.lua`), from
/// its buckets, oldest first, and its leases, earliest deadline first.
fn encoded_state(day: u64, used: u64, buckets: &[(u64, u64, u64)], leases: &[u64]) -> String {
    let (r, t) = buckets.iter().fold((0, 0), |(r, t), b| (r + b.1, t + b.2));
    let ((s, sr, st), older) = match buckets.split_last() {
        Some((newest, older)) => (*newest, older),
        None => ((0, 0, 0), &[][..]),
    };
    let b: Vec<String> = older
        .iter()
        .map(|(s, r, t)| format!("{s} {r} {t}"))
        .collect();
    let l: Vec<String> = leases.iter().map(u64::to_string).collect();
    let latest = leases.iter().copied().max().unwrap_or(0);
    format!(
        "{day} {used} {r} {t} {s} {sr} {st} {} {latest}|{}|{}",
        leases.len(),
        b.join(","),
        l.join(",")
    )
}

/// (buckets, leases) in an encoded state, whose totals must add up.
fn encoded_size(v: &str) -> (usize, usize) {
    let parts: Vec<&str> = v.split('|').collect();
    assert_eq!(parts.len(), 3, "{v}");
    let head: Vec<u64> = parts[0].split(' ').map(|n| n.parse().unwrap()).collect();
    assert_eq!(head.len(), 9, "{v}");
    let entries = |p: &str| -> Vec<Vec<u64>> {
        p.split(',')
            .filter(|x| !x.is_empty())
            .map(|e| e.split(' ').filter_map(|n| n.parse().ok()).collect())
            .collect()
    };
    let older = entries(parts[1]);
    let leases = entries(parts[2]);
    let requests: u64 = older.iter().map(|b| b[1]).sum::<u64>() + head[5];
    let tokens: u64 = older.iter().map(|b| b[2]).sum::<u64>() + head[6];
    assert_eq!((head[2], head[3]), (requests, tokens), "totals of {v}");
    assert_eq!(head[7] as usize, leases.len(), "lease count of {v}");
    let seconds: Vec<u64> = older.iter().map(|b| b[0]).chain([head[4]]).collect();
    assert!(seconds.is_sorted(), "buckets in order: {v}");
    let deadlines: Vec<u64> = leases.iter().map(|l| l[0]).collect();
    assert!(deadlines.is_sorted(), "leases in order: {v}");
    (older.len() + usize::from(head[4] > 0), leases.len())
}

/// State does not grow without bound: buckets that left the window and leases
/// past their deadline are dropped when the state is next written, and never count.
#[tokio::test]
async fn stale_buckets_and_lapsed_leases_are_dropped_from_the_state() {
    let own = Limits {
        rpm: Some(1000),
        tpm: None,
        max_concurrency: Some(4),
        daily_tokens: None,
    };
    let now = now_ms();
    let now_s = now / 1000;
    // Ten minutes of history, the last 59 s still in the window, and a lease
    // a second that lapsed unsettled; three more are still live.
    let history: Vec<(u64, u64, u64)> = (1..=600).map(|i| (now_s - i, 1, 10)).rev().collect();
    let mut leases: Vec<u64> = (1..=600).rev().map(|i| now - i * 1000).collect();
    leases.extend([now + 20_000; 3]);
    for (l, _server) in backends(RedisFailureMode::Local) {
        let s = subject("c1", Limits::default(), own);
        let key = match &l.redis {
            Some(redis) => {
                let key = state_key(redis.prefix(), "acme");
                let v = encoded_state(now_s / 86_400, 0, &history, &leases);
                let _: i64 = redis
                    .query(::redis::cmd("HSET").arg(&key).arg("c:c1").arg(v))
                    .await
                    .unwrap();
                let _: i64 = redis
                    .query(::redis::cmd("EXPIRE").arg(&key).arg(600))
                    .await
                    .unwrap();
                key
            }
            None => {
                let key = state_key("local:", "acme");
                let (_, dims) = l.dims(&s, 1, "local:");
                let mut c = l.local.lock().unwrap();
                for (sec, _, _) in &history {
                    // Each lease lapses a second after it was taken, like the ones above.
                    let v = c.admit(sec * 1000, &key, &dims, 0, 1000);
                    assert!(matches!(v, Verdict::Admitted { .. }), "{v:?}");
                }
                for _ in 0..3 {
                    c.admit(now, &key, &dims, 0, 20_000);
                }
                key
            }
        };
        let (_, h) = l.admit(&s, 0).await.unwrap();
        let size = match &l.redis {
            Some(redis) => {
                let v: String = redis
                    .query(::redis::cmd("HGET").arg(&key).arg("c:c1"))
                    .await
                    .unwrap();
                encoded_size(&v)
            }
            None => l.local.lock().unwrap().state(&key, "c:c1").unwrap().size(),
        };
        let (buckets, held) = size;
        assert!(buckets <= 60, "{buckets} buckets kept");
        assert_eq!(held, 4, "the three live leases and the new one");
        let remaining = h.requests.unwrap().remaining;
        assert!(
            (936..=941).contains(&remaining),
            "only the window counts: {remaining}"
        );
        assert!(matches!(
            l.admit(&s, 0).await,
            Err(Refusal::Limited {
                kind: LimitKind::Concurrency,
                ..
            })
        ));
    }
}

/// `INFO commandstats` calls per command, from a server only this test uses.
async fn command_calls(redis: &Redis) -> HashMap<String, u64> {
    let info: String = redis
        .query(::redis::cmd("INFO").arg("commandstats"))
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .map(|(name, fields)| {
            let calls = fields
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .map_or(0, |n| n.parse().unwrap());
            (name.to_owned(), calls)
        })
        .collect()
}

/// Commands Redis ran between two readings, the scripts' own inner commands
/// included; the script calls and the readings themselves left out.
fn ran_inside(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> (u64, u64) {
    let delta = |c: &str| after.get(c).copied().unwrap_or(0) - before.get(c).copied().unwrap_or(0);
    let calls = delta("evalsha") + delta("eval");
    let inner = after
        .keys()
        .filter(|c| !matches!(c.as_str(), "evalsha" | "eval" | "info") && !c.starts_with("script"))
        .map(|c| delta(c))
        .sum();
    (calls, inner)
}

#[tokio::test]
async fn a_request_costs_redis_at_most_eight_commands_to_admit_and_settle() {
    const N: u64 = 50;
    let (_server, redis, l) = on_redis("cost:", RedisFailureMode::Local);
    // Every limit set on both: eight dimensions, the costliest request.
    let all = Limits {
        rpm: Some(100_000),
        tpm: Some(100_000_000),
        max_concurrency: Some(1000),
        daily_tokens: Some(1_000_000_000),
    };
    let s = subject("c1", all, all);
    // Warm-up: the scripts are loaded, the keys created and set to expire.
    for _ in 0..3 {
        let (t, _) = l.admit(&s, 100).await.unwrap();
        l.settle_now(t, usage(10, 20)).await;
    }
    let before = command_calls(&redis).await;
    for _ in 0..N {
        let (t, _) = l.admit(&s, 100).await.unwrap();
        l.settle_now(t, usage(10, 20)).await;
    }
    let after = command_calls(&redis).await;
    let (calls, inner) = ran_inside(&before, &after);
    assert_eq!(calls, 2 * N, "one admission and one settlement each");
    assert!(
        inner <= 8 * N,
        "{inner} commands for {N} requests ({} each): {after:?}",
        inner as f64 / N as f64
    );
}

/// After Redis's clock steps back, or the lease lifetime is shortened, new
/// entries land inside the lists rather than at their ends: the lists stay
/// in order and the totals add up, through admission and settlement.
#[tokio::test]
async fn entries_out_of_turn_keep_the_lists_in_order() {
    let (_server, redis, l) = on_redis("order:", RedisFailureMode::Local);
    let own = Limits {
        rpm: Some(100),
        tpm: Some(100_000),
        max_concurrency: Some(10),
        daily_tokens: None,
    };
    let s = subject("c1", Limits::default(), own);
    let now = now_ms();
    let now_s = now / 1000;
    // The newest bucket is 30 s ahead, as if the clock had just stepped back;
    // a lease of an hour was taken before the lifetime became 30 s.
    let buckets = [
        (now_s - 10, 1, 100),
        (now_s + 10, 1, 100),
        (now_s + 30, 1, 100),
    ];
    let leases = [now + 5_000, now + 3_600_000];
    let key = state_key(redis.prefix(), "acme");
    let v = encoded_state(now_s / 86_400, 0, &buckets, &leases);
    let _: i64 = redis
        .query(::redis::cmd("HSET").arg(&key).arg("c:c1").arg(v))
        .await
        .unwrap();
    let read = || async {
        let v: String = redis
            .query(::redis::cmd("HGET").arg(&key).arg("c:c1"))
            .await
            .unwrap();
        encoded_size(&v)
    };
    let (t, h) = l.admit(&s, 1000).await.unwrap();
    assert_eq!(h.requests.unwrap().remaining, 96);
    assert_eq!(h.tokens.unwrap().remaining, 100_000 - 1300);
    assert_eq!(read().await, (4, 3));
    // Its bucket is now among the older ones: the correction finds it there.
    l.settle_now(t, usage(100, 0)).await;
    assert_eq!(read().await, (4, 2));
    let (_, h) = l.admit(&s, 0).await.unwrap();
    assert_eq!(h.tokens.unwrap().remaining, 100_000 - 400);
}

/// Waits until no tenant has calls queued, out or lingering.
async fn calls_done(l: &Limiter) {
    while !l.steps.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
}

/// What Redis metered for `acme` from yesterday to tomorrow.
async fn metered_around_today(l: &Limiter) -> usage::Counts {
    let today = now_ms() / 86_400_000;
    let days = l
        .usage()
        .query(Some("acme"), today - 1, today + 1)
        .await
        .unwrap();
    let mut total = usage::Counts::default();
    for d in &days {
        total.requests += d.total.requests;
        total.completion_tokens += d.total.completion_tokens;
    }
    total
}

/// Requests of one tenant that arrive together share script calls: a call
/// carries every admission and settlement that queued while the one before
/// it was in flight, and each is decided as if it ran alone.
#[tokio::test]
async fn concurrent_requests_share_script_calls_and_each_is_decided_alone() {
    const N: usize = 200;
    let (_server, redis, l) = on_redis("share:", RedisFailureMode::Closed);
    let own = Limits {
        rpm: Some(1000),
        tpm: None,
        max_concurrency: Some(100),
        daily_tokens: None,
    };
    // Warm-up: the script is loaded.
    let (t, _) = l.admit(&subject("c0", own, own), 1).await.unwrap();
    l.settle_now(t, usage(1, 0)).await;
    let before = command_calls(&redis).await;
    let admit = |i: usize| {
        let l = l.clone();
        tokio::spawn(async move {
            let client = format!("c{}", i % 4);
            l.admit(&subject(&client, own, own), 10).await.ok()
        })
    };
    let tasks: Vec<_> = (0..N).map(admit).collect();
    let mut tickets = Vec::new();
    for t in tasks {
        tickets.extend(t.await.unwrap());
    }
    assert_eq!(
        tickets.len(),
        100,
        "max_concurrency admits exactly 100 at once"
    );
    let settles: Vec<_> = tickets
        .into_iter()
        .map(|(t, _)| {
            let l = l.clone();
            tokio::spawn(async move { l.settle_now(t, usage(3, 4)).await })
        })
        .collect();
    for s in settles {
        s.await.unwrap();
    }
    let after = command_calls(&redis).await;
    let (calls, inner) = ran_inside(&before, &after);
    assert!(
        calls as usize <= N / 10,
        "{calls} script calls for {N} admissions and 100 settlements"
    );
    assert!(
        inner as usize <= 2 * N,
        "{inner} commands inside the scripts for {N} admissions and 100 settlements"
    );
    let metered = metered_around_today(&l).await;
    assert_eq!(
        (metered.requests, metered.completion_tokens),
        (101, 400),
        "every admitted request metered once"
    );
    // Every lease came back: a full wave is admitted again.
    let again: Vec<_> = (0..100).map(admit).collect();
    for t in again {
        assert!(t.await.unwrap().is_some());
    }
}

/// A request whose caller goes away while its admission is in Redis (its
/// client closed the connection) gives back what it was admitted with.
#[tokio::test]
async fn an_admission_nobody_waits_for_any_more_is_given_back() {
    let (_server, _, l) = on_redis("gone:", RedisFailureMode::Closed);
    let own = Limits {
        rpm: None,
        tpm: Some(1000),
        max_concurrency: Some(1),
        daily_tokens: None,
    };
    let s = subject("c1", Limits::default(), own);
    let mut gone = Box::pin(l.admit(&s, 600));
    std::future::poll_fn(|cx| {
        assert!(gone.as_mut().poll(cx).is_pending(), "admission in flight");
        std::task::Poll::Ready(())
    })
    .await;
    drop(gone);
    calls_done(&l).await;
    let (_, h) = l
        .admit(&s, 600)
        .await
        .expect("the lease and the tokens came back");
    assert_eq!(h.tokens.unwrap().remaining, 400);
}

/// One request at a time, a settlement rides with the next admission: one
/// call per request. A settlement that no admission follows goes alone.
#[tokio::test]
async fn a_settlement_rides_with_the_next_admission_or_goes_alone() {
    let (_server, redis, l) = on_redis("ride:", RedisFailureMode::Closed);
    let own = Limits {
        rpm: None,
        tpm: None,
        max_concurrency: Some(1),
        daily_tokens: None,
    };
    let s = subject("c1", Limits::default(), own);
    let (mut t, _) = l.admit(&s, 10).await.unwrap();
    let before = command_calls(&redis).await;
    for _ in 0..10 {
        l.settle(t, usage(1, 1));
        // The lease given back first: the one lease is free for the next request.
        (t, _) = l.admit(&s, 10).await.expect("settled before admitted");
    }
    let (calls, _) = ran_inside(&before, &command_calls(&redis).await);
    assert_eq!(
        calls, 10,
        "one call for each settlement and the next admission"
    );
    l.settle(t, usage(1, 1));
    calls_done(&l).await;
    let metered = metered_around_today(&l).await;
    assert_eq!(metered.requests, 11, "the last settlement went alone");
}
