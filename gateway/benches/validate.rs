//! Cost of stages `validate` + `guard` per request, by prompt size: the JSON
//! pre-pass, the typed parse, the parameter checks, the deny patterns (the
//! example list of CONTRACT §2) after normalisation, the system-prompt
//! policy, the context bound and the upstream body.
//!
//! `cargo bench -p tollgate-gateway --bench validate` prints one line per
//! case: median and 90th percentile in microseconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use tollgate_gateway::guard::Guard;
use tollgate_gateway::tokenizer::TokenCounter;
use tollgate_gateway::validate::{self, Rules};
use tollgate_shared::config::{GuardMode, GuardrailsConfig, SystemPromptPolicy};
use tollgate_shared::openai::ChatCompletionRequest;

const PATTERNS: &[&str] = &[
    "(?i)system:",
    "(?i)<script>",
    "(?i)root password",
    "print\\(",
    "os\\.",
    "exec\\(",
];

fn guard() -> Guard {
    let cfg = GuardrailsConfig {
        max_prompt_chars: 4_000_000,
        deny_patterns: PATTERNS.iter().map(|p| (*p).to_owned()).collect(),
        system_prompt: Some("You are a professional AI assistant.".into()),
        system_prompt_policy: SystemPromptPolicy::Enforce,
        mode: GuardMode::Reject,
        allow_fields: Vec::new(),
    };
    Guard::new(&cfg, b"benchmark key 0123456789").unwrap()
}

/// `bytes` of prompt text made of `unit` repeated.
fn prompt(unit: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + unit.len());
    while s.len() < bytes {
        s.push_str(unit);
    }
    s
}

fn body(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 256,
        "temperature": 0.7,
        "stream": true,
    }))
    .unwrap()
}

fn run(name: &str, body: &[u8], iterations: usize, guard: &Guard) {
    let rules = Rules {
        served_model: "Qwen/Qwen2.5-7B-Instruct",
        max_model_len: Some(100_000_000),
        max_prompt_chars: 4_000_000,
        allow_fields: &[],
        guard,
        cache_salt: guard.cache_salt("bench-tenant"),
        counter: &TokenCounter::Estimate,
    };
    let mut micros = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let t = Instant::now();
        let req: ChatCompletionRequest = validate::parse_json(body).unwrap();
        let plan = validate::chat(req, &rules).unwrap();
        let us = t.elapsed().as_secs_f64() * 1e6;
        std::hint::black_box(plan);
        // The first tenth warms caches and is not counted.
        if i >= iterations / 10 {
            micros.push(us);
        }
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<28} body {:>8} B  median {:>9.1} µs  p90 {:>9.1} µs  ({} runs)",
        body.len(),
        at(0.5),
        at(0.9),
        micros.len()
    );
}

/// The median of `iterations` runs of `f`, in microseconds.
fn median_us(iterations: usize, mut f: impl FnMut()) -> f64 {
    let mut micros: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    micros[micros.len() / 2]
}

/// Where the time of one request goes, stage by stage.
fn stages(name: &str, body: &[u8], text: &str, iterations: usize, guard: &Guard) {
    let typed = median_us(iterations, || {
        std::hint::black_box(serde_json::from_slice::<ChatCompletionRequest>(body).unwrap());
    });
    let checked = median_us(iterations, || {
        std::hint::black_box(validate::parse_json::<ChatCompletionRequest>(body).unwrap());
    });
    let req: ChatCompletionRequest = validate::parse_json(body).unwrap();
    let serialise = median_us(iterations, || {
        std::hint::black_box(serde_json::to_vec(&req).unwrap());
    });
    let guard_us = median_us(iterations, || {
        std::hint::black_box(guard.screen([text]).unwrap());
    });
    let normalise = median_us(iterations, || {
        std::hint::black_box(tollgate_gateway::guard::for_matching(text));
    });
    let bound = median_us(iterations, || {
        std::hint::black_box(validate::min_tokens(text));
    });
    println!(
        "  {name:<26} typed parse {typed:>8.1} µs  with pre-pass {checked:>8.1} µs  guard {guard_us:>8.1} µs (normalising {normalise:>8.1} µs)  token bound {bound:>7.1} µs  body out {serialise:>8.1} µs"
    );
}

fn main() {
    let guard = guard();
    let english = "The quick brown fox jumps over the lazy dog; ";
    let mixed = "你好，世界！ مرحبا 👨\u{200D}👩\u{200D}👧 Grüße ";
    for (label, unit) in [("english", english), ("multilingual", mixed)] {
        for (size, n) in [("1 KB", 1 << 10), ("100 KB", 100 << 10), ("1 MB", 1 << 20)] {
            let iterations = match n {
                1024 => 5000,
                102_400 => 300,
                _ => 40,
            };
            let text = prompt(unit, n);
            let b = body(&text);
            run(&format!("{label} {size}"), &b, iterations, &guard);
            stages(
                &format!("{label} {size}"),
                &b,
                &text,
                iterations / 2,
                &guard,
            );
        }
    }
}
