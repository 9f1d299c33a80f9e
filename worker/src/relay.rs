//! The relay: one request to one vLLM shard, its answer streamed back
//! unchanged and unbuffered. Dropping the answer (the gateway hung up)
//! drops the upstream connection, which aborts the request in vLLM.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use tollgate_shared::worker_api::{
    Endpoint, REQUEST_ID_HEADER, TRACEPARENT_HEADER, WorkerErrorKind,
};

use crate::server::worker_error;
use crate::shard::Permit;
use crate::shard::Shard;

/// What travels with a dispatch besides the body.
pub struct Forwarded {
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
}

/// Sends `body` to the shard's vLLM and streams its answer back. The permit
/// is held until the answer's last byte has been passed on (or dropped).
pub async fn relay(
    http: &reqwest::Client,
    shard: &Shard,
    permit: Permit,
    endpoint: Endpoint,
    body: Bytes,
    fwd: Forwarded,
) -> HttpResponse {
    let mut req = http
        .post(format!("{}/v1/{}", shard.url, endpoint.suffix()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(id) = fwd.request_id {
        req = req.header(REQUEST_ID_HEADER, id);
    }
    if let Some(tp) = fwd.traceparent {
        req = req.header(TRACEPARENT_HEADER, tp);
    }
    let upstream = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(shard = shard.index, error = %e, "vLLM unreachable");
            return worker_error(
                WorkerErrorKind::ShardUnavailable,
                "the shard's vLLM server could not be reached",
            );
        }
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let index = shard.index;
    let stream = upstream.bytes_stream().map(move |chunk| {
        // The permit lives as long as the stream: the slot is busy until the answer is done.
        let _held = &permit;
        chunk.map_err(|e| {
            tracing::warn!(shard = index, error = %e, "vLLM stream broke");
            actix_web::error::ErrorBadGateway("upstream stream broke")
        })
    });
    HttpResponse::build(status)
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}
