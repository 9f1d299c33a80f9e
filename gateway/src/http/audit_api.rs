//! `GET /v1/admin/audit` (alias `GET /v1/logs`), scope `admin`: the audit
//! trail, newest first, filtered by `client_id`, `tenant`, `since`, `until`
//! (RFC 3339 UTC or Unix seconds), `limit` records a page (1–1000, default
//! 100), paged by `cursor` (the previous page's `next_cursor`).
//!
//! With Redis the records are every replica's (the capped stream); without,
//! the latest 10,000 of this process (an in-memory ring: the file is the
//! durable record). The answer's `source` says which.

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpRequest, HttpResponse, web};
use tollgate_shared::config::Scope;

use crate::app::Gateway;
use crate::audit::{AuditQuery, RawQuery};
use crate::auth::{Caller, authenticate};
use crate::error::ApiError;
use crate::telemetry::Observe;
use tollgate_shared::openai::ErrorEnvelope;

/// Stages `authenticate` and `authorize` for the admin views of telemetry.
pub fn admin(req: &HttpRequest, gw: &Gateway) -> Result<Caller, ApiError> {
    let caller = authenticate(req, &gw.tokens, &gw.registry)?;
    Observe::of(req).caller(&caller);
    caller.require(Scope::Admin)?;
    Ok(caller)
}

/// A page of audit records (the contract's §7 fields), newest first.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Describes `Page::to_json`, which writes the stored lines as they are.
pub struct AuditPage {
    /// `list`
    object: String,
    #[schema(value_type = Vec<Object>)]
    data: Vec<()>,
    /// Where the next page starts; `null` at the end.
    next_cursor: Option<String>,
    /// `redis` (every replica's records) or `memory` (this process's latest).
    source: String,
}

#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    params(RawQuery),
    responses(
        (status = 200, description = "a page of records", body = AuditPage),
        (status = 400, description = "a malformed filter, or a cursor this API did not hand out", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn audit(req: HttpRequest, gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    admin(&req, &gw)?;
    // Read after authentication: an anonymous caller learns nothing, not even what is malformed.
    let raw: RawQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::invalid(format!("invalid query string: {e}")))?;
    let query = AuditQuery::parse(raw)
        .map_err(|(param, message)| ApiError::invalid_param(param, message))?;
    let page = gw
        .audit
        .query(&query)
        .await
        .map_err(|_| ApiError::Overloaded {
            message: "the audit store is unavailable; try again",
            retry_after_secs: 1,
        })?
        .ok_or_else(|| {
            ApiError::invalid_param("cursor", "`cursor` is not one this API handed out")
        })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((CACHE_CONTROL, "no-store"))
        .body(page.to_json()))
}
