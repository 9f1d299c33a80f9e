//! `GET /v1/admin/queues` and `GET /v1/admin/workers` (scope `admin`): the
//! scheduler's queues and the fleet as this gateway replica sees them.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use tollgate_shared::config::Priority;
use utoipa::ToSchema;

use super::admin::{List, list};
use super::audit_api::admin;
use crate::app::Gateway;
use crate::error::ApiError;
use crate::pool::WorkerView;

/// The scheduler's queues on this replica.
#[derive(Serialize, ToSchema)]
pub struct Queues {
    /// `queues`
    #[schema(value_type = String)]
    object: &'static str,
    /// Requests waiting, all classes.
    depth: usize,
    queued_bytes: usize,
    /// Sequence slots free on the fleet's healthy shards.
    free_slots: u64,
    healthy_shards: usize,
    classes: Vec<ClassQueue>,
    tenants: Vec<TenantQueue>,
}

#[derive(Serialize, ToSchema)]
pub struct ClassQueue {
    priority: Priority,
    depth: usize,
    oldest_wait_ms: Option<u64>,
    /// Slots of each shard this class leaves free for higher classes.
    reserved_slots_per_shard: u32,
}

#[derive(Serialize, ToSchema)]
pub struct TenantQueue {
    tenant: String,
    priority: Priority,
    depth: usize,
    oldest_wait_ms: Option<u64>,
    /// The tenant's virtual token counter (fair share).
    virtual_counter: f64,
}

/// Depth, oldest wait and virtual counter per tenant and class, and the room
/// the fleet has for more.
#[utoipa::path(
    get,
    path = "/v1/admin/queues",
    tag = "admin",
    responses((status = 200, description = "the queues", body = Queues)),
    security(("bearer" = ["admin"])),
)]
pub async fn queues(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    let s = gw
        .scheduler
        .stats()
        .await
        .ok_or_else(|| ApiError::Internal("the scheduler has stopped".into()))?;
    let classes: Vec<_> = s
        .by_class
        .iter()
        .zip(&s.reserved)
        .map(|((p, depth), (_, reserved))| {
            let oldest = s
                .tenants
                .iter()
                .filter(|t| t.priority == *p)
                .filter_map(|t| t.oldest_wait_ms)
                .max();
            ClassQueue {
                priority: *p,
                depth: *depth,
                oldest_wait_ms: oldest,
                reserved_slots_per_shard: *reserved,
            }
        })
        .collect();
    let tenants: Vec<_> = s
        .tenants
        .iter()
        .map(|t| TenantQueue {
            tenant: t.tenant.to_string(),
            priority: t.priority,
            depth: t.depth,
            oldest_wait_ms: t.oldest_wait_ms,
            virtual_counter: t.counter,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Queues {
        object: "queues",
        depth: s.depth,
        queued_bytes: s.queued_bytes,
        free_slots: s.free_slots,
        healthy_shards: s.healthy_shards,
        classes,
        tenants,
    }))
}

/// Every worker this replica knows: its breaker, report age, and shards' load.
#[utoipa::path(
    get,
    path = "/v1/admin/workers",
    tag = "admin",
    responses((status = 200, description = "the workers", body = List<WorkerView>)),
    security(("bearer" = ["admin"])),
)]
pub async fn workers(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    Ok(HttpResponse::Ok().json(list(gw.pool.view())))
}
