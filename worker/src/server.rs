//! The worker's HTTP server: the internal API (CONTRACT §4) plus health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use tollgate_shared::breaker::BreakerState;
use tollgate_shared::secret::Secret;
use tollgate_shared::worker_api::{
    Endpoint, GATEWAY_ID_HEADER, LOAD_PATH, REQUEST_ID_HEADER, TRACEPARENT_HEADER,
    WORKER_ERROR_HEADER, WorkerErrorKind, WorkerLoad,
};

use tollgate_shared::worker_api::local::Refused;

use crate::relay::{Answer, Forwarded, relay};
use crate::shard::{Refusal, Shard};

/// Largest dispatch body accepted; the gateway enforces its own, smaller limit on clients.
const MAX_DISPATCH_BYTES: usize = 32 * 1024 * 1024;
/// How long a request may wait for a slot on a full shard before the answer
/// is "busy": long enough to bridge a slot being handed on, too short to
/// queue here instead of in the gateway.
const BUSY_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

pub struct NodeState {
    pub id: String,
    pub shards: Vec<Arc<Shard>>,
    pub secret: Secret,
    pub http: reqwest::Client,
    pub draining: AtomicBool,
}

impl NodeState {
    /// The load report, telling `gateway` (the caller, if named) its own share.
    pub fn load(&self, gateway: Option<&str>) -> WorkerLoad {
        let draining = self.draining.load(Ordering::Acquire);
        WorkerLoad {
            worker_id: self.id.clone(),
            draining,
            shards: self
                .shards
                .iter()
                .map(|s| s.load(draining, gateway))
                .collect(),
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig, state: Arc<NodeState>) {
    cfg.app_data(web::Data::from(state))
        .app_data(web::PayloadConfig::new(MAX_DISPATCH_BYTES))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route(LOAD_PATH, web::get().to(load))
        .route("/metrics", web::get().to(crate::telemetry::metrics))
        .route(
            "/internal/v1/shards/{index}/{endpoint:.*}",
            web::post().to(dispatch),
        )
        .default_service(web::to(not_found));
}

/// An error the worker raises itself (as opposed to one relayed from vLLM).
pub fn worker_error(kind: WorkerErrorKind, message: &str) -> HttpResponse {
    HttpResponse::build(status_of(kind))
        .insert_header((WORKER_ERROR_HEADER, kind.as_str()))
        .json(serde_json::json!({
            "error": {"message": message, "type": "worker_error", "param": null, "code": kind.as_str()}
        }))
}

/// The HTTP status of a worker's own error.
pub fn status_of(kind: WorkerErrorKind) -> StatusCode {
    match kind {
        WorkerErrorKind::Busy | WorkerErrorKind::Draining => StatusCode::SERVICE_UNAVAILABLE,
        WorkerErrorKind::ShardUnavailable => StatusCode::BAD_GATEWAY,
        WorkerErrorKind::UnknownShard => StatusCode::NOT_FOUND,
        WorkerErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
    }
}

fn authorized(req: &HttpRequest, secret: &Secret) -> bool {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| secret.matches(token.as_bytes()))
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn dispatch(
    req: HttpRequest,
    path: web::Path<(u32, String)>,
    body: Bytes,
    state: web::Data<NodeState>,
) -> HttpResponse {
    if !authorized(&req, &state.secret) {
        return worker_error(
            WorkerErrorKind::Unauthorized,
            "missing or wrong cluster credential",
        );
    }
    let (index, endpoint) = path.into_inner();
    let Some(endpoint) = Endpoint::parse(&endpoint) else {
        return worker_error(
            WorkerErrorKind::UnknownShard,
            "no such shard or endpoint on this worker",
        );
    };
    let fwd = Forwarded {
        request_id: header(&req, REQUEST_ID_HEADER),
        traceparent: header(&req, TRACEPARENT_HEADER),
    };
    let gateway = gateway_id(&req).map(Arc::<str>::from);
    match state.dispatch(index, endpoint, body, gateway, fwd).await {
        Ok((answer, span)) => {
            let resp = HttpResponse::build(
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
            )
            .content_type(answer.content_type)
            .insert_header(("cache-control", "no-cache"))
            .streaming(answer.body);
            crate::telemetry::traced(resp, span)
        }
        Err(r) => worker_error(r.kind, r.message),
    }
}

impl NodeState {
    /// One dispatch, over HTTP or in-process: admission on the shard (waiting
    /// up to [`BUSY_GRACE`] for a slot being handed on), then the relay in
    /// its own span, a child of the caller's `traceparent`. The span is
    /// returned with the answer: it lasts until the answer is passed on.
    pub async fn dispatch(
        &self,
        index: u32,
        endpoint: Endpoint,
        body: Bytes,
        gateway: Option<Arc<str>>,
        fwd: Forwarded,
    ) -> Result<(Answer, tracing::Span), Refused> {
        let Some(shard) = self.shards.get(index as usize) else {
            return Err(Refused {
                kind: WorkerErrorKind::UnknownShard,
                message: "no such shard or endpoint on this worker",
            });
        };
        if self.draining.load(Ordering::Acquire) {
            return Err(Refused {
                kind: WorkerErrorKind::Draining,
                message: "the worker is shutting down",
            });
        }
        if !shard.healthy() {
            return Err(Refused {
                kind: WorkerErrorKind::ShardUnavailable,
                message: "the shard is unhealthy",
            });
        }
        let permit = match shard.admit_within(BUSY_GRACE, gateway.as_ref()).await {
            Ok(p) => p,
            Err(Refusal::Busy) => {
                return Err(Refused {
                    kind: WorkerErrorKind::Busy,
                    message: "the shard is at its in-flight limit",
                });
            }
            Err(Refusal::CircuitOpen) => {
                return Err(Refused {
                    kind: WorkerErrorKind::ShardUnavailable,
                    message: "the shard's circuit breaker is open",
                });
            }
        };
        let span = crate::telemetry::dispatch_span(
            fwd.traceparent.as_deref(),
            &self.id,
            shard.index,
            endpoint.suffix(),
        );
        // vLLM gets this span's traceparent (its spans are children of the worker's).
        let fwd = Forwarded {
            traceparent: tollgate_shared::telemetry::traceparent(&span).or(fwd.traceparent),
            request_id: fwd.request_id,
        };
        let answer = tracing::Instrument::instrument(
            relay(shard, permit, endpoint, body, fwd),
            span.clone(),
        )
        .await;
        match answer {
            Ok(a) => {
                crate::telemetry::answered(&span, a.status);
                Ok((a, span))
            }
            Err(r) => {
                crate::telemetry::answered(&span, status_of(r.kind).as_u16());
                Err(r)
            }
        }
    }
}

async fn load(req: HttpRequest, state: web::Data<NodeState>) -> HttpResponse {
    if !authorized(&req, &state.secret) {
        return worker_error(
            WorkerErrorKind::Unauthorized,
            "missing or wrong cluster credential",
        );
    }
    HttpResponse::Ok().json(state.load(gateway_id(&req).as_deref()))
}

/// The gateway id a request names, if it is a sane one (a short token).
fn gateway_id(req: &HttpRequest) -> Option<String> {
    header(req, GATEWAY_ID_HEADER).filter(|g| {
        (1..=64).contains(&g.len())
            && g.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<NodeState>) -> HttpResponse {
    let ready = !state.draining.load(Ordering::Acquire)
        && state
            .shards
            .iter()
            .any(|s| s.healthy() && s.breaker_state() != BreakerState::Open);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(serde_json::json!({"ready": ready}))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": {"message": "no such route", "type": "invalid_request_error", "param": null, "code": "not_found"}
    }))
}
