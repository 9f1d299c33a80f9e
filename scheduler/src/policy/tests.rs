use super::*;

const BOUNDS: Bounds = Bounds {
    max_queue_per_tenant: 10,
    max_queued_bytes: 1_000_000,
};

fn spec(t: &str, p: Priority) -> JobSpec {
    JobSpec {
        tenant: t.into(),
        priority: p,
        weight: 1,
        input_tokens: 10,
        cost_tokens: 20,
        prefix: None,
        bytes: 100,
    }
}

fn normal(t: &str) -> JobSpec {
    spec(t, Priority::Normal)
}

fn shard(w: &str, i: u32, free: u32) -> ShardCapacity {
    ShardCapacity {
        id: ShardId {
            worker: w.into(),
            index: i,
        },
        healthy: true,
        free_slots: free,
        max_slots: 4,
        ..ShardCapacity::default()
    }
}

fn id(i: u32) -> ShardId {
    ShardId {
        worker: "w".into(),
        index: i,
    }
}

fn items<T: Copy>(g: Vec<Granted<T>>) -> Vec<T> {
    g.into_iter().map(|g| g.item).collect()
}

#[test]
fn nothing_leaves_the_queue_without_a_shard_with_room() {
    let mut p = Policy::new(BOUNDS);
    p.enqueue(1, 0, normal("a"), 1).unwrap();
    assert!(p.round(0, |_| true).is_empty());
    p.report(&"w".into(), vec![shard("w", 0, 0)]);
    assert!(p.round(0, |_| true).is_empty());
    let mut kv_full = shard("w", 1, 4);
    kv_full.kv_cache_usage = 0.97;
    p.report(&"w".into(), vec![kv_full]);
    assert!(
        p.round(0, |_| true).is_empty(),
        "holdback: the KV cache is full"
    );
    assert_eq!(p.stats(0).depth, 1);
    p.report(&"w".into(), vec![shard("w", 1, 4)]);
    assert_eq!(items(p.round(5, |_| true)), vec![1]);
}

#[test]
fn classes_are_strict_and_equal_tenants_share_a_class_fairly() {
    let mut p = Policy::new(BOUNDS);
    let mut seq = 0;
    for t in ["a", "a", "a", "b", "b", "b"] {
        seq += 1;
        p.enqueue(seq, 0, normal(t), t).unwrap();
    }
    seq += 1;
    p.enqueue(seq, 0, spec("low", Priority::Low), "low")
        .unwrap();
    seq += 1;
    p.enqueue(seq, 0, spec("vip", Priority::High), "vip")
        .unwrap();
    p.report(&"w".into(), vec![shard("w", 0, 4)]);
    let got = items(p.round(0, |_| true));
    // High first; then a and b alternate (FIFO arrival alone would give a, a, a).
    assert_eq!(got, vec!["vip", "a", "b", "a"]);
    p.report(&"w".into(), vec![shard("w", 0, 4)]);
    assert_eq!(items(p.round(0, |_| true)), vec!["b", "a", "b", "low"]);
}

#[test]
fn per_tenant_bound_refuses_only_that_tenant() {
    let mut p = Policy::new(Bounds {
        max_queue_per_tenant: 2,
        ..BOUNDS
    });
    p.enqueue(1, 0, normal("a"), ()).unwrap();
    p.enqueue(2, 0, normal("a"), ()).unwrap();
    assert_eq!(
        p.enqueue(3, 0, normal("a"), ()).unwrap_err().0,
        Refusal::QueueFull
    );
    p.enqueue(4, 0, normal("b"), ()).unwrap();
    assert!(p.remove(1));
    assert!(!p.remove(1));
    p.enqueue(5, 0, normal("a"), ()).unwrap();
}

