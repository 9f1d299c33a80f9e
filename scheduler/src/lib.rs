//! The scheduler: decides which queued request goes to which shard, and when.
//! It never sees HTTP: it is fed shard capacity reports and answers with grants.
//!
//! - `fair`: fair queueing — strict priority classes, virtual token counters inside a class
//! - `policy`: the pure queueing policy: order, holdback, reserve, affinity, bounds and shedding
//! - `shard`: shard capacity from reports, and the least loaded shard with room
//! - `actor`: the policy behind a lock, tickets, leases and the batch-window timer

mod actor;
pub mod fair;
mod policy;
mod shard;

pub use actor::{Grant, Lease, Rejected, Scheduler, SchedulerHandle, Settings, Ticket};
pub use policy::{Bounds, JobSpec, Policy, QueueStats, QueueView, Reserve};
pub use shard::{KV_HOLDBACK, ShardCapacity, ShardId, best_shard};
