//! The tasks that own the audit sinks. Each sink has its own bounded queue,
//! so a slow disk does not hold up Redis or the other way round; neither
//! ever holds up a request (see `Audit::record`).
//!
//! A queue carries records, flush requests (answered once everything queued
//! before them is written) and one close request (sent at shutdown: what is
//! queued is written, then the task ends).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tollgate_shared::store::Redis;

use super::file::Output;
use super::query::Line;
use super::stream;

/// Records written per batch at most.
const BATCH: usize = 512;
/// How long each writer lets records gather after a batch that did not
/// fill. Without it every record woke the writer and cost a write of its
/// own (for the stream, a round trip and a read and a write in Redis);
/// with it a busy gateway writes a batch every few milliseconds, and a
/// record reaches the file or the stream at most this much later.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

pub enum Msg {
    Line(Arc<Line>),
    Flush(oneshot::Sender<()>),
    Close,
}

/// What one batch taken off a queue holds.
#[derive(Default)]
struct Batch {
    lines: Vec<Arc<Line>>,
    flushes: Vec<oneshot::Sender<()>>,
    closing: bool,
}

impl Batch {
    fn take(&mut self, m: Msg, rx: &mut mpsc::Receiver<Msg>) {
        match m {
            Msg::Line(l) => self.lines.push(l),
            Msg::Flush(tx) => self.flushes.push(tx),
            Msg::Close => {
                // Nothing new gets in; what is queued is still received.
                rx.close();
                self.closing = true;
            }
        }
    }

    fn fill(first: Msg, rx: &mut mpsc::Receiver<Msg>) -> Batch {
        let mut b = Batch::default();
        b.take(first, rx);
        while b.lines.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => b.take(m, rx),
                Err(_) => break,
            }
        }
        b
    }

    fn answer_flushes(self) {
        for f in self.flushes {
            let _ = f.send(());
        }
    }
}

fn written(sink: &'static str, n: usize) {
    metrics::counter!("tollgate_audit_records_total", "sink" => sink).increment(n as u64);
}

/// Counts records a sink lost.
pub fn dropped(sink: &'static str, n: usize) {
    metrics::counter!("tollgate_audit_dropped_total", "sink" => sink).increment(n as u64);
}

/// The file writer; runs on a blocking thread.
pub fn run_file(mut out: Output, mut rx: mpsc::Receiver<Msg>) {
    let mut failing = false;
    while let Some(first) = rx.blocking_recv() {
        let batch = Batch::fill(first, &mut rx);
        if !batch.lines.is_empty() {
            let lines: Vec<&str> = batch.lines.iter().map(|l| l.json.as_str()).collect();
            match out.write(&lines, SystemTime::now()) {
                Ok(()) => {
                    written("file", lines.len());
                    if failing {
                        tracing::info!("audit file writable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    dropped("file", lines.len());
                    // One line per failure streak, not one per batch.
                    if !failing {
                        tracing::error!(error = %e, "audit records lost: writing the audit file failed");
                        failing = true;
                    }
                }
            }
        }
        if (batch.closing || !batch.flushes.is_empty())
            && let Err(e) = out.sync()
        {
            tracing::error!(error = %e, "audit file sync failed");
        }
        let (full, closing) = (batch.lines.len() >= BATCH, batch.closing);
        batch.answer_flushes();
        if !full && !closing {
            // A dedicated blocking thread: sleeping here holds up nothing else.
            std::thread::sleep(LINGER);
        }
    }
    if let Err(e) = out.sync() {
        tracing::error!(error = %e, "audit file sync failed");
    }
}

/// The Redis stream writer. A failed batch is sent again after each of
/// [`stream::RETRY_PAUSES`] (records queue up behind it meanwhile), then dropped.
pub async fn run_stream(redis: Redis, max_len: u64, mut rx: mpsc::Receiver<Msg>) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let batch = Batch::fill(first, &mut rx);
        if !batch.lines.is_empty() {
            let lines: Vec<&Line> = batch.lines.iter().map(|l| l.as_ref()).collect();
            let mut result = stream::append(&redis, max_len, &lines).await;
            for pause in stream::RETRY_PAUSES {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(pause).await;
                result = stream::append(&redis, max_len, &lines).await;
            }
            match result {
                Ok(()) => {
                    written("redis", lines.len());
                    failing = false;
                }
                Err(e) => {
                    dropped("redis", lines.len());
                    if !failing {
                        tracing::error!(error = %e, "audit records missing from the Redis stream (still in the file)");
                        failing = true;
                    }
                }
            }
        }
        let (full, closing) = (batch.lines.len() >= BATCH, batch.closing);
        batch.answer_flushes();
        if !full && !closing {
            tokio::time::sleep(LINGER).await;
        }
    }
}
