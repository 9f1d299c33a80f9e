//! The HTTP face of the simulator: vLLM's routes, its 404 for anything else,
//! and the shared state the handlers read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use actix_web::dev::ServerHandle;
use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use tokio::time::Instant;

use super::SimOptions;
use super::engine::SchedulingPolicy;
use super::error::SimError;
use super::faults::Faults;
use super::metrics::{self, CacheInfo};
use super::protocol::{ModelCard, ModelList, ModelPermission, TokenizeRequest, TokenizeResponse};
use super::runner::EngineHandle;
use super::sse::StreamFaults;
use super::template::{self, Ending};
use super::tokenizer;
use super::{generate, validate};

/// The vLLM release whose API the simulator follows (`GET /version`).
pub const VLLM_VERSION: &str = "0.23.0";
/// Largest request body accepted (vLLM has no small limit either).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub struct SimState {
    pub model: Arc<str>,
    pub max_model_len: u32,
    pub block_size: u32,
    pub echo: bool,
    pub seed: u64,
    pub policy: SchedulingPolicy,
    pub faults: Faults,
    pub engine: EngineHandle,
    pub cache: CacheInfo,
    pub started: Instant,
    /// Unix time the server started (`created` of the model card).
    pub created: u64,
    requests: AtomicU64,
    exiting: AtomicBool,
    /// Set once the server runs; used to stop it on a simulated exit.
    pub server: OnceLock<ServerHandle>,
}

/// How an inference request is let in.
enum Admission {
    Go,
    Fail(SimError),
    Exit,
}

impl SimState {
    pub fn new(opts: &SimOptions, engine: EngineHandle, cache: CacheInfo) -> SimState {
        SimState {
            model: Arc::from(opts.model.as_str()),
            max_model_len: opts.max_model_len,
            block_size: opts.block_size,
            echo: opts.echo,
            seed: opts.seed,
            policy: opts.scheduling_policy,
            faults: opts.faults.clone(),
            engine,
            cache,
            started: Instant::now(),
            created: validate::unix_now(),
            requests: AtomicU64::new(0),
            exiting: AtomicBool::new(false),
            server: OnceLock::new(),
        }
    }

    /// vLLM answers 404 when `model` is given and is not the served one.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), SimError> {
        match model {
            Some(m) if m != &*self.model => Err(SimError::ModelNotFound(m.to_owned())),
            _ => Ok(()),
        }
    }

    pub fn stream_faults(&self) -> StreamFaults {
        self.faults.stream()
    }

    /// Counts an inference request and applies the request-level faults.
    fn admit(&self) -> Admission {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.faults.exit_after_requests.is_some_and(|k| n >= k) {
            if !self.exiting.swap(true, Ordering::SeqCst) {
                tracing::warn!(requests = n, "simulated exit (--exit-after-requests)");
                match &self.faults.on_exit {
                    Some(hook) => (hook.0)(),
                    None => {
                        if let Some(server) = self.server.get() {
                            // Detached on purpose: the server being stopped runs this very handler.
                            tokio::spawn(server.stop(false));
                        }
                    }
                }
            }
            return Admission::Exit;
        }
        if self.faults.fails(self.seed, n) {
            return Admission::Fail(SimError::Injected(self.faults.fail_status));
        }
        Admission::Go
    }

    fn healthy(&self) -> bool {
        self.engine.is_alive() && self.started.elapsed() >= self.faults.unhealthy_for()
    }
}

/// Registers vLLM's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .route("/health", web::get().to(health))
        .route("/version", web::get().to(version))
        .route("/v1/models", web::get().to(models))
        .route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/completions", web::post().to(completions))
        .route("/tokenize", web::post().to(tokenize))
        .route("/metrics", web::get().to(prometheus));
}

/// FastAPI's answer to an unknown route.
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({"detail": "Not Found"}))
}

async fn health(state: web::Data<SimState>) -> HttpResponse {
    if state.healthy() {
        HttpResponse::Ok().finish()
    } else {
        HttpResponse::ServiceUnavailable().finish()
    }
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "version": VLLM_VERSION }))
}

async fn models(state: web::Data<SimState>) -> HttpResponse {
    let card = ModelCard {
        id: state.model.to_string(),
        object: "model",
        created: state.created,
        owned_by: "vllm",
        root: state.model.to_string(),
        parent: None,
        max_model_len: state.max_model_len,
        permission: vec![ModelPermission {
            id: format!("modelperm-{}", uuid::Uuid::new_v4().simple()),
            object: "model_permission",
            created: validate::unix_now(),
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: None,
            is_blocking: false,
        }],
    };
    HttpResponse::Ok().json(ModelList {
        object: "list",
        data: vec![card],
    })
}

async fn chat_completions(
    state: web::Data<SimState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, SimError> {
    match state.admit() {
        Admission::Go => {}
        Admission::Fail(e) => return Err(e),
        Admission::Exit => return std::future::pending().await,
    }
    generate::chat(&state, request_id(req.headers()), &body).await
}

async fn completions(
    state: web::Data<SimState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, SimError> {
    match state.admit() {
        Admission::Go => {}
        Admission::Fail(e) => return Err(e),
        Admission::Exit => return std::future::pending().await,
    }
    generate::completions(&state, request_id(req.headers()), &body).await
}

fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok())
}

async fn tokenize(state: web::Data<SimState>, body: web::Bytes) -> Result<HttpResponse, SimError> {
    let req: TokenizeRequest = validate::parse(&body)?;
    state.check_model(req.model.as_deref())?;
    let text = match (req.messages, req.prompt) {
        (Some(messages), _) => {
            let ending = match (req.continue_final_message, req.add_generation_prompt) {
                (true, _) => Ending::ContinueFinal,
                (false, Some(false)) => Ending::Closed,
                (false, _) => Ending::GenerationPrompt,
            };
            template::render(&messages, req.tools.as_deref(), ending)
        }
        (None, Some(prompt)) => prompt,
        (None, None) => {
            return Err(SimError::bad_param(
                "Field required: prompt or messages",
                "prompt",
            ));
        }
    };
    // The same counter the engine's requests go through.
    let tokens = tokenizer::token_ids(&text);
    let token_strs = req.return_token_strs.then(|| {
        tokenizer::spans(&text)
            .map(|r| text[r].to_owned())
            .collect()
    });
    Ok(HttpResponse::Ok().json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.max_model_len,
        tokens,
        token_strs,
    }))
}

async fn prometheus(state: web::Data<SimState>) -> Result<HttpResponse, SimError> {
    let snapshot = state.engine.snapshot().await.ok_or(SimError::EngineGone)?;
    let text = metrics::render(&snapshot, &state.model, &state.cache);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
