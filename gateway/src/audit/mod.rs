//! The audit trail: one record per request, token event and admin action
//! (CONTRACT §7), written to a rotating JSON-lines file and, with Redis, to a
//! capped Redis Stream that the audit API reads. The trail does not depend
//! on the OTLP exporter: a dead collector costs no record.
//!
//! Recording never blocks the request path: a record is serialised once and
//! offered to each sink's bounded queue; a full queue drops the record for
//! that sink, counted in `tollgate_audit_dropped_total{sink}`. Shutdown
//! writes everything queued ([`AuditWriter::finish`]).
//!
//! - `record`: the record, its escaping, UTC time helpers
//! - `file`: the rotating file (size, age, retention)
//! - `stream`: the Redis Stream (append, paged reads)
//! - `ring`: the latest records in memory, for the API without Redis
//! - `query`: the API's filters, cursors and pages
//! - `writer`: the tasks that own the sinks

mod file;
mod query;
mod record;
mod ring;
mod stream;
mod writer;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tollgate_shared::config::TelemetryConfig;
use tollgate_shared::store::{Redis, StoreError};

pub use file::Rotation;
pub use query::{AuditQuery, MAX_LIMIT, Page, QueryError, RawQuery};
pub use record::{
    AuditRecord, escape_controls, now_ms, parse_rfc3339_ms, parse_utc_date, rfc3339_ms,
    rfc3339_now, utc_date,
};
pub use stream::STREAM_KEY;

use query::Line;
use ring::Ring;
use writer::Msg;

/// Records queued per sink between the request path and its writer.
const BUFFER: usize = 65_536;

/// Where records go. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    file: mpsc::Sender<Msg>,
    stream: Option<(mpsc::Sender<Msg>, Redis)>,
    /// Serves the API when there is no stream.
    ring: Option<Ring>,
    dropped: AtomicU64,
}

/// Owns the writer tasks; [`AuditWriter::finish`] writes what is queued.
pub struct AuditWriter {
    file: (mpsc::Sender<Msg>, JoinHandle<()>),
    stream: Option<(mpsc::Sender<Msg>, JoinHandle<()>)>,
}

impl AuditWriter {
    /// Writes every record queued so far and stops the writers. Records
    /// offered afterwards are dropped (and counted).
    pub async fn finish(self) {
        let mut tasks = vec![self.file];
        tasks.extend(self.stream);
        for (tx, _) in &tasks {
            let _ = tx.send(Msg::Close).await;
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }
}

impl Audit {
    /// Starts the writers: the file (stderr without `audit_log`) and, with
    /// Redis, the stream. Must be called inside a tokio runtime.
    pub fn start(cfg: &TelemetryConfig, redis: Option<Redis>) -> io::Result<(Audit, AuditWriter)> {
        let rotation = Rotation {
            max_bytes: cfg.audit_rotate_bytes,
            max_age: cfg.audit_rotate,
            keep_files: cfg.audit_keep_files,
            retention: cfg.audit_retention,
        };
        let out = file::Output::open(cfg.audit_log.as_deref(), rotation)?;
        let (file_tx, file_rx) = mpsc::channel(BUFFER);
        // Owned by `AuditWriter`: ends after its close request.
        let file_task = tokio::task::spawn_blocking(move || writer::run_file(out, file_rx));
        let stream = redis.map(|r| {
            let (tx, rx) = mpsc::channel(BUFFER);
            // Owned by `AuditWriter`: ends after its close request.
            let task = tokio::spawn(writer::run_stream(r.clone(), cfg.audit_stream_max_len, rx));
            ((tx.clone(), r), (tx, task))
        });
        let (api_stream, stream_task) = match stream {
            Some((a, t)) => (Some(a), Some(t)),
            None => (None, None),
        };
        if !cfg.audit_enabled {
            tracing::warn!("telemetry.audit_enabled = false: NO audit records will be written");
        }
        let ring = api_stream.is_none().then(Ring::default);
        Ok((
            Audit {
                inner: Arc::new(Inner {
                    enabled: cfg.audit_enabled,
                    file: file_tx.clone(),
                    stream: api_stream,
                    ring,
                    dropped: AtomicU64::new(0),
                }),
            },
            AuditWriter {
                file: (file_tx, file_task),
                stream: stream_task,
            },
        ))
    }

