//! Stages `enqueue` and `dispatch`: wait for the scheduler's grant, send the
//! request to the granted shard, requeue on "busy", retry once elsewhere when
//! a shard fails before vLLM produced anything (the worker or vLLM could not
//! be reached, or vLLM answered with a server error).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_scheduler::{Grant, JobSpec, Rejected, SchedulerHandle};
use tollgate_shared::config::Priority;
use tollgate_shared::ids::RequestId;
use tracing::Instrument;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::pool::{Pool, SendError, Upstream};
use crate::telemetry::Observe;
use crate::validate::Plan;

/// A response from vLLM together with the slot it occupies.
pub struct Dispatched {
    pub response: Upstream,
    pub grant: Grant,
    /// Time spent waiting in the queue, requeues included.
    pub queued: Duration,
}

/// Seconds a client is told to wait after a queue timeout or a full queue.
const RETRY_AFTER_SECS: u64 = 1;

/// What the scheduler needs to know of a request: its class (the caller's,
/// already lowered if the request asked), its tenant's weight, size and prompt prefix.
pub fn job_spec(caller: &Caller, plan: &Plan, fair_share: bool) -> JobSpec {
    // The prompt's beginning, salted by tenant as vLLM's prefix cache is.
    let prefix = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        caller.tenant.hash(&mut h);
        plan.body[..plan.body.len().min(PREFIX_BYTES)].hash(&mut h);
        h.finish()
    };
    // Plain FIFO: one class, one queue, arrival order.
    let (tenant, priority, weight) = if fair_share {
        (caller.tenant.clone(), caller.priority, caller.weight)
    } else {
        (FIFO.into(), Priority::Normal, 1)
    };
    JobSpec {
        tenant,
        priority,
        weight,
        input_tokens: plan.prompt_tokens,
        cost_tokens: plan.cost_tokens,
        prefix: Some(prefix),
        bytes: plan.body.len(),
    }
}

/// The one queue of plain FIFO mode (`scheduler.fair_share = false`).
const FIFO: &str = "(fifo)";

/// How much of the upstream body (model, then the first messages) names a prefix.
const PREFIX_BYTES: usize = 1024;

pub async fn dispatch(
    scheduler: &SchedulerHandle,
    pool: &Pool,
    spec: JobSpec,
    plan: &Plan,
    request_id: RequestId,
    queue_timeout: Duration,
) -> Result<Dispatched, ApiError> {
    let deadline = Instant::now() + queue_timeout;
    let mut ticket = scheduler.submit(spec);
    let mut retried = false;
    // Time spent waiting for grants, requeues included (the audit's `queue_ms`).
    let (obs, mut waited) = (Observe::current(), Duration::ZERO);
    loop {
        let queued_at = Instant::now();
        let granted = tokio::time::timeout_at(deadline, ticket)
            .instrument(tracing::info_span!("queue"))
            .await;
        waited += queued_at.elapsed();
        obs.queued(waited);
        let grant = match granted {
            Err(_) => {
                return Err(ApiError::Overloaded {
                    message: "no model server had room for this request in time; try again",
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            Ok(Err(Rejected::QueueFull)) => {
                return Err(ApiError::QueueFull {
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            Ok(Err(Rejected::Overloaded)) => {
                return Err(ApiError::Overloaded {
                    message: "the gateway's queue is full; try again",
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            Ok(Err(Rejected::Shed)) => {
                return Err(ApiError::Overloaded {
                    message: "shed to make room for higher-priority work; try again",
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            Ok(Err(Rejected::Closed)) => {
                return Err(ApiError::Internal("the scheduler has stopped".into()));
            }
            Ok(Ok(grant)) => grant,
        };
        obs.shard(&grant.shard);
        let stage = tracing::info_span!("dispatch", tollgate.worker = %grant.shard.worker, tollgate.shard = i64::from(grant.shard.index));
        let failure = match pool
            .send(&grant.shard, plan.endpoint, plan.body.clone(), request_id)
            .instrument(stage)
            .await
        {
            Ok(response) if response.status.is_server_error() && !retried => {
                // Nothing was generated: as good as unsent. The answer is dropped.
                format!("vLLM answered {}", response.status)
            }
            Ok(response) => {
                return Ok(Dispatched {
                    response,
                    grant,
                    queued: waited,
                });
            }
            Err(SendError::Busy) => {
                tracing::debug!(shard = %grant.shard, "shard busy; requeued");
                ticket = grant.lease.busy();
                continue;
            }
            Err(SendError::Unavailable(why)) if !retried => why,
            Err(SendError::Unavailable(why)) => {
                tracing::warn!(shard = %grant.shard, error = %why, "shard failed again; giving up");
                pool.shard_failed(&grant.shard);
                return Err(ApiError::UpstreamFailed);
            }
        };
        tracing::warn!(shard = %grant.shard, error = %failure, "shard failed before the first byte; retrying elsewhere");
        retried = true;
        // Before the lease goes back, so the retry cannot be granted the same shard.
        pool.shard_failed(&grant.shard);
        ticket = grant.lease.busy();
    }
}
