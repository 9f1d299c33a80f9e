//! Behaviour of the engine core and of its actor on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

use super::engine::{
    Engine, EngineConfig, FinishReason, NewRequest, SchedulingPolicy, StepPlan, TokenEvent,
};
use super::kv::block_hashes;
use super::runner::{EngineHandle, Spec};
use super::timing::{StepLoad, StepTiming};

const BS: u32 = 16;

fn timing() -> StepTiming {
    StepTiming {
        base_ms: 10.0,
        prefill_ms_per_token: 1.0,
        context_ms_per_token: 0.0,
        decode_ms_per_seq: 1.0,
    }
}

fn config(max_num_seqs: u32, max_num_batched_tokens: u32, num_blocks: u32) -> EngineConfig {
    EngineConfig {
        max_num_seqs,
        max_num_batched_tokens,
        block_size: BS,
        num_blocks,
        policy: SchedulingPolicy::Fcfs,
        timing: timing(),
        time_scale: 1.0,
    }
}

/// Prompt hashes: requests with the same `content` share a prefix.
fn hashes(prompt_len: u32, content: u32) -> Arc<[u64]> {
    block_hashes((0..prompt_len).map(|i| i + content * 1_000_000), BS, None).into()
}

fn request(
    prompt_len: u32,
    output: u32,
    priority: i64,
    content: u32,
) -> (NewRequest, UnboundedReceiver<TokenEvent>) {
    let (sink, rx) = unbounded_channel();
    let req = NewRequest {
        prompt_len,
        block_hashes: hashes(prompt_len, content),
        output_tokens: output,
        finish: FinishReason::Length,
        priority,
        sink,
    };
    (req, rx)
}

fn step(e: &mut Engine) -> StepPlan {
    let now = Instant::now();
    let plan = e.schedule(now);
    e.complete(&plan, now);
    plan
}

fn drain(rx: &mut UnboundedReceiver<TokenEvent>) -> Vec<TokenEvent> {
    let mut v = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        v.push(ev);
    }
    v
}

#[test]
fn running_batch_is_bounded_by_max_num_seqs() {
    let mut e = Engine::new(config(2, 10_000, 1000));
    let mut rxs = Vec::new();
    for id in 1..=4 {
        let (req, rx) = request(20, 5, 0, id as u32);
        e.add(id, req, Instant::now());
        rxs.push(rx);
    }
    let plan = step(&mut e);
    assert_eq!(plan.entries, [(1, 20), (2, 20)]);
    assert_eq!((e.num_running(), e.num_waiting()), (2, 2));
    // Both admitted requests got their first token at the end of the prefill step.
    assert_eq!(drain(&mut rxs[0]).len(), 1);
    assert!(drain(&mut rxs[2]).is_empty());
    // Once the first two finish (4 more steps), the others run.
    for _ in 0..5 {
        step(&mut e);
    }
    assert_eq!(e.running_ids(), [3, 4]);
}

#[test]
fn step_token_budget_splits_a_prompt_over_steps() {
    // Budget 100: the first prompt takes 60, the second gets the other 40.
    let mut e = Engine::new(config(8, 100, 1000));
    let (a, _ra) = request(60, 3, 0, 1);
    let (b, mut rb) = request(60, 3, 0, 2);
    e.add(1, a, Instant::now());
    e.add(2, b, Instant::now());
    let plan = step(&mut e);
    assert_eq!(plan.entries, [(1, 60), (2, 40)]);
    assert_eq!(plan.load.prefill_tokens, 100);
    assert!(drain(&mut rb).is_empty(), "b's prefill is not finished");
    // Next step: a decodes one token, b prefills its last 20 and emits its first token.
    let plan = step(&mut e);
    assert_eq!(plan.entries, [(1, 1), (2, 20)]);
    assert_eq!(
        plan.load,
        StepLoad {
            prefill_tokens: 20,
            context_tokens: 61 + 60,
            decode_seqs: 1
        }
    );
    assert_eq!(
        drain(&mut rb),
        [TokenEvent {
            index: 0,
            last: false
        }]
    );
}

