//! Stages `enqueue` and `dispatch`: wait for the scheduler's grant, send the
//! request to the granted shard, requeue on "busy", retry once elsewhere when
//! a shard fails before vLLM saw the request.

use std::time::Duration;

use tokio::time::Instant;
use tollgate_scheduler::{Grant, JobSpec, Rejected, SchedulerHandle};
use tollgate_shared::ids::RequestId;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::pool::{Pool, SendError};
use crate::validate::Plan;

/// A response from vLLM together with the slot it occupies.
pub struct Dispatched {
    pub response: reqwest::Response,
    pub grant: Grant,
}

/// Seconds a client is told to wait after a queue timeout or a full queue.
const RETRY_AFTER_SECS: u64 = 1;

pub async fn dispatch(
    scheduler: &SchedulerHandle,
    pool: &Pool,
    caller: &Caller,
    plan: &Plan,
    request_id: RequestId,
    queue_timeout: Duration,
) -> Result<Dispatched, ApiError> {
    let deadline = Instant::now() + queue_timeout;
    let mut ticket = scheduler.submit(JobSpec {
        tenant: caller.tenant.clone(),
        cost_tokens: plan.cost_tokens,
    });
    let mut retried = false;
    loop {
        let grant = match tokio::time::timeout_at(deadline, ticket).await {
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
            Ok(Err(Rejected::Closed)) => {
                return Err(ApiError::Internal("the scheduler has stopped".into()));
            }
            Ok(Ok(grant)) => grant,
        };
        match pool
            .send(&grant.shard, plan.endpoint, plan.body.clone(), request_id)
            .await
        {
            Ok(response) => return Ok(Dispatched { response, grant }),
            Err(SendError::Busy) => {
                tracing::debug!(shard = %grant.shard, "shard busy; requeued");
                ticket = grant.lease.busy();
            }
            Err(SendError::Unavailable(why)) if !retried => {
                tracing::warn!(shard = %grant.shard, error = %why, "shard failed before the request reached it; retrying elsewhere");
                retried = true;
                ticket = grant.lease.busy();
            }
            Err(SendError::Unavailable(why)) => {
                tracing::warn!(shard = %grant.shard, error = %why, "shard failed again; giving up");
                return Err(ApiError::UpstreamFailed);
            }
        }
    }
}
