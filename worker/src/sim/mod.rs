//! The vLLM simulator: an HTTP server speaking vLLM's OpenAI-compatible API
//! in front of an iteration-level engine loop like vLLM V1's, timed after
//! Qwen2.5-7B-Instruct on one GPU (see docs/simulator.md).
//!
//! - `timing`: GPU presets, the step-time formula and the KV-cache size
//! - `engine`: scheduler, batch and preemption, as a pure state machine; `queue`: its waiting queue
//! - `kv`: paged KV-cache blocks and the prefix cache
//! - `runner`: the actor that drives the engine in (tokio) time
//! - `tokenizer`, `template`: Qwen2.5's token counting and chat template, stood in
//! - `text`: deterministic output text and where it stops
//! - `protocol`: request and response shapes; `sse`: streaming frames
//! - `generate`: the completion endpoints; `validate`: their checks, vLLM's messages
//! - `http`: routes and shared state
//! - `metrics`: vLLM's Prometheus metrics; `faults`: injected failures; `error`: error answers

mod engine;
mod error;
mod faults;
mod generate;
mod http;
mod kv;
mod metrics;
mod protocol;
mod queue;
mod runner;
mod sse;
mod template;
mod text;
mod timing;
mod tokenizer;
mod validate;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod http_tests;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use tollgate_shared::config::{DEFAULT_MODEL, SimConfig};

pub use engine::SchedulingPolicy;
pub use faults::{ExitHook, Faults};
pub use http::VLLM_VERSION;
pub use timing::{Preset, StepTiming};

use engine::{Engine, EngineConfig};
use http::SimState;
use metrics::CacheInfo;
use runner::EngineHandle;

