//! The engine core: vLLM V1's iteration-level scheduler over a paged KV
//! cache, as a plain state machine. Time is passed in; the actor (`runner`)
//! sleeps between [`Engine::schedule`] and [`Engine::complete`].
//!
//! One step: running requests first (in admission order), each gets the
//! tokens it still needs, bounded by the step's token budget (a long prompt
//! is prefilled in chunks); a running request that cannot get a KV block
//! preempts the most recently admitted (FCFS) or the lowest-priority one,
//! which frees its blocks and goes back to the front of the queue to be
//! recomputed. Then, if nothing was preempted, waiting requests are admitted
//! while the budget, `max_num_seqs` and the KV cache allow, reusing cached
//! prefix blocks. Every request whose tokens are all computed at the end of
//! a step emits one token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::kv::BlockPool;
use super::metrics::{Snapshot, Stats};
pub use super::queue::SchedulingPolicy;
use super::queue::WaitQueue;
use super::timing::{StepLoad, StepTiming};

pub type ReqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
    Error,
}

impl FinishReason {
    pub const ALL: [FinishReason; 4] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
        FinishReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }

    pub fn index(self) -> usize {
        match self {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
            FinishReason::Error => 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub block_size: u32,
    pub num_blocks: u32,
    pub policy: SchedulingPolicy,
    pub timing: StepTiming,
    /// Simulated seconds per wall-clock second.
    pub time_scale: f64,
}

/// One generated token, as told to the request's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// 0-based position in the output.
    pub index: u32,
    /// The request is finished with this token.
    pub last: bool,
}

/// A request as the engine sees it: sizes, not text.
#[derive(Debug)]
pub struct NewRequest {
    pub prompt_len: u32,
    /// Hashes of the prompt's full blocks (prefix cache keys).
    pub block_hashes: Arc<[u64]>,
    /// Tokens to generate (at least 1), and why generation ends there.
    pub output_tokens: u32,
    pub finish: FinishReason,
    /// Lower runs first under the priority policy.
    pub priority: i64,
    pub sink: UnboundedSender<TokenEvent>,
}

#[derive(Debug)]
struct Seq {
    req: NewRequest,
    num_output: u32,
    num_computed: u32,
    blocks: Vec<u32>,
    /// Leading blocks already registered in the prefix cache.
    num_cached_blocks: usize,
    arrival_seq: u64,
    arrived: Instant,
    first_scheduled: Option<Instant>,
    last_token: Option<Instant>,
}

impl Seq {
    fn num_tokens(&self) -> u32 {
        self.req.prompt_len + self.num_output
    }

    fn key(&self) -> (i64, u64) {
        (self.req.priority, self.arrival_seq)
    }
}

