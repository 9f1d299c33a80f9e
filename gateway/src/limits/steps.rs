//! Calls to Redis for one tenant, coalesced: a tenant's admissions and
//! settlements queue, and up to two tasks per tenant take whatever has
//! queued, send it as one script call (`redis::step`), answer each request,
//! and go again until the queue is empty. At one request at a time each
//! call carries one (and the settlement of the one before); under load one
//! call carries every request that arrived while the others were out, so
//! Redis reads and writes the tenant's state once for all of them and the
//! gateway makes one round trip. Every request is still decided by Redis,
//! in the order it arrived: the semantics are those of one call per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use tokio::sync::oneshot;
use tollgate_shared::config::RedisFailureMode;
use tollgate_shared::openai::Usage;
use tollgate_shared::store::{Redis, StoreError};

use super::policy::Verdict;
use super::{Limiter, Ticket, redis};

/// At most this many admissions, and this many settlements, in one call:
/// Redis runs nothing else while a script runs.
const MAX_PER_STEP: usize = 64;

/// Calls in flight per tenant at most. With one, an admission that arrives
/// just after a call left waits for its answer before its own goes; with
/// two, it goes at once, and under load each call still carries whatever
/// queued while the other was out.
const CALLS_IN_FLIGHT: usize = 2;

pub(super) type Queues = Mutex<HashMap<String, Queue>>;

/// How long settlements alone wait for an admission to ride with: one
/// request at a time, its settlement goes in the next request's call rather
/// than in a call of its own, halving the calls of a client that sends one
/// request after another.
const LINGER: Duration = Duration::from_millis(1);

/// What waits for a tenant's next call. A tenant has an entry exactly while
/// one of its tasks runs or lingers.
#[derive(Default)]
pub(super) struct Queue {
    admissions: Vec<Admission>,
    settlements: Vec<Settlement>,
    /// Tasks sending this tenant's calls, each with at most one in flight.
    runners: usize,
    /// A task waiting for settlements to find an admission to ride with.
    lingering: bool,
}

/// A request to admit: its ticket (limits, reservation; second and
/// deadline filled in when admitted) and who waits for the verdict.
struct Admission {
    ticket: Ticket,
    reply: oneshot::Sender<Result<(Ticket, Verdict), StoreError>>,
}

struct Settlement {
    ticket: Ticket,
    usage: Usage,
    /// Told when it is done: in Redis, or failed and metered here.
    done: Option<oneshot::Sender<()>>,
    /// Times it was sent again after its call failed.
    retries: u32,
}

/// Where writes wait for replicas, a settlement whose call failed is sent
/// again this often, this many times (about 15 s, the time a primary's
/// replica takes over and gets a replica of its own), before it is metered
/// here: its call may have been counted though its answer was lost, and
/// only Redis can tell (by its id, `redis::SETTLED_IDS_KEPT`).
const SETTLE_RETRY_PAUSE: Duration = Duration::from_millis(500);
const SETTLE_RETRIES: u32 = 30;

enum Job {
    Admit(Admission),
    Settle(Settlement),
}