/// Every knob of the simulator. `None` in a timing or capacity field means
/// "derived from the preset".
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The served model name (`--model`).
    pub model: String,
    pub preset: Preset,
    pub max_model_len: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub kv_cache_tokens: Option<u64>,
    /// Tokens per KV-cache block (vLLM's `--block-size`).
    pub block_size: u32,
    pub scheduling_policy: SchedulingPolicy,
    /// Simulated seconds per wall-clock second (> 1 runs faster than real time).
    pub time_scale: f64,
    pub seed: u64,
    /// Answer with the prompt as rendered instead of invented text.
    pub echo: bool,
    pub step_base_ms: Option<f64>,
    pub prefill_ms_per_token: Option<f64>,
    pub context_ms_per_token: Option<f64>,
    pub decode_ms_per_seq: Option<f64>,
    pub faults: Faults,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// How long a graceful stop waits for in-flight responses.
    pub shutdown_timeout: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            model: DEFAULT_MODEL.to_owned(),
            preset: Preset::H200,
            max_model_len: 32_768,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            kv_cache_tokens: None,
            block_size: 16,
            scheduling_policy: SchedulingPolicy::Fcfs,
            time_scale: 1.0,
            seed: 0,
            echo: false,
            step_base_ms: None,
            prefill_ms_per_token: None,
            context_ms_per_token: None,
            decode_ms_per_seq: None,
            faults: Faults::default(),
            http_workers: 2,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl SimOptions {
    /// Defaults (h200 preset) overlaid with the `[sim]` config section.
    pub fn from_config(c: &SimConfig) -> Result<SimOptions, String> {
        let mut o = SimOptions::default();
        if let Some(m) = &c.model {
            o.model = m.clone();
        }
        if let Some(p) = &c.preset {
            o.preset = Preset::parse(p)
                .ok_or_else(|| format!("sim.preset = {p}: must be h200 or h100"))?;
        }
        if let Some(v) = c.max_model_len {
            o.max_model_len = to_u32("sim.max_model_len", v)?;
        }
        if let Some(v) = c.max_num_seqs {
            o.max_num_seqs = to_u32("sim.max_num_seqs", v)?;
        }
        if let Some(v) = c.max_num_batched_tokens {
            o.max_num_batched_tokens = to_u32("sim.max_num_batched_tokens", v)?;
        }
        if c.kv_cache_tokens.is_some() {
            o.kv_cache_tokens = c.kv_cache_tokens;
        }
        if let Some(p) = &c.scheduling_policy {
            o.scheduling_policy = SchedulingPolicy::parse(p)
                .ok_or_else(|| format!("sim.scheduling_policy = {p}: must be fcfs or priority"))?;
        }
        if let Some(t) = c.time_scale {
            o.time_scale = t;
        }
        if let Some(s) = c.seed {
            o.seed = s;
        }
        if let Some(e) = c.echo {
            o.echo = e;
        }
        o.validate()?;
        Ok(o)
    }

    /// The step constants: the preset's, with any overrides.
    pub fn timing(&self) -> StepTiming {
        let p = self.preset.timing();
        StepTiming {
            base_ms: self.step_base_ms.unwrap_or(p.base_ms),
            prefill_ms_per_token: self.prefill_ms_per_token.unwrap_or(p.prefill_ms_per_token),
            context_ms_per_token: self.context_ms_per_token.unwrap_or(p.context_ms_per_token),
            decode_ms_per_seq: self.decode_ms_per_seq.unwrap_or(p.decode_ms_per_seq),
        }
    }

    /// KV-cache capacity in tokens: given, or the preset's.
    pub fn kv_cache_tokens(&self) -> u64 {
        self.kv_cache_tokens
            .unwrap_or_else(|| self.preset.kv_cache_tokens(self.block_size))
    }

    /// Checks every knob; the message names the flag and the rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("model must not be empty".to_owned());
        }
        for (name, v) in [
            ("max-model-len", self.max_model_len),
            ("max-num-seqs", self.max_num_seqs),
            ("max-num-batched-tokens", self.max_num_batched_tokens),
            ("block-size", self.block_size),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !self.time_scale.is_finite() || self.time_scale <= 0.0 {
            return Err(format!(
                "time-scale must be a positive number, got {}",
                self.time_scale
            ));
        }
        let kv = self.kv_cache_tokens();
        if kv < u64::from(self.max_model_len) {
            return Err(format!(
                "kv-cache-tokens ({kv}) is smaller than max-model-len ({}): vLLM refuses to start \
                 when one sequence of maximum length cannot fit in the KV cache",
                self.max_model_len
            ));
        }
        if kv / u64::from(self.block_size) > u64::from(u32::MAX - 1) {
            return Err(format!("kv-cache-tokens ({kv}) is too large"));
        }
        if self.http_workers == 0 {
            return Err("http-workers must be at least 1".to_owned());
        }
        self.timing().validate()?;
        self.faults.validate()
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            block_size: self.block_size,
            num_blocks: (self.kv_cache_tokens() / u64::from(self.block_size)) as u32,
            policy: self.scheduling_policy,
            timing: self.timing(),
            time_scale: self.time_scale,
        }
    }
}

fn to_u32(key: &str, v: u64) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{key} = {v}: too large"))
}

/// Validates `opts`, starts the engine actor on the current Tokio runtime
/// and returns the state the HTTP handlers share.
fn build_state(opts: &SimOptions) -> std::io::Result<Arc<SimState>> {
    opts.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let cfg = opts.engine_config();
    let cache = CacheInfo {
        block_size: cfg.block_size,
        num_gpu_blocks: cfg.num_blocks,
    };
    let engine = EngineHandle::spawn(Engine::new(cfg))?;
    Ok(Arc::new(SimState::new(opts, engine, cache)))
}

/// The simulator's routes on shared state (also used by tests).
fn app(
    state: Arc<SimState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::from(state))
        .configure(http::routes)
        .default_service(web::to(http::not_found))
}

/// Starts the simulator's HTTP server on an already bound listener and its engine loop task.
/// The returned server future must be awaited/spawned by the caller; signals are disabled on it
/// (`.disable_signals()`) — callers handle shutdown via the server handle.
pub fn start(opts: SimOptions, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let state = build_state(&opts)?;
    let server_state = state.clone();
    let server = HttpServer::new(move || app(server_state.clone()))
        .tcp_nodelay(true)
        // As vLLM does: a client that closed its connection aborts its
        // request, streamed or not (the handler is dropped, and with it the
        // submission's abort guard).
        .h1_allow_half_closed(false)
        .workers(opts.http_workers)
        .shutdown_timeout(opts.shutdown_timeout.as_secs())
        .disable_signals()
        .listen(listener)?
        .run();
    let _ = state.server.set(server.handle());
    Ok(server)
}
