//! What the gateway tells about itself: the request trail behind the audit
//! record, spans and metrics of every request, and the figures of the
//! dashboard. Telemetry is set up once per process in
//! `tollgate_shared::telemetry`; this is the gateway's use of it.
//!
//! - `request`: the outermost middleware (server span, request id = trace id, the trail)
//! - `trail`: one request's facts, finished exactly once into record, metrics and spans
//! - `observe`: the stages' calls into the trail, and the GenAI span
//! - `redact`: prompt digests and masked samples
//! - `metrics`: Prometheus names, labels and the gauges set at scrape time
//! - `stats`: the dashboard's rolling per-tenant window

pub mod metrics;
mod observe;
pub mod redact;
mod request;
pub mod stats;
mod trail;

pub use observe::Observe;
pub use request::middleware;
pub use stats::Stats;

/// The `traceparent` for a call made now, under the current span (so the
/// callee's span is its child); without traces, a fresh one in the request's trace.
pub fn traceparent(request_id: tollgate_shared::ids::RequestId) -> String {
    tollgate_shared::telemetry::traceparent(&tracing::Span::current())
        .unwrap_or_else(|| request_id.traceparent())
}
