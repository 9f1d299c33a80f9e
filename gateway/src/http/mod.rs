//! The gateway's HTTP surface: routes, request ids, and the JSON 404/405.
//!
//! - `inference`: `/v1/chat/completions`, `/v1/completions`, `/v1/generate`, `/v1/models`
//! - `oauth`: `/oauth/token`
//! - `health`: `/healthz`, `/readyz`

mod health;
mod inference;
mod oauth;

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
    cfg.app_data(gateway).service(
        web::scope("")
            .wrap(from_fn(request_id))
            .service(post_only("/oauth/token", web::post().to(oauth::token)))
            .service(post_only("/token", web::post().to(oauth::token)))
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
            .service(get_only("/healthz", web::get().to(health::healthz)))
            .service(get_only("/readyz", web::get().to(health::readyz)))
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

/// Gives every request an id (the W3C trace id, adopted from `traceparent`
/// when the caller sent one) and puts it on every answer as `x-request-id`.
async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::from_traceparent)
        .unwrap_or_default();
    req.extensions_mut().insert(id);
    let mut res = next.call(req).await?;
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
