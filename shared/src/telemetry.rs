//! Telemetry, set up in one place for every role: JSON log lines on stderr,
//! OpenTelemetry traces exported over OTLP (gRPC or HTTP/protobuf) when
//! `telemetry.otlp_endpoint` is set, and the process-wide Prometheus recorder
//! that `/metrics` renders.
//!
//! - `export`: the span pipeline (a batch processor whose drops are counted)
//! - this file: installing it all, W3C `traceparent` in and out of spans
//!
//! Only Tollgate's own spans (targets `tollgate*`) are exported: the HTTP and
//! gRPC stacks underneath, the exporter's among them, stay out of the traces.

mod export;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, FilterFn, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{OtlpProtocol, TelemetryConfig};
pub use export::SpanStats;

/// Gauges (worker and shard load, queue depth) not set for this long leave
/// `/metrics`: a worker that went away stops being reported.
const GAUGE_IDLE: Duration = Duration::from_secs(120);
/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

fn env_filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_env("TOLLGATE_LOG")
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Events only, none above the log level: with no tracer nothing else is
/// wanted. The level is also a hint, so that the libraries' `trace!` and
/// `debug!` call sites are off at the call site (cached, one load) instead
/// of building an event that every filter then turns down.
fn events_only(default_level: &str) -> FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    let level = env_filter(default_level)
        .max_level_hint()
        .unwrap_or(LevelFilter::TRACE);
    let is_event: fn(&tracing::Metadata<'_>) -> bool = |m| m.is_event();
    filter_fn(is_event).with_max_level_hint(level)
}

fn log_layer<S>(default_level: &str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        // Log lines stay what they were before spans existed: span fields
        // (routes, user agents) are in the trace, not repeated on every line.
        .with_current_span(false)
        .with_span_list(false)
        // Events only: without a tracer no layer wants spans, so they cost nothing.
        .with_filter(env_filter(default_level).and(events_only(default_level)))
}

/// Installs logging only (the simulator, one-shot commands). Safe to call
/// more than once (later calls do nothing).
pub fn init_logging(default_level: &str) {
    let _ = tracing_subscriber::registry()
        .with(events_only(default_level))
        .with(log_layer(default_level))
        .try_init();
}

/// What `init` set up; [`Telemetry::shutdown`] flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Folds histogram samples into their buckets; aborted on drop.
    upkeep: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(t) = self.upkeep.take() {
            t.abort();
        }
    }
}

/// How often histogram samples are folded into their buckets. The recorder
/// keeps every sample recorded since the last fold: without a periodic fold
/// a process nobody scrapes grows by every sample of every request.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds histogram samples into buckets every [`UPKEEP_EVERY`], on the current runtime.
fn spawn_upkeep() -> Option<tokio::task::JoinHandle<()>> {
    let handle = PROMETHEUS.get()?.clone();
    // Owned by `Telemetry`, which aborts it when dropped.
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    }))
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered, bounded by a timeout. The exporter
    /// blocks its caller until the collector answered and gRPC needs this
    /// runtime to do it, so the flush runs on a blocking thread (called on
    /// actix's single-threaded runtime directly, it would deadlock).
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "spans may be lost: flushing the exporter failed")
            }
            Err(e) => tracing::warn!(error = %e, "spans may be lost: the flush task failed"),
        }
    }
}

/// Installs logging, the Prometheus recorder and, with an OTLP endpoint, the
/// span exporter. `role` names the service when the config does not.
/// Must be called inside a tokio runtime (the gRPC channel is spawned on it).
pub fn init(cfg: &TelemetryConfig, role: &str) -> Result<Telemetry, String> {
    install_prometheus();
    let provider = match &cfg.otlp_endpoint {
        Some(endpoint) => Some(provider(cfg, endpoint, role)?),
        None => None,
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tollgate"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("tollgate", tracing::Level::INFO))
    });
    // Without a tracer no span is wanted, but per-layer filters still let
    // the registry build, enter and close every span (about 6 % of a
    // request's CPU): a global filter turns spans off at their call sites.
    let no_spans = provider.is_none().then(|| events_only(&cfg.log_level));
    tracing_subscriber::registry()
        .with(no_spans)
        .with(log_layer(&cfg.log_level))
        .with(traces)
        .try_init()
        .map_err(|e| format!("telemetry: {e}"))?;
    Ok(Telemetry {
        provider,
        upkeep: spawn_upkeep(),
    })
}

