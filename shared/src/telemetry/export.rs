//! The span pipeline: OpenTelemetry's batch processor, with every span that
//! does not reach the collector counted. The SDK drops spans silently when
//! its queue is full (a slow or dead collector) and keeps no public count, so
//! a gate in front of it admits at most a queue's worth of spans not yet
//! exported and counts the rest; the exporter is wrapped to count what it
//! sent and what the collector refused or never got.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};

/// Spans exported and lost since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanStats {
    pub exported: u64,
    /// The queue to the exporter was full.
    pub dropped_queue_full: u64,
    /// The collector failed, refused or could not be reached.
    pub dropped_export_failed: u64,
}

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> SpanStats {
    SpanStats {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped_queue_full: DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        dropped_export_failed: DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    }
}

/// The SDK's default queue size; `OTEL_BSP_MAX_QUEUE_SIZE` overrides it (as
/// it does the SDK's own), so the gate and the queue agree.
fn queue_size() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2048)
}

/// A batch processor over `exporter` whose losses are counted. Its timing
/// follows the `OTEL_BSP_*` variables (tests shorten `OTEL_BSP_SCHEDULE_DELAY`).
pub fn counted_batch<E: SpanExporter + 'static>(exporter: E) -> Gate {
    let max = queue_size();
    let pending = Arc::new(AtomicUsize::new(0));
    let counted = Counted {
        inner: exporter,
        pending: pending.clone(),
    };
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(max)
        .build();
    Gate {
        inner: BatchSpanProcessor::builder(counted)
            .with_batch_config(config)
            .build(),
        pending,
        max,
    }
}

/// Admits a span to the batch processor only while fewer than `max` are
/// pending (queued or being exported), so the processor's queue, which
/// holds at most the pending ones, never overflows unseen.
#[derive(Debug)]
pub struct Gate {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    max: usize,
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting each batch as exported or lost.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        let sent = self.inner.export(batch);
        async move {
            let result = sent.await;
            let counter = if result.is_ok() {
                &EXPORTED
            } else {
                &DROPPED_EXPORT_FAILED
            };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            self.pending.fetch_sub(n, Ordering::AcqRel);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer, TracerProvider};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// An exporter that fails every batch, as a dead collector does.
    #[derive(Debug)]
    struct Dead;

    impl SpanExporter for Dead {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    #[test]
    fn spans_a_dead_collector_never_got_are_counted() {
        let before = stats();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(counted_batch(Dead))
            .build();
        let tracer = provider.tracer("t");
        for _ in 0..3 {
            tracer.in_span("s", |_| {});
        }
        provider.force_flush().ok();
        let after = stats();
        // Other tests of this process may export at the same time: at least ours.
        assert!(after.dropped_export_failed >= before.dropped_export_failed + 3);
        provider.shutdown().ok();
    }
}
