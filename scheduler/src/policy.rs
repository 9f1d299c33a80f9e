//! The queueing policy: a bounded FIFO queue per gateway, released to shards
//! with free slots, least loaded first. Pure: no I/O, no clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A shard: `index` on the worker named `worker`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    pub worker: Arc<str>,
    pub index: u32,
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.worker, self.index)
    }
}

/// What the policy needs to know of a request.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub tenant: Arc<str>,
    /// Estimated prompt tokens plus max_tokens; used by later policies for fair share.
    pub cost_tokens: u64,
}

/// A shard's capacity as last reported, adjusted by the grants and releases since.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardCapacity {
    pub id: ShardId,
    pub healthy: bool,
    pub free_slots: u32,
    pub max_slots: u32,
}

#[derive(Debug)]
struct Queued<T> {
    seq: u64,
    spec: JobSpec,
    item: T,
}

/// Queue depth, per tenant, for admin views and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    pub depth: usize,
    pub per_tenant: Vec<(Arc<str>, usize)>,
    pub free_slots: u64,
    pub healthy_shards: usize,
}

/// FIFO queue plus shard capacity. `T` is whatever the caller needs to hand a
/// grant over (a reply channel in the actor, a plain value in tests).
#[derive(Debug)]
pub struct Policy<T> {
    max_queue_per_tenant: usize,
    queue: VecDeque<Queued<T>>,
    per_tenant: HashMap<Arc<str>, usize>,
    shards: HashMap<ShardId, ShardCapacity>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QueueFull,
}

impl<T> Policy<T> {
    pub fn new(max_queue_per_tenant: usize) -> Self {
        Policy {
            max_queue_per_tenant,
            queue: VecDeque::new(),
            per_tenant: HashMap::new(),
            shards: HashMap::new(),
        }
    }

    /// Queues a new job behind everything queued before it.
    pub fn enqueue(&mut self, seq: u64, spec: JobSpec, item: T) -> Result<(), (Refusal, T)> {
        let n = self.per_tenant.entry(spec.tenant.clone()).or_default();
        if *n >= self.max_queue_per_tenant {
            return Err((Refusal::QueueFull, item));
        }
        *n += 1;
        let at = self.queue.partition_point(|q| q.seq < seq);
        self.queue.insert(at, Queued { seq, spec, item });
        Ok(())
    }

    /// Puts a job back at the place its sequence number gives it (after a
    /// worker said "busy"). The per-tenant bound does not apply: it was admitted once.
    pub fn requeue(&mut self, seq: u64, spec: JobSpec, item: T) {
        *self.per_tenant.entry(spec.tenant.clone()).or_default() += 1;
        let at = self.queue.partition_point(|q| q.seq < seq);
        self.queue.insert(at, Queued { seq, spec, item });
    }

    /// Removes a queued job (its client left). Returns whether it was queued.
    pub fn remove(&mut self, seq: u64) -> bool {
        let at = self.queue.partition_point(|q| q.seq < seq);
        if self.queue.get(at).is_some_and(|q| q.seq == seq) {
            if let Some(q) = self.queue.remove(at) {
                self.forget(&q.spec.tenant);
            }
            true
        } else {
            false
        }
    }