fn provider(
    cfg: &TelemetryConfig,
    endpoint: &str,
    role: &str,
) -> Result<SdkTracerProvider, String> {
    let exporter = match cfg.otlp_protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::Http => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_traces_url(endpoint))
            .build(),
    }
    .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let service = cfg.service_name.clone().unwrap_or_else(|| match role {
        "gateway" | "worker" => format!("tollgate-{role}"),
        _ => "tollgate".to_owned(),
    });
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "tollgate.role",
            role.to_owned(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(export::counted_batch(exporter))
        .with_resource(resource)
        .build())
}

/// The OTLP/HTTP traces URL: the base URL plus `/v1/traces`, unless given in full.
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Buckets per histogram, in seconds, fitted to what each one measures.
const BUCKETS: &[(&str, &[f64])] = &[
    (
        "tollgate_request_duration_seconds",
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            300.0, 600.0,
        ],
    ),
    (
        "gen_ai_server_request_duration_seconds",
        &[
            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
            163.84, 327.68,
        ],
    ),
    (
        "tollgate_time_to_first_token_seconds",
        &[
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0, 30.0, 60.0,
        ],
    ),
    (
        "gen_ai_server_time_to_first_token_seconds",
        &[
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0,
        ],
    ),
    (
        "gen_ai_server_time_per_output_token_seconds",
        &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
        ],
    ),
    (
        "tollgate_queue_wait_seconds",
        &[
            0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ],
    ),
];

fn install_prometheus() {
    if PROMETHEUS.get().is_some() {
        return;
    }
    let mut builder =
        PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE));
    for (name, buckets) in BUCKETS {
        builder = match builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets) {
            Ok(b) => b,
            // Only an empty bucket list is refused, and none is.
            Err(_) => return,
        };
    }
    match builder.install_recorder() {
        Ok(handle) => {
            let _ = PROMETHEUS.set(handle);
            metrics::describe_counter!(
                "tollgate_otel_spans_exported_total",
                "Spans the OTLP exporter delivered"
            );
            metrics::describe_counter!(
                "tollgate_otel_spans_dropped_total",
                "Spans lost before the collector: its queue was full, or the export failed"
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
        }
        Err(e) => tracing::warn!(error = %e, "no Prometheus recorder: /metrics stays empty"),
    }
}

/// The Prometheus text of this process's metrics (empty when no recorder was
/// installed, as in unit tests). The span pipeline's counters are brought up
/// to date first.
pub fn render_metrics() -> String {
    let Some(handle) = PROMETHEUS.get() else {
        return String::new();
    };
    let s = export::stats();
    metrics::counter!("tollgate_otel_spans_exported_total").absolute(s.exported);
    metrics::counter!("tollgate_otel_spans_dropped_total", "reason" => "queue_full")
        .absolute(s.dropped_queue_full);
    metrics::counter!("tollgate_otel_spans_dropped_total", "reason" => "export_failed")
        .absolute(s.dropped_export_failed);
    handle.run_upkeep();
    handle.render()
}

/// Spans exported and dropped since the process started.
pub fn span_stats() -> SpanStats {
    export::stats()
}

/// Makes `span` (not yet entered) a child of the caller's span named by a
/// W3C `traceparent` header. Returns false when the header is absent or
/// malformed, or no tracer is installed.
pub fn adopt_traceparent(span: &tracing::Span, header: Option<&str>) -> bool {
    let Some(sc) = header.and_then(parse_traceparent) else {
        return false;
    };
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc))
        .is_ok()
}

/// The `traceparent` naming `span`, for a call made under it; `None` when no
/// tracer is installed (or the span is disabled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Sets a string-array attribute (`tracing` fields hold one value only).
pub fn set_string_array(span: &tracing::Span, key: &'static str, values: Vec<String>) {
    let values = values
        .into_iter()
        .map(opentelemetry::StringValue::from)
        .collect();
    span.set_attribute(
        key,
        opentelemetry::Value::Array(opentelemetry::Array::String(values)),
    );
}

fn parse_traceparent(header: &str) -> Option<SpanContext> {
    let mut parts = header.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || ![version, trace, span, flags].iter().all(|p| lower_hex(p))
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly() {
        let sc =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_http_endpoint_gets_the_traces_path_once() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn without_a_tracer_spans_have_no_traceparent() {
        let span = tracing::info_span!("x");
        assert!(traceparent(&span).is_none());
        assert!(!adopt_traceparent(
            &span,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        ));
    }
}
