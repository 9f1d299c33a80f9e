//! What a worker tells about itself: `GET /metrics` (its shards' load as
//! Prometheus gauges, CONTRACT §5) and the server span of each dispatch, a
//! child of the gateway's span named by the request's `traceparent`. The
//! span lasts until vLLM's answer has been passed on, and vLLM gets the
//! span's own `traceparent`, so its spans are children of the worker's.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::{HttpResponse, web};
use bytes::Bytes;

use crate::server::NodeState;

/// `GET /metrics`.
pub async fn metrics(state: web::Data<NodeState>) -> HttpResponse {
    let load = state.load(None);
    for s in &load.shards {
        let labels = [
            ("worker", load.worker_id.clone()),
            ("shard", s.index.to_string()),
        ];
        let up = s.healthy && !load.draining;
        metrics::gauge!("tollgate_worker_up", &labels).set(if up { 1.0 } else { 0.0 });
        metrics::gauge!("tollgate_shard_inflight", &labels).set(f64::from(s.inflight));
        metrics::gauge!("tollgate_shard_kv_cache_usage", &labels).set(s.kv_cache_usage);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(tollgate_shared::telemetry::render_metrics())
}

/// The server span of one dispatch, under the caller's `traceparent`.
pub fn dispatch_span(
    traceparent: Option<&str>,
    worker: &str,
    shard: u32,
    endpoint: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        "dispatch",
        otel.name = %format!("POST /internal/v1/shards/{{index}}/{endpoint}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        tollgate.worker = %worker,
        tollgate.shard = i64::from(shard),
        http.response.status_code = tracing::field::Empty,
    );
    tollgate_shared::telemetry::adopt_traceparent(&span, traceparent);
    span
}

/// Notes on a dispatch's span how the worker answered.
pub fn answered(span: &tracing::Span, status: u16) {
    // As i64: other integer types reach the collector as strings.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// `resp`, with `span` kept open until its body is done (or dropped).
pub fn traced(resp: HttpResponse, span: tracing::Span) -> HttpResponse {
    resp.map_body(|_, body| BoxBody::new(Traced { body, _span: span }))
}

struct Traced {
    body: BoxBody,
    _span: tracing::Span,
}

impl MessageBody for Traced {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}
