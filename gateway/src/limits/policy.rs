//! Limiter arithmetic, pure: no I/O, time passed in as milliseconds.
//!
//! - Requests and tokens per minute: a sliding window of 60 one-second
//!   buckets. At most `limit` units are admitted in any window; a bucket's
//!   units come back 60 s after the second they were admitted in.
//! - Concurrency: leases that end when the request ends, or by themselves
//!   when their deadline passes (a gateway died holding them).
//! - Daily tokens: a counter per UTC day.
//!
//! The counters are kept per *subject*: the tenant as a whole (`t`) and each
//! of its clients (`c:<client>`). One subject's [`State`] holds everything
//! its limits need, so a request touches at most two of them, both stored
//! under its tenant: in Redis one hash per tenant with one field per subject,
//! which lets a script read and write every counter of a request in one
//! command each. The Redis script (`step.lua`) implements
//! exactly this; one test suite runs against both backends.

use std::collections::{BTreeMap, HashMap};

pub const WINDOW_SECS: u64 = 60;
pub const DAY_SECS: u64 = 86_400;

/// Which limit a request hit, named as in the 429's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    Concurrency,
    DailyTokens,
}

impl LimitKind {
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::Concurrency => "concurrency",
            LimitKind::DailyTokens => "daily_tokens",
        }
    }

    /// The letter the Redis script knows the kind by.
    pub fn letter(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "r",
            LimitKind::TokensPerMinute => "t",
            LimitKind::Concurrency => "c",
            LimitKind::DailyTokens => "d",
        }
    }
}

/// One limit to check: a kind with its limit, on a subject (`t`, or
/// `c:<client>`) of the tenant whose state the request is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dim {
    pub subject: String,
    pub kind: LimitKind,
    pub limit: u64,
}

/// The subjects of `dims`, each once, in the order they first appear.
pub fn subjects(dims: &[Dim]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(2);
    for d in dims {
        if !out.contains(&d.subject.as_str()) {
            out.push(&d.subject);
        }
    }
    out
}

/// Remaining capacity of the tightest requests and tokens windows, for the
/// `x-ratelimit-*` headers. `None` where no such limit applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<Remaining>,
    pub tokens: Option<Remaining>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window is whole again.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `second` is the window bucket the request was charged to,
    /// `deadline_ms` when its leases lapse unless given back first.
    Admitted {
        second: u64,
        deadline_ms: u64,
        headroom: Headroom,
    },
    /// Refused; `retry_after_ms` is when it could pass (`None`: never, the
    /// request alone is larger than the limit).
    Limited {
        kind: LimitKind,
        retry_after_ms: Option<u64>,
        headroom: Headroom,
    },
}

/// Everything one subject's limits count. Every admission of a subject
/// debits its buckets and its day, whichever of its limits are set, so that
/// one record serves all four kinds; leases are taken only where concurrency
/// is limited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Second → (requests, tokens) admitted in it.
    buckets: BTreeMap<u64, (u64, u64)>,
    /// (UTC day, tokens used on it).
    daily: (u64, u64),
    /// Deadline (unix ms) → leases that lapse then. A lease is known by its
    /// deadline alone: leases with one deadline lapse together, so giving
    /// back any one of them is giving back the request's own.
    leases: BTreeMap<u64, u64>,
}

/// The requests (`0`) or tokens (`1`) of a bucket.
fn unit(kind: LimitKind, b: &(u64, u64)) -> u64 {
    if kind == LimitKind::RequestsPerMinute {
        b.0
    } else {
        b.1
    }
}

impl State {
    /// Drops buckets that left the window and leases past their deadline,
    /// so a subject's state never outgrows one window and its live leases.
    fn prune(&mut self, now_ms: u64) {
        let keep_from = (now_ms / 1000).saturating_sub(WINDOW_SECS - 1);
        self.buckets = self.buckets.split_off(&keep_from);
        self.leases = self.leases.split_off(&(now_ms + 1));
    }

    fn held(&self) -> u64 {
        self.leases.values().sum()
    }

    fn total(&self, kind: LimitKind) -> u64 {
        self.buckets.values().map(|b| unit(kind, b)).sum()
    }

    /// When `amount` more would fit under `limit`; `None` if it never will.
    fn retry_after_ms(&self, kind: LimitKind, now_ms: u64, limit: u64, amount: u64) -> Option<u64> {
        if amount > limit {
            return None;
        }
        let total = self.total(kind);
        let mut freed = 0;
        for (sec, b) in &self.buckets {
            freed += unit(kind, b);
            if total - freed + amount <= limit {
                return Some(((sec + WINDOW_SECS) * 1000).saturating_sub(now_ms).max(1));
            }
        }
        Some(1)
    }

    /// Milliseconds until every unit now in the window has left it.
    fn reset_ms(&self, now_ms: u64) -> u64 {
        self.buckets
            .keys()
            .next_back()
            .map_or(0, |sec| ((sec + WINDOW_SECS) * 1000).saturating_sub(now_ms))
    }

    fn used_on(&self, day: u64) -> u64 {
        if self.daily.0 == day { self.daily.1 } else { 0 }
    }

