//! Stage `limit`: rate limits, token quotas and concurrency per client and
//! per tenant, checked and debited in one step, settled when the request ends.
//!
//! - `policy`: the arithmetic (sliding windows, leases, daily budget), pure
//! - `redis`: the same semantics as one Lua script on one hash of limiter
//!   state per tenant, admitting and settling any number of requests per call
//! - `steps`: a tenant's calls to Redis coalesced, at most two in flight
//! - `usage`: usage metering for billing (requests and tokens per tenant, client, day)
//!
//! With Redis configured every replica shares the counters; when Redis is
//! unreachable `redis.on_failure` decides: `local` (each replica enforces its
//! share, limit ÷ `redis.gateway_replicas`, in memory), `open` or `closed` (503).

pub mod policy;
mod redis;
mod steps;
pub mod usage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_shared::config::{Limits, RedisFailureMode};
use tollgate_shared::openai::Usage;
use tollgate_shared::store::{Redis, StoreError};

use policy::Counters;
pub use policy::{Dim, Headroom, LimitKind, Remaining, Verdict};
use usage::UsageBook;

/// Who is being limited: a client, its tenant, and the limits of each.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub client: &'a str,
    pub tenant_limits: Limits,
    pub client_limits: Limits,
}

/// Refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Limited {
        kind: LimitKind,
        /// `None`: the request alone exceeds the limit and can never pass.
        retry_after_ms: Option<u64>,
        headroom: Headroom,
    },
    /// Redis is down and `on_failure = "closed"`.
    Unavailable,
}

/// Where an admission was counted, so settlement goes to the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Shared,
    Local,
    Nowhere,
}

/// An admitted request's claim on the limits. Settle it with [`Limiter::settle`].
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The tenant's limiter state: its Redis hash, or its entry in memory.
    state_key: String,
    dims: Vec<Dim>,
    /// When its leases lapse: what settlement gives them back by.
    lease_deadline_ms: u64,
    second: u64,
    reserved: u64,
    tenant: String,
    client: String,
    place: Place,
    /// Tells this request's settlement from others, should it be sent twice.
    id: u64,
}

impl Ticket {
    /// A request's claim before it is decided: when admitted, the second it
    /// is charged to and its lease deadline are filled in.
    fn new(
        state_key: String,
        dims: Vec<Dim>,
        reserved: u64,
        s: &Subject<'_>,
        place: Place,
    ) -> Ticket {
        Ticket {
            state_key,
            dims,
            lease_deadline_ms: 0,
            second: 0,
            reserved,
            tenant: s.tenant.to_owned(),
            client: s.client.to_owned(),
            place,
            id: rand::random(),
        }
    }

    /// Takes the second and the lease deadline of an admission; true if
    /// `v` admitted it.
    fn take(&mut self, v: &Verdict) -> bool {
        let Verdict::Admitted {
            second,
            deadline_ms,
            ..
        } = *v
        else {
            return false;
        };
        self.second = second;
        self.lease_deadline_ms = deadline_ms;
        true
    }
}

/// The ticket of an admitted request, or why it was refused.
fn decided(v: Verdict, ticket: Ticket) -> Result<(Ticket, Headroom), Refusal> {
    match v {
        Verdict::Admitted { headroom, .. } => Ok((ticket, headroom)),
        Verdict::Limited {
            kind,
            retry_after_ms,
            headroom,
        } => Err(Refusal::Limited {
            kind,
            retry_after_ms,
            headroom,
        }),
    }
}

pub struct Limiter {
    redis: Option<Redis>,
    on_failure: RedisFailureMode,
    replicas: u64,
    lease_ttl: Duration,
    /// The in-memory counters: the only ones without Redis, the fallback with it.
    local: Mutex<Counters>,
    book: UsageBook,
    /// Until this unix-ms, Redis counts as down and is not asked.
    redis_down_until: AtomicU64,
    /// Per tenant, what waits for its next call to Redis.
    steps: steps::Queues,
}