#[test]
fn a_full_queue_sheds_low_before_normal_before_high() {
    let mut p = Policy::new(Bounds {
        max_queue_per_tenant: 100,
        max_queued_bytes: 300,
    });
    p.enqueue(1, 0, spec("l", Priority::Low), "low-1").unwrap();
    p.enqueue(2, 0, spec("n", Priority::Normal), "normal-1")
        .unwrap();
    p.enqueue(3, 0, spec("l", Priority::Low), "low-2").unwrap();
    // Full: a normal request sheds the newest low one.
    assert_eq!(
        p.enqueue(4, 0, spec("n", Priority::Normal), "normal-2")
            .unwrap(),
        vec!["low-2"]
    );
    assert_eq!(
        p.enqueue(5, 0, spec("h", Priority::High), "high-1")
            .unwrap(),
        vec!["low-1"]
    );
    // Only normal and high remain: another low cannot get in, and sheds nobody.
    assert_eq!(
        p.enqueue(6, 0, spec("l", Priority::Low), "low-3")
            .unwrap_err(),
        (Refusal::Overloaded, "low-3")
    );
    assert_eq!(
        p.enqueue(7, 0, spec("h", Priority::High), "high-2")
            .unwrap(),
        vec!["normal-2"]
    );
    let s = p.stats(0);
    assert_eq!(s.depth, 3);
    assert_eq!(s.queued_bytes, 300);
    assert_eq!(
        s.by_class,
        [
            (Priority::High, 2),
            (Priority::Normal, 1),
            (Priority::Low, 0)
        ]
    );
}

#[test]
fn a_refused_newcomer_leaves_the_queue_as_it_was() {
    let mut p = Policy::new(Bounds {
        max_queue_per_tenant: 100,
        max_queued_bytes: 250,
    });
    p.enqueue(1, 0, spec("l", Priority::Low), "low").unwrap();
    p.enqueue(2, 0, spec("h", Priority::High), "high").unwrap();
    let mut big = spec("n", Priority::Normal);
    big.bytes = 200;
    // Shedding "low" frees 100 bytes, not enough for 200: refuse, and keep "low".
    assert_eq!(
        p.enqueue(3, 0, big, "big").unwrap_err(),
        (Refusal::Overloaded, "big")
    );
    assert_eq!(p.stats(0).depth, 2);
    p.report(&"w".into(), vec![shard("w", 0, 4)]);
    assert_eq!(items(p.round(0, |_| true)), vec!["high", "low"]);
}

#[test]
fn requeue_goes_back_to_its_old_place_and_waits_for_a_report() {
    let mut p = Policy::new(BOUNDS);
    p.report(&"w".into(), vec![shard("w", 0, 1)]);
    p.enqueue(1, 0, normal("a"), 1).unwrap();
    let g = p.round(0, |_| true).pop().unwrap();
    p.enqueue(2, 0, normal("a"), 2).unwrap();
    p.enqueue(3, 0, normal("a"), 3).unwrap();
    p.mark_full(&g.shard);
    p.requeue(g.seq, 0, g.spec, g.item);
    assert!(
        p.round(0, |_| true).is_empty(),
        "a busy shard gets nothing until reported"
    );
    p.report(&"w".into(), vec![shard("w", 0, 3)]);
    assert_eq!(items(p.round(0, |_| true)), vec![1, 2, 3]);
}

#[test]
fn abandoned_jobs_use_no_slot() {
    let mut p = Policy::new(BOUNDS);
    p.report(&"w".into(), vec![shard("w", 0, 1)]);
    p.enqueue(1, 0, normal("a"), 1).unwrap();
    p.enqueue(2, 0, normal("a"), 2).unwrap();
    assert_eq!(items(p.round(0, |&t| t != 1)), vec![2]);
    let s = p.stats(0);
    assert_eq!((s.depth, s.queued_bytes), (0, 0));
    assert!(s.per_tenant.is_empty());
}

