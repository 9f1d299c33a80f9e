//! The OpenAI-compatible inference routes. Each handler reads as its stages:
//! authenticate → authorize → read → validate → dispatch → relay.

use std::time::Instant;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_LENGTH};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tollgate_shared::config::Scope;
use tollgate_shared::openai::{ChatCompletionRequest, CompletionRequest, GenerateRequest};

use super::request_id_of;
use crate::app::Gateway;
use crate::auth::{Caller, authenticate};
use crate::dispatch::dispatch;
use crate::error::ApiError;
use crate::relay::{self, Outcome};
use crate::validate::{self, Plan, parse_json};

/// Stages `authenticate` and `authorize` for inference routes.
fn caller(req: &HttpRequest, gw: &Gateway) -> Result<Caller, ApiError> {
    let caller = authenticate(req, &gw.tokens, &gw.registry)?;
    caller.require(Scope::Infer)?;
    Ok(caller)
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &gw)?;
    let body = read_body(&req, payload, gw.config.gateway.max_body_bytes).await?;
    let plan = validate::chat(
        parse_json::<ChatCompletionRequest>(&body)?,
        &gw.config.gateway.model,
    )?;
    serve(&req, &gw, caller, plan).await
}

pub async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &gw)?;
    let body = read_body(&req, payload, gw.config.gateway.max_body_bytes).await?;
    let plan = validate::completion(
        parse_json::<CompletionRequest>(&body)?,
        &gw.config.gateway.model,
    )?;
    serve(&req, &gw, caller, plan).await
}

/// `/v1/generate`: `{prompt, max_tokens?}` → `{result, usage}`.
pub async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &gw)?;
    let body = read_body(&req, payload, gw.config.gateway.max_body_bytes).await?;
    let g: GenerateRequest = parse_json(&body)?;
    let plan = validate::generate(
        g.prompt,
        g.max_tokens,
        g.temperature,
        &gw.config.gateway.model,
    )?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + gw.config.gateway.request_timeout;
    let request_id = request_id_of(&req);
    let d = dispatch_by(gw.get_ref(), &caller, &plan, request_id, deadline).await?;
    if !d.response.status().is_success() {
        return Err(relay::upstream_error(d.response).await);
    }
    let (bytes, outcome) = relay::whole(d.response, d.grant.lease, deadline).await?;
    #[derive(serde::Deserialize)]
    struct Chat {
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        message: Message,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        content: Option<String>,
    }
    let chat: Chat = serde_json::from_slice(&bytes).map_err(|_| ApiError::UpstreamFailed)?;
    let result = chat
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .unwrap_or_default();
    log_outcome(&caller, "/v1/generate", started, &outcome);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": request_id.to_string(),
        "result": result,
        "usage": outcome.usage.unwrap_or_default(),
    })))
}

/// Stages `enqueue`, `dispatch` and `relay`, common to chat and completions.
async fn serve(
    req: &HttpRequest,
    gw: &Gateway,
    caller: Caller,
    plan: Plan,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + gw.config.gateway.request_timeout;
    let route = req.path().to_owned();
    let request_id = request_id_of(req);
    let d = dispatch_by(gw, &caller, &plan, request_id, deadline).await?;
    if !d.response.status().is_success() {
        return Err(relay::upstream_error(d.response).await);
    }
    if plan.stream {
        let on_end =
            Box::new(move |outcome: Outcome| log_outcome(&caller, &route, started, &outcome));
        let stream = relay::stream(
            d.response,
            d.grant.lease,
            plan.client_wants_usage,
            deadline,
            on_end,
        );
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header((CACHE_CONTROL, "no-cache"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(stream));
    }
    let (bytes, outcome) = relay::whole(d.response, d.grant.lease, deadline).await?;
    log_outcome(&caller, &route, started, &outcome);
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(bytes))
}

/// Dispatch bounded by the whole request's deadline (vLLM answers a
/// non-streamed request only when it is done, so this covers generation too).
async fn dispatch_by(
    gw: &Gateway,
    caller: &Caller,
    plan: &Plan,
    request_id: tollgate_shared::ids::RequestId,
    deadline: tokio::time::Instant,
) -> Result<crate::dispatch::Dispatched, ApiError> {
    let queue_timeout = gw.config.scheduler.queue_timeout;
    tokio::time::timeout_at(
        deadline,
        dispatch(
            &gw.scheduler,
            &gw.pool,
            caller,
            plan,
            request_id,
            queue_timeout,
        ),
    )
    .await
    .map_err(|_| ApiError::UpstreamTimeout)?
}

fn log_outcome(caller: &Caller, route: &str, started: Instant, outcome: &Outcome) {
    let usage = outcome.usage.unwrap_or_default();
    tracing::info!(
        client_id = %caller.client_id,
        tenant = %caller.tenant,
        route,
        latency_ms = started.elapsed().as_millis() as u64,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        finish_reason = outcome.finish_reason.as_deref(),
        error = outcome.error,
        "request done"
    );
}

/// `GET /v1/models`: the served model, with `max_model_len` as the fleet reports it.
pub async fn models(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    caller(&req, &gw)?;
    let mut model = serde_json::json!({
        "id": gw.config.gateway.model,
        "object": "model",
        "created": 0,
        "owned_by": "tollgate",
    });
    if let Some(len) = gw.pool.max_model_len() {
        model["max_model_len"] = len.into();
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": [model]})))
}