/// How long Redis is left alone after it failed, before it is tried again.
const REDIS_RETRY: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Limiter {
    pub fn new(
        redis: Option<Redis>,
        on_failure: RedisFailureMode,
        replicas: u64,
        lease_ttl: Duration,
        usage_retention: Duration,
    ) -> Arc<Limiter> {
        Arc::new(Limiter {
            book: UsageBook::new(redis.clone(), usage_retention),
            redis,
            on_failure,
            replicas: replicas.max(1),
            lease_ttl,
            local: Mutex::new(Counters::default()),
            redis_down_until: AtomicU64::new(0),
            steps: Default::default(),
        })
    }

    pub fn usage(&self) -> &UsageBook {
        &self.book
    }

    /// The limits a request of `s` must pass, each divided by `share`, and
    /// the key of the tenant state holding their counters. The key carries
    /// the tenant as hash tag, as its usage keys do, so a script's keys share
    /// a cluster slot.
    fn dims(&self, s: &Subject<'_>, share: u64, prefix: &str) -> (String, Vec<Dim>) {
        let mut dims = Vec::with_capacity(8);
        let scopes = [
            (
                format!("c:{}", s.client),
                client_effective(&s.client_limits, &s.tenant_limits),
            ),
            ("t".to_owned(), s.tenant_limits),
        ];
        for (subject, l) in scopes {
            for (kind, limit) in [
                (LimitKind::RequestsPerMinute, l.rpm),
                (LimitKind::TokensPerMinute, l.tpm),
                (LimitKind::Concurrency, l.max_concurrency),
                (LimitKind::DailyTokens, l.daily_tokens),
            ] {
                if let Some(limit) = limit {
                    dims.push(Dim {
                        subject: subject.clone(),
                        kind,
                        limit: (limit / share).max(1),
                    });
                }
            }
        }
        (state_key(prefix, s.tenant), dims)
    }

    fn redis_up(&self) -> bool {
        self.redis.is_some() && now_ms() >= self.redis_down_until.load(Ordering::Relaxed)
    }

    fn mark_redis_down(&self, why: &str) {
        let was = self
            .redis_down_until
            .swap(now_ms() + REDIS_RETRY.as_millis() as u64, Ordering::Relaxed);
        if was == 0 || now_ms() > was + REDIS_RETRY.as_millis() as u64 {
            tracing::warn!(error = why, mode = ?self.on_failure, "redis unreachable: limits degrade as configured");
        }
    }

    /// Checks and debits every limit of `s` for one request reserving `tokens`.
    pub async fn admit(
        self: &Arc<Self>,
        s: &Subject<'_>,
        tokens: u64,
    ) -> Result<(Ticket, Headroom), Refusal> {
        let ttl_ms = self.lease_ttl.as_millis() as u64;
        if let Some(redis) = self.redis.as_ref().filter(|_| self.redis_up()) {
            let (key, dims) = self.dims(s, 1, redis.prefix());
            let ticket = Ticket::new(key, dims, tokens, s, Place::Shared);
            match self.admit_shared(ticket).await {
                Ok((ticket, v)) => return decided(v, ticket),
                Err(e) => self.mark_redis_down(&e.to_string()),
            }
        }
        let (place, share) = match (self.redis.is_some(), self.on_failure) {
            (false, _) => (Place::Local, 1),
            (true, RedisFailureMode::Local) => (Place::Local, self.replicas),
            (true, RedisFailureMode::Open) => {
                let mut t = Ticket::new(String::new(), Vec::new(), tokens, s, Place::Nowhere);
                t.second = now_ms() / 1000;
                return Ok((t, Headroom::default()));
            }
            (true, RedisFailureMode::Closed) => return Err(Refusal::Unavailable),
        };
        let (key, dims) = self.dims(s, share, "local:");
        let verdict = match self.local.lock() {
            Ok(mut c) => c.admit(now_ms(), &key, &dims, tokens, ttl_ms),
            Err(_) => return Err(Refusal::Unavailable),
        };
        let mut ticket = Ticket::new(key, dims, tokens, s, place);
        ticket.take(&verdict);
        decided(verdict, ticket)
    }

    /// The request ended having used `usage`: corrects the token charge, frees
    /// its leases and meters it. Runs in the background; never fails the request.
    pub fn settle(self: &Arc<Self>, ticket: Ticket, usage: Usage) {
        if ticket.place == Place::Shared && self.redis.is_some() {
            // Not awaited on purpose: settlement must not hold the response; if
            // it fails, the reservation stands and the leases lapse by their TTL.
            self.settle_shared(ticket, usage, None);
        } else {
            self.settle_local(ticket, &usage);
        }
    }

    fn settle_local(&self, ticket: Ticket, usage: &Usage) {
        if ticket.place == Place::Local
            && let Ok(mut c) = self.local.lock()
        {
            let delta = usage.total_tokens as i64 - ticket.reserved as i64;
            c.settle(
                &ticket.state_key,
                &ticket.dims,
                ticket.lease_deadline_ms,
                ticket.second,
                delta,
            );
        }
        self.book
            .record_local(&ticket.tenant, &ticket.client, ticket.second, usage);
    }

    /// Settles and waits for it to be done.
    pub async fn settle_now(self: &Arc<Self>, ticket: Ticket, usage: Usage) {
        if ticket.place != Place::Shared || self.redis.is_none() {
            return self.settle_local(ticket, &usage);
        }
        let (done, settled) = tokio::sync::oneshot::channel();
        self.settle_shared(ticket, usage, Some(done));
        // Sent once the settlement is in Redis or, failing that, metered here.
        let _ = settled.await;
    }

    /// A settlement Redis did not take: its reservation stands (the leases
    /// lapse by their TTL); its usage is metered here, so billing loses nothing.
    fn settle_failed(&self, t: &Ticket, usage: &Usage, e: &StoreError) {
        tracing::warn!(error = %e, "could not settle a request's limits; its reservation stands");
        self.book
            .record_local(&t.tenant, &t.client, t.second, usage);
    }
}

