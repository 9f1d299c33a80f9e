//! The scheduler actor: one task owns the [`Policy`]; gateways talk to it
//! through a [`SchedulerHandle`]. A [`Ticket`] waits for a grant; dropping it
//! (the client left) takes the request out of the queue. A [`Lease`] holds a
//! shard slot; dropping it (the request ended) frees the slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::policy::{Bounds, JobSpec, Policy, QueueStats, Refusal, Reserve};
use crate::shard::{ShardCapacity, ShardId};

type Reply = oneshot::Sender<Result<Grant, Rejected>>;

enum Msg {
    Submit {
        seq: u64,
        spec: JobSpec,
        reply: Reply,
    },
    Cancel {
        seq: u64,
    },
    Release {
        shard: ShardId,
    },
    Busy {
        seq: u64,
        spec: JobSpec,
        shard: ShardId,
        reply: Reply,
    },
    Report {
        worker: Arc<str>,
        shards: Vec<ShardCapacity>,
    },
    Output {
        spec: JobSpec,
        tokens: u64,
    },
    Stats(oneshot::Sender<QueueStats>),
}

/// Why a request got no shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the tenant's queue is full")]
    QueueFull,
    #[error("the queue is full")]
    Overloaded,
    #[error("shed to make room for a higher priority")]
    Shed,
    #[error("the scheduler has stopped")]
    Closed,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub bounds: Bounds,
    /// While requests are waiting, capacity freed within this window is
    /// handed out in one round, in policy order.
    pub batch_window: Duration,
    /// Slots held for higher classes while they are active.
    pub reserve: Reserve,
}

/// Owns the scheduler task; dropping it stops the task.
pub struct Scheduler {
    handle: SchedulerHandle,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Spawns the actor on the current tokio runtime.
    pub fn start(settings: Settings) -> Scheduler {
        let (tx, rx) = mpsc::unbounded_channel();
        let policy = Policy::new(settings.bounds).with_reserve(settings.reserve);
        // The task is owned by `Scheduler` and aborted when it is dropped.
        let task = tokio::spawn(run(rx, tx.clone(), policy, settings.batch_window));
        Scheduler {
            handle: SchedulerHandle {
                tx,
                next_seq: Arc::new(AtomicU64::new(1)),
            },
            task,
        }
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    mut policy: Policy<Reply>,
    window: Duration,
) {
    let origin = Instant::now();
    let now_ms = || origin.elapsed().as_millis() as u64;
    while let Some(msg) = rx.recv().await {
        // Requests already waiting means the fleet is saturated: let freed
        // capacity gather for a moment so one round hands it out in order.
        // A request that would be first in line ends the wait: nothing it
        // could be ordered against is waiting, so waiting would only delay it.
        let waiting = !policy.is_empty();
        let mut urgent = jumps_the_line(&policy, &msg);
        let mut freed = apply(&mut policy, msg, now_ms());
        while let Ok(msg) = rx.try_recv() {
            urgent |= jumps_the_line(&policy, &msg);
            freed |= apply(&mut policy, msg, now_ms());
        }
        if waiting && freed && !urgent && !window.is_zero() {
            let until = Instant::now() + window;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    msg = rx.recv() => match msg {
                        Some(m) => {
                            let urgent = jumps_the_line(&policy, &m);
                            apply(&mut policy, m, now_ms());
                            if urgent {
                                break;
                            }
                        }
                        None => return,
                    },
                }
            }
        }
        for g in policy.round(now_ms(), |reply| !reply.is_closed()) {
            let lease = Lease {
                shard: g.shard.clone(),
                seq: g.seq,
                spec: g.spec,
                tx: tx.clone(),
                armed: true,
            };
            let grant = Grant {
                shard: g.shard,
                lease,
                queued: Duration::from_millis(g.waited_ms),
            };
            // If the client left just now, the grant comes back and dropping it frees the slot.
            let _ = g.item.send(Ok(grant));
        }
    }
}

