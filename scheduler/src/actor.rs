//! The scheduler actor: one task owns the [`Policy`]; gateways talk to it
//! through a [`SchedulerHandle`]. A [`Ticket`] waits for a grant; dropping it
//! (the client left) takes the request out of the queue. A [`Lease`] holds a
//! shard slot; dropping it (the request ended) frees the slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::policy::{JobSpec, Policy, QueueStats, Refusal, ShardCapacity, ShardId};

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
    Stats(oneshot::Sender<QueueStats>),
}

/// Why a request got no shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the tenant's queue is full")]
    QueueFull,
    #[error("the scheduler has stopped")]
    Closed,
}

/// Owns the scheduler task; dropping it stops the task.
pub struct Scheduler {
    handle: SchedulerHandle,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Spawns the actor on the current tokio runtime.
    pub fn start(max_queue_per_tenant: usize) -> Scheduler {
        let (tx, rx) = mpsc::unbounded_channel();
        let policy = Policy::new(max_queue_per_tenant);
        // The task is owned by `Scheduler` and aborted when it is dropped.
        let task = tokio::spawn(run(rx, tx.clone(), policy));
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
) {
    while let Some(msg) = rx.recv().await {
        apply(&mut policy, msg);
        // Coalesce everything already in the mailbox into one dispatch round.
        while let Ok(msg) = rx.try_recv() {
            apply(&mut policy, msg);
        }
        for (reply, shard, seq, spec) in policy.round(|reply| !reply.is_closed()) {
            let lease = Lease {
                shard: shard.clone(),
                seq,
                spec,
                tx: tx.clone(),
                armed: true,
            };
            // If the client left just now, the grant comes back and dropping it frees the slot.
            let _ = reply.send(Ok(Grant { shard, lease }));
        }
    }
}

fn apply(policy: &mut Policy<Reply>, msg: Msg) {
    match msg {
        Msg::Submit { seq, spec, reply } => {
            if let Err((Refusal::QueueFull, reply)) = policy.enqueue(seq, spec, reply) {
                let _ = reply.send(Err(Rejected::QueueFull));
            }
        }
        Msg::Cancel { seq } => {
            policy.remove(seq);
        }
        Msg::Release { shard } => policy.release(&shard),
        Msg::Busy {
            seq,
            spec,
            shard,
            reply,
        } => {
            policy.mark_full(&shard);
            policy.requeue(seq, spec, reply);
        }
        Msg::Report { worker, shards } => policy.report(&worker, shards),
        Msg::Stats(reply) => {
            let _ = reply.send(policy.stats());
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
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            tenant: "t".into(),
            cost_tokens: 1,
        }
    }

    fn one_slot(worker: &str) -> Vec<ShardCapacity> {
        vec![ShardCapacity {
            id: ShardId {
                worker: worker.into(),
                index: 0,
            },
            healthy: true,
            free_slots: 1,
            max_slots: 1,
        }]
    }

    #[tokio::test]
    async fn grant_waits_for_capacity_and_lease_frees_it() {
        let s = Scheduler::start(10);
        let h = s.handle();
        let first = h.submit(spec());
        let second = h.submit(spec());
        h.report("w".into(), one_slot("w"));
        let g1 = first.await.unwrap();
        assert_eq!(g1.shard.index, 0);
        let mut second = Box::pin(second);
        assert!(
            futures_poll_once(&mut second).await.is_none(),
            "no slot yet"
        );
        drop(g1);
        let g2 = second.await.unwrap();
        assert_eq!(g2.shard.worker.as_ref(), "w");
    }

    #[tokio::test]
    async fn dropped_ticket_leaves_the_queue() {
        let s = Scheduler::start(10);
        let h = s.handle();
        drop(h.submit(spec()));
        let waiting = h.submit(spec());
        h.report("w".into(), one_slot("w"));
        // The withdrawn request must not have taken the only slot.
        let g = waiting.await.unwrap();
        drop(g);
        assert_eq!(h.stats().await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn queue_full_is_reported() {
        let s = Scheduler::start(1);
        let h = s.handle();
        let _a = h.submit(spec());
        let b = h.submit(spec());
        assert_eq!(b.await.err(), Some(Rejected::QueueFull));
    }

    #[tokio::test]
    async fn busy_requeues_until_the_next_report() {
        let s = Scheduler::start(10);
        let h = s.handle();
        h.report("w".into(), one_slot("w"));
        let g = h.submit(spec()).await.unwrap();
        let mut again = Box::pin(g.lease.busy());
        assert!(
            futures_poll_once(&mut again).await.is_none(),
            "busy shard is skipped"
        );
        h.report("w".into(), one_slot("w"));
        assert!(again.await.is_ok());
    }

    /// Polls once after letting the actor run; `None` if still pending.
    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        // Make sure the actor has processed everything sent so far.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        std::future::poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
