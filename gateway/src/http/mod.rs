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
//! - `openapi`: `/openapi.json`, the OpenAPI 3.1 description of all of these

mod admin;
mod audit_api;
mod dashboard;
mod fleet;
mod health;
mod inference;
mod jwks;
mod metrics;
mod oauth;
pub mod openapi;
mod usage;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{ALLOW, HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, Route, web};
use tollgate_shared::ids::RequestId;
use tollgate_shared::worker_api::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};

use crate::app::Gateway;
use crate::error::ApiError;

/// One route: a method on a path, and the handler that serves it.
pub struct Served {
    pub method: Method,
    pub path: &'static str,
    handler: fn() -> Route,
}

const fn served(method: Method, path: &'static str, handler: fn() -> Route) -> Served {
    Served {
        method,
        path,
        handler,
    }
}

/// Every route the gateway serves. [`configure`] registers exactly these,
/// and the OpenAPI document (`openapi`) must describe each one: a test
/// compares the two, so a route cannot be added without its description.
pub const ROUTES: &[Served] = &[
    served(Method::POST, "/oauth/token", || {
        web::post().to(oauth::token)
    }),
    served(Method::POST, "/token", || web::post().to(oauth::token)),
    served(Method::POST, "/oauth/revoke", || {
        web::post().to(oauth::revoke)
    }),
    served(Method::GET, "/.well-known/jwks.json", || {
        web::get().to(jwks::jwks)
    }),
    served(Method::GET, "/v1/admin/tenants", || {
        web::get().to(admin::list_tenants)
    }),
    served(Method::POST, "/v1/admin/tenants", || {
        web::post().to(admin::create_tenant)
    }),
    served(Method::GET, "/v1/admin/tenants/{id}", || {
        web::get().to(admin::get_tenant)
    }),
    served(Method::PATCH, "/v1/admin/tenants/{id}", || {
        web::patch().to(admin::patch_tenant)
    }),
    served(Method::DELETE, "/v1/admin/tenants/{id}", || {
        web::delete().to(admin::delete_tenant)
    }),
    served(Method::GET, "/v1/admin/clients", || {
        web::get().to(admin::list_clients)
    }),
    served(Method::POST, "/v1/admin/clients", || {
        web::post().to(admin::create_client)
    }),
    served(Method::GET, "/v1/admin/clients/{id}", || {
        web::get().to(admin::get_client)
    }),
    served(Method::PATCH, "/v1/admin/clients/{id}", || {
        web::patch().to(admin::patch_client)
    }),
    served(Method::DELETE, "/v1/admin/clients/{id}", || {
        web::delete().to(admin::delete_client)
    }),
    served(Method::POST, "/v1/admin/clients/{id}/rotate-secret", || {
        web::post().to(admin::rotate_secret)
    }),
    served(Method::GET, "/v1/models", || {
        web::get().to(inference::models)
    }),
    served(Method::POST, "/v1/chat/completions", || {
        web::post().to(inference::chat_completions)
    }),
    served(Method::POST, "/v1/completions", || {
        web::post().to(inference::completions)
    }),
    served(Method::POST, "/v1/generate", || {
        web::post().to(inference::generate)
    }),
    served(Method::GET, "/v1/usage", || web::get().to(usage::own)),
    served(Method::GET, "/v1/admin/usage", || {
        web::get().to(usage::admin)
    }),
    served(Method::GET, "/v1/admin/queues", || {
        web::get().to(fleet::queues)
    }),
    served(Method::GET, "/v1/admin/workers", || {
        web::get().to(fleet::workers)
    }),
    served(Method::GET, "/healthz", || web::get().to(health::healthz)),
    served(Method::GET, "/readyz", || web::get().to(health::readyz)),
    served(Method::GET, "/metrics", || web::get().to(metrics::metrics)),
    served(Method::GET, "/v1/admin/audit", || {
        web::get().to(audit_api::audit)
    }),
    served(Method::GET, "/v1/logs", || web::get().to(audit_api::audit)),
    served(Method::GET, "/v1/admin/stats", || {
        web::get().to(dashboard::stats)
    }),
    served(Method::GET, "/dashboard", || web::get().to(dashboard::page)),
    served(Method::GET, "/dashboard/app.js", || {
        web::get().to(dashboard::script)
    }),
    served(Method::GET, "/dashboard/app.css", || {
        web::get().to(dashboard::style)
    }),
    served(Method::GET, "/openapi.json", || {
        web::get().to(openapi::document)
    }),
];

/// Paths served by the same handler as another: (alias, path).
pub const ALIASES: &[(&str, &str)] = &[("/token", "/oauth/token"), ("/v1/logs", "/v1/admin/audit")];

pub fn configure(cfg: &mut web::ServiceConfig, gateway: web::Data<Gateway>) {
    // Bad query strings get the same OpenAI-shaped 400 as bad bodies.
    let query = web::QueryConfig::default()
        .error_handler(|e, _| ApiError::invalid(format!("invalid query string: {e}")).into());
    let mut scope = web::scope("").wrap(from_fn(request_id));
    // One resource per path, in the order of first appearance, paths without
    // a parameter first: the router (and the request middleware's route
    // lookup) tries resources in order, and a parameter costs a regex match,
    // so the inference routes are found by comparing strings alone.
    let mut paths: Vec<&'static str> = Vec::new();
    for r in ROUTES {
        if !paths.contains(&r.path) {
            paths.push(r.path);
        }
    }
    paths.sort_by_key(|p| p.contains('{'));
    for path in paths {
        let here = ROUTES.iter().filter(|r| r.path == path);
        let allow = here
            .clone()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut resource = web::resource(path);
        for r in here {
            resource = resource.route((r.handler)());
        }
        scope = scope
            .service(resource.default_service(web::to(move || method_not_allowed(allow.clone()))));
    }
    cfg.app_data(gateway)
        .app_data(query)
        .service(scope.default_service(web::to(not_found)));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// 405 with the methods the path does serve (RFC 9110 §15.5.6).
async fn method_not_allowed(allow: String) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((ALLOW, allow))
        .json(serde_json::json!({
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
