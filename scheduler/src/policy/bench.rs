//! The cost of a scheduling decision with 10,000 queued requests over 1,000
//! tenants in three classes. A benchmark, not a test: run it with
//! `cargo test --release -p tollgate-scheduler -- --ignored --nocapture policy_cost`.

use std::time::Instant;

use super::*;
use crate::shard::ShardCapacity;

#[test]
#[ignore]
fn policy_cost_of_one_decision_with_10k_queued_over_1k_tenants() {
    const TENANTS: usize = 1_000;
    const QUEUED: usize = 10_000;
    const ROUNDS: usize = 200_000;
    // The default reserve: every grant of a lower class works out what it must hold.
    let mut p: Policy<u64> = Policy::new(Bounds {
        max_queue_per_tenant: 1_000,
        max_queued_bytes: usize::MAX,
    })
    .with_reserve(Reserve {
        slots: 2,
        hold_ms: 60_000,
    });
    let tenants: Vec<Arc<str>> = (0..TENANTS).map(|i| format!("t{i}").into()).collect();
    let class = |i: usize| [Priority::High, Priority::Normal, Priority::Low][i % 3];
    let spec = |i: usize| JobSpec {
        tenant: tenants[i % TENANTS].clone(),
        priority: class(i % TENANTS),
        weight: 1 + (i % 4) as u32,
        input_tokens: 100 + (i % 900) as u64,
        cost_tokens: 2000,
        prefix: Some((i % 5000) as u64),
        bytes: 1000,
    };
    for i in 0..QUEUED {
        p.enqueue(i as u64, 0, spec(i), i as u64).unwrap();
    }
    let shards: Vec<ShardCapacity> = (0..8)
        .map(|s| ShardCapacity {
            id: ShardId {
                worker: "w".into(),
                index: s,
            },
            healthy: true,
            free_slots: u32::MAX / 2,
            max_slots: u32::MAX / 2,
            ..ShardCapacity::default()
        })
        .collect();
    p.report(&"w".into(), shards);
    // One decision: a request leaves for a shard (and ends), and a new one
    // arrives, so the queue stays at 10,000.
    let start = Instant::now();
    for next in QUEUED..QUEUED + ROUNDS {
        let g = p.grant_next(next as u64).unwrap();
        p.release(&g.shard, next as u64);
        p.enqueue(next as u64, next as u64, spec(next), next as u64)
            .unwrap();
    }
    let per = start.elapsed().as_nanos() as f64 / ROUNDS as f64;
    assert_eq!(p.stats(0).depth, QUEUED);
    println!(
        "policy cost: {per:.0} ns per decision (grant + release + enqueue) with {QUEUED} queued over {TENANTS} tenants"
    );
}
