//! The relay: one request to one vLLM shard, its answer streamed back
//! unchanged and unbuffered. Dropping the answer (the gateway hung up)
//! drops the upstream connection, which aborts the request in vLLM.
//!
//! How the request went feeds the shard's circuit breaker: a connect error, a
//! 5xx before the first byte, or a stream that breaks count as failures; an
//! answer read to its end counts as a success; a gateway that hangs up tells
//! nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tollgate_shared::worker_api::local::{BodyBroken, Refused};
use tollgate_shared::worker_api::{
    Endpoint, REQUEST_ID_HEADER, TRACEPARENT_HEADER, WorkerErrorKind,
};

use crate::shard::Permit;
use crate::shard::Shard;

/// What travels with a dispatch besides the body.
pub struct Forwarded {
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
}

/// vLLM's answer on its way back: status, content type and the body, which
/// holds the shard's slot.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Watched,
}

/// Sends `body` to the shard's vLLM and streams its answer back. The permit
/// is held until the answer's last byte has been passed on (or dropped).
pub async fn relay(
    shard: &Shard,
    mut permit: Permit,
    endpoint: Endpoint,
    body: Bytes,
    fwd: Forwarded,
) -> Result<Answer, Refused> {
    let http = tollgate_shared::http::internal().map_err(|e| {
        // Not the shard's fault: its breaker hears nothing.
        tracing::error!(error = %e, "no HTTP client for vLLM");
        Refused {
            kind: WorkerErrorKind::ShardUnavailable,
            message: "the worker could not build its HTTP client",
        }
    })?;
    let Some(target) = shard.target(endpoint) else {
        permit.settle(false);
        return Err(Refused {
            kind: WorkerErrorKind::ShardUnavailable,
            message: "the shard's vLLM URL is not a valid URL",
        });
    };
    let mut req = http
        .post(target)
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
            permit.settle(false);
            return Err(Refused {
                kind: WorkerErrorKind::ShardUnavailable,
                message: "the shard's vLLM server could not be reached",
            });
        }
    };
    let status = upstream.status().as_u16();
    if upstream.status().is_server_error() {
        // vLLM failed before producing anything; its error answer is still passed on.
        tracing::warn!(
            shard = shard.index,
            status,
            "vLLM answered with a server error"
        );
        permit.settle(false);
    }
    let content_type = upstream
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    Ok(Answer {
        status,
        content_type,
        body: Watched {
            inner: Box::pin(upstream.bytes_stream()),
            permit,
            shard: shard.index,
        },
    })
}

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// vLLM's answer on its way through. It holds the permit (the slot is busy
/// until the answer is done) and settles it when the answer ends or breaks.
pub struct Watched {
    inner: Upstream,
    permit: Permit,
    shard: u32,
}

impl Stream for Watched {
    type Item = Result<Bytes, BodyBroken>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(shard = self.shard, error = %e, "vLLM stream broke");
                self.permit.settle(false);
                Poll::Ready(Some(Err(BodyBroken)))
            }
            Poll::Ready(None) => {
                self.permit.settle(true);
                Poll::Ready(None)
            }
        }
    }
}
