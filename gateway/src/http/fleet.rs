//! `GET /v1/admin/queues` and `GET /v1/admin/workers` (scope `admin`): the
//! scheduler's queues and the fleet as this gateway replica sees them.

use actix_web::{HttpRequest, HttpResponse, web};

use super::audit_api::admin;
use crate::app::Gateway;
use crate::error::ApiError;

/// Depth, oldest wait and virtual counter per tenant and class, and the room
/// the fleet has for more.
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
            serde_json::json!({
                "priority": p.as_str(),
                "depth": depth,
                "oldest_wait_ms": oldest,
                "reserved_slots_per_shard": reserved,
            })
        })
        .collect();
    let tenants: Vec<_> = s
        .tenants
        .iter()
        .map(|t| {
            serde_json::json!({
                "tenant": &*t.tenant,
                "priority": t.priority.as_str(),
                "depth": t.depth,
                "oldest_wait_ms": t.oldest_wait_ms,
                "virtual_counter": t.counter,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "object": "queues",
        "depth": s.depth,
        "queued_bytes": s.queued_bytes,
        "free_slots": s.free_slots,
        "healthy_shards": s.healthy_shards,
        "classes": classes,
        "tenants": tenants,
    })))
}

/// Every worker this replica knows: its breaker, report age, and shards' load.
pub async fn workers(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": gw.pool.view()})))
}