/// Whether `msg` is a new request that would be first in line (see `run`).
fn jumps_the_line(policy: &Policy<Reply>, msg: &Msg) -> bool {
    matches!(msg, Msg::Submit { spec, .. } if policy.first_in_line(spec.priority))
}

/// Applies one message; tells whether it freed capacity.
fn apply(policy: &mut Policy<Reply>, msg: Msg, now_ms: u64) -> bool {
    match msg {
        Msg::Submit { seq, spec, reply } => {
            match policy.enqueue(seq, now_ms, spec, reply) {
                Ok(shed) => {
                    for r in shed {
                        let _ = r.send(Err(Rejected::Shed));
                    }
                }
                Err((Refusal::QueueFull, reply)) => {
                    let _ = reply.send(Err(Rejected::QueueFull));
                }
                Err((Refusal::Overloaded, reply)) => {
                    let _ = reply.send(Err(Rejected::Overloaded));
                }
            }
            false
        }
        Msg::Cancel { seq } => {
            policy.remove(seq);
            false
        }
        Msg::Release { shard } => {
            policy.release(&shard, now_ms);
            true
        }
        Msg::Busy {
            seq,
            spec,
            shard,
            reply,
        } => {
            policy.mark_full(&shard);
            policy.requeue(seq, now_ms, spec, reply);
            false
        }
        Msg::Report { worker, shards } => {
            policy.report(&worker, shards);
            true
        }
        Msg::Output { spec, tokens } => {
            policy.charge_output(&spec, tokens);
            false
        }
        Msg::Stats(reply) => {
            let _ = reply.send(policy.stats(now_ms));
            false
        }
    }
}

/// How gateways talk to the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Msg>,
    next_seq: Arc<AtomicU64>,
}

impl SchedulerHandle {
    /// Queues a request. The ticket resolves to a grant; dropping it withdraws the request.
    pub fn submit(&self, spec: JobSpec) -> Ticket {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Submit { seq, spec, reply });
        Ticket {
            seq,
            rx,
            tx: self.tx.clone(),
            settled: false,
        }
    }

    /// Replaces what is known of `worker`'s shards.
    pub fn report(&self, worker: Arc<str>, shards: Vec<ShardCapacity>) {
        let _ = self.tx.send(Msg::Report { worker, shards });
    }

    pub async fn stats(&self) -> Option<QueueStats> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Stats(reply)).ok()?;
        rx.await.ok()
    }
}

/// A queued request waiting for its shard.
pub struct Ticket {
    seq: u64,
    rx: oneshot::Receiver<Result<Grant, Rejected>>,
    tx: mpsc::UnboundedSender<Msg>,
    settled: bool,
}

impl Future for Ticket {
    type Output = Result<Grant, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(_)) => Err(Rejected::Closed),
        };
        self.settled = true;
        Poll::Ready(out)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            // Withdraw from the queue; a grant already in flight is dropped with
            // the receiver, and its lease frees the slot.
            let _ = self.tx.send(Msg::Cancel { seq: self.seq });
        }
    }
}

/// A shard granted to a request.
pub struct Grant {
    pub shard: ShardId,
    pub lease: Lease,
    /// How long the request waited in the queue.
    pub queued: Duration,
}

/// Holds a slot on a shard until dropped.
pub struct Lease {
    shard: ShardId,
    seq: u64,
    spec: JobSpec,
    tx: mpsc::UnboundedSender<Msg>,
    armed: bool,
}

impl Lease {
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// Output tokens streamed for this request: charged to its tenant's fair share.
    pub fn charge_output(&self, tokens: u64) {
        if tokens > 0 {
            let _ = self.tx.send(Msg::Output {
                spec: self.spec.clone(),
                tokens,
            });
        }
    }

    /// The shard answered "busy" before doing anything: give the slot back,
    /// and queue the request again at its old place.
    pub fn busy(mut self) -> Ticket {
        self.armed = false;
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Busy {
            seq: self.seq,
            spec: self.spec.clone(),
            shard: self.shard.clone(),
            reply,
        });
        Ticket {
            seq: self.seq,
            rx,
            tx: self.tx.clone(),
            settled: false,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Msg::Release {
                shard: self.shard.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