    fn debit(&mut self, now_s: u64, tokens: u64) {
        let b = self.buckets.entry(now_s).or_default();
        b.0 += 1;
        b.1 += tokens;
        let today = now_s / DAY_SECS;
        self.daily = (today, self.used_on(today) + tokens);
    }

    /// Buckets and leases held; what the tests bound.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        (self.buckets.len(), self.held() as usize)
    }
}

/// Every counter of one backend's memory: the in-memory limiter, and the
/// model the Redis scripts follow. Tenant state key → subject → its state,
/// as Redis keeps one hash per tenant with one field per subject.
#[derive(Debug, Default)]
pub struct Counters {
    tenants: HashMap<String, HashMap<String, State>>,
}

impl Counters {
    /// Checks every dimension, then debits all of them, or none.
    pub fn admit(
        &mut self,
        now_ms: u64,
        key: &str,
        dims: &[Dim],
        tokens: u64,
        lease_ttl_ms: u64,
    ) -> Verdict {
        let now_s = now_ms / 1000;
        let today = now_s / DAY_SECS;
        let states = self.tenants.entry(key.to_owned()).or_default();
        for s in subjects(dims) {
            states.entry(s.to_owned()).or_default().prune(now_ms);
        }
        for d in dims {
            let Some(st) = states.get(&d.subject) else {
                continue;
            };
            let refused = match d.kind {
                LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => {
                    let amount = if d.kind == LimitKind::RequestsPerMinute {
                        1
                    } else {
                        tokens
                    };
                    (st.total(d.kind) + amount > d.limit)
                        .then(|| st.retry_after_ms(d.kind, now_ms, d.limit, amount))
                }
                LimitKind::Concurrency => (st.held() + 1 > d.limit).then_some(Some(1000)),
                LimitKind::DailyTokens => {
                    let until_midnight = ((today + 1) * DAY_SECS * 1000).saturating_sub(now_ms);
                    (st.used_on(today) + tokens > d.limit)
                        .then(|| (tokens <= d.limit).then_some(until_midnight))
                }
            };
            if let Some(retry_after_ms) = refused {
                return Verdict::Limited {
                    kind: d.kind,
                    retry_after_ms,
                    headroom: headroom(states, now_ms, dims),
                };
            }
        }
        for s in subjects(dims) {
            states.entry(s.to_owned()).or_default().debit(now_s, tokens);
        }
        let deadline_ms = now_ms + lease_ttl_ms;
        for d in dims.iter().filter(|d| d.kind == LimitKind::Concurrency) {
            *states
                .entry(d.subject.clone())
                .or_default()
                .leases
                .entry(deadline_ms)
                .or_default() += 1;
        }
        Verdict::Admitted {
            second: now_s,
            deadline_ms,
            headroom: headroom(states, now_ms, dims),
        }
    }

    /// The request ended: corrects its token charge by `delta` (actual −
    /// reserved) in the bucket and the day it was charged to, clamped at 0,
    /// and gives back its leases (those with its `deadline_ms`; a lapsed one
    /// is gone already). A bucket already out of the window is gone, or no
    /// longer counted: nothing to correct.
    pub fn settle(&mut self, key: &str, dims: &[Dim], deadline_ms: u64, second: u64, delta: i64) {
        let Some(states) = self.tenants.get_mut(key) else {
            return;
        };
        for s in subjects(dims) {
            let Some(st) = states.get_mut(s) else {
                continue;
            };
            if let Some(b) = st.buckets.get_mut(&second) {
                b.1 = b.1.saturating_add_signed(delta);
            }
            if st.daily.0 == second / DAY_SECS {
                st.daily.1 = st.daily.1.saturating_add_signed(delta);
            }
        }
        for d in dims.iter().filter(|d| d.kind == LimitKind::Concurrency) {
            let leases = states.get_mut(&d.subject).map(|st| &mut st.leases);
            if let Some(leases) = leases
                && let Some(n) = leases.get_mut(&deadline_ms)
            {
                *n -= 1;
                if *n == 0 {
                    leases.remove(&deadline_ms);
                }
            }
        }
    }

    /// One subject's state, for the tests.
    #[cfg(test)]
    pub fn state(&self, key: &str, subject: &str) -> Option<&State> {
        self.tenants.get(key)?.get(subject)
    }
}

fn headroom(states: &HashMap<String, State>, now_ms: u64, dims: &[Dim]) -> Headroom {
    let mut h = Headroom::default();
    for d in dims {
        let slot = match d.kind {
            LimitKind::RequestsPerMinute => &mut h.requests,
            LimitKind::TokensPerMinute => &mut h.tokens,
            LimitKind::Concurrency | LimitKind::DailyTokens => continue,
        };
        let (used, reset_ms) = states
            .get(&d.subject)
            .map_or((0, 0), |st| (st.total(d.kind), st.reset_ms(now_ms)));
        let r = Remaining {
            limit: d.limit,
            remaining: d.limit.saturating_sub(used),
            reset_ms,
        };
        if slot.is_none_or(|s| r.remaining < s.remaining) {
            *slot = Some(r);
        }
    }
    h
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
