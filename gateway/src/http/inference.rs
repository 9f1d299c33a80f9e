//! The OpenAI-compatible inference routes. Each handler reads as its stages:
//! authenticate → authorize → read → validate → dispatch → relay.

use std::time::Instant;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use tollgate_shared::config::{Priority, Scope};
use tollgate_shared::openai::{
    ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorEnvelope,
    GenerateRequest, Model, ModelList, Usage,
};
use tracing::{Instrument, info_span};

use super::request_id_of;
use crate::app::Gateway;
use crate::auth::{Caller, authenticate};
use crate::dispatch::{dispatch, job_spec};
use crate::error::ApiError;
use crate::limits::{self, Charge, Refusal, Subject};
use crate::relay::{self, Outcome};
use crate::telemetry::Observe;
use crate::transport;
use crate::validate::{self, Plan, Rules, parse_json};

/// Stages `authenticate` and `authorize` for inference routes.
fn caller(req: &HttpRequest, gw: &Gateway) -> Result<Caller, ApiError> {
    let _stage = info_span!("authenticate").entered();
    let mut caller = authenticate(req, &gw.tokens, &gw.registry)?;
    caller.priority = requested_priority(req, caller.priority)?;
    Observe::of(req).caller(&caller);
    caller.require(Scope::Infer)?;
    Ok(caller)
}

/// A request may lower its own priority with `x-tollgate-priority`, never raise it.
fn requested_priority(req: &HttpRequest, tenant: Priority) -> Result<Priority, ApiError> {
    let Some(v) = req.headers().get("x-tollgate-priority") else {
        return Ok(tenant);
    };
    let asked = v
        .to_str()
        .ok()
        .and_then(|s| Priority::parse(s.trim()))
        .ok_or_else(|| {
            ApiError::invalid_param(
                "x-tollgate-priority",
                "x-tollgate-priority must be high, normal or low",
            )
        })?;
    // `Priority` orders high < normal < low: the larger is the lower class.
    Ok(asked.max(tenant))
}

/// Stages `read` and `validate`, the same for every inference route: the
/// body, parsed as `T`, noted for the audit record, and turned into a plan.
async fn plan_of<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    caller: &Caller,
    observe: impl FnOnce(&Observe, &T),
    validate: impl FnOnce(T, &Rules<'_>) -> Result<Plan, ApiError>,
) -> Result<Plan, ApiError> {
    let stage = info_span!("validate");
    let body = transport::read_body(req, payload, &gw.config.gateway)
        .instrument(stage.clone())
        .await?;
    stage.in_scope(|| {
        let parsed = parse_json::<T>(&body)?;
        observe(&Observe::of(req), &parsed);
        validate(parsed, &Rules::for_tenant(gw, &caller.tenant))
    })
}

/// What every inference route may answer besides its answer and the checks
/// every route has: one list for the document's three inference routes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Describes the `ApiError`s a request can end in; never built.
enum InferenceRefusals {
    #[response(status = 404, description = "the model is not the served one")]
    NotServed(ErrorEnvelope),
    #[response(
        status = 429,
        description = "a rate limit or quota was hit; `code` names it, `Retry-After` says when to come back"
    )]
    Limited(ErrorEnvelope),
    #[response(status = 502, description = "the model server failed")]
    Upstream(ErrorEnvelope),
    #[response(
        status = 503,
        description = "shed by the scheduler or no healthy worker (`overloaded`); see `Retry-After`"
    )]
    Overloaded(ErrorEnvelope),
    #[response(status = 504, description = "the model server did not answer in time")]
    Timeout(ErrorEnvelope),
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "inference",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "the completion; with `stream: true` an SSE stream of chunks ending in `data: [DONE]`",
            content((ChatCompletion = "application/json"), (StreamEvent = "text/event-stream"))),
        InferenceRefusals,
    ),
    params(("x-tollgate-priority" = Option<Priority>, Header, description = "lowers this request's priority below its tenant's (never raises it)")),
    security(("bearer" = ["infer"])),
)]
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &gw)?;
    let plan = plan_of(&req, payload, &gw, &caller, Observe::chat, validate::chat).await?;
    serve(&req, &gw, caller, plan).await
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "inference",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "the completion; with `stream: true` an SSE stream of chunks ending in `data: [DONE]`",
            content((Completion = "application/json"), (StreamEvent = "text/event-stream"))),
        InferenceRefusals,
    ),
    params(("x-tollgate-priority" = Option<Priority>, Header, description = "lowers this request's priority below its tenant's (never raises it)")),
    security(("bearer" = ["infer"])),
)]
pub async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req, &gw)?;
    let plan = plan_of(
        &req,
        payload,
        &gw,
        &caller,
        Observe::completion,
        validate::completion,
    )
    .await?;
    serve(&req, &gw, caller, plan).await
}

