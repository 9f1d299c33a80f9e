//! A request body read within `gateway.max_body_bytes` (413 from the declared
//! length before reading, or as soon as the bytes read pass it) and within
//! `gateway.body_timeout_secs` (408, connection closed): a client that sends
//! its body slowly or not at all cannot hold a handler.

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tollgate_shared::config::GatewayConfig;

use crate::error::ApiError;

pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    cfg: &GatewayConfig,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(
        cfg.body_timeout,
        read_limited(req, payload, cfg.max_body_bytes),
    )
    .await
    .unwrap_or(Err(ApiError::BodyTimeout {
        secs: cfg.body_timeout.as_secs(),
    }))
}

async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