#[test]
fn a_shared_prefix_goes_back_to_its_shard_while_it_has_room() {
    let mut p = Policy::new(BOUNDS);
    p.report(&"w".into(), vec![shard("w", 0, 4), shard("w", 1, 4)]);
    let with_prefix = |t: &str| JobSpec {
        prefix: Some(42),
        ..normal(t)
    };
    p.enqueue(1, 0, with_prefix("a"), 1).unwrap();
    let first = p.round(0, |_| true).pop().unwrap().shard;
    // Without affinity the next request would go to the other, idler shard.
    for seq in 2..=4 {
        p.enqueue(seq, 0, with_prefix("a"), seq).unwrap();
        assert_eq!(
            p.round(0, |_| true).pop().unwrap().shard,
            first,
            "request {seq}"
        );
    }
    // The prefix's shard is now full: the next one goes elsewhere.
    p.enqueue(5, 0, with_prefix("a"), 5).unwrap();
    assert_ne!(p.round(0, |_| true).pop().unwrap().shard, first);
}

#[test]
fn grants_between_reports_spread_over_idle_shards() {
    // Two idle shards, one report: a round of four goes 2 + 2, because each
    // grant counts as a sequence on its shard until the next report.
    let mut p = Policy::new(BOUNDS);
    for i in 1..=4 {
        p.enqueue(i, 0, normal("a"), i).unwrap();
    }
    p.report(&"w".into(), vec![shard("w", 0, 4), shard("w", 1, 4)]);
    let got: Vec<_> = p
        .round(0, |_| true)
        .into_iter()
        .map(|g| g.shard.index)
        .collect();
    assert_eq!(got, vec![0, 1, 0, 1]);
}

#[test]
fn vllm_queue_counts_even_when_the_worker_has_slots() {
    // vLLM's own queue (traffic that did not come through this worker) is load too.
    let mut p = Policy::new(BOUNDS);
    p.enqueue(1, 0, normal("a"), 1).unwrap();
    let mut queued = shard("w", 0, 4);
    queued.waiting = 3;
    p.report(&"w".into(), vec![queued, shard("w", 1, 4)]);
    assert_eq!(p.round(0, |_| true).pop().unwrap().shard.index, 1);
}

#[test]
fn releases_free_slots_and_reports_replace_one_worker_only() {
    let mut p = Policy::new(BOUNDS);
    p.report(&"w".into(), vec![shard("w", 0, 1)]);
    p.report(&"v".into(), vec![shard("v", 0, 0)]);
    for i in 1..=2 {
        p.enqueue(i, 0, normal("a"), i).unwrap();
    }
    assert_eq!(items(p.round(0, |_| true)), vec![1]);
    p.release(&id(0), 0);
    assert_eq!(items(p.round(0, |_| true)), vec![2]);
    p.report(&"w".into(), vec![]);
    assert_eq!(p.stats(0).healthy_shards, 1);
}

/// A report as the worker takes it: `inflight` requests on a 4-slot shard,
/// `own` of them this gateway's.
fn report_of(inflight: u32, own: u32) -> Vec<ShardCapacity> {
    vec![ShardCapacity {
        inflight,
        own_at_report: Some(own),
        ..shard("w", 0, 4 - inflight)
    }]
}

#[test]
fn a_report_taken_before_a_release_leaves_no_slot_busy() {
    let mut p = Policy::new(BOUNDS);
    p.report(&"w".into(), report_of(0, 0));
    for i in 1..=4 {
        p.enqueue(i, 0, normal("a"), i).unwrap();
    }
    assert_eq!(items(p.round(0, |_| true)), vec![1, 2, 3, 4]);
    // Request 1 ends; the report on its way was taken while it still ran.
    p.release(&id(0), 0);
    p.report(&"w".into(), report_of(4, 4));
    p.enqueue(5, 0, normal("a"), 5).unwrap();
    assert_eq!(
        items(p.round(0, |_| true)),
        vec![5],
        "the freed slot is used"
    );
    assert!(p.round(0, |_| true).is_empty());
    // A worker that does not tell the caller's share: its report is taken as it is.
    p.release(&id(0), 0);
    p.report(&"w".into(), vec![shard("w", 0, 0)]);
    p.enqueue(6, 0, normal("a"), 6).unwrap();
    assert!(p.round(0, |_| true).is_empty());
}

