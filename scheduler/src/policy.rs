//! The queueing policy, pure (no I/O; time passed in as milliseconds):
//!
//! - **order**: strict priority classes, fair share inside a class by
//!   virtual token counters, FIFO inside a tenant ([`FairQueue`]);
//! - **holdback**: a request leaves the queue only for a shard with room
//!   (free slot, KV budget) per its last report ([`ShardCapacity::has_room`]);
//! - **reserve**: while a higher class is active (a request of it arrived
//!   within the hold time), lower classes leave some slots of every shard
//!   free for it, so its next request finds a slot instead of waiting for
//!   one to free ([`Reserve`]);
//! - **affinity**: requests sharing a prompt prefix prefer the shard that
//!   served it last (its prefix cache), unless that shard has no room;
//! - **bounds**: `max_queue_per_tenant` requests per tenant (→ `queue_full`)
//!   and a global bound on queued bytes; when full, the newest request of the
//!   lowest class below the newcomer's is shed (`low` before `normal` before `high`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tollgate_shared::config::Priority;
use tollgate_shared::inflight::InFlight;

use crate::fair::{CLASSES, FairQueue, Fairness, TenantView, class_index};
use crate::shard::{ShardCapacity, ShardId, best_shard};

/// What the policy needs to know of a request.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub tenant: Arc<str>,
    /// The tenant's class, or lower if the request demoted itself.
    pub priority: Priority,
    /// The tenant's weight inside its class.
    pub weight: u32,
    /// Estimated prompt tokens: charged to the tenant's counter at dispatch.
    pub input_tokens: u64,
    /// Prompt tokens plus the output budget.
    pub cost_tokens: u64,
    /// A hash of the prompt's beginning, for prefix affinity.
    pub prefix: Option<u64>,
    /// Size of the request body, for the bound on queued bytes.
    pub bytes: usize,
}

/// Bounds of the queue.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_queue_per_tenant: usize,
    pub max_queued_bytes: usize,
}

/// Slots held for higher classes. While a class is active — one of its
/// requests arrived within `hold_ms` — every lower class leaves slots of each
/// shard free for it (for `low`, the sum over the active classes above it),
/// never more than half a shard. A higher class's request then starts at
/// once instead of waiting for a lower one to end.
///
/// How many: at least `slots`, and enough to cover the class's bursts. The
/// held slots drain as its requests arrive (rate λ) and refill as requests
/// of any class end (rate μ), so they are all taken with probability about
/// (λ/μ)^k for k held slots; the policy holds the smallest k that makes that
/// at most [`BURST_MISS`], from the rates it has seen. `slots = 0` holds none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    pub slots: u32,
    pub hold_ms: u64,
}

/// The share of a higher class's requests allowed to find every held slot
/// taken by a burst (and wait for a request to end).
pub const BURST_MISS: f64 = 0.002;

/// Completions (decayed) below which the rates are not trusted and only the
/// configured minimum is held.
const MIN_COMPLETIONS: f64 = 16.0;

/// Time constant of the measured arrival and completion rates.
const RATE_TAU_MS: f64 = 10_000.0;

/// An event count that decays with time: a rate, up to the factor [`RATE_TAU_MS`].
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    count: f64,
    at_ms: u64,
}

impl Rate {
    fn tick(&mut self, now_ms: u64) {
        self.count = self.at(now_ms) + 1.0;
        self.at_ms = self.at_ms.max(now_ms);
    }

    fn at(&self, now_ms: u64) -> f64 {
        let dt = now_ms.saturating_sub(self.at_ms) as f64;
        self.count * (-dt / RATE_TAU_MS).exp()
    }
}

/// Held slots that a burst takes all of with probability at most
/// [`BURST_MISS`], when requests arrive `ratio` times as fast as slots free.
fn burst_cover(ratio: f64) -> u32 {
    if ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return u32::MAX; // arrivals outpace completions: as many as allowed
    }
    (BURST_MISS.ln() / ratio.ln()).ceil().min(1024.0) as u32
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant has `max_queue_per_tenant` requests waiting.
    QueueFull,
    /// The queue's byte bound is reached and nothing of a lower class can make room.
    Overloaded,
}