    /// Records without waiting. A sink whose queue is full loses the record
    /// (counted in `tollgate_audit_dropped_total` and [`Audit::dropped`]).
    pub fn record(&self, mut r: AuditRecord) {
        if !self.inner.enabled {
            return;
        }
        r.escape();
        let json = match serde_json::to_string(&r) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, event = r.event, "audit record not serialisable");
                return;
            }
        };
        let line = Arc::new(Line {
            ts_ms: now_ms(),
            client_id: r.client_id,
            tenant: r.tenant,
            json,
        });
        if let Some(ring) = &self.inner.ring {
            ring.push(line.clone());
        }
        if let Some((tx, _)) = &self.inner.stream
            && tx.try_send(Msg::Line(line.clone())).is_err()
        {
            self.lost("redis");
        }
        if self.inner.file.try_send(Msg::Line(line)).is_err() {
            self.lost("file");
        }
    }

    fn lost(&self, sink: &'static str) {
        writer::dropped(sink, 1);
        let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // The first loss and then every thousandth: a full queue must not flood the log.
        if n == 1 || n.is_multiple_of(1000) {
            tracing::error!(sink, dropped_total = n, "audit queue full: record dropped");
        }
    }

    /// Records lost so far, over all sinks.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every record offered so far is written by every sink.
    pub async fn flush(&self) {
        let mut sinks = vec![&self.inner.file];
        sinks.extend(self.inner.stream.as_ref().map(|(tx, _)| tx));
        for tx in sinks {
            let (done, wait) = oneshot::channel();
            if tx.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// Where the API's records come from: `redis` or `memory`.
    pub fn source(&self) -> &'static str {
        if self.inner.stream.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// The page `q` asks for. `Ok(None)`: the cursor is not one this store handed out.
    pub async fn query(&self, q: &AuditQuery) -> Result<Option<Page>, StoreError> {
        match (&self.inner.stream, &self.inner.ring) {
            (Some((_, redis)), _) => stream::query(redis, q).await,
            (None, Some(ring)) => Ok(ring.query(q)),
            (None, None) => Ok(Some(Page::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn config(path: Option<PathBuf>) -> TelemetryConfig {
        TelemetryConfig {
            service_name: None,
            otlp_endpoint: None,
            otlp_protocol: tollgate_shared::config::OtlpProtocol::Grpc,
            audit_log: path,
            log_level: "info".into(),
            audit_enabled: true,
            audit_rotate_bytes: 1 << 30,
            audit_rotate: Duration::from_secs(86_400),
            audit_keep_files: 10,
            audit_retention: Duration::from_secs(86_400 * 30),
            audit_stream_max_len: 100_000,
            audit_prompt_sample: false,
        }
    }

    #[tokio::test]
    async fn records_reach_the_file_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (audit, writer) = Audit::start(&config(Some(path.clone())), None).unwrap();
        let mut r = AuditRecord::new("token_issued");
        r.client_id = Some("c1".into());
        r.detail = Some("line\nbreak".into());
        audit.record(r);
        audit.record(AuditRecord::new("request"));
        writer.finish().await;
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["event"], "token_issued");
        assert_eq!(first["detail"], "line\\nbreak");
        assert!(first.get("request_id").is_none());
        // After the writers stopped, a record is counted as lost, not silently kept.
        audit.record(AuditRecord::new("late"));
        assert_eq!(audit.dropped(), 1);
    }

    #[tokio::test]
    async fn without_redis_the_api_reads_the_ring() {
        let (audit, writer) = Audit::start(&config(None), None).unwrap();
        for c in ["a", "b", "a"] {
            let mut r = AuditRecord::new("request");
            r.client_id = Some(c.into());
            audit.record(r);
        }
        let q = AuditQuery {
            client_id: Some("a".into()),
            limit: 10,
            ..Default::default()
        };
        let page = audit.query(&q).await.unwrap().unwrap();
        assert_eq!(page.lines.len(), 2);
        assert_eq!(page.source, "memory");
        writer.finish().await;
    }

    #[tokio::test]
    async fn with_redis_records_reach_the_stream_and_the_file() {
        let server = tollgate_shared::testing::RedisServer::start();
        let redis = Redis::new(&server.config("t:")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (audit, writer) = Audit::start(&config(Some(path.clone())), Some(redis)).unwrap();
        for i in 0..5 {
            let mut r = AuditRecord::new("request");
            r.tenant = Some(format!("t{}", i % 2));
            audit.record(r);
        }
        audit.flush().await;
        let q = AuditQuery {
            tenant: Some("t0".into()),
            limit: 10,
            ..Default::default()
        };
        let page = audit.query(&q).await.unwrap().unwrap();
        assert_eq!((page.lines.len(), page.source), (3, "redis"));
        writer.finish().await;
        assert_eq!(std::fs::read_to_string(path).unwrap().lines().count(), 5);
    }

    /// Audit sink throughput: `cargo test -p tollgate-gateway --release -- --ignored audit_sink_throughput --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark"]
    async fn audit_sink_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let server = tollgate_shared::testing::RedisServer::start();
        for with_redis in [false, true] {
            let path = dir.path().join(format!("bench-{with_redis}.jsonl"));
            let redis = with_redis.then(|| Redis::new(&server.config("b:")).unwrap());
            let (audit, writer) = Audit::start(&config(Some(path.clone())), redis).unwrap();
            let n = 200_000u64;
            let started = std::time::Instant::now();
            for i in 0..n {
                let mut r = AuditRecord::new("request");
                r.request_id = Some(format!("{i:032x}"));
                r.client_id = Some("client_abc123".into());
                r.tenant = Some("acme".into());
                r.route = Some("/v1/chat/completions".into());
                r.status = Some(200);
                r.latency_ms = Some(12);
                r.prompt_sha256 = Some("0".repeat(64));
                audit.record(r);
                // Offer at the rate the sinks take, as a steady load would.
                if i % 10_000 == 0 {
                    audit.flush().await;
                }
            }
            audit.flush().await;
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(audit.dropped(), 0);
            println!(
                "audit sink (file{}): {n} records in {secs:.2} s = {:.0} records/s",
                if with_redis { " + redis stream" } else { "" },
                n as f64 / secs
            );
            writer.finish().await;
        }
    }
}