#[test]
fn a_report_taken_before_a_grant_does_not_free_its_slot() {
    let mut p = Policy::new(BOUNDS);
    p.report(&"w".into(), report_of(2, 0));
    for i in 1..=3 {
        p.enqueue(i, 0, normal("a"), i).unwrap();
    }
    assert_eq!(items(p.round(0, |_| true)), vec![1, 2]);
    // Taken before either grant reached the worker: 2 requests, none ours.
    p.report(&"w".into(), report_of(2, 0));
    assert!(p.round(0, |_| true).is_empty(), "our two are still on it");
    // Another gateway's request ended; ours are now counted by the worker.
    p.report(&"w".into(), report_of(3, 2));
    assert_eq!(items(p.round(0, |_| true)), vec![3]);
    // A busy answer: the request is not ours on the shard any more.
    p.mark_full(&id(0));
    p.report(&"w".into(), report_of(3, 2));
    p.enqueue(4, 0, normal("a"), 4).unwrap();
    assert_eq!(items(p.round(0, |_| true)), vec![4]);
}

#[test]
fn stats_show_waits_and_counters_per_tenant_and_class() {
    let mut p = Policy::new(BOUNDS);
    p.enqueue(1, 1_000, normal("a"), ()).unwrap();
    p.enqueue(2, 3_000, spec("b", Priority::High), ()).unwrap();
    let s = p.stats(5_000);
    assert_eq!(s.tenants.len(), 2);
    let a = s.tenants.iter().find(|v| &*v.tenant == "a").unwrap();
    assert_eq!(
        (a.priority, a.depth, a.oldest_wait_ms),
        (Priority::Normal, 1, Some(4_000))
    );
    let g = {
        p.report(&"w".into(), vec![shard("w", 0, 4)]);
        p.round(6_000, |_| true)
    };
    assert_eq!(
        g.iter().map(|g| g.waited_ms).collect::<Vec<_>>(),
        vec![3_000, 5_000]
    );
}

/// A policy holding at least `slots` for an active higher class, for `hold_ms`.
fn holding<T>(slots: u32, hold_ms: u64) -> Policy<T> {
    Policy::new(BOUNDS).with_reserve(Reserve { slots, hold_ms })
}

fn one_shard(max: u32, free: u32) -> Vec<ShardCapacity> {
    vec![ShardCapacity {
        max_slots: max,
        ..shard("w", 0, free)
    }]
}

#[test]
fn lower_classes_leave_slots_free_while_a_higher_class_is_active() {
    let mut p = holding(1, 1000);
    p.report(&"w".into(), one_shard(4, 4));
    // Before any high request, low may fill the shard...
    p.enqueue(1, 0, spec("l", Priority::Low), 1).unwrap();
    assert_eq!(items(p.round(0, |_| true)), vec![1]);
    p.release(&id(0), 0);
    // ...once one arrived, low leaves a slot free for the next.
    p.enqueue(2, 0, spec("h", Priority::High), 2).unwrap();
    assert_eq!(items(p.round(0, |_| true)), vec![2]);
    for seq in 3..8 {
        p.enqueue(seq, 10, spec("l", Priority::Low), seq).unwrap();
    }
    assert_eq!(
        items(p.round(10, |_| true)),
        vec![3, 4],
        "one of 4 slots kept"
    );
    assert_eq!(
        p.stats(10).reserved,
        [
            (Priority::High, 0),
            (Priority::Normal, 1),
            (Priority::Low, 1)
        ]
    );
    // The next high request starts at once, ahead of the waiting low ones.
    p.enqueue(8, 20, spec("h", Priority::High), 8).unwrap();
    assert_eq!(items(p.round(20, |_| true)), vec![8]);
    // Its slot, freed, is still held while high is active...
    p.release(&id(0), 0);
    assert!(p.round(500, |_| true).is_empty());
    // ...and goes to low once high has been quiet for the hold time.
    assert_eq!(items(p.round(1020, |_| true)), vec![5]);
    assert_eq!(p.stats(1020).reserved[2], (Priority::Low, 0));
}

