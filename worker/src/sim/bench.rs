//! Throughput of the simulator itself (not of the simulated GPU): how many
//! simulated tokens per second of CPU it can produce when time is scaled so
//! far that steps cost nothing. Run with
//! `cargo test --release -p tollgate-worker sim::bench -- --ignored --nocapture --test-threads 1`.

use std::net::TcpListener;
use std::sync::Arc;

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
    const ROUNDS: usize = 4;
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
    handle.stop(false).await;
    let _ = server_task.await;
}
