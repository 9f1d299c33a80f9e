//! A fleet: workers that register in Redis, a gateway that finds them there,
//! and what happens when a worker or one of its shards dies, drains or comes back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::fleet::{End, Fleet, Worker, open_stream, wait_logged};
use common::*;
use futures::future::join_all;
use serde_json::Value;

/// Simulated shards at half real time answering with the prompt (`--echo`),
/// so a stream's length is the `max_tokens` the test asks for: 600 tokens
/// take several seconds, long enough to still be running when a worker dies.
const SLOW_ECHO: &[(&str, &str)] = &[
    ("TOLLGATE_SIM__TIME_SCALE", "0.5"),
    ("TOLLGATE_SIM__ECHO", "true"),
];
/// Prompt words of a long stream (the echoed prompt outlasts `max_tokens`).
const LONG: usize = 600;

fn slow_echo_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    SLOW_ECHO.iter().chain(extra).copied().collect()
}

async fn shard_field(w: &Worker, http: &reqwest::Client, index: usize, field: &str) -> Value {
    match w.load(http).await {
        Some(l) => l["shards"][index][field].clone(),
        None => Value::Null,
    }
}

/// Two workers × two simulated shards behind one gateway that finds them in
/// Redis. One worker is SIGKILLed while streams run on both: its streams end
/// with an error event, the others finish cleanly, queued and new requests
/// are served by the survivor, the gateway's breaker for the dead worker
/// opens, its registration expires, and a restarted worker is found again.
#[tokio::test]
async fn a_killed_worker_fails_its_streams_and_its_work_moves_to_the_other() {
    let fleet = Fleet::new();
    let http = fleet.http.clone();
    // Two slots a shard: 8 streams fill the fleet and later requests queue in the gateway.
    let env = slow_echo_with(&[("TOLLGATE_WORKER__MAX_INFLIGHT_PER_SHARD", "2")]);
    let a = fleet.worker("a", &["--sim", "2"], &env);
    let b = fleet.worker("b", &["--sim", "2"], &env);
    let gw = fleet.gateway(&[]);
    gw.wait_worker_up(&a.url).await;
    gw.wait_worker_up(&b.url).await;
    gw.wait_ready(&http).await;
    let t = gw.token(&http).await;

    let streams = join_all((0..8).map(|_| gw.open_stream(&http, &t, LONG))).await;
    let on_a = a.inflight(&http).await;
    let on_b = b.inflight(&http).await;
    assert_eq!((on_a, on_b), (4, 4), "every slot of both workers is in use");
    // These wait in the gateway's queue: the fleet is full.
    let queued: Vec<_> = (0..4)
        .map(|_| {
            let (base, http, t) = (gw.base.clone(), http.clone(), t.clone());
            tokio::spawn(async move { open_stream(&http, &base, &t, 40).await.finish().await })
        })
        .collect();

    a.proc.signal("KILL");

    let ends: Vec<_> = join_all(streams.into_iter().map(|s| s.finish())).await;
    let errors = ends.iter().filter(|(e, _)| *e == End::Error).count();
    let done = ends.iter().filter(|(e, _)| *e == End::Done).count();
    assert_eq!(
        (errors, done),
        (4, 4),
        "the killed worker's streams end with an error event, the others cleanly: {:?}",
        ends.iter().map(|(e, _)| e).collect::<Vec<_>>()
    );
    for q in queued {
        let (end, body) = q.await.unwrap();
        assert_eq!(end, End::Done, "a queued request failed: {body}");
    }
    for _ in 0..4 {
        let (status, body) = gw.chat(&http, &t, 5).await;
        assert_eq!(status, 200, "{body}");
    }

    // The gateway's breaker for the dead worker opens; its registration expires.
    wait_logged(&gw.proc, "the dead worker's circuit to open", |f| {
        f["message"] == "worker circuit opened" && f["worker"] == a.url.as_str()
    })
    .await;
    eventually("the dead worker's registration to expire", || async {
        fleet.registration("a").await.is_none().then_some(())
    })
    .await;
    wait_logged(&gw.proc, "the dead worker to leave", |f| {
        f["message"] == "worker left the registry" && f["worker"] == a.url.as_str()
    })
    .await;

    // Started again (same id, new port), it is found through Redis and takes work.
    let a2 = fleet.worker("a", &["--sim", "2"], &env);
    assert_ne!(a2.url, a.url);
    gw.wait_worker_up(&a2.url).await;
    let streams = join_all((0..8).map(|_| gw.open_stream(&http, &t, 40))).await;
    assert!(
        a2.inflight(&http).await > 0,
        "the restarted worker got none of eight streams"
    );
    for (end, body) in join_all(streams.into_iter().map(|s| s.finish())).await {
        assert_eq!(end, End::Done, "{body}");
    }
}

