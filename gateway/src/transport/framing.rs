//! Request heads refused before routing.
//!
//! actix-http (3.20) already answers, and closes the connection after (the
//! hardening tests hold it to that):
//! - 431 to a head with more than 96 headers or over 128 KiB;
//! - 400 to `Content-Length` together with `Transfer-Encoding`, to two
//!   `Content-Length` headers (equal or not), to a `Content-Length` that is
//!   not plain digits (`+10`), to `Transfer-Encoding` in HTTP/1.0 or with a
//!   coding other than `chunked`, and to HTTP/1.1 without `Host`;
//! - 408 when the first request's head is not complete within
//!   `client_request_timeout` (`gateway.header_timeout_secs`).
//!
//! What is left for the gateway: heads over `gateway.max_header_bytes`
//! (a tighter bound than actix-http's buffer) get 431.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use crate::app::Gateway;
use crate::error::ApiError;

/// Middleware: checks the head of every request (use with `from_fn`).
pub async fn check_head(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(limit) = req
        .app_data::<web::Data<Gateway>>()
        .map(|gw| gw.config.gateway.max_header_bytes)
    {
        let size = head_bytes(&req);
        if size > limit {
            return Err(ApiError::HeadersTooLarge { limit }.into());
        }
    }
    next.call(req).await
}

/// The size of the head as sent: request target, and every header's name and
/// value with its `: ` and CRLF.
fn head_bytes(req: &ServiceRequest) -> usize {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    target
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}