/// Queue depth and fleet room, for admin views and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub depth: usize,
    /// Requests waiting per class: high, normal, low.
    pub by_class: [(Priority, usize); 3],
    /// Requests waiting per tenant, all classes together.
    pub per_tenant: Vec<(Arc<str>, usize)>,
    /// Per tenant and class: depth, virtual counter, oldest wait.
    pub tenants: Vec<QueueView>,
    pub queued_bytes: usize,
    pub free_slots: u64,
    pub healthy_shards: usize,
    /// Per class: slots of each shard it must leave free for higher classes
    /// now (at most half of the largest shard).
    pub reserved: [(Priority, u32); 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub tenant: Arc<str>,
    pub priority: Priority,
    pub depth: usize,
    pub counter: f64,
    pub oldest_wait_ms: Option<u64>,
}

/// A request leaving the queue for a shard.
#[derive(Debug)]
pub struct Granted<T> {
    pub item: T,
    pub shard: ShardId,
    pub seq: u64,
    pub spec: JobSpec,
    pub waited_ms: u64,
}

#[derive(Debug)]
struct Queued<T> {
    spec: JobSpec,
    item: T,
}

/// Prompt prefixes and the shard that served each last; the oldest entries
/// are forgotten first.
#[derive(Debug, Default)]
struct Affinity {
    shard_of: HashMap<u64, ShardId>,
    order: VecDeque<u64>,
}

const AFFINITY_ENTRIES: usize = 65_536;

impl Affinity {
    fn remember(&mut self, prefix: u64, shard: &ShardId) {
        if self.shard_of.insert(prefix, shard.clone()).is_none() {
            self.order.push_back(prefix);
            if self.order.len() > AFFINITY_ENTRIES
                && let Some(old) = self.order.pop_front()
            {
                self.shard_of.remove(&old);
            }
        }
    }
}

#[derive(Debug)]
pub struct Policy<T> {
    bounds: Bounds,
    fair: FairQueue<Queued<T>>,
    per_tenant: HashMap<Arc<str>, usize>,
    queued_bytes: usize,
    shards: HashMap<ShardId, ShardCapacity>,
    /// This gateway's requests on each shard: granted, not yet released.
    own: InFlight<ShardId>,
    affinity: Affinity,
    reserve: Reserve,
    /// When a request of each class (high, normal, low) last arrived.
    last_arrival_ms: [Option<u64>; 3],
    /// Arrivals per class, and granted requests ending (any class).
    arrivals: [Rate; 3],
    completions: Rate,
}

impl<T> Policy<T> {
    pub fn new(bounds: Bounds) -> Self {
        Policy {
            reserve: Reserve::default(),
            last_arrival_ms: [None; 3],
            arrivals: [Rate::default(); 3],
            completions: Rate::default(),
            bounds,
            fair: FairQueue::default(),
            per_tenant: HashMap::new(),
            queued_bytes: 0,
            shards: HashMap::new(),
            own: InFlight::default(),
            affinity: Affinity::default(),
        }
    }

    /// Holds slots for higher classes while they are active (see [`Reserve`]).
    pub fn with_reserve(mut self, reserve: Reserve) -> Self {
        self.reserve = reserve;
        self
    }

    /// Slots of each shard a request of class `p` must leave free now: the
    /// reserve for every higher class that is active.
    fn keep_free(&self, p: Priority, now_ms: u64) -> u32 {
        if self.reserve.slots == 0 {
            return 0;
        }
        (0..class_index(p))
            .filter(|&c| {
                self.last_arrival_ms[c]
                    .is_some_and(|at| now_ms.saturating_sub(at) < self.reserve.hold_ms)
            })
            .map(|c| self.held_for(c, now_ms))
            .fold(0, u32::saturating_add)
    }

