//! Throughput of the simulator itself (not of the simulated GPU): how many
//! simulated tokens per second of CPU it can produce when time is scaled so
//! far that steps cost nothing. Run with
//! `cargo test --release -p tollgate-worker sim::bench -- --ignored --nocapture --test-threads 1`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

use super::engine::{Engine, EngineConfig, FinishReason, NewRequest, SchedulingPolicy, TokenEvent};
use super::kv::block_hashes;
use super::timing::Preset;
use super::{SimOptions, start};

#[test]
#[ignore = "benchmark"]
fn engine_core_tokens_per_second() {
    const PROMPT: u32 = 256;
    const OUTPUT: u32 = 256;
    const REQUESTS: u32 = 20_000;
    let cfg = EngineConfig {
        max_num_seqs: 256,
        max_num_batched_tokens: 8192,
        block_size: 16,
        num_blocks: (Preset::H200.kv_cache_tokens(16) / 16) as u32,
        policy: SchedulingPolicy::Fcfs,
        timing: Preset::H200.timing(),
        time_scale: 1e9,
    };
    // Prompts are tokenized and hashed by the HTTP side, not the engine.
    let hashes: Vec<Arc<[u64]>> = (0..REQUESTS)
        .map(|r| block_hashes((0..PROMPT).map(|t| t + r * PROMPT), 16, None).into())
        .collect();
    let mut e = Engine::new(cfg);
    let mut live: Vec<UnboundedReceiver<TokenEvent>> = Vec::new();
    let mut submitted = 0u32;
    let mut tokens = 0u64;
    let started = std::time::Instant::now();
    while submitted < REQUESTS || !live.is_empty() {
        while live.len() < 512 && submitted < REQUESTS {
            let (sink, rx) = unbounded_channel();
            let req = NewRequest {
                prompt_len: PROMPT,
                block_hashes: hashes[submitted as usize].clone(),
                output_tokens: OUTPUT,
                finish: FinishReason::Length,
                priority: 0,
                sink,
            };
            e.add(u64::from(submitted), req, Instant::now());
            live.push(rx);
            submitted += 1;
        }
        let now = Instant::now();
        let plan = e.schedule(now);
        e.complete(&plan, now);
        live.retain_mut(|rx| {
            let mut finished = false;
            while let Ok(ev) = rx.try_recv() {
                tokens += 1;
                finished |= ev.last;
            }
            !finished
        });
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(tokens, u64::from(REQUESTS) * u64::from(OUTPUT));
    println!(
        "engine core: {tokens} tokens in {secs:.2} s = {:.0} simulated tokens/s on one core",
        tokens as f64 / secs
    );
}

#[actix_web::test]
#[ignore = "benchmark"]
async fn http_streaming_tokens_per_second() {
    const CLIENTS: usize = 256;
    const OUTPUT: usize = 512;
    const ROUNDS: usize = 16;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = SimOptions {
        time_scale: 1e6,
        http_workers: 1,
        ..SimOptions::default()
    };
    let server = start(opts, listener).unwrap();
    let handle = server.handle();
    let server_task = actix_web::rt::spawn(server);
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/completions");
    let started = std::time::Instant::now();
    let cpu_before = process_cpu_seconds();
    let mut tokens = 0usize;
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                actix_web::rt::spawn(async move {
                    let body = serde_json::json!({"prompt": format!("request {round} {i} says hello"),
                        "max_tokens": OUTPUT, "ignore_eos": true, "stream": true});
                    let resp = client.post(&url).json(&body).send().await.unwrap();
                    let mut stream = resp.bytes_stream();
                    let mut tail = Vec::new();
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.unwrap();
                        tail.extend_from_slice(&chunk[chunk.len().saturating_sub(32)..]);
                        if tail.len() > 64 {
                            tail.drain(..tail.len() - 32);
                        }
                    }
                    assert!(tail.ends_with(b"data: [DONE]\n\n"));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        tokens += CLIENTS * OUTPUT;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "HTTP streaming, {CLIENTS} concurrent clients in-process: {tokens} tokens in {secs:.2} s = {:.0} tokens/s",
        tokens as f64 / secs
    );
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_seconds()) {
        // Server and clients share the CPU time: the simulator alone does at least this.
        let cpu = after - before;
        println!(
            "  CPU time {cpu:.2} s (server and clients): {:.0} simulated tokens per CPU-second",
            tokens as f64 / cpu
        );
    }
    handle.stop(false).await;
    let _ = server_task.await;
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (Linux; clock ticks of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs `e` on a virtual clock (no sleeping) until `done` says so; returns the
/// simulated time that took. Each step lasts what the timing model says.
fn run_virtual(e: &mut Engine, now: &mut Instant, mut done: impl FnMut() -> bool) -> Duration {
    let start = *now;
    while !done() {
        let plan = e.schedule(*now);
        assert!(!plan.is_empty(), "the engine has nothing to do");
        *now += e.step_duration(&plan);
        e.complete(&plan, *now);
    }
    *now - start
}

fn h200_engine() -> Engine {
    Engine::new(EngineConfig {
        max_num_seqs: 256,
        max_num_batched_tokens: 8192,
        block_size: 16,
        num_blocks: (Preset::H200.kv_cache_tokens(16) / 16) as u32,
        policy: SchedulingPolicy::Fcfs,
        timing: Preset::H200.timing(),
        time_scale: 1.0,
    })
}

fn request(id: u32, prompt: u32, output: u32) -> (NewRequest, UnboundedReceiver<TokenEvent>) {
    let (sink, rx) = unbounded_channel();
    let req = NewRequest {
        prompt_len: prompt,
        // Distinct prompts: no prefix-cache hits flatter the figures.
        block_hashes: block_hashes((0..prompt).map(|t| t + id * 1_000_003), 16, None).into(),
        output_tokens: output,
        finish: FinishReason::Length,
        priority: 0,
        sink,
    };
    (req, rx)
}

/// The roofline floor of one step on an H200: the larger of moving the bytes
/// (weights once, plus every sequence's KV) at peak HBM bandwidth and doing
/// the FLOPs (2·params per token) at peak bf16 throughput.
fn h200_floor_ms(tokens: u64, context_tokens: u64) -> f64 {
    use super::timing::qwen25_7b::{FLOPS_PER_TOKEN, KV_BYTES_PER_TOKEN, WEIGHT_BYTES};
    let bytes = WEIGHT_BYTES + (context_tokens * KV_BYTES_PER_TOKEN) as f64;
    let memory_ms = bytes / 4.8e12 * 1e3;
    let compute_ms = tokens as f64 * FLOPS_PER_TOKEN / 989e12 * 1e3;
    memory_ms.max(compute_ms)
}

/// The h200 preset's TTFT by prompt length and inter-token latency by batch
/// size, beside the roofline floor (docs/simulator.md shows the table). Run with
/// `cargo test --release -p tollgate-worker sim::bench::h200_latency_tables -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn h200_latency_tables() {
    println!("| prompt tokens | simulated TTFT | floor (roofline) | ratio |");
    println!("|---:|---:|---:|---:|");
    for prompt in [128u32, 512, 1024, 2048, 4096, 8192, 16384] {
        let mut e = h200_engine();
        let mut now = Instant::now();
        let (req, mut rx) = request(0, prompt, 1);
        e.add(0, req, now);
        let ttft = run_virtual(&mut e, &mut now, || rx.try_recv().is_ok());
        let ms = ttft.as_secs_f64() * 1e3;
        // Chunked prefill: each chunk of 8192 tokens reads the weights once.
        let chunks = u64::from(prompt).div_ceil(8192);
        let floor: f64 = (0..chunks)
            .map(|c| {
                let tokens = (u64::from(prompt) - c * 8192).min(8192);
                h200_floor_ms(tokens, c * 8192 + tokens)
            })
            .sum();
        println!(
            "| {prompt} | {ms:.1} ms | {floor:.1} ms | {:.2} |",
            ms / floor
        );
    }
    println!();
    println!(
        "| batch | ITL, 1k context | floor | ITL, 4k context | floor | decode tokens/s (1k) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for batch in [1u32, 8, 32, 64, 128, 256] {
        let mut row = Vec::new();
        let mut throughput = 0.0;
        for context in [1024u32, 4096] {
            const STEPS: u32 = 64;
            let mut e = h200_engine();
            let mut now = Instant::now();
            let mut rxs: Vec<_> = (0..batch)
                .map(|i| {
                    // Long enough that nobody finishes while the others prefill.
                    let output = (batch * context).div_ceil(8192) + 2 * STEPS;
                    let (req, rx) = request(i, context, output);
                    e.add(u64::from(i), req, now);
                    rx
                })
                .collect();
            let mut firsts = vec![0u32; batch as usize];
            // Prefill everyone first: the ITL is measured on a pure decode batch.
            run_virtual(&mut e, &mut now, || {
                for (f, rx) in firsts.iter_mut().zip(rxs.iter_mut()) {
                    while rx.try_recv().is_ok() {
                        *f += 1;
                    }
                }
                firsts.iter().all(|&f| f > 0)
            });
            let mut steps = 0u32;
            let elapsed = run_virtual(&mut e, &mut now, || {
                steps += 1;
                steps > STEPS
            });
            let itl_ms = elapsed.as_secs_f64() * 1e3 / f64::from(STEPS);
            // Mid-measurement context per sequence.
            let ctx = u64::from(context + STEPS / 2);
            let floor = h200_floor_ms(u64::from(batch), ctx * u64::from(batch));
            row.push(format!("{itl_ms:.2} ms | {floor:.2} ms"));
            if context == 1024 {
                throughput = f64::from(batch) / (itl_ms / 1e3);
            }
        }
        println!("| {batch} | {} | {throughput:.0} |", row.join(" | "));
    }
}
