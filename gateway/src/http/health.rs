//! Liveness and readiness.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::Gateway;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    #[schema(value_type = String)]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
    checks: Checks,
}

#[derive(Serialize, ToSchema)]
pub struct Checks {
    /// A worker with a healthy shard reported recently.
    workers: bool,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "the process is alive", body = Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Ready when a worker with a healthy shard reported recently.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "ready to serve", body = Readiness),
        (status = 503, description = "not ready: no worker with a healthy shard", body = Readiness),
    ),
)]
pub async fn readyz(gw: web::Data<Gateway>) -> HttpResponse {
    let workers = gw.pool.ready();
    let body = Readiness {
        ready: workers,
        checks: Checks { workers },
    };
    if workers {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