/// SIGTERM: the worker deletes its registration at once, takes no new work,
/// finishes the stream it is serving and exits 0; new requests go elsewhere.
#[tokio::test]
async fn sigterm_deregisters_a_worker_at_once_and_it_drains_before_exiting() {
    let fleet = Fleet::new();
    let http = fleet.http.clone();
    let mut b = fleet.worker("b", &["--sim", "1"], SLOW_ECHO);
    let gw = fleet.gateway(&[]);
    gw.wait_worker_up(&b.url).await;
    gw.wait_ready(&http).await;
    let t = gw.token(&http).await;
    // Only `b` exists yet: the stream runs there.
    let mut stream = gw.open_stream(&http, &t, LONG).await;
    let a = fleet.worker("a", &["--sim", "1"], SLOW_ECHO);
    gw.wait_worker_up(&a.url).await;
    assert!(fleet.registration("b").await.is_some());

    b.proc.signal("TERM");
    eventually("the registration to be deleted", || async {
        fleet.registration("b").await.is_none().then_some(())
    })
    .await;
    assert!(
        fleet.registration("a").await.is_some(),
        "only the draining worker was deregistered"
    );
    assert!(
        stream.more().await,
        "deregistered at once: the worker is still serving its stream"
    );
    wait_logged(&gw.proc, "the gateway to drop the draining worker", |f| {
        f["message"] == "worker left the registry" && f["worker"] == b.url.as_str()
    })
    .await;
    for _ in 0..3 {
        let (status, body) = gw.chat(&http, &t, 5).await;
        assert_eq!(status, 200, "{body}");
    }
    let (end, body) = stream.finish().await;
    assert_eq!(end, End::Done, "the draining worker cut its stream: {body}");
    let status = b.proc.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", b.proc.stderr());
    b.proc
        .logged(|f| f["message"] == "deregistered from Redis")
        .first()
        .expect("the worker logs its deregistration");
}

/// A shard whose vLLM dies mid-stream: the stream ends with an error event
/// (never `[DONE]`), the worker's breaker for that shard opens (visible in its
/// load report), new requests go to the other shard, and once vLLM is back a
/// health probe and one trial request close the breaker again.
#[tokio::test]
async fn a_shard_whose_vllm_dies_opens_its_breaker_and_is_probed_back() {
    let fleet = Fleet::new();
    let http = fleet.http.clone();
    let sim_args = ["--time-scale", "0.5", "--echo"];
    let (sim0, url0) = fleet.sim("sim0", &sim_args);
    let (_sim1, url1) = fleet.sim("sim1", &sim_args);
    let w = fleet.worker(
        "w",
        &["--shard", &url0, "--shard", &url1],
        &[
            ("TOLLGATE_WORKER__BREAKER_FAILURES", "1"),
            ("TOLLGATE_WORKER__BREAKER_COOLDOWN_MS", "300"),
        ],
    );
    let gw = fleet.gateway(&[]);
    gw.wait_worker_up(&w.url).await;
    eventually("both shards healthy", || async {
        let l = w.load(&http).await?;
        l["shards"]
            .as_array()?
            .iter()
            .all(|s| s["healthy"] == true)
            .then_some(())
    })
    .await;
    gw.wait_ready(&http).await;
    let t = gw.token(&http).await;

    // Two streams, one after the other: the least-loaded choice puts one on each shard.
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(gw.open_stream(&http, &t, LONG).await);
    }
    assert_eq!(shard_field(&w, &http, 0, "inflight").await, 1);
    assert_eq!(shard_field(&w, &http, 1, "inflight").await, 1);
    drop(sim0); // SIGKILL

    let mut ends: Vec<_> = join_all(streams.into_iter().map(|s| s.finish()))
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    ends.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(ends, vec![End::Done, End::Error]);
    assert_eq!(shard_field(&w, &http, 0, "breaker").await, "open");
    assert_eq!(shard_field(&w, &http, 0, "healthy").await, false);
    for _ in 0..3 {
        let (status, body) = gw.chat(&http, &t, 5).await;
        assert_eq!(status, 200, "{body}");
    }

    // vLLM comes back on its port: probed after the cool-down, half-open, and
    // the first request it is given (the trial) closes the breaker.
    let port = url0.rsplit(':').next().unwrap();
    let (_sim0, _) = fleet.sim("sim0 again", &["--port", port, "--time-scale", "0.5"]);
    eventually("the breaker to close again", || async {
        // Two at once, so the second goes to the half-open shard's trial slot.
        let answers = join_all((0..2).map(|_| gw.chat(&http, &t, 2))).await;
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
        (shard_field(&w, &http, 0, "breaker").await == "closed").then_some(())
    })
    .await;
    w.proc
        .logged(|f| f["message"] == "shard circuit half-open" && f["shard"] == 0)
        .first()
        .expect("the breaker went through half-open");
}