#[test]
fn chunked_prefill_delays_the_first_token() {
    let mut e = Engine::new(config(8, 100, 1000));
    let (req, mut rx) = request(250, 2, 0, 1);
    e.add(1, req, Instant::now());
    let chunks: Vec<u32> = (0..3).map(|_| step(&mut e).entries[0].1).collect();
    assert_eq!(chunks, [100, 100, 50]);
    assert_eq!(
        drain(&mut rx),
        [TokenEvent {
            index: 0,
            last: false
        }]
    );
    step(&mut e);
    assert_eq!(
        drain(&mut rx),
        [TokenEvent {
            index: 1,
            last: true
        }]
    );
    assert!(!e.has_work());
    assert_eq!(e.blocks_in_use(), 0);
}

#[test]
fn kv_exhaustion_preempts_the_latest_admitted() {
    // 6 blocks of 16 tokens. Two 32-token prompts take 2 blocks each; as they
    // decode each needs a third block, then a fourth: the cache runs out.
    let mut e = Engine::new(config(8, 1000, 6));
    let (a, mut ra) = request(32, 40, 0, 1);
    let (b, mut rb) = request(32, 40, 0, 2);
    e.add(1, a, Instant::now());
    e.add(2, b, Instant::now());
    let mut preempted_at = None;
    for i in 0..40 {
        step(&mut e);
        if e.stats().preemptions > 0 {
            preempted_at = Some(i);
            break;
        }
    }
    assert!(preempted_at.is_some(), "the cache never ran out");
    assert_eq!(e.running_ids(), [1], "b, admitted last, was preempted");
    assert_eq!(e.num_waiting(), 1);
    let b_tokens = drain(&mut rb).len();
    // a runs to the end; then b is recomputed (prompt + its tokens) and resumes.
    while e.has_work() {
        step(&mut e);
    }
    let a_events = drain(&mut ra);
    assert_eq!(a_events.len(), 40);
    let b_rest = drain(&mut rb);
    assert_eq!(b_tokens + b_rest.len(), 40);
    assert_eq!(
        b_rest.first().map(|ev| ev.index),
        Some(b_tokens as u32),
        "output continues after recompute"
    );
    assert_eq!(e.blocks_in_use(), 0);
}

#[test]
fn priority_policy_admits_lowest_value_first_then_arrival() {
    let mut cfg = config(1, 1000, 1000);
    cfg.policy = SchedulingPolicy::Priority;
    let mut e = Engine::new(cfg);
    let mut rxs = Vec::new();
    for (id, prio) in [(1, 5), (2, 1), (3, 3), (4, 1)] {
        let (req, rx) = request(16, 1, prio, id as u32);
        e.add(id, req, Instant::now());
        rxs.push(rx);
    }
    let order: Vec<u64> = (0..4).map(|_| step(&mut e).entries[0].0).collect();
    assert_eq!(order, [2, 4, 3, 1]);
}

#[test]
fn priority_policy_preempts_the_lowest_priority() {
    let mut cfg = config(8, 1000, 6);
    cfg.policy = SchedulingPolicy::Priority;
    let mut e = Engine::new(cfg);
    let (urgent_late, _r1) = request(32, 60, 0, 1);
    let (lax, _r2) = request(32, 60, 9, 2);
    // The lax request arrives first, the urgent one second.
    e.add(1, lax, Instant::now());
    e.add(2, urgent_late, Instant::now());
    while e.stats().preemptions == 0 {
        step(&mut e);
    }
    assert_eq!(e.running_ids(), [2], "the priority-9 request was preempted");
}

