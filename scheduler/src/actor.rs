//! The scheduler: one [`Policy`] behind a lock, driven by its callers. A
//! [`Ticket`] waits for a grant; dropping it (the client left) takes the
//! request out of the queue. A [`Lease`] holds a shard slot; dropping it
//! (the request ended) frees the slot.
//!
//! Every event (a request arrives or leaves, a slot frees, a report comes)
//! is applied by the thread that caused it, and the round that follows is
//! run there too: a request that finds room is granted before `submit`
//! returns, with no hop to another thread. One task only keeps time: when
//! capacity frees while requests wait, it runs the round at the end of the
//! batch window (see [`Core::after`]).
//!
//! The lock is never held across an await, and nothing that takes it runs
//! while it is held: grants whose ticket was dropped meanwhile come back
//! from the round and are dropped (freeing their slots) after unlocking.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
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
        /// Output tokens not charged yet, with the request they belong to.
        output: Option<(JobSpec, u64)>,
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

/// Owns the scheduler's timer task; dropping it stops the scheduler.
pub struct Scheduler {
    handle: SchedulerHandle,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Spawns the timer task on the current tokio runtime.
    pub fn start(settings: Settings) -> Scheduler {
        let policy = Policy::new(settings.bounds).with_reserve(settings.reserve);
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                policy,
                window_until: None,
                closed: false,
            }),
            settings,
            origin: Instant::now(),
            timer: Notify::new(),
        });
        // Owned by `Scheduler` and aborted when it is dropped.
        let task = tokio::spawn(keep_time(shared.clone()));
        Scheduler {
            handle: SchedulerHandle {
                shared,
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
        // Waiting requests (their replies are dropped with the old policy)
        // and later ones are told the scheduler has stopped.
        let s = &self.handle.shared;
        let fresh = Policy::new(s.settings.bounds);
        let old = match s.core.lock() {
            Ok(mut c) => {
                c.closed = true;
                c.window_until = None;
                Some(std::mem::replace(&mut c.policy, fresh))
            }
            Err(_) => None,
        };
        drop(old);
    }
}

struct Shared {
    core: Mutex<Core>,
    settings: Settings,
    origin: Instant,
    /// Wakes the timer task when a batch window opens.
    timer: Notify,
}

struct Core {
    policy: Policy<Reply>,
    /// The end of the batch window now open, if one is.
    window_until: Option<Instant>,
    /// The scheduler was dropped: new requests are refused.
    closed: bool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Applies one event and runs the round it calls for, under the lock;
    /// grants refused by a gone ticket are dropped after it.
    fn handle(self: &Arc<Self>, msg: Msg) {
        let now_ms = self.now_ms();
        let returned = match self.core.lock() {
            Ok(mut c) => c.handle(msg, now_ms, self),
            // A panic while the lock was held left the policy unknown:
            // grant nothing more (waiting requests time out).
            Err(_) => {
                tracing::error!("the scheduler's state is lost; no more grants");
                Vec::new()
            }
        };
        drop(returned);
    }
}

impl Core {
    fn handle(&mut self, msg: Msg, now_ms: u64, shared: &Arc<Shared>) -> Vec<Grant> {
        if self.closed {
            if let Msg::Submit { reply, .. } | Msg::Busy { reply, .. } = msg {
                let _ = reply.send(Err(Rejected::Closed));
            }
            return Vec::new();
        }
        // Requests already waiting means the fleet is saturated: let freed
        // capacity gather for a moment so one round hands it out in order.
        // A request that would be first in line ends the wait: nothing it
        // could be ordered against is waiting, so waiting would only delay it.
        let waiting = !self.policy.is_empty();
        let urgent =
            matches!(&msg, Msg::Submit { spec, .. } if self.policy.first_in_line(spec.priority));
        // Streamed output (a charge every few tokens of every stream) only
        // reorders tenants: it frees nothing, so the round after the last
        // event still holds and is not run again.
        let reorders_only = matches!(msg, Msg::Output { .. });
        let freed = apply(&mut self.policy, msg, now_ms);
        if reorders_only {
            return Vec::new();
        }
        match self.window_until {
            Some(_) if !urgent => return Vec::new(),
            Some(_) => self.window_until = None,
            None if waiting && freed && !shared.settings.batch_window.is_zero() => {
                self.window_until = Some(Instant::now() + shared.settings.batch_window);
                shared.timer.notify_one();
                return Vec::new();
            }
            None => {}
        }
        self.round(now_ms, shared)
    }