/// One event of a streamed answer: `data` is a JSON chunk
/// (`chat.completion.chunk` or `text_completion`), and the last one is
/// `[DONE]`. A stream that breaks ends with an error event instead.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes the SSE frames the relay writes.
pub struct StreamEvent {
    event: Option<String>,
    data: String,
}

/// The answer of `/v1/generate`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Generated {
    /// The request id.
    pub id: String,
    /// The assistant's reply.
    pub result: String,
    pub usage: Usage,
}

/// `/v1/generate`: `{prompt, max_tokens?}` → `{result, usage}`.
#[utoipa::path(
    post,
    path = "/v1/generate",
    tag = "inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "the reply", body = Generated),
        InferenceRefusals,
    ),
    params(("x-tollgate-priority" = Option<Priority>, Header, description = "lowers this request's priority below its tenant's (never raises it)")),
    security(("bearer" = ["infer"])),
)]
pub async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let mut caller = caller(&req, &gw)?;
    let plan = plan_of(
        &req,
        payload,
        &gw,
        &caller,
        Observe::generate,
        validate::generate,
    )
    .await?;
    caller.mark("validate");
    let obs = Observe::of(&req);
    obs.flagged(plan.flagged);
    let charge = limit(&req, &gw, &caller, &plan)
        .instrument(info_span!("limit"))
        .await?;
    caller.mark("limit");
    let genai = obs.genai();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + gw.config.gateway.request_timeout;
    let request_id = request_id_of(&req);
    let d = dispatch_by(gw.get_ref(), &caller, &plan, request_id, deadline)
        .instrument(genai.clone())
        .await?;
    if !d.response.status.is_success() {
        return Err(relay::upstream_error(d.response).await);
    }
    caller.mark_split("queue", d.queued, "dispatch");
    let (bytes, outcome) = relay::whole(d.response, d.grant.lease, deadline)
        .instrument(obs.relay(&genai))
        .await?;
    obs.answer(&outcome);
    charge.finish(outcome.usage, 0);
    caller.mark("relay");
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
    let mut ok = HttpResponse::Ok();
    if let Some(timing) = caller.timing_header() {
        ok.insert_header(timing);
    }
    Ok(ok.json(Generated {
        id: request_id.to_string(),
        result,
        usage: outcome.usage.unwrap_or_default(),
    }))
}

