//! The outermost middleware: every request gets a server span and a request
//! id equal to the span's trace id (the caller's trace when it sent a
//! `traceparent`), a [`Trail`] in its extensions, and `x-request-id` on its
//! answer. When the answer is complete the trail is finished; when the
//! request's future is dropped first (the client left), a guard finishes it
//! as 499. Probes and scrapes (`/healthz`, `/readyz`, `/metrics`) get an id
//! but no span, record or count: they are not traffic.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, USER_AGENT};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use tollgate_shared::ids::RequestId;
use tollgate_shared::worker_api::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use tracing::Instrument;

use super::metrics::UNMATCHED;
use super::trail::{Answer, CallerFacts, Trail};
use crate::app::Gateway;
use crate::audit::escape_controls;
use crate::error::ApiError;

/// Routes that are not traffic.
const QUIET: &[&str] = &["/healthz", "/readyz", "/metrics"];
/// Longest path and user agent kept in spans and records.
const MAX_TEXT: usize = 256;

fn cut(s: &str) -> String {
    escape_controls(&s.chars().take(MAX_TEXT).collect::<String>())
}

/// Finishes the trail as abandoned if the request's future is dropped
/// before the middleware saw its answer.
struct Abandoned(Option<Arc<Trail>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.answered(Answer {
                status: 499,
                error: Some("client_disconnected"),
            });
        }
    }
}

/// Middleware (use with `from_fn`, outermost).
pub async fn middleware<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let traceparent = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let pattern = req.match_pattern();
    let gw = req.app_data::<web::Data<Gateway>>().cloned();
    let (Some(gw), false) = (gw, pattern.as_deref().is_some_and(|p| QUIET.contains(&p))) else {
        let id = traceparent
            .as_deref()
            .and_then(RequestId::from_traceparent)
            .unwrap_or_default();
        req.extensions_mut().insert(id);
        return next.call(req).await.map(|res| with_id(res, id));
    };
    let method = req.method().to_string();
    let route = pattern.unwrap_or_else(|| UNMATCHED.to_owned());
    let path = cut(req.path());
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(cut);
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %path,
        client.address = ip.as_deref().unwrap_or(""),
        user_agent.original = user_agent.as_deref().unwrap_or(""),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        tollgate.client_id = tracing::field::Empty,
        tollgate.tenant = tracing::field::Empty,
    );
    tollgate_shared::telemetry::adopt_traceparent(&span, traceparent.as_deref());
    // The request id is the trace id: the span's when traces are on, else
    // the caller's trace id or a new one.
    let id = tollgate_shared::telemetry::traceparent(&span)
        .or(traceparent)
        .as_deref()
        .and_then(RequestId::from_traceparent)
        .unwrap_or_default();
    let trail = Arc::new(Trail::new(
        gw,
        id,
        route,
        path,
        ip,
        user_agent,
        span.clone(),
    ));
    req.extensions_mut().insert(id);
    req.extensions_mut().insert(trail.clone());
    let mut abandoned = Abandoned(Some(trail.clone()));
    let result = super::observe::scope(trail.clone(), next.call(req))
        .instrument(span)
        .await;
    abandoned.0 = None;
    match result {
        Ok(res) => {
            if !trail.has_caller() {
                identify(&trail, res.request());
            }
            trail.answered(Answer {
                status: res.status().as_u16(),
                error: error_code(&res),
            });
            Ok(with_id(res, id))
        }
        // Only a head refused before routing gets here (`transport::check_head`):
        // its record is made; actix turns the error into the answer, without
        // the id (holding on to the request to answer here would break routing).
        Err(e) => {
            trail.answered(Answer {
                status: e.as_response_error().status_code().as_u16(),
                error: Some(
                    e.as_error::<ApiError>()
                        .map_or("http_error", ApiError::code),
                ),
            });
            Err(e)
        }
    }
}

fn with_id<B>(mut res: ServiceResponse<B>, id: RequestId) -> ServiceResponse<B> {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    res
}

fn error_code<B>(res: &ServiceResponse<B>) -> Option<&'static str> {
    match res.response().error() {
        Some(e) => Some(
            e.as_error::<ApiError>()
                .map_or("http_error", ApiError::code),
        ),
        None if res.status().as_u16() == 405 => Some("method_not_allowed"),
        None => None,
    }
}

/// Names the caller of a route whose handler authenticates by itself (the
/// admin API, usage): the bearer token's verified claims. Unverifiable
/// tokens name nobody.
fn identify(trail: &Trail, req: &actix_web::HttpRequest) {
    let Some(token) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return;
    };
    let gw = trail.gateway();
    let Ok(claims) = gw.tokens.verify(token) else {
        return;
    };
    let priority = gw.registry.tenant(&claims.tid).map(|t| t.priority);
    trail.set_caller(CallerFacts {
        client_id: claims.sub.clone(),
        tenant: claims.tid.clone(),
        scopes: claims.scope.clone(),
        priority,
    });
}
