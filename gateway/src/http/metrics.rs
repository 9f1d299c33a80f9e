//! `GET /metrics`: the Prometheus text of this process (CONTRACT §5). The
//! gauges that describe the moment (queue depth per class, the workers'
//! shards as this gateway sees them) are set just before rendering.

use actix_web::{HttpResponse, web};

use crate::app::Gateway;
use crate::telemetry::metrics;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format",
        content((String = "text/plain; version=0.0.4; charset=utf-8")))),
)]
pub async fn metrics(gw: web::Data<Gateway>) -> HttpResponse {
    if let Some(stats) = gw.scheduler.stats().await {
        let depths = stats.by_class;
        metrics::set_gauges(&depths, &gw.pool.view());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(tollgate_shared::telemetry::render_metrics())
}