#[test]
fn low_keeps_a_reserve_per_active_class_above_it_but_at_least_half_a_shard() {
    let mut p = holding(2, 1000);
    p.report(&"w".into(), one_shard(12, 12));
    p.enqueue(1, 0, spec("h", Priority::High), 1).unwrap();
    p.enqueue(2, 0, spec("n", Priority::Normal), 2).unwrap();
    assert_eq!(items(p.round(0, |_| true)), vec![1, 2]);
    for seq in 3..13 {
        p.enqueue(seq, 0, spec("l", Priority::Low), seq).unwrap();
    }
    // 10 free: low leaves 2 for high and 2 for normal.
    assert_eq!(p.round(0, |_| true).len(), 6);
    assert_eq!(p.stats(0).reserved[2], (Priority::Low, 4));
    // A normal request may use what is held for normal, not what is held for high.
    for seq in 13..17 {
        p.enqueue(seq, 0, spec("n", Priority::Normal), seq).unwrap();
    }
    assert_eq!(items(p.round(0, |_| true)), vec![13, 14]);

    // A reserve larger than half a shard is cut to half: low still gets work.
    let mut p = holding(100, 1000);
    p.report(&"w".into(), one_shard(4, 4));
    p.enqueue(1, 0, spec("h", Priority::High), 1).unwrap();
    for seq in 2..6 {
        p.enqueue(seq, 0, spec("l", Priority::Low), seq).unwrap();
    }
    assert_eq!(items(p.round(0, |_| true)), vec![1, 2]);
}

#[test]
fn a_prefix_shard_counts_the_reserve_too() {
    let mut p = holding(1, 1000);
    let mut shards = one_shard(4, 1);
    shards.push(ShardCapacity {
        max_slots: 4,
        ..shard("w", 1, 4)
    });
    p.report(&"w".into(), shards);
    p.enqueue(1, 0, spec("h", Priority::High), 1).unwrap();
    assert_eq!(p.round(0, |_| true)[0].shard, id(1));
    // Shard 0 served the prefix last, but its one free slot is held for high.
    p.affinity.remember(7, &id(0));
    let mut low = spec("l", Priority::Low);
    low.prefix = Some(7);
    p.enqueue(2, 0, low, 2).unwrap();
    assert_eq!(p.round(0, |_| true)[0].shard, id(1));
}

#[test]
fn the_reserve_grows_to_cover_a_higher_class_s_bursts() {
    let mut p = holding(1, 60_000);
    p.report(&"w".into(), one_shard(16, 16));
    let low_keeps = |p: &Policy<u64>, now| p.stats(now).reserved[2].1;
    let mut seq = 0;
    let mut traffic = |p: &mut Policy<u64>, from: u64, high_every: u64| {
        // For a second: one request ending every 10 ms, a high one arriving every `high_every`.
        for t in (from..from + 1_000).step_by(10) {
            if t % high_every == 0 {
                seq += 1;
                p.enqueue(seq, t, spec("vip", Priority::High), seq).unwrap();
                assert_eq!(p.round(t, |_| true).len(), 1);
            }
            p.release(&id(0), t);
        }
    };
    p.enqueue(1_000, 0, spec("vip", Priority::High), 0).unwrap();
    assert_eq!(
        low_keeps(&p, 0),
        1,
        "no completion rate yet: the configured minimum"
    );
    p.remove(1_000);

    // Arrivals at a tenth of the completions: 3 held slots are all taken
    // by a burst with probability 0.1^3 <= 0.002 < 0.1^2.
    traffic(&mut p, 0, 100);
    assert_eq!(low_keeps(&p, 1_000), 3);
    // Arrivals as fast as completions: low keeps half the shard to itself.
    traffic(&mut p, 1_000, 10);
    assert_eq!(low_keeps(&p, 2_000), 8);
    for i in 0..10 {
        p.enqueue(2_000 + i, 2_000, spec("bulk", Priority::Low), i)
            .unwrap();
    }
    assert_eq!(p.round(2_000, |_| true).len(), 8);
    // High goes quiet: after the hold time nothing is held for it.
    assert_eq!(low_keeps(&p, 62_000), 0);

    // Holding can be turned off.
    let off: Policy<u64> = holding(0, 60_000);
    assert_eq!(off.stats(0).reserved[2].1, 0);
}
