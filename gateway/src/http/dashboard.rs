//! `GET /dashboard`: the live dashboard, a page and its script and styles
//! compiled into the binary (no CDN), and `GET /v1/admin/stats` (scope
//! `admin`), the figures it polls: per tenant over the last minute of this
//! gateway's traffic, queue depth per class, the workers' shards, and the
//! telemetry pipeline's own losses. The page itself holds no data; it asks
//! for client credentials or a token and keeps the token for the session.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tollgate_shared::config::Priority;
use utoipa::ToSchema;

use super::audit_api::admin;
use crate::app::Gateway;
use crate::audit::{now_ms, rfc3339_ms};
use crate::error::ApiError;
use crate::pool::WorkerView;
use crate::telemetry::stats::{TenantStats, WINDOW_SECS};

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// Everything from this origin, nothing inline, nothing framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((CONTENT_SECURITY_POLICY, CSP))
        .insert_header((X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "operations",
    responses((status = 200, description = "the live dashboard (its data needs an `admin` token)",
        content((String = "text/html; charset=utf-8")))),
)]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(
    get,
    path = "/dashboard/app.js",
    tag = "operations",
    responses((status = 200, description = "the dashboard's script",
        content((String = "text/javascript; charset=utf-8")))),
)]
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(
    get,
    path = "/dashboard/app.css",
    tag = "operations",
    responses((status = 200, description = "the dashboard's styles",
        content((String = "text/css; charset=utf-8")))),
)]
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

#[derive(Serialize, ToSchema)]
struct Queue {
    #[schema(value_type = String)]
    priority: &'static str,
    depth: usize,
}

#[derive(Serialize, ToSchema)]
struct Shard {
    shard: u32,
    healthy: bool,
    inflight: u32,
    max_inflight: u32,
    running: u32,
    waiting: u32,
    kv_cache_usage: f64,
}

#[derive(Serialize, ToSchema)]
struct Worker {
    worker: String,
    url: String,
    up: bool,
    draining: bool,
    report_age_ms: Option<u64>,
    shards: Vec<Shard>,
}

impl From<WorkerView> for Worker {
    fn from(w: WorkerView) -> Self {
        Worker {
            worker: w.worker_id.clone().unwrap_or_else(|| w.url.clone()),
            up: w.report_age_ms.is_some_and(|a| a < 2_000),
            draining: w.draining,
            report_age_ms: w.report_age_ms,
            shards: w
                .shards
                .iter()
                .map(|s| Shard {
                    shard: s.index,
                    healthy: s.healthy,
                    inflight: s.inflight,
                    max_inflight: s.max_inflight,
                    running: s.running,
                    waiting: s.waiting,
                    kv_cache_usage: s.kv_cache_usage,
                })
                .collect(),
            url: w.url,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct Losses {
    audit_dropped: u64,
    #[schema(value_type = String)]
    audit_source: &'static str,
    spans_exported: u64,
    spans_dropped: u64,
}

/// The dashboard's figures over the last `window_secs` of this replica's traffic.
#[derive(Serialize, ToSchema)]
pub struct Snapshot {
    generated_at: String,
    window_secs: u64,
    #[schema(value_type = Vec<Object>)]
    tenants: Vec<TenantStats>,
    queues: Vec<Queue>,
    workers: Vec<Worker>,
    telemetry: Losses,
}

/// `GET /v1/admin/stats`.
#[utoipa::path(
    get,
    path = "/v1/admin/stats",
    tag = "admin",
    responses((status = 200, description = "the dashboard's figures", body = Snapshot)),
    security(("bearer" = ["admin"])),
)]
pub async fn stats(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    let now = now_ms();
    let queues = match gw.scheduler.stats().await {
        Some(s) => s.by_class.to_vec(),
        None => vec![
            (Priority::High, 0),
            (Priority::Normal, 0),
            (Priority::Low, 0),
        ],
    };
    let spans = tollgate_shared::telemetry::span_stats();
    let snapshot = Snapshot {
        generated_at: rfc3339_ms(now),
        window_secs: WINDOW_SECS,
        tenants: gw.stats.snapshot(now / 1000),
        queues: queues
            .into_iter()
            .map(|(p, depth)| Queue {
                priority: p.as_str(),
                depth,
            })
            .collect(),
        workers: gw.pool.view().into_iter().map(Worker::from).collect(),
        telemetry: Losses {
            audit_dropped: gw.audit.dropped(),
            audit_source: gw.audit.source(),
            spans_exported: spans.exported,
            spans_dropped: spans.dropped_queue_full + spans.dropped_export_failed,
        },
    };
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(snapshot))
}