fn lock(q: &Queues) -> MutexGuard<'_, HashMap<String, Queue>> {
    // A panic while holding the lock leaves the map consistent: every
    // change to it is one insert, push or remove.
    q.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limiter {
    /// Admits `ticket`'s request in Redis: its verdict, and the ticket with
    /// its second and lease deadline filled in.
    pub(super) async fn admit_shared(
        self: &Arc<Self>,
        ticket: Ticket,
    ) -> Result<(Ticket, Verdict), StoreError> {
        let (reply, verdict) = oneshot::channel();
        self.enqueue(Job::Admit(Admission { ticket, reply }));
        verdict.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the limiter's call was lost".into(),
            ))
        })
    }

    /// Settles `ticket` in Redis (if that fails, logs it and meters the
    /// usage locally); `done` is told when it is over.
    pub(super) fn settle_shared(
        self: &Arc<Self>,
        ticket: Ticket,
        usage: Usage,
        done: Option<oneshot::Sender<()>>,
    ) {
        self.enqueue(Job::Settle(Settlement {
            ticket,
            usage,
            done,
            retries: 0,
        }));
    }

    fn enqueue(self: &Arc<Self>, job: Job) {
        let key = match &job {
            Job::Admit(a) => &a.ticket.state_key,
            Job::Settle(s) => &s.ticket.state_key,
        };
        let mut queues = lock(&self.steps);
        let q = match queues.get_mut(key.as_str()) {
            Some(q) => q,
            None => queues.entry(key.clone()).or_default(),
        };
        // A new task takes admissions while fewer than CALLS_IN_FLIGHT run;
        // settlements, when nothing runs or lingers, in a lingering one.
        let (start, linger) = match &job {
            Job::Admit(_) => (q.runners < CALLS_IN_FLIGHT, false),
            Job::Settle(_) => {
                let idle = q.runners == 0 && !q.lingering;
                (idle, idle && q.admissions.is_empty())
            }
        };
        // Owned only when a task starts: most requests join a queue.
        let task_key = start.then(|| key.clone());
        match job {
            Job::Admit(a) => q.admissions.push(a),
            Job::Settle(s) => q.settlements.push(s),
        }
        if linger {
            q.lingering = true;
        } else if start {
            q.runners += 1;
        }
        drop(queues);
        if let (Some(key), Some(redis)) = (task_key, self.redis.clone()) {
            let me = self.clone();
            // Counted in the queue entry: the task ends when the queue is
            // empty, the last one removing the entry.
            tokio::spawn(async move { me.run_steps(redis, key, linger).await });
        }
    }

    async fn run_steps(self: Arc<Self>, redis: Redis, key: String, linger: bool) {
        // Should the task end early (a panic), its queue goes with it: the
        // waiting requests see their calls lost and fall back as configured.
        let mut abandon = Abandon {
            queues: &self.steps,
            key: &key,
            armed: true,
        };
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        let retention = self.book.retention();
        if linger {
            // The next admission starts a task of its own, which takes these
            // settlements along; this one sends what is left, if anything.
            tokio::time::sleep(LINGER).await;
            let mut queues = lock(&self.steps);
            let Some(q) = queues.get_mut(&key) else {
                abandon.armed = false;
                return;
            };
            q.lingering = false;
            if q.runners > 0 || (q.admissions.is_empty() && q.settlements.is_empty()) {
                if q.runners == 0 {
                    queues.remove(&key);
                }
                abandon.armed = false;
                return;
            }
            q.runners += 1;
        }
        loop {
            let (admissions, settlements) = {
                let mut queues = lock(&self.steps);
                let Some(q) = queues.get_mut(&key) else { break };
                if q.admissions.is_empty() && q.settlements.is_empty() {
                    q.runners -= 1;
                    if q.runners == 0 && !q.lingering {
                        queues.remove(&key);
                    }
                    break;
                }
                let a = q.admissions.len().min(MAX_PER_STEP);
                let s = q.settlements.len().min(MAX_PER_STEP);
                (
                    q.admissions.drain(..a).collect::<Vec<_>>(),
                    q.settlements.drain(..s).collect::<Vec<_>>(),
                )
            };
            let settling: Vec<_> = settlements.iter().map(|s| (&s.ticket, &s.usage)).collect();
            let admitting: Vec<_> = admissions
                .iter()
                .map(|a| (a.ticket.dims.as_slice(), a.ticket.reserved))
                .collect();
            let result = redis::step(&redis, &key, &settling, &admitting, ttl_ms, retention).await;
            drop((settling, admitting));
            match result {
                Ok((verdicts, true)) => {
                    for s in settlements {
                        if let Some(done) = s.done {
                            let _ = done.send(());
                        }
                    }
                    for (a, v) in admissions.into_iter().zip(verdicts) {
                        self.answer(a, v);
                    }
                }
                Ok((verdicts, false)) => {
                    // Done on a primary that answered, not yet on a replica:
                    // lost only if that primary dies before its replica
                    // catches up. Settlements go again (counted once) until
                    // a call of theirs is replicated; admissions stand,
                    // except where `closed` asks that none be admitted on
                    // what a failover could forget: those are refused as
                    // with Redis down (their leases lapse by their TTL).
                    for s in settlements {
                        self.retry_or_meter(s, None, &redis);
                    }
                    if self.on_failure == RedisFailureMode::Closed {
                        let e = StoreError::Unavailable("admission not replicated".into());
                        for a in admissions {
                            let _ = a.reply.send(Err(e.clone()));
                        }
                    } else {
                        for (a, v) in admissions.into_iter().zip(verdicts) {
                            self.answer(a, v);
                        }
                    }
                }
                Err(e) => {
                    // What waits would go to the Redis that just failed: it
                    // fails with this call, and falls back at once.
                    let (more_a, more_s) = match lock(&self.steps).get_mut(&key) {
                        Some(q) => (
                            std::mem::take(&mut q.admissions),
                            std::mem::take(&mut q.settlements),
                        ),
                        None => Default::default(),
                    };
                    for a in admissions.into_iter().chain(more_a) {
                        let _ = a.reply.send(Err(e.clone()));
                    }
                    for s in settlements.into_iter().chain(more_s) {
                        self.retry_or_meter(s, Some(&e), &redis);
                    }
                }
            }
        }
        abandon.armed = false;
    }

    /// A settlement whose call failed (`error`) or was not replicated
    /// (`None`): sent again later where writes wait for replicas (its call
    /// may have been counted anyway; [`SETTLE_RETRIES`]). When the retries
    /// run out, one whose last call failed is metered here; one whose last
    /// call was only not replicated is on a primary that answered, and done.
    fn retry_or_meter(
        self: &Arc<Self>,
        mut s: Settlement,
        error: Option<&StoreError>,
        redis: &Redis,
    ) {
        if redis.waits_for_replicas() && s.retries < SETTLE_RETRIES {
            s.retries += 1;
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE_RETRY_PAUSE).await;
                me.enqueue(Job::Settle(s));
            });
            return;
        }
        if let Some(e) = error {
            self.settle_failed(&s.ticket, &s.usage, e);
        }
        if let Some(done) = s.done {
            let _ = done.send(());
        }
    }

    /// Hands `a` its verdict. An admitted request whose caller has gone (its
    /// client closed the connection meanwhile) is settled at once with
    /// nothing used, so its reservation and leases come back.
    fn answer(self: &Arc<Self>, a: Admission, v: Verdict) {
        let mut ticket = a.ticket;
        let admitted = ticket.take(&v);
        if let Err(Ok((ticket, _))) = a.reply.send(Ok((ticket, v)))
            && admitted
        {
            self.settle_shared(ticket, Usage::default(), None);
        }
    }
}

/// Removes a tenant's queue if its task ends without emptying it.
struct Abandon<'a> {
    queues: &'a Queues,
    key: &'a str,
    /// Cleared when the task removed the entry itself.
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.queues).remove(self.key);
        }
    }
}
