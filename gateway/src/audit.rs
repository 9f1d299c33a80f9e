//! The audit trail: one record per request, token event and admin action
//! (CONTRACT §7), written as JSON lines by a task that owns the file.
//! Recording never blocks the request path: records go through a bounded
//! channel; when it is full the record is counted as dropped and logged.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records buffered between the request path and the writer.
const BUFFER: usize = 65_536;

/// One audit record. Absent fields are left out of the JSON line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    pub ts: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_chars: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_sample: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// What an admin action changed, or why a token was denied (no secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record of `event`, stamped now.
    pub fn new(event: &'static str) -> Self {
        AuditRecord {
            ts: rfc3339_now(),
            event,
            ..Default::default()
        }
    }
}

/// Where records go. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
}

/// Owns the writer task; dropping it lets the task finish what is buffered.
pub struct AuditWriter {
    task: JoinHandle<()>,
}

impl AuditWriter {
    /// Waits until every record sent so far is on disk (the senders must be gone).
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

impl Audit {
    /// Starts the writer. Without a path, records go to the log (stderr) as JSON.
    pub fn start(path: Option<PathBuf>) -> std::io::Result<(Audit, AuditWriter)> {
        let mut out: Box<dyn Write + Send> = match &path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stderr()),
        };
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(BUFFER);
        // Owned by `AuditWriter`; ends when every `Audit` handle is dropped.
        let task = tokio::task::spawn_blocking(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                }
                for r in &batch {
                    if let Ok(line) = serde_json::to_string(r) {
                        let _ = writeln!(out, "{line}");
                    }
                }
                if let Err(e) = out.flush() {
                    tracing::error!(error = %e, "audit log write failed");
                }
            }
        });
        Ok((
            Audit {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            AuditWriter { task },
        ))
    }

    /// Records without waiting. A full buffer drops the record, counted and logged.
    pub fn record(&self, r: AuditRecord) {
        if self.tx.try_send(r).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped_total = n, "audit buffer full: record dropped");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The current UTC time as RFC 3339 with milliseconds.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            rfc3339(1_795_564_800 + 3_723, 42),
            "2026-11-25T01:02:03.042Z"
        );
    }

    #[tokio::test]
    async fn records_reach_the_file_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (audit, writer) = Audit::start(Some(path.clone())).unwrap();
        let mut r = AuditRecord::new("token_issued");
        r.client_id = Some("c1".into());
        r.detail = Some("line\nbreak".into());
        audit.record(r);
        audit.record(AuditRecord::new("request"));
        drop(audit);
        writer.finish().await;
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["event"], "token_issued");
        assert_eq!(first["detail"], "line\nbreak");
        assert!(first.get("request_id").is_none());
    }
}
