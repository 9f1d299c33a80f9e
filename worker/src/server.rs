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

use crate::relay::{Forwarded, relay};
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
    let status = match kind {
        WorkerErrorKind::Busy | WorkerErrorKind::Draining => StatusCode::SERVICE_UNAVAILABLE,
        WorkerErrorKind::ShardUnavailable => StatusCode::BAD_GATEWAY,
        WorkerErrorKind::UnknownShard => StatusCode::NOT_FOUND,
        WorkerErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
    };
    HttpResponse::build(status)
        .insert_header((WORKER_ERROR_HEADER, kind.as_str()))
        .json(serde_json::json!({
            "error": {"message": message, "type": "worker_error", "param": null, "code": kind.as_str()}
        }))
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
    let (Some(shard), Some(endpoint)) =
        (state.shards.get(index as usize), Endpoint::parse(&endpoint))
    else {
        return worker_error(
            WorkerErrorKind::UnknownShard,
            "no such shard or endpoint on this worker",
        );
    };
    if state.draining.load(Ordering::Acquire) {
        return worker_error(WorkerErrorKind::Draining, "the worker is shutting down");
    }
    if !shard.healthy() {
        return worker_error(WorkerErrorKind::ShardUnavailable, "the shard is unhealthy");
    }
    let gateway = gateway_id(&req).map(Arc::<str>::from);
    let permit = match shard.admit_within(BUSY_GRACE, gateway.as_ref()).await {
        Ok(p) => p,
        Err(Refusal::Busy) => {
            return worker_error(WorkerErrorKind::Busy, "the shard is at its in-flight limit");
        }
        Err(Refusal::CircuitOpen) => {
            return worker_error(
                WorkerErrorKind::ShardUnavailable,
                "the shard's circuit breaker is open",
            );
        }
    };
    // A child of the gateway's span; vLLM gets this span's traceparent.
    let span = crate::telemetry::dispatch_span(
        header(&req, TRACEPARENT_HEADER).as_deref(),
        &state.id,
        shard.index,
        endpoint.suffix(),
    );
    let fwd = Forwarded {
        request_id: header(&req, REQUEST_ID_HEADER),
        traceparent: tollgate_shared::telemetry::traceparent(&span)
            .or_else(|| header(&req, TRACEPARENT_HEADER)),
    };
    let resp = tracing::Instrument::instrument(
        relay(&state.http, shard, permit, endpoint, body, fwd),
        span.clone(),
    )
    .await;
    crate::telemetry::traced(resp, span)
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
