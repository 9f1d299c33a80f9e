//! Usage for billing: `GET /v1/usage` (the caller's own tenant, scope `infer`)
//! and `GET /v1/admin/usage` (any tenant, scope `admin`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use tollgate_shared::config::Scope;

use crate::app::Gateway;
use crate::audit::{parse_utc_date, utc_date};
use crate::auth::authenticate;
use crate::error::ApiError;

/// The longest range one query may span.
const MAX_DAYS: u64 = 366;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
}

fn today() -> u64 {
    crate::auth::jwt::now_secs() / 86_400
}

/// `since`/`until` as days; the default is the last 30 days up to today.
fn days(r: &Range) -> Result<(u64, u64), ApiError> {
    let parse = |name: &str, v: &Option<String>| -> Result<Option<u64>, ApiError> {
        v.as_deref()
            .map(|s| {
                parse_utc_date(s).ok_or_else(|| {
                    ApiError::invalid_param(name, format!("{name} must be a date like 2026-11-25"))
                })
            })
            .transpose()
    };
    let until = parse("until", &r.until)?.unwrap_or_else(today);
    let since = parse("since", &r.since)?.unwrap_or(until.saturating_sub(29));
    if since > until {
        return Err(ApiError::invalid_param(
            "since",
            "since must not be after until",
        ));
    }
    if until - since >= MAX_DAYS {
        return Err(ApiError::invalid_param(
            "since",
            format!("a query spans at most {MAX_DAYS} days"),
        ));
    }
    Ok((since, until))
}

fn unavailable(e: tollgate_shared::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "usage store unavailable");
    ApiError::Overloaded {
        message: "usage data is unavailable right now; try again",
        retry_after_secs: 1,
    }
}

pub async fn own(
    req: HttpRequest,
    q: web::Query<Range>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &gw.tokens, &gw.registry)?;
    caller.require(Scope::Infer)?;
    if q.tenant.as_deref().is_some_and(|t| t != &*caller.tenant) {
        return Err(ApiError::Forbidden(Scope::Admin));
    }
    let (since, until) = days(&q)?;
    let rows = gw
        .limiter
        .usage()
        .query(Some(&caller.tenant), since, until)
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "object": "usage",
        "tenant": &*caller.tenant,
        "since": utc_date(since),
        "until": utc_date(until),
        "data": rows,
    })))
}

pub async fn admin(
    req: HttpRequest,
    q: web::Query<Range>,
    gw: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &gw.tokens, &gw.registry)?;
    caller.require(Scope::Admin)?;
    let (since, until) = days(&q)?;
    let rows = gw
        .limiter
        .usage()
        .query(q.tenant.as_deref(), since, until)
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "object": "usage",
        "since": utc_date(since),
        "until": utc_date(until),
        "data": rows,
    })))
}
