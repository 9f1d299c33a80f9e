//! Usage for billing: `GET /v1/usage` (the caller's own tenant, scope `infer`)
//! and `GET /v1/admin/usage` (any tenant, scope `admin`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tollgate_shared::config::Scope;
use tollgate_shared::openai::ErrorEnvelope;
use utoipa::{IntoParams, ToSchema};

use crate::app::Gateway;
use crate::audit::{parse_utc_date, utc_date};
use crate::auth::authenticate;
use crate::error::ApiError;
use crate::limits::usage::DayUsage;

/// The longest range one query may span.
const MAX_DAYS: u64 = 366;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Range {
    /// The first day (UTC), not after `until`; default 29 days before `until`.
    #[param(format = Date)]
    since: Option<String>,
    /// The last day (UTC); default today. A range spans at most 366 days.
    #[param(format = Date)]
    until: Option<String>,
    /// Only this tenant (on `/v1/usage`, only the caller's own).
    tenant: Option<String>,
}

/// Usage by tenant and day, with each client's share.
#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    /// `usage`
    #[schema(value_type = String)]
    object: &'static str,
    /// The caller's tenant (`/v1/usage` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    since: String,
    until: String,
    /// Per tenant and day: `tenant`, `date`, `requests`, `prompt_tokens`,
    /// `completion_tokens`, and the same counts per client in `clients`.
    #[schema(value_type = Vec<Object>)]
    data: Vec<DayUsage>,
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

#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(Range),
    responses(
        (status = 200, description = "the caller's tenant's usage", body = UsageReport),
        (status = 400, description = "a malformed or too long range", body = ErrorEnvelope),
    ),
    security(("bearer" = ["infer"])),
)]
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
    Ok(HttpResponse::Ok().json(UsageReport {
        object: "usage",
        tenant: Some(caller.tenant.to_string()),
        since: utc_date(since),
        until: utc_date(until),
        data: rows,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/admin/usage",
    tag = "admin",
    params(Range),
    responses(
        (status = 200, description = "usage of every tenant, or of one", body = UsageReport),
        (status = 400, description = "a malformed or too long range", body = ErrorEnvelope),
    ),
    security(("bearer" = ["admin"])),
)]
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
    Ok(HttpResponse::Ok().json(UsageReport {
        object: "usage",
        tenant: None,
        since: utc_date(since),
        until: utc_date(until),
        data: rows,
    }))
}