    /// Slots held for class `c` while it is active: the configured minimum,
    /// or more to cover its bursts at the rates seen lately.
    fn held_for(&self, c: usize, now_ms: u64) -> u32 {
        let done = self.completions.at(now_ms);
        let cover = if done >= MIN_COMPLETIONS {
            burst_cover(self.arrivals[c].at(now_ms) / done)
        } else {
            0 // too few requests have ended to tell a rate
        };
        self.reserve.slots.max(cover)
    }

    fn fairness(spec: &JobSpec) -> Fairness {
        Fairness {
            tenant: spec.tenant.clone(),
            priority: spec.priority,
            weight: spec.weight,
            input_tokens: spec.input_tokens,
        }
    }

    fn admit(&mut self, seq: u64, now_ms: u64, spec: JobSpec, item: T) {
        *self.per_tenant.entry(spec.tenant.clone()).or_default() += 1;
        self.queued_bytes += spec.bytes;
        let f = Self::fairness(&spec);
        self.fair.push(seq, now_ms, &f, Queued { spec, item });
    }

    fn forget(&mut self, spec: &JobSpec) {
        self.queued_bytes = self.queued_bytes.saturating_sub(spec.bytes);
        if let Some(n) = self.per_tenant.get_mut(&spec.tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(&spec.tenant);
            }
        }
    }

    /// Queues a new job. Returns the jobs shed to make room for it (lower classes).
    pub fn enqueue(
        &mut self,
        seq: u64,
        now_ms: u64,
        spec: JobSpec,
        item: T,
    ) -> Result<Vec<T>, (Refusal, T)> {
        if self.per_tenant.get(&spec.tenant).copied().unwrap_or(0)
            >= self.bounds.max_queue_per_tenant
        {
            return Err((Refusal::QueueFull, item));
        }
        // Shed the newest of the lowest class first; if even that cannot make
        // room, put them back and refuse the newcomer instead.
        let mut shed: Vec<(u64, Queued<T>)> = Vec::new();
        while self.queued_bytes + spec.bytes > self.bounds.max_queued_bytes {
            match self
                .fair
                .victim_below(spec.priority)
                .and_then(|v| self.fair.remove(v).map(|q| (v, q)))
            {
                Some((v, q)) => {
                    self.forget(&q.spec);
                    shed.push((v, q));
                }
                None => {
                    for (v, q) in shed {
                        self.admit(v, now_ms, q.spec, q.item);
                    }
                    return Err((Refusal::Overloaded, item));
                }
            }
        }
        let shed = shed.into_iter().map(|(_, q)| q.item).collect();
        self.last_arrival_ms[class_index(spec.priority)] = Some(now_ms);
        self.arrivals[class_index(spec.priority)].tick(now_ms);
        self.admit(seq, now_ms, spec, item);
        Ok(shed)
    }

    /// Puts a job back at the place its sequence number gives it (a worker said
    /// "busy"), refunding the input charge it paid at dispatch. Bounds do not
    /// apply: it was admitted once.
    pub fn requeue(&mut self, seq: u64, now_ms: u64, spec: JobSpec, item: T) {
        self.fair
            .charge(spec.priority, &spec.tenant, -(spec.input_tokens as f64));
        self.admit(seq, now_ms, spec, item);
    }

    /// Removes a queued job (its client left). Returns whether it was queued.
    pub fn remove(&mut self, seq: u64) -> bool {
        match self.fair.remove(seq) {
            Some(q) => {
                self.forget(&q.spec);
                true
            }
            None => false,
        }
    }

    /// Charges streamed output to the job's tenant: 2 units a token.
    pub fn charge_output(&mut self, spec: &JobSpec, tokens: u64) {
        self.fair
            .charge(spec.priority, &spec.tenant, 2.0 * tokens as f64);
    }

    /// Replaces what is known of one worker's shards.
    pub fn report(&mut self, worker: &Arc<str>, shards: Vec<ShardCapacity>) {
        self.shards.retain(|id, _| id.worker != *worker);
        for mut s in shards {
            s.correct_own(self.own.get(&s.id));
            self.shards.insert(s.id.clone(), s);
        }
    }

    /// The shard answered "busy": grant it nothing until its next report.
    pub fn mark_full(&mut self, id: &ShardId) {
        self.own.end(id);
        if let Some(s) = self.shards.get_mut(id) {
            s.free_slots = 0;
            // The request is not on the shard after all.
            s.granted = s.granted.saturating_sub(1);
        }
    }

    /// A granted request finished at `now_ms`: its slot is free again.
    pub fn release(&mut self, id: &ShardId, now_ms: u64) {
        self.completions.tick(now_ms);
        self.own.end(id);
        if let Some(s) = self.shards.get_mut(id) {
            s.give_back();
        }
    }

    /// The shard for `spec`: the one that last served its prefix if it has
    /// room, else the least loaded shard with room — room beyond the slots
    /// held for higher classes.
    fn shard_for(&self, spec: &JobSpec, now_ms: u64) -> Option<ShardId> {
        let keep = self.keep_free(spec.priority, now_ms);
        spec.prefix
            .and_then(|p| self.affinity.shard_of.get(&p))
            .filter(|id| {
                self.shards
                    .get(*id)
                    .is_some_and(|s| s.has_room_keeping(keep))
            })
            .cloned()
            .or_else(|| best_shard(self.shards.values(), keep))
    }

    /// One dispatch round: the next job in policy order goes to its shard,
    /// until the queue empties or the next job has no shard with room (it
    /// then waits; nothing behind it jumps the order). `keep` tells whether a
    /// job still wants its grant (its client may have left); jobs it refuses
    /// are dropped without using a slot.
    pub fn round(&mut self, now_ms: u64, mut keep: impl FnMut(&T) -> bool) -> Vec<Granted<T>> {
        let mut out = Vec::new();
        while let Some((seq, q)) = self.fair.peek() {
            if !keep(&q.item) {
                self.remove(seq);
                continue;
            }
            match self.grant_next(now_ms) {
                Some(g) => out.push(g),
                None => break,
            }
        }
        out
    }

    /// Grants the next job in policy order to its shard, if one has room.
    fn grant_next(&mut self, now_ms: u64) -> Option<Granted<T>> {
        let (_, next) = self.fair.peek()?;
        let shard = self.shard_for(&next.spec, now_ms)?;
        let (seq, q, enqueued_ms) = self.fair.pop(|q| q.spec.input_tokens)?;
        self.forget(&q.spec);
        if let Some(s) = self.shards.get_mut(&shard) {
            s.take_slot();
        }
        self.own.start(shard.clone());
        if let Some(p) = q.spec.prefix {
            self.affinity.remember(p, &shard);
        }
        Some(Granted {
            item: q.item,
            shard,
            seq,
            spec: q.spec,
            waited_ms: now_ms.saturating_sub(enqueued_ms),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.fair.is_empty()
    }

    /// Whether a new request of class `p` would be first in line.
    pub fn first_in_line(&self, p: Priority) -> bool {
        self.fair.first_in_line(p)
    }

    pub fn stats(&self, now_ms: u64) -> QueueStats {
        let mut per_tenant: Vec<_> = self
            .per_tenant
            .iter()
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        per_tenant.sort();
        let tenants = self
            .fair
            .view()
            .into_iter()
            .filter(|v: &TenantView| v.depth > 0)
            .map(|v| QueueView {
                oldest_wait_ms: v.oldest_enqueued_ms.map(|t| now_ms.saturating_sub(t)),
                tenant: v.tenant,
                priority: v.priority,
                depth: v.depth,
                counter: v.counter,
            })
            .collect();
        let most_held = self
            .shards
            .values()
            .map(ShardCapacity::most_held)
            .max()
            .unwrap_or(0);
        QueueStats {
            depth: self.fair.len(),
            by_class: CLASSES.map(|p| (p, self.fair.depth(p))),
            per_tenant,
            tenants,
            queued_bytes: self.queued_bytes,
            free_slots: self
                .shards
                .values()
                .filter(|s| s.has_room())
                .map(|s| u64::from(s.free_slots))
                .sum(),
            healthy_shards: self.shards.values().filter(|s| s.healthy).count(),
            reserved: CLASSES.map(|p| (p, self.keep_free(p, now_ms).min(most_held))),
        }
    }
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