    /// The round a batch window held back, once the window has ended.
    fn after(&mut self, now: Instant, now_ms: u64, shared: &Arc<Shared>) -> Vec<Grant> {
        match self.window_until {
            Some(end) if end <= now => {
                self.window_until = None;
                self.round(now_ms, shared)
            }
            _ => Vec::new(),
        }
    }

    /// Hands out what fits; returns the grants whose ticket is gone, to be
    /// dropped (freeing their slots) once the lock is released.
    fn round(&mut self, now_ms: u64, shared: &Arc<Shared>) -> Vec<Grant> {
        let mut returned = Vec::new();
        for g in self.policy.round(now_ms, |reply| !reply.is_closed()) {
            let lease = Lease {
                shard: g.shard.clone(),
                seq: g.seq,
                spec: g.spec,
                shared: shared.clone(),
                armed: true,
            };
            let grant = Grant {
                shard: g.shard,
                lease,
                queued: Duration::from_millis(g.waited_ms),
            };
            // The client left just now: the grant comes back.
            if let Err(Ok(grant)) = g.item.send(Ok(grant)) {
                returned.push(grant);
            }
        }
        returned
    }
}

/// Runs the round at the end of each batch window.
async fn keep_time(shared: Arc<Shared>) {
    loop {
        let until = shared.core.lock().ok().and_then(|c| c.window_until);
        match until {
            Some(at) => tokio::time::sleep_until(at).await,
            None => {
                shared.timer.notified().await;
                continue;
            }
        }
        let now_ms = shared.now_ms();
        let returned = match shared.core.lock() {
            Ok(mut c) => c.after(Instant::now(), now_ms, &shared),
            Err(_) => return,
        };
        drop(returned);
    }
}

/// Applies one event; tells whether it freed capacity.
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
        Msg::Release { shard, output } => {
            if let Some((spec, tokens)) = output {
                policy.charge_output(&spec, tokens);
            }
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
    }
}

/// How gateways talk to the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
    next_seq: Arc<AtomicU64>,
}

impl SchedulerHandle {
    /// Queues a request. The ticket resolves to a grant (already, when there
    /// was room); dropping it withdraws the request.
    pub fn submit(&self, spec: JobSpec) -> Ticket {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.shared.handle(Msg::Submit { seq, spec, reply });
        Ticket {
            seq,
            rx,
            shared: self.shared.clone(),
            settled: false,
        }
    }

    /// Replaces what is known of `worker`'s shards.
    pub fn report(&self, worker: Arc<str>, shards: Vec<ShardCapacity>) {
        self.shared.handle(Msg::Report { worker, shards });
    }

    pub async fn stats(&self) -> Option<QueueStats> {
        let now_ms = self.shared.now_ms();
        self.shared.core.lock().ok().map(|c| c.policy.stats(now_ms))
    }
}

/// A queued request waiting for its shard.
pub struct Ticket {
    seq: u64,
    rx: oneshot::Receiver<Result<Grant, Rejected>>,
    shared: Arc<Shared>,
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
            // Withdraw from the queue. A grant sent before this is dropped
            // with the receiver, and its lease frees the slot; one sent
            // after it comes back from the round and is dropped there.
            self.rx.close();
            if self.rx.try_recv().is_err() {
                self.shared.handle(Msg::Cancel { seq: self.seq });
            }
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
    shared: Arc<Shared>,
    armed: bool,
}

impl Lease {
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    fn send(&self, msg: Msg) {
        self.shared.handle(msg);
    }

    /// Output tokens streamed for this request: charged to its tenant's fair share.
    pub fn charge_output(&self, tokens: u64) {
        if tokens > 0 {
            self.send(Msg::Output {
                spec: self.spec.clone(),
                tokens,
            });
        }
    }

    /// The request ended having produced `tokens` output tokens not charged
    /// yet: one step charges them and frees the slot.
    pub fn end(mut self, tokens: u64) {
        self.armed = false;
        self.send(Msg::Release {
            shard: self.shard.clone(),
            output: (tokens > 0).then(|| (self.spec.clone(), tokens)),
        });
    }

    /// The shard answered "busy" before doing anything: give the slot back,
    /// and queue the request again at its old place.
    pub fn busy(mut self) -> Ticket {
        self.armed = false;
        let (reply, rx) = oneshot::channel();
        let shared = self.shared.clone();
        shared.handle(Msg::Busy {
            seq: self.seq,
            spec: self.spec.clone(),
            shard: self.shard.clone(),
            reply,
        });
        Ticket {
            seq: self.seq,
            rx,
            shared,
            settled: false,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.send(Msg::Release {
                shard: self.shard.clone(),
                output: None,
            });
        }
    }
}

#[cfg(test)]
mod tests;
