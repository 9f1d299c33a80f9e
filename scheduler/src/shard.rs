//! Shards as the scheduler sees them: capacity from the workers' reports,
//! adjusted by this gateway's grants and releases since, and the choice of
//! the least loaded one. Pure: no I/O, no clock.

use std::sync::Arc;

/// KV-cache use at which a shard stops getting new work: past it vLLM would
/// preempt running sequences to admit new ones.
pub const KV_HOLDBACK: f64 = 0.95;

/// A shard: `index` on the worker named `worker`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    pub worker: Arc<str>,
    pub index: u32,
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.worker, self.index)
    }
}

/// A shard's capacity as last reported, adjusted by the grants and releases since.
///
/// The pool reports no capacity at all for a worker whose report is stale, so
/// a shard is only granted on the strength of a recent report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardCapacity {
    pub id: ShardId,
    pub healthy: bool,
    pub free_slots: u32,
    pub max_slots: u32,
    /// Requests the worker had in flight to the shard at the report.
    pub inflight: u32,
    /// Sequences vLLM was running at the report.
    pub running: u32,
    /// Sequences waiting in vLLM's own queue at the report.
    pub waiting: u32,
    /// Share of vLLM's KV cache in use at the report, 0..=1.
    pub kv_cache_usage: f64,
    /// Grants this policy made since the report, less releases: load the
    /// report cannot show yet. Kept by the policy; a report starts it at 0.
    pub granted: u32,
    /// How many of `inflight` were this gateway's own at the report, when the
    /// worker told (and no breaker caps the slots). The policy then replaces
    /// that snapshot with its exact count of its own requests: a request that
    /// ended (or started) while the report was on its way is no longer
    /// counted wrongly until the next one.
    pub own_at_report: Option<u32>,
}

impl ShardCapacity {
    /// Sequences on the shard as far as this gateway can tell: what vLLM
    /// reported or what the worker held in flight, whichever is larger, plus
    /// this gateway's grants since. The grants are what moves between two
    /// reports, so one round spreads over the shards instead of piling onto
    /// the one that looked idlest at the last report.
    pub fn sequences(&self) -> u32 {
        (self.running.saturating_add(self.waiting))
            .max(self.inflight)
            .saturating_add(self.granted)
    }

    /// Replaces this gateway's share of the reported load (`own_at_report`)
    /// with `own`, its exact number of requests on the shard now.
    pub(crate) fn correct_own(&mut self, own: u32) {
        let Some(reported) = self.own_at_report.take() else {
            return;
        };
        if self.healthy {
            self.free_slots = (self.free_slots + reported)
                .saturating_sub(own)
                .min(self.max_slots);
        }
        self.inflight = (self.inflight.saturating_sub(reported)).saturating_add(own);
    }

    /// A grant takes a slot.
    pub(crate) fn take_slot(&mut self) {
        self.free_slots = self.free_slots.saturating_sub(1);
        self.granted = self.granted.saturating_add(1);
    }

    /// A granted request ended (or was handed back): its slot is free again.
    pub(crate) fn give_back(&mut self) {
        self.free_slots = (self.free_slots + 1).min(self.max_slots);
        self.granted = self.granted.saturating_sub(1);
    }

    /// Lower is less loaded: the shard's sequences as a share of its slots
    /// plus its KV-cache use. Both are 0..1 on a shard within its limits, so
    /// a shard half full of short requests and one with few but long ones
    /// (whose KV cache is close to preemption) weigh alike.
    /// Holdback: a shard gets work only while it is healthy, has a free
    /// sequence slot and room in its KV cache; otherwise requests wait in
    /// Tollgate's queue (where priority and fairness apply), not in vLLM's.
    pub fn has_room(&self) -> bool {
        self.has_room_keeping(0)
    }

    /// The most slots a shard holds for higher classes: a lower class may
    /// always use at least half of it.
    pub fn most_held(&self) -> u32 {
        self.max_slots / 2
    }

