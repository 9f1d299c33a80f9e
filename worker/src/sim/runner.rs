//! The engine actor: one task owns the [`Engine`] and drives it in time.
//! It plans a step, sleeps for the step's duration (still taking messages),
//! then applies it. Steps follow one another on an ideal timeline, so a
//! step shorter than the timer's resolution (a large `--time-scale`) costs
//! no sleep at all; the timeline snaps back to the clock after idling or
//! when the actor falls more than [`MAX_LAG`] behind.
//!
//! The task lives as long as a sender of its mailbox: every
//! [`EngineHandle`] and every in-flight request's [`AbortGuard`]. When the
//! HTTP server that holds them is gone, the mailbox closes and the task ends.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::engine::{Engine, FinishReason, NewRequest, ReqId, StepPlan, TokenEvent};
use super::metrics::Snapshot;

/// How far the timeline may trail the clock before it is reset to it.
const MAX_LAG: Duration = Duration::from_millis(20);

enum Msg {
    Submit(ReqId, NewRequest),
    Abort(ReqId),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// The engine's mailbox, cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: UnboundedSender<Msg>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Submit(id, _) => write!(f, "Submit({id})"),
            Msg::Abort(id) => write!(f, "Abort({id})"),
            Msg::Snapshot(_) => write!(f, "Snapshot"),
        }
    }
}

/// What a request needs from the engine besides its sink.
#[derive(Debug)]
pub struct Spec {
    pub prompt_len: u32,
    pub block_hashes: Arc<[u64]>,
    pub output_tokens: u32,
    pub finish: FinishReason,
    pub priority: i64,
}

/// A submitted request: its token events, and the guard that aborts it
/// in the engine when dropped before the last token.
#[derive(Debug)]
pub struct Submission {
    pub events: UnboundedReceiver<TokenEvent>,
    pub guard: AbortGuard,
}

#[derive(Debug)]
pub struct AbortGuard {
    id: ReqId,
    tx: UnboundedSender<Msg>,
    armed: bool,
}

impl AbortGuard {
    /// The request finished on its own: nothing to abort.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Msg::Abort(self.id));
        }
    }
}

impl EngineHandle {
    /// Starts the actor on the current Tokio runtime.
    pub fn spawn(engine: Engine) -> io::Result<EngineHandle> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("the simulator needs a Tokio runtime: {e}")))?;
        let (tx, rx) = unbounded_channel();
        // Owned by its mailbox: see the module doc.
        runtime.spawn(run(engine, rx));
        Ok(EngineHandle {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    pub fn submit(&self, spec: Spec) -> Submission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sink, events) = unbounded_channel();
        let req = NewRequest {
            prompt_len: spec.prompt_len,
            block_hashes: spec.block_hashes,
            output_tokens: spec.output_tokens.max(1),
            finish: spec.finish,
            priority: spec.priority,
            sink,
        };
        // If the actor is gone the sink is dropped with the message and the
        // caller sees its events end early.
        let _ = self.tx.send(Msg::Submit(id, req));
        Submission {
            events,
            guard: AbortGuard {
                id,
                tx: self.tx.clone(),
                armed: true,
            },
        }
    }

    /// The engine's current state; `None` when the actor is gone.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Snapshot(tx)).ok()?;
        rx.await.ok()
    }

    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }
}

async fn run(mut engine: Engine, mut rx: UnboundedReceiver<Msg>) {
    let mut last_end: Option<Instant> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok(msg) => handle(&mut engine, msg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        let plan = if engine.has_work() {
            engine.schedule(now)
        } else {
            StepPlan::default()
        };
        if plan.is_empty() {
            last_end = None;
            match rx.recv().await {
                Some(msg) => handle(&mut engine, msg),
                None => return,
            }
            continue;
        }
        let start = match last_end {
            Some(end) if now.saturating_duration_since(end) <= MAX_LAG => end,
            _ => now,
        };
        let deadline = start + engine.step_duration(&plan);
        if deadline > now {
            let sleep = tokio::time::sleep_until(deadline);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    () = &mut sleep => break,
                    msg = rx.recv() => match msg {
                        Some(msg) => handle(&mut engine, msg),
                        None => return,
                    },
                }
            }
        } else {
            // Behind the timeline: run the step at once, but let others run too.
            tokio::task::yield_now().await;
        }
        engine.complete(&plan, Instant::now());
        last_end = Some(deadline);
    }
}

fn handle(engine: &mut Engine, msg: Msg) {
    match msg {
        Msg::Submit(id, req) => engine.add(id, req, Instant::now()),
        Msg::Abort(id) => engine.abort(id, Instant::now()),
        Msg::Snapshot(reply) => {
            let _ = reply.send(engine.snapshot());
        }
    }
}