#[test]
fn prefix_cache_reuses_blocks_of_finished_requests() {
    let mut e = Engine::new(config(8, 1000, 100));
    let (a, _ra) = request(64, 1, 0, 7);
    e.add(1, a, Instant::now());
    step(&mut e);
    assert!(!e.has_work());
    // Same prompt: 3 of its 4 blocks are reused (the last token is always computed).
    let (b, mut rb) = request(64, 1, 0, 7);
    e.add(2, b, Instant::now());
    let plan = step(&mut e);
    assert_eq!(plan.entries, [(2, 16)]);
    assert_eq!(drain(&mut rb).len(), 1);
    let s = e.stats();
    assert_eq!((s.prefix_cache_queries, s.prefix_cache_hits), (128, 48));
    // Another prompt shares nothing.
    let (c, _rc) = request(64, 1, 0, 8);
    e.add(3, c, Instant::now());
    assert_eq!(step(&mut e).entries, [(3, 64)]);
    assert_eq!(e.stats().prefix_cache_hits, 48);
}

#[test]
fn aborting_frees_blocks_and_counts_abort() {
    let mut e = Engine::new(config(8, 1000, 100));
    let (a, _ra) = request(100, 50, 0, 1);
    e.add(1, a, Instant::now());
    step(&mut e);
    assert!(e.blocks_in_use() > 0);
    e.abort(1, Instant::now());
    assert_eq!((e.blocks_in_use(), e.num_running()), (0, 0));
    assert_eq!(e.stats().finished[FinishReason::Abort.index()], 1);
    // A dropped receiver aborts the request at its next token.
    let (b, rb) = request(100, 50, 0, 2);
    e.add(2, b, Instant::now());
    drop(rb);
    step(&mut e);
    assert_eq!((e.blocks_in_use(), e.num_running()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn actor_sleeps_each_step_for_its_modelled_duration() {
    let engine = Engine::new(config(8, 1000, 100));
    assert_eq!(engine.config().time_scale, 1.0);
    let handle = EngineHandle::spawn(engine).unwrap();
    let t0 = Instant::now();
    let mut sub = handle.submit(Spec {
        prompt_len: 50,
        block_hashes: hashes(50, 1),
        output_tokens: 3,
        finish: FinishReason::Stop,
        priority: 0,
    });
    let mut times = Vec::new();
    while let Some(ev) = sub.events.recv().await {
        times.push(t0.elapsed());
        if ev.last {
            sub.guard.disarm();
            break;
        }
    }
    // Prefill: 10 + 50·1 ms; each decode: 10 + 1 ms.
    let ms = Duration::from_millis;
    assert_eq!(times, [ms(60), ms(71), ms(82)]);
    let snap = handle.snapshot().await.unwrap();
    assert_eq!(snap.stats.finished[FinishReason::Stop.index()], 1);
    assert_eq!(snap.stats.ttft.count(), 1);
    assert!((snap.stats.ttft.sum() - 0.060).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn time_scale_divides_step_durations() {
    let mut cfg = config(8, 1000, 100);
    cfg.time_scale = 10.0;
    let handle = EngineHandle::spawn(Engine::new(cfg)).unwrap();
    let t0 = Instant::now();
    let mut sub = handle.submit(Spec {
        prompt_len: 50,
        block_hashes: hashes(50, 1),
        output_tokens: 1,
        finish: FinishReason::Stop,
        priority: 0,
    });
    sub.events.recv().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(6));
    // Metrics are in simulated time.
    let snap = handle.snapshot().await.unwrap();
    assert!((snap.stats.ttft.sum() - 0.060).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_submission_aborts_it_and_frees_its_blocks() {
    let handle = EngineHandle::spawn(Engine::new(config(8, 1000, 100))).unwrap();
    let mut sub = handle.submit(Spec {
        prompt_len: 200,
        block_hashes: hashes(200, 1),
        output_tokens: 1000,
        finish: FinishReason::Length,
        priority: 0,
    });
    sub.events.recv().await.unwrap();
    let busy = handle.snapshot().await.unwrap();
    assert_eq!(busy.running, 1);
    assert!(busy.kv_cache_usage > 0.0);
    drop(sub); // the client went away
    let idle = handle.snapshot().await.unwrap();
    assert_eq!(
        (idle.running, idle.waiting, idle.kv_cache_usage),
        (0, 0, 0.0)
    );
    assert_eq!(idle.stats.finished[FinishReason::Abort.index()], 1);
}