/// The work of one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// Requests and the tokens computed for each.
    pub entries: Vec<(ReqId, u32)>,
    pub load: StepLoad,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    pool: BlockPool,
    seqs: HashMap<ReqId, Seq>,
    waiting: WaitQueue,
    running: Vec<ReqId>,
    next_arrival: u64,
    stats: Stats,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        let waiting = WaitQueue::new(cfg.policy);
        Engine {
            pool: BlockPool::new(cfg.num_blocks),
            cfg,
            seqs: HashMap::new(),
            waiting,
            running: Vec::new(),
            next_arrival: 0,
            stats: Stats::default(),
        }
    }

    #[cfg(test)]
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn add(&mut self, id: ReqId, req: NewRequest, now: Instant) {
        let seq = Seq {
            req,
            num_output: 0,
            num_computed: 0,
            blocks: Vec::new(),
            num_cached_blocks: 0,
            arrival_seq: self.next_arrival,
            arrived: now,
            first_scheduled: None,
            last_token: None,
        };
        self.next_arrival += 1;
        self.waiting.push(id, seq.key(), false);
        self.seqs.insert(id, seq);
    }

    /// Drops a request wherever it is and frees its blocks. Unknown ids
    /// (already finished) are ignored.
    pub fn abort(&mut self, id: ReqId, now: Instant) {
        let Some(seq) = self.seqs.get(&id) else {
            return;
        };
        if let Some(pos) = self.running.iter().position(|&r| r == id) {
            self.running.remove(pos);
        } else {
            self.waiting.remove(id, seq.key());
        }
        self.finish(id, FinishReason::Abort, now);
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || self.waiting.len() > 0
    }

    #[cfg(test)]
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    #[cfg(test)]
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    #[cfg(test)]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            stats: self.stats.clone(),
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_cache_usage: self.pool.usage(),
        }
    }

    /// Decides the next step: which requests compute how many tokens.
    pub fn schedule(&mut self, now: Instant) -> StepPlan {
        let bs = self.cfg.block_size;
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let want = (seq.num_tokens() - seq.num_computed).min(budget);
            let need =
                blocks_for(seq.num_computed + want, bs).saturating_sub(seq.blocks.len() as u32);
            let mut victim_was_self = false;
            while need > self.pool.num_free() {
                let v = self.pick_victim();
                let victim = self.running[v];
                self.preempt(v, &mut plan, &mut budget);
                preempted = true;
                if victim == id {
                    victim_was_self = true;
                    break;
                }
                if v < i {
                    i -= 1;
                }
            }
            if victim_was_self {
                continue;
            }
            if let Some(seq) = self.seqs.get_mut(&id) {
                self.pool.allocate(need, &mut seq.blocks);
            }
            plan.entries.push((id, want));
            budget -= want;
            i += 1;
        }

        if !preempted {
            self.admit(&mut plan, &mut budget, now);
        }

        for &(id, n) in &plan.entries {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            let before = seq.num_computed;
            if n == 1 && seq.num_output > 0 && before + 1 == seq.num_tokens() {
                plan.load.decode_seqs += 1;
            } else {
                plan.load.prefill_tokens += u64::from(n);
            }
            plan.load.context_tokens += u64::from(before + n);
            seq.num_computed = before + n;
            // Full prompt blocks are now computed: make them findable.
            let full = ((seq.num_computed / bs) as usize).min(seq.req.block_hashes.len());
            for b in seq.num_cached_blocks..full {
                self.pool.cache(seq.blocks[b], seq.req.block_hashes[b]);
            }
            seq.num_cached_blocks = seq.num_cached_blocks.max(full);
        }
        plan
    }

    /// Admits waiting requests into the running batch.
    fn admit(&mut self, plan: &mut StepPlan, budget: &mut u32, now: Instant) {
        let bs = self.cfg.block_size;
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs as usize {
            let Some(id) = self.waiting.peek() else { break };
            let Some(seq) = self.seqs.get_mut(&id) else {
                break;
            };
            let total = seq.num_tokens();
            // At least one token is always computed, so the hit stops short of the end.
            let hit_blocks = self.pool.cached_prefix(
                &seq.req.block_hashes,
                (total.saturating_sub(1) / bs) as usize,
            );
            let computed = hit_blocks as u32 * bs;
            let want = (total - computed).min(*budget);
            let need = blocks_for(computed + want, bs) - hit_blocks as u32;
            if !self
                .pool
                .can_allocate(&seq.req.block_hashes, hit_blocks, need)
            {
                break;
            }
            self.pool
                .reuse_cached(&seq.req.block_hashes, hit_blocks, &mut seq.blocks);
            self.pool.allocate(need, &mut seq.blocks);
            seq.num_computed = computed;
            seq.num_cached_blocks = hit_blocks;
            seq.first_scheduled.get_or_insert(now);
            self.stats.prefix_cache_queries += u64::from(total);
            self.stats.prefix_cache_hits += u64::from(computed);
            self.waiting.pop();
            self.running.push(id);
            plan.entries.push((id, want));
            *budget -= want;
        }
    }

    /// The running request to preempt: the last admitted (FCFS) or the one
    /// with the largest (priority, arrival).
    fn pick_victim(&self) -> usize {
        match self.cfg.policy {
            SchedulingPolicy::Fcfs => self.running.len() - 1,
            SchedulingPolicy::Priority => self
                .running
                .iter()
                .enumerate()
                .max_by_key(|(_, id)| self.seqs.get(id).map(Seq::key))
                .map_or(0, |(i, _)| i),
        }
    }

    /// Recompute preemption: free the blocks, forget computed tokens, requeue at the front.
    fn preempt(&mut self, index: usize, plan: &mut StepPlan, budget: &mut u32) {
        let id = self.running.remove(index);
        if let Some(pos) = plan.entries.iter().position(|e| e.0 == id) {
            *budget += plan.entries.remove(pos).1;
        }
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        self.pool.free(&seq.blocks);
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.num_cached_blocks = 0;
        let key = seq.key();
        self.waiting.push(id, key, true);
        self.stats.preemptions += 1;
    }

    /// Wall-clock duration of a planned step.
    pub fn step_duration(&self, plan: &StepPlan) -> Duration {
        self.cfg
            .timing
            .step_duration(plan.load, self.cfg.time_scale)
    }

    /// Applies a finished step at `now`: every request whose tokens are all
    /// computed emits a token; finished and abandoned requests leave.
    pub fn complete(&mut self, plan: &StepPlan, now: Instant) {
        let scale = self.cfg.time_scale;
        let mut left = false;
        for &(id, _) in &plan.entries {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            if seq.num_computed < seq.num_tokens() {
                continue; // a prefill chunk that is not the last
            }
            let index = seq.num_output;
            seq.num_output += 1;
            let last = seq.num_output >= seq.req.output_tokens;
            match seq.last_token {
                None => {
                    self.stats
                        .ttft
                        .observe(sim_secs(now.saturating_duration_since(seq.arrived), scale));
                    self.stats.prompt_tokens += u64::from(seq.req.prompt_len);
                }
                Some(t) => self
                    .stats
                    .itl
                    .observe(sim_secs(now.saturating_duration_since(t), scale)),
            }
            seq.last_token = Some(now);
            self.stats.generation_tokens += 1;
            let delivered = seq.req.sink.send(TokenEvent { index, last }).is_ok();
            if last {
                let reason = seq.req.finish;
                self.finish(id, reason, now);
                left = true;
            } else if !delivered {
                self.finish(id, FinishReason::Abort, now);
                left = true;
            }
        }
        if left {
            let seqs = &self.seqs;
            self.running.retain(|id| seqs.contains_key(id));
        }
    }

    /// Removes a request (already out of the queues, or about to be) and records it.
    fn finish(&mut self, id: ReqId, reason: FinishReason, now: Instant) {
        let Some(seq) = self.seqs.remove(&id) else {
            return;
        };
        self.pool.free(&seq.blocks);
        let scale = self.cfg.time_scale;
        self.stats.finished[reason.index()] += 1;
        self.stats
            .e2e
            .observe(sim_secs(now.saturating_duration_since(seq.arrived), scale));
        if let Some(t) = seq.first_scheduled {
            self.stats
                .queue
                .observe(sim_secs(t.saturating_duration_since(seq.arrived), scale));
        }
    }

    #[cfg(test)]
    pub fn blocks_in_use(&self) -> u32 {
        self.pool.num_blocks() - self.pool.num_free()
    }

    #[cfg(test)]
    pub fn running_ids(&self) -> Vec<ReqId> {
        self.running.clone()
    }
}

fn blocks_for(tokens: u32, block_size: u32) -> u32 {
    tokens.div_ceil(block_size)
}

fn sim_secs(d: Duration, scale: f64) -> f64 {
    d.as_secs_f64() * scale
}
