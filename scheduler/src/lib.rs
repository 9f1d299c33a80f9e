//! The scheduler: decides which queued request goes to which shard, and when.
//! It never sees HTTP: it is fed shard capacity reports and answers with grants.
//!
//! - `policy`: the pure queueing policy and capacity bookkeeping (no I/O, no clock)
//! - `actor`: the scheduler task, its mailbox, tickets and leases

mod actor;
mod policy;

pub use actor::{Grant, Lease, Rejected, Scheduler, SchedulerHandle, Ticket};
pub use policy::{JobSpec, Policy, QueueStats, ShardCapacity, ShardId};
