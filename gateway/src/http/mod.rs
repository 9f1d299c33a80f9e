//! The gateway's HTTP surface: routes, request ids, and the JSON 404/405.
//!
//! - `inference`: `/v1/chat/completions`, `/v1/completions`, `/v1/generate`, `/v1/models`
//! - `oauth`: `/oauth/token`, `/oauth/revoke`
//! - `jwks`: `/.well-known/jwks.json`
//! - `admin`: `/v1/admin/tenants`, `/v1/admin/clients` (the registry)
//! - `fleet`: `/v1/admin/queues`, `/v1/admin/workers`
//! - `usage`: `/v1/usage`, `/v1/admin/usage`
//! - `health`: `/healthz`, `/readyz`
//! - `metrics`: `/metrics` (Prometheus)
//! - `audit_api`: `/v1/admin/audit`, `/v1/logs`
//! - `dashboard`: `/dashboard` and its assets, `/v1/admin/stats`

mod admin;
mod audit_api;
mod dashboard;
mod fleet;
mod health;
mod inference;
mod jwks;
mod metrics;
mod oauth;
mod usage;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use tollgate_shared::ids::RequestId;
use tollgate_shared::worker_api::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};

use crate::app::Gateway;
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig, gateway: web::Data<Gateway>) {
    // Bad query strings get the same OpenAI-shaped 400 as bad bodies.
    let query = web::QueryConfig::default()
        .error_handler(|e, _| ApiError::invalid(format!("invalid query string: {e}")).into());
    cfg.app_data(gateway).app_data(query).service(
        web::scope("")
            .wrap(from_fn(request_id))
            .service(post_only("/oauth/token", web::post().to(oauth::token)))
            .service(post_only("/token", web::post().to(oauth::token)))
            .service(post_only("/oauth/revoke", web::post().to(oauth::revoke)))
            .service(get_only(
                "/.well-known/jwks.json",
                web::get().to(jwks::jwks),
            ))
            .configure(admin::routes)
            .service(get_only("/v1/models", web::get().to(inference::models)))
            .service(post_only(
                "/v1/chat/completions",
                web::post().to(inference::chat_completions),
            ))
            .service(post_only(
                "/v1/completions",
                web::post().to(inference::completions),
            ))
            .service(post_only(
                "/v1/generate",
                web::post().to(inference::generate),
            ))
            .service(get_only("/v1/usage", web::get().to(usage::own)))
            .service(get_only("/v1/admin/usage", web::get().to(usage::admin)))
            .service(get_only("/v1/admin/queues", web::get().to(fleet::queues)))
            .service(get_only("/v1/admin/workers", web::get().to(fleet::workers)))
            .service(get_only("/healthz", web::get().to(health::healthz)))
            .service(get_only("/readyz", web::get().to(health::readyz)))
            .service(get_only("/metrics", web::get().to(metrics::metrics)))
            .service(get_only("/v1/admin/audit", web::get().to(audit_api::audit)))
            .service(get_only("/v1/logs", web::get().to(audit_api::audit)))
            .service(get_only("/v1/admin/stats", web::get().to(dashboard::stats)))
            .service(get_only("/dashboard", web::get().to(dashboard::page)))
            .service(get_only(
                "/dashboard/app.js",
                web::get().to(dashboard::script),
            ))
            .service(get_only(
                "/dashboard/app.css",
                web::get().to(dashboard::style),
            ))
            .default_service(web::to(not_found)),
    );
}

fn post_only(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

fn get_only(path: &str, route: actix_web::Route) -> actix_web::Resource {
    post_only(path, route)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(serde_json::json!({
        "error": {"message": "method not allowed on this route", "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}
    }))
}

/// Gives every request an id (the W3C trace id: the one `telemetry`'s
/// middleware chose, else adopted from `traceparent`) and puts it on every
/// answer as `x-request-id`.
async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let chosen = req.extensions().get::<RequestId>().copied();
    let id = chosen
        .or_else(|| {
            req.headers()
                .get(TRACEPARENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(RequestId::from_traceparent)
        })
        .unwrap_or_default();
    req.extensions_mut().insert(id);
    let mut res = next.call(req).await?;
    let headroom = res
        .request()
        .extensions()
        .get::<crate::limits::Headroom>()
        .copied();
    if let Some(h) = headroom {
        for (name, value) in crate::limits::headers(&h) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                res.headers_mut().insert(HeaderName::from_static(name), v);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    Ok(res)
}

/// The id the middleware gave this request.
pub fn request_id_of(req: &HttpRequest) -> RequestId {
    req.extensions()
        .get::<RequestId>()
        .copied()
        .unwrap_or_default()
}
