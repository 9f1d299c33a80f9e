//! The gateway's Prometheus metrics (CONTRACT §5) and the GenAI server
//! histograms of the OpenTelemetry semantic conventions, in Prometheus form.
//!
//! Labels stay bounded: tenants come from the registry (`none` before a
//! caller is known), routes are the matched route patterns (`unmatched`
//! otherwise), statuses, limits, priorities and error types are closed sets,
//! workers and shards are the fleet. No client id or token is ever a label.

use std::time::Duration;

use tollgate_shared::config::Priority;

use crate::pool::WorkerView;

/// The tenant label of a request whose caller is not known.
pub const NO_TENANT: &str = "none";
/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// A GenAI operation as the semantic conventions name it.
#[derive(Debug, Clone, Copy)]
pub struct GenAi<'a> {
    pub operation: &'static str,
    pub model: &'a str,
}

/// One finished request, as the metrics count it.
pub struct Finished<'a> {
    pub tenant: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub priority: Option<Priority>,
    pub ttft: Option<Duration>,
    /// (prompt, completion) tokens.
    pub tokens: Option<(u64, u64)>,
    /// Mean time per output token after the first.
    pub per_token: Option<Duration>,
    /// The limit a 429 names (`requests_per_minute`, …, `queue_full`).
    pub limited_by: Option<&'static str>,
    pub genai: Option<GenAi<'a>>,
    /// The error class (`error.type`), when the request failed.
    pub error: Option<&'static str>,
}

/// Registers the counters an alert watches, at zero, so that rules see a
/// series before the first loss.
pub fn describe() {
    for sink in ["file", "redis"] {
        metrics::counter!("tollgate_audit_dropped_total", "sink" => sink).increment(0);
    }
    metrics::describe_counter!(
        "tollgate_requests_total",
        "Requests answered, by tenant, route and HTTP status"
    );
    metrics::describe_histogram!(
        "tollgate_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request to the last byte of the answer"
    );
    metrics::describe_histogram!(
        "tollgate_time_to_first_token_seconds",
        metrics::Unit::Seconds,
        "Time from request to the first generated token of a streamed answer"
    );
    metrics::describe_histogram!(
        "tollgate_queue_wait_seconds",
        metrics::Unit::Seconds,
        "Time a request waited in the scheduler's queue for a shard"
    );
    metrics::describe_gauge!(
        "tollgate_queue_depth",
        "Requests waiting in this gateway's queue, by priority class"
    );
    metrics::describe_counter!(
        "tollgate_tokens_total",
        "Tokens processed, by tenant and kind (prompt | completion)"
    );
    metrics::describe_counter!(
        "tollgate_ratelimited_total",
        "Requests refused by a rate limit or quota"
    );
    metrics::describe_counter!(
        "tollgate_auth_failures_total",
        "Failed authentications and authorizations, by reason"
    );
    metrics::describe_counter!(
        "tollgate_audit_dropped_total",
        "Audit records a sink lost (queue full or write failed)"
    );
    metrics::describe_counter!(
        "tollgate_audit_records_total",
        "Audit records written, by sink"
    );
    metrics::describe_gauge!(
        "tollgate_worker_up",
        "1 when the shard is healthy on a reachable worker"
    );
    metrics::describe_gauge!("tollgate_shard_inflight", "Requests in flight to the shard");
    metrics::describe_gauge!(
        "tollgate_shard_kv_cache_usage",
        "Share of the shard's KV cache in use (0..1)"
    );
    metrics::describe_histogram!(
        "gen_ai_server_request_duration_seconds",
        metrics::Unit::Seconds,
        "GenAI server request duration (OpenTelemetry gen_ai.server.request.duration)"
    );
    metrics::describe_histogram!(
        "gen_ai_server_time_to_first_token_seconds",
        metrics::Unit::Seconds,
        "GenAI time to first token (OpenTelemetry gen_ai.server.time_to_first_token)"
    );
    metrics::describe_histogram!(
        "gen_ai_server_time_per_output_token_seconds",
        metrics::Unit::Seconds,
        "GenAI time per output token after the first (OpenTelemetry gen_ai.server.time_per_output_token)"
    );
}

pub fn finished(f: &Finished<'_>) {
    let tenant = f.tenant.to_owned();
    let route = f.route.to_owned();
    metrics::counter!(
        "tollgate_requests_total",
        "tenant" => tenant.clone(),
        "route" => route.clone(),
        "status" => f.status.to_string()
    )
    .increment(1);
    metrics::histogram!("tollgate_request_duration_seconds", "route" => route)
        .record(f.duration.as_secs_f64());
    if let Some(limit) = f.limited_by {
        metrics::counter!("tollgate_ratelimited_total", "tenant" => tenant.clone(), "limit" => limit).increment(1);
    }
    if let Some((prompt, completion)) = f.tokens {
        metrics::counter!("tollgate_tokens_total", "tenant" => tenant.clone(), "kind" => "prompt")
            .increment(prompt);
        metrics::counter!("tollgate_tokens_total", "tenant" => tenant.clone(), "kind" => "completion")
            .increment(completion);
    }
    if let (Some(ttft), Some(p)) = (f.ttft, f.priority) {
        metrics::histogram!("tollgate_time_to_first_token_seconds", "tenant" => tenant, "priority" => p.as_str())
            .record(ttft.as_secs_f64());
    }
    let Some(g) = f.genai else {
        return;
    };
    let model = g.model.to_owned();
    let duration = match f.error {
        Some(e) => metrics::histogram!(
            "gen_ai_server_request_duration_seconds",
            "gen_ai_operation_name" => g.operation,
            "gen_ai_request_model" => model.clone(),
            "error_type" => e
        ),
        None => metrics::histogram!(
            "gen_ai_server_request_duration_seconds",
            "gen_ai_operation_name" => g.operation,
            "gen_ai_request_model" => model.clone()
        ),
    };
    duration.record(f.duration.as_secs_f64());
    if let Some(ttft) = f.ttft {
        metrics::histogram!(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai_operation_name" => g.operation,
            "gen_ai_request_model" => model.clone()
        )
        .record(ttft.as_secs_f64());
    }
    if let Some(t) = f.per_token {
        metrics::histogram!(
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai_operation_name" => g.operation,
            "gen_ai_request_model" => model
        )
        .record(t.as_secs_f64());
    }
}

pub fn queue_wait(priority: Priority, waited: Duration) {
    metrics::histogram!("tollgate_queue_wait_seconds", "priority" => priority.as_str())
        .record(waited.as_secs_f64());
}

/// Sets the gauges that describe the moment: queue depth per class and the
/// workers' shards as this gateway sees them. Called when `/metrics` is read.
pub fn set_gauges(depths: &[(Priority, usize)], workers: &[WorkerView]) {
    for (p, n) in depths {
        metrics::gauge!("tollgate_queue_depth", "priority" => p.as_str()).set(*n as f64);
    }
    for w in workers {
        let worker = w.worker_id.clone().unwrap_or_else(|| w.url.clone());
        let reachable = w.report_age_ms.is_some_and(|age| age < 2_000) && !w.draining;
        for s in &w.shards {
            let labels = [("worker", worker.clone()), ("shard", s.index.to_string())];
            metrics::gauge!("tollgate_worker_up", &labels).set(if reachable && s.healthy {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("tollgate_shard_inflight", &labels).set(f64::from(s.inflight));
            metrics::gauge!("tollgate_shard_kv_cache_usage", &labels).set(s.kv_cache_usage);
        }
    }
}
