//! Tests of the pool: capacity from reports, breakers and rest, staleness.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_scheduler::Scheduler;

fn shard(index: u32, free: u32) -> ShardLoad {
    ShardLoad {
        index,
        healthy: true,
        model: None,
        max_model_len: Some(32768),
        running: 0,
        waiting: 0,
        kv_cache_usage: 0.0,
        inflight: 4 - free,
        caller_inflight: None,
        max_inflight: 4,
        free_slots: free,
        breaker: BreakerState::Closed,
        inter_token_latency_ms: None,
    }
}

fn load(shards: Vec<ShardLoad>) -> WorkerLoad {
    WorkerLoad {
        worker_id: "w".into(),
        draining: false,
        shards,
    }
}

fn tracked() -> Tracked {
    Tracked {
        last: None,
        breaker: Breaker::new(BreakerConfig {
            failure_threshold: 1,
            cool_down: Duration::ZERO,
        }),
        penalized: HashMap::new(),
        up: None,
    }
}

fn free(caps: &[ShardCapacity]) -> Vec<u32> {
    caps.iter().map(|c| c.free_slots).collect()
}

#[test]
fn capacity_follows_the_report_less_resting_shards_and_a_half_open_breaker() {
    let url: Arc<str> = "http://w".into();
    let mut t = tracked();
    let now = Instant::now();
    let caps = record(&url, &mut t, Ok(load(vec![shard(0, 3), shard(1, 4)])), now);
    assert_eq!(free(&caps), vec![3, 4]);
    assert_eq!((caps[0].inflight, caps[0].max_slots), (1, 4));

    // A shard that just failed a request rests; the other keeps its slots.
    t.penalized.insert(0, now + SHARD_PENALTY);
    assert_eq!(free(&capacities(&url, &mut t, now)), vec![0, 4]);
    assert!(!capacities(&url, &mut t, now)[0].healthy);
    assert_eq!(
        free(&capacities(&url, &mut t, now + SHARD_PENALTY)),
        vec![3, 4],
        "the rest is over"
    );

    // A failed poll opens the breaker (threshold 1): no capacity at all.
    assert!(record(&url, &mut t, Err("refused".into()), now).is_empty());
    assert_eq!(t.breaker.state(), BreakerState::Open);
    // The next good poll (the cool-down is 0) half-opens it: one slot in all.
    let caps = record(&url, &mut t, Ok(load(vec![shard(0, 3), shard(1, 4)])), now);
    assert_eq!(t.breaker.state(), BreakerState::HalfOpen);
    assert_eq!(free(&caps), vec![1, 0]);

    // A draining worker offers nothing.
    let mut draining = load(vec![shard(0, 4)]);
    draining.draining = true;
    t.breaker = Breaker::new(BreakerConfig::default());
    let caps = record(&url, &mut t, Ok(draining), now);
    assert_eq!(free(&caps), vec![0]);
    assert!(!caps[0].healthy);
}

/// A fake worker: answers its first load poll, then accepts polls and never answers.
async fn worker_that_hangs_after_one_report() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = serde_json::to_string(&load(vec![shard(0, 4)])).unwrap();
    tokio::spawn(async move {
        let mut answered = false;
        let mut held = Vec::new();
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            if answered {
                held.push(conn); // silent until the test ends
                continue;
            }
            answered = true;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_report_that_goes_stale_withdraws_the_workers_capacity() {
    let scheduler = Scheduler::start(tollgate_scheduler::Settings {
        bounds: tollgate_scheduler::Bounds {
            max_queue_per_tenant: 10,
            max_queued_bytes: 1 << 20,
        },
        batch_window: Duration::ZERO,
        reserve: tollgate_scheduler::Reserve::default(),
    });
    let handle = scheduler.handle();
    let pool = Arc::new(Pool::new(Secret::new("s".repeat(32)), handle.clone(), None).unwrap());
    let url: Arc<str> = worker_that_hangs_after_one_report().await.into();
    pool.track(&url);
    let stop = CancellationToken::new();
    let poller = tokio::spawn(pool.clone().watch(
        url.clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let mut saw_capacity = false;
    loop {
        let stats = handle.stats().await.unwrap();
        if stats.free_slots > 0 {
            saw_capacity = true;
        } else if saw_capacity {
            // The second poll hangs: the first report aged out, so the
            // scheduler no longer grants on it (long before the poll times out).
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let view = &pool.view()[0];
    assert_eq!(
        view.reachable,
        Some(true),
        "withdrawn for staleness, not because the poll failed"
    );
    assert!(view.report_age_ms.unwrap() >= STALE_AFTER.as_millis() as u64 - 1);
    stop.cancel();
    poller.await.unwrap();
}