    fn forget(&mut self, tenant: &Arc<str>) {
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    /// Replaces what is known of one worker's shards.
    pub fn report(&mut self, worker: &Arc<str>, shards: Vec<ShardCapacity>) {
        self.shards.retain(|id, _| id.worker != *worker);
        for s in shards {
            self.shards.insert(s.id.clone(), s);
        }
    }

    /// The shard answered "busy": grant it nothing until its next report.
    pub fn mark_full(&mut self, id: &ShardId) {
        if let Some(s) = self.shards.get_mut(id) {
            s.free_slots = 0;
        }
    }

    /// A granted request finished: its slot is free again.
    pub fn release(&mut self, id: &ShardId) {
        if let Some(s) = self.shards.get_mut(id) {
            s.free_slots = (s.free_slots + 1).min(s.max_slots);
        }
    }

    /// One dispatch round: hands queued jobs, oldest first, to the healthy
    /// shard with the most free slots, until the queue or the slots run out.
    /// `keep` tells whether a job still wants its grant (its client may have left);
    /// jobs it refuses are dropped without using a slot.
    pub fn round(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<(T, ShardId, u64, JobSpec)> {
        let mut out = Vec::new();
        while let Some(front) = self.queue.front() {
            if !keep(&front.item) {
                if let Some(q) = self.queue.pop_front() {
                    self.forget(&q.spec.tenant);
                }
                continue;
            }
            let Some(shard) = self.best_shard() else {
                break;
            };
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.forget(&q.spec.tenant);
            if let Some(s) = self.shards.get_mut(&shard) {
                s.free_slots -= 1;
            }
            out.push((q.item, shard, q.seq, q.spec));
        }
        out
    }

    fn best_shard(&self) -> Option<ShardId> {
        self.shards
            .values()
            .filter(|s| s.healthy && s.free_slots > 0)
            // Most free first; ties broken by id so rounds are deterministic.
            .max_by(|a, b| {
                a.free_slots
                    .cmp(&b.free_slots)
                    .then_with(|| b.id.cmp(&a.id))
            })
            .map(|s| s.id.clone())
    }

    pub fn stats(&self) -> QueueStats {
        let mut per_tenant: Vec<_> = self
            .per_tenant
            .iter()
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        per_tenant.sort();
        QueueStats {
            depth: self.queue.len(),
            per_tenant,
            free_slots: self
                .shards
                .values()
                .filter(|s| s.healthy)
                .map(|s| u64::from(s.free_slots))
                .sum(),
            healthy_shards: self.shards.values().filter(|s| s.healthy).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(t: &str) -> JobSpec {
        JobSpec {
            tenant: t.into(),
            cost_tokens: 10,
        }
    }

    fn shard(w: &str, i: u32, free: u32) -> ShardCapacity {
        ShardCapacity {
            id: ShardId {
                worker: w.into(),
                index: i,
            },
            healthy: true,
            free_slots: free,
            max_slots: 4,
        }
    }

    #[test]
    fn nothing_is_released_without_free_slots() {
        let mut p = Policy::new(10);
        p.enqueue(1, spec("a"), 1).unwrap();
        assert!(p.round(|_| true).is_empty());
        p.report(&"w".into(), vec![shard("w", 0, 0)]);
        assert!(p.round(|_| true).is_empty());
        assert_eq!(p.stats().depth, 1);
    }

    #[test]
    fn fifo_order_and_least_loaded_shard() {
        let mut p = Policy::new(10);
        for i in 1..=4 {
            p.enqueue(i, spec("a"), i).unwrap();
        }
        p.report(&"w".into(), vec![shard("w", 0, 1), shard("w", 1, 2)]);
        let got: Vec<_> = p
            .round(|_| true)
            .into_iter()
            .map(|(t, s, _, _)| (t, s.index))
            .collect();
        assert_eq!(got, vec![(1, 1), (2, 0), (3, 1)]);
        assert_eq!(p.stats().depth, 1);
        assert_eq!(p.stats().free_slots, 0);
        p.release(&ShardId {
            worker: "w".into(),
            index: 0,
        });
        let got: Vec<_> = p
            .round(|_| true)
            .into_iter()
            .map(|(t, _, _, _)| t)
            .collect();
        assert_eq!(got, vec![4]);
    }

    #[test]
    fn per_tenant_bound_refuses_and_leaves_others_alone() {
        let mut p = Policy::new(2);
        p.enqueue(1, spec("a"), ()).unwrap();
        p.enqueue(2, spec("a"), ()).unwrap();
        assert_eq!(
            p.enqueue(3, spec("a"), ()).unwrap_err().0,
            Refusal::QueueFull
        );
        p.enqueue(4, spec("b"), ()).unwrap();
        assert!(p.remove(1));
        assert!(!p.remove(1));
        p.enqueue(5, spec("a"), ()).unwrap();
    }

    #[test]
    fn requeue_goes_back_to_its_old_place() {
        let mut p = Policy::new(10);
        p.report(&"w".into(), vec![shard("w", 0, 1)]);
        p.enqueue(1, spec("a"), 1).unwrap();
        let (item, sid, seq, sp) = p.round(|_| true).pop().unwrap();
        p.enqueue(2, spec("a"), 2).unwrap();
        p.enqueue(3, spec("a"), 3).unwrap();
        p.mark_full(&sid);
        p.requeue(seq, sp, item);
        assert!(
            p.round(|_| true).is_empty(),
            "a busy shard gets nothing until reported"
        );
        p.report(&"w".into(), vec![shard("w", 0, 3)]);
        let got: Vec<_> = p
            .round(|_| true)
            .into_iter()
            .map(|(t, _, _, _)| t)
            .collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn abandoned_jobs_use_no_slot() {
        let mut p = Policy::new(10);
        p.report(&"w".into(), vec![shard("w", 0, 1)]);
        p.enqueue(1, spec("a"), 1).unwrap();
        p.enqueue(2, spec("a"), 2).unwrap();
        let got: Vec<_> = p
            .round(|&t| t != 1)
            .into_iter()
            .map(|(t, _, _, _)| t)
            .collect();
        assert_eq!(got, vec![2]);
        assert_eq!(p.stats().depth, 0);
        assert!(p.stats().per_tenant.is_empty());
    }

    #[test]
    fn a_new_report_replaces_only_that_workers_shards() {
        let mut p: Policy<()> = Policy::new(10);
        p.report(&"w1".into(), vec![shard("w1", 0, 1)]);
        p.report(&"w2".into(), vec![shard("w2", 0, 2)]);
        p.report(&"w1".into(), vec![]);
        assert_eq!(p.stats().free_slots, 2);
        assert_eq!(p.stats().healthy_shards, 1);
    }
}
