//! Liveness and readiness.

use actix_web::{HttpResponse, web};

use crate::app::Gateway;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when a worker with a healthy shard reported recently.
pub async fn readyz(gw: web::Data<Gateway>) -> HttpResponse {
    let workers = gw.pool.ready();
    let body = serde_json::json!({"ready": workers, "checks": {"workers": workers}});
    if workers {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