/// Stages `enqueue`, `dispatch` and `relay`, common to chat and completions.
async fn serve(
    req: &HttpRequest,
    gw: &web::Data<Gateway>,
    mut caller: Caller,
    plan: Plan,
) -> Result<HttpResponse, ApiError> {
    caller.mark("validate");
    let obs = Observe::of(req);
    obs.flagged(plan.flagged);
    let charge = limit(req, gw, &caller, &plan)
        .instrument(info_span!("limit"))
        .await?;
    caller.mark("limit");
    let genai = obs.genai();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + gw.config.gateway.request_timeout;
    let route = req.path().to_owned();
    let request_id = request_id_of(req);
    if plan.stream {
        // The answer may start before the grant (SSE keep-alives while queued),
        // so dispatch runs inside the stream: see `transport::sse`.
        let timing = caller.timing_header();
        let timers = transport::StreamTimers {
            keepalive: gw.config.gateway.sse_keepalive,
            idle: gw.config.gateway.stream_idle_timeout,
        };
        let gw = gw.clone();
        let (end, relay_parent) = (obs.clone(), genai.clone());
        let start = async move {
            let d = dispatch_by(&gw, &caller, &plan, request_id, deadline).await?;
            if !d.response.status.is_success() {
                return Err(relay::upstream_error(d.response).await);
            }
            caller.mark("dispatch");
            end.relay(&relay_parent);
            let on_end = Box::new(move |outcome: Outcome| {
                log_outcome(&caller, &route, started, &outcome);
                charge.finish(outcome.usage, outcome.content_chunks);
                end.stream_end(&outcome);
            });
            Ok(relay::stream(
                d.response,
                d.grant.lease,
                plan.client_wants_usage,
                deadline,
                on_end,
            ))
        };
        // The start runs in the GenAI span; a start that fails or is dropped ends the record.
        let mut resp = transport::stream_response(obs.stream(genai, start), timers).await?;
        if let Some((name, value)) = timing {
            resp.headers_mut().insert(name, value);
        }
        return Ok(resp);
    }
    let d = dispatch_by(gw, &caller, &plan, request_id, deadline)
        .instrument(genai.clone())
        .await?;
    if !d.response.status.is_success() {
        return Err(relay::upstream_error(d.response).await);
    }
    // Queue wait, then dispatch until the model server's answer starts.
    caller.mark_split("queue", d.queued, "dispatch");
    let mut ok = HttpResponse::Ok();
    let (bytes, outcome) = relay::whole(d.response, d.grant.lease, deadline)
        .instrument(obs.relay(&genai))
        .await?;
    obs.answer(&outcome);
    log_outcome(&caller, &route, started, &outcome);
    charge.finish(outcome.usage, 0);
    caller.mark("relay");
    if let Some(timing) = caller.timing_header() {
        ok.insert_header(timing);
    }
    Ok(ok.content_type("application/json").body(bytes))
}

/// Stage `limit`: checks and debits the caller's rate limits and quotas in one
/// step; what is left goes on the answer as `x-ratelimit-*` headers.
async fn limit(
    req: &HttpRequest,
    gw: &Gateway,
    caller: &Caller,
    plan: &Plan,
) -> Result<Charge, ApiError> {
    let subject = Subject {
        tenant: &caller.tenant,
        client: &caller.client_id,
        tenant_limits: caller.tenant_limits,
        client_limits: caller.client_limits,
    };
    match gw.limiter.admit(&subject, plan.cost_tokens).await {
        Ok((ticket, headroom)) => {
            req.extensions_mut().insert(headroom);
            Ok(Charge::new(gw.limiter.clone(), ticket, plan.prompt_tokens))
        }
        Err(Refusal::Limited {
            kind,
            retry_after_ms,
            headroom,
        }) => {
            req.extensions_mut().insert(headroom);
            let what = kind.code().replace('_', " ");
            let message = match retry_after_ms {
                Some(_) => format!("rate limit reached: {what}"),
                None => format!(
                    "this request alone ({} tokens reserved) exceeds the {what} limit",
                    plan.cost_tokens
                ),
            };
            Err(ApiError::RateLimited {
                code: kind.code(),
                message,
                retry_after_secs: limits::retry_after_secs(retry_after_ms),
            })
        }
        Err(Refusal::Unavailable) => Err(ApiError::Overloaded {
            message: "the rate limiter is unavailable; try again",
            retry_after_secs: 1,
        }),
    }
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
            job_spec(caller, plan, gw.config.scheduler.fair_share),
            plan,
            request_id,
            queue_timeout,
        ),
    )
    .await
    .map_err(|_| ApiError::UpstreamTimeout)?
}

/// A debug line per request (`TOLLGATE_LOG=debug`). The request's record
/// of account is its audit record, which holds all of this and more; a log
/// line per request at the default level would cost every request a second
/// JSON document and a write to stderr.
fn log_outcome(caller: &Caller, route: &str, started: Instant, outcome: &Outcome) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let usage = outcome.usage.unwrap_or_default();
    tracing::debug!(
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
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "inference",
    responses(
        (status = 200, description = "the served model", body = ModelList),
        (status = 400, description = "a malformed `x-tollgate-priority`", body = ErrorEnvelope),
    ),
    params(("x-tollgate-priority" = Option<Priority>, Header, description = "checked as on every inference route")),
    security(("bearer" = ["infer"])),
)]
pub async fn models(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    caller(&req, &gw)?;
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data: vec![Model {
            id: gw.config.gateway.model.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "tollgate".into(),
            max_model_len: gw.pool.max_model_len(),
        }],
    }))
}