    /// Room for a request that must leave `keep` slots free (held for higher
    /// classes), at most [`ShardCapacity::most_held`] of them.
    pub fn has_room_keeping(&self, keep: u32) -> bool {
        self.healthy
            && self.free_slots > keep.min(self.most_held())
            && self.kv_cache_usage.is_finite()
            && self.kv_cache_usage < KV_HOLDBACK
    }

    pub fn load_score(&self) -> f64 {
        let seqs = f64::from(self.sequences()) / f64::from(self.max_slots.max(1));
        let kv = if self.kv_cache_usage.is_finite() {
            self.kv_cache_usage.clamp(0.0, 1.0)
        } else {
            1.0
        };
        seqs + kv
    }
}

/// The least loaded healthy shard with a free slot beyond the `keep` held
/// for higher classes: lowest [`ShardCapacity::load_score`], then most free
/// slots, then lowest id (so rounds are deterministic).
pub fn best_shard<'a>(
    shards: impl IntoIterator<Item = &'a ShardCapacity>,
    keep: u32,
) -> Option<ShardId> {
    shards
        .into_iter()
        .filter(|s| s.has_room_keeping(keep))
        .min_by(|a, b| {
            a.load_score()
                .total_cmp(&b.load_score())
                .then_with(|| b.free_slots.cmp(&a.free_slots))
                .then_with(|| a.id.cmp(&b.id))
        })
        .map(|s| s.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(w: &str, i: u32, free: u32) -> ShardCapacity {
        ShardCapacity {
            id: ShardId {
                worker: w.into(),
                index: i,
            },
            healthy: true,
            free_slots: free,
            max_slots: 4,
            ..ShardCapacity::default()
        }
    }

    fn loaded(i: u32, free: u32, running: u32, waiting: u32, kv: f64) -> ShardCapacity {
        ShardCapacity {
            free_slots: free,
            max_slots: 100,
            running,
            waiting,
            kv_cache_usage: kv,
            ..shard("w", i, free)
        }
    }

    fn pick(shards: &[ShardCapacity]) -> Option<u32> {
        best_shard(shards, 0).map(|s| s.index)
    }

    #[test]
    fn the_least_loaded_shard_wins_not_the_one_with_most_free_slots() {
        // Shard 0 has more free slots (another gateway's traffic aside, the
        // worker admits more), but vLLM reports it running and queueing more.
        let a = loaded(0, 90, 40, 20, 0.2);
        let b = loaded(1, 60, 30, 0, 0.2);
        assert_eq!(pick(&[a.clone(), b.clone()]), Some(1));
        // Equal sequences: the KV cache decides (long contexts are closer to preemption).
        let c = loaded(2, 60, 40, 0, 0.9);
        let d = loaded(3, 60, 40, 0, 0.3);
        assert_eq!(pick(&[c.clone(), d.clone()]), Some(3));
        // A shard with a few long requests and a nearly full cache loses to a
        // busier one with short requests and room in its cache.
        let e = loaded(4, 95, 5, 0, 0.95);
        let f = loaded(5, 70, 30, 0, 0.1);
        assert_eq!(pick(&[e, f]), Some(5));
    }

    #[test]
    fn unhealthy_full_or_unreported_shards_are_never_chosen() {
        let mut sick = loaded(0, 100, 0, 0, 0.0);
        sick.healthy = false;
        let full = loaded(1, 0, 0, 0, 0.0);
        let busy = loaded(2, 1, 99, 50, 0.9);
        assert_eq!(pick(&[sick.clone(), full.clone(), busy]), Some(2));
        assert_eq!(pick(&[sick.clone(), full.clone()]), None);
        // Holdback: a shard whose KV cache is all but full gets nothing.
        let kv_full = loaded(5, 50, 10, 0, KV_HOLDBACK);
        assert_eq!(pick(&[sick, full, kv_full]), None);
        assert_eq!(pick(&[]), None);
        // A nonsensical KV figure counts as a full cache, not as an idle shard.
        let nan = loaded(3, 100, 0, 0, f64::NAN);
        let some = loaded(4, 80, 20, 0, 0.5);
        assert_eq!(pick(&[nan, some]), Some(4));
    }
}