/// A shard failing before the first byte (vLLM answers 500) costs the client
/// nothing: the request is retried once on another shard.
#[tokio::test]
async fn a_shard_failing_before_the_first_byte_is_retried_once_elsewhere() {
    let fleet = Fleet::new();
    let http = fleet.http.clone();
    let (_bad, bad) = fleet.sim("bad", &["--fail-rate", "1", "--fail-status", "500"]);
    let (_good, good) = fleet.sim("good", &["--time-scale", "100"]);
    // The breaker stays closed, so the gateway's retry is what saves requests.
    let w = fleet.worker(
        "w",
        &["--shard", &bad, "--shard", &good],
        &[("TOLLGATE_WORKER__BREAKER_FAILURES", "1000")],
    );
    let gw = fleet.gateway(&[]);
    gw.wait_worker_up(&w.url).await;
    eventually("both shards healthy", || async {
        let l = w.load(&http).await?;
        (l["shards"][0]["healthy"] == true && l["shards"][1]["healthy"] == true).then_some(())
    })
    .await;
    let t = gw.token(&http).await;
    for _ in 0..6 {
        let (status, body) = gw.chat(&http, &t, 5).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");
    }
    // Idle shards tie and the lower index wins, so the first request met the bad shard.
    let retries = gw
        .proc
        .logged(|f| f["message"] == "shard failed before the first byte; retrying elsewhere");
    assert!(!retries.is_empty(), "the bad shard was never tried");
}

/// Two gateways share one worker. Its load report tells each gateway which
/// of a shard's requests are its own, so each can count its own exactly and
/// take only the others' from the report.
#[tokio::test]
async fn a_load_report_tells_each_gateway_its_own_requests() {
    let fleet = Fleet::new();
    let http = fleet.http.clone();
    let w = fleet.worker("a", &["--sim", "1"], SLOW_ECHO);
    let gw1 = fleet.gateway(&[]);
    let gw2 = fleet.gateway(&[]);
    for gw in [&gw1, &gw2] {
        gw.wait_worker_up(&w.url).await;
        gw.wait_ready(&http).await;
    }
    let t = gw1.token(&http).await;
    // (in flight, the caller's own) on the shard, as `gw` last heard it.
    let seen = |gw: &'static str, view: Value| {
        let s = &view["data"][0]["shards"][0];
        let pair = (s["inflight"].as_u64(), s["caller_inflight"].as_u64());
        (gw, pair)
    };
    let both = || async {
        (
            seen("gw1", gw1.workers(&http, &t).await),
            seen("gw2", gw2.workers(&http, &t).await),
        )
    };

    let stream = gw1.open_stream(&http, &t, LONG).await;
    eventually("both gateways to see the stream", || async {
        let v = both().await;
        (v == (("gw1", (Some(1), Some(1))), ("gw2", (Some(1), Some(0))))).then_some(())
    })
    .await;
    assert_eq!(stream.finish().await.0, End::Done);
    eventually("both gateways to see it end", || async {
        let v = both().await;
        (v == (("gw1", (Some(0), Some(0))), ("gw2", (Some(0), Some(0))))).then_some(())
    })
    .await;
}