/// The key of a tenant's limiter state.
fn state_key(prefix: &str, tenant: &str) -> String {
    format!("{prefix}{{{tenant}}}:limits")
}

/// A client's own limits, each falling back to its tenant's.
fn client_effective(client: &Limits, tenant: &Limits) -> Limits {
    Limits {
        rpm: client.rpm.or(tenant.rpm),
        tpm: client.tpm.or(tenant.tpm),
        max_concurrency: client.max_concurrency.or(tenant.max_concurrency),
        daily_tokens: client.daily_tokens.or(tenant.daily_tokens),
    }
}

/// OpenAI's duration format for `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`.
pub fn reset_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;

/// An admitted request's charge, settled exactly once: with what it used
/// ([`Charge::finish`]), or, if it ends before reaching vLLM, with nothing
/// generated (on drop).
pub struct Charge {
    limiter: Arc<Limiter>,
    ticket: Option<Ticket>,
    prompt_estimate: u64,
}

impl Charge {
    pub fn new(limiter: Arc<Limiter>, ticket: Ticket, prompt_estimate: u64) -> Charge {
        Charge {
            limiter,
            ticket: Some(ticket),
            prompt_estimate,
        }
    }

    /// Settles with the usage vLLM reported, or, when a stream was cut before
    /// its usage chunk, with the prompt estimate and the tokens that were produced.
    pub fn finish(mut self, reported: Option<Usage>, produced: u64) {
        let usage = reported.unwrap_or(Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: produced,
            total_tokens: self.prompt_estimate + produced,
        });
        if let Some(t) = self.ticket.take() {
            self.limiter.settle(t, usage);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.limiter.settle(t, Usage::default());
        }
    }
}

/// OpenAI's `x-ratelimit-*` headers for what is left.
pub fn headers(h: &Headroom) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    if let Some(r) = h.requests {
        out.push(("x-ratelimit-limit-requests", r.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", r.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", reset_text(r.reset_ms)));
    }
    if let Some(t) = h.tokens {
        out.push(("x-ratelimit-limit-tokens", t.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", t.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", reset_text(t.reset_ms)));
    }
    out
}

/// `Retry-After` in whole seconds: never before the limit would let the
/// request pass, plus up to a second of jitter so refused clients do not return in step.
pub fn retry_after_secs(retry_after_ms: Option<u64>) -> u64 {
    match retry_after_ms {
        Some(ms) => ms.div_ceil(1000).max(1) + u64::from(rand::random::<bool>()),
        None => policy::WINDOW_SECS,
    }
}
